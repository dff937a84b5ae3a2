"""docs/results.md's transfer tables are generated from archived runs: numbers and verdicts read from the CSVs,
the item-3 paragraph's reading chosen by its fixed rule, and the block replaced between its markers."""

from __future__ import annotations

import json
import math

from benchmarks.analysis.direction_tables import BEGIN, END, carries, load_runs, render, write_between_markers
from biasprune.core.artifacts import write_csv
from biasprune.metrics.spec import DECIDING
from biasprune.study.transfer import LAYER_COLUMNS, choose_layers, write_transfer

SCEN = ("purchase", "finance", "activity", "service")


def archive(root, label, method, verdict_off, cut_off, random=1.15, diag="transfers"):
    """A run of transfer_matrix.py: diagonal cut 0.8 [0.5, 1.1] with verdict ``diag``, off-diagonal ``cut_off`` ± 0.2 with
    ``verdict_off``; unpruned mean |SMD| 1.2 everywhere, its random controls ``random``."""
    d = root / f"{label}-{method}"
    d.mkdir(parents=True)
    cells = [{"method": method, "source": s, "target": t, "cell": "prompt-specific" if s == t else "cross-context",
              "cut": 0.8 if s == t else cut_off, "cut_ci_low": 0.5 if s == t else cut_off - 0.2, "cut_ci_high": 1.1 if s == t else cut_off + 0.2,
              "unpruned_mean_abs_rank_smd": 1.2, "arm_mean_abs_rank_smd": 1.2 - (0.8 if s == t else cut_off),
              "random_mean_abs_rank_smd": random, "inlier_ratio": 0.9, "parse_rate": 1.0,
              "inlier_vs_unpruned": 0.97, "parse_vs_unpruned": 1.0, "n_variations": 2,
              "verdict": diag if s == t else verdict_off, "claim": "", "sentence": ""}
             for s in SCEN for t in SCEN]
    write_transfer(d, cells, method)
    if method == "direction":
        _, table = choose_layers([{"source": "purchase", "candidate": c, "cut": 0.5, "arm_mean_abs_rank_smd": a, "random_mean_abs_rank_smd": 0.9,
                                   "inlier_vs_unpruned": 1.0, "parse_vs_unpruned": 1.0, "inlier_ratio_vs_unpruned": 0.0,
                                   "parse_rate_vs_unpruned": 0.0, "verdict": "transfers"}
                                  for c, a in (("2", 0.3), ("early", 0.2))], 30)
        write_csv(d / "transfer_direction_layers.csv", table, LAYER_COLUMNS)
    (d / "settings.json").write_text(json.dumps({"model": f"m+plant:{label}", "samples": 4, "random_draws": 2, "layers": "early"}))


def test_tables_and_paragraph_come_from_the_archives(tmp_path):
    archive(tmp_path, "all", "direction", "transfers", 0.613)
    archive(tmp_path, "all", "masks", "does not", 0.021)
    archive(tmp_path, "purchase", "direction", "does not", 0.034)
    runs = load_runs(tmp_path)
    assert set(runs) == {("all", "direction"), ("all", "masks"), ("purchase", "direction")}
    text = render(runs)
    assert "+0.61 [+0.41, +0.81] **transfers**" in text and "+0.02 [-0.18, +0.22] **does not**" in text
    assert "Rows: from purchase: transfers; from finance: transfers" in text
    assert "Layers chosen on dev names (arm − random scale-free mean |SMD|): purchase: `2` -0.60, `early` -0.70 (chosen)." in text
    # the caption names the measure that decides, as the spec describes it
    assert text.count(f"cut in the {DECIDING.label} mean |SMD|, the measure that decides claims ({DECIDING.description}):") == 3
    # direction carries `all` on the verdicts, masks do not (their cut's interval crosses zero)
    assert "on the verdicts" in text and "pruning from Purchase does not (finance cut +0.02 [-0.18, +0.22]; activity" in text
    assert "the direction meets the expectation and pruning does not." in text and "exploratory" not in text
    assert "for neuron masks, \"pruning does not generalize\" reads as \"the bias is not in units\", not as" in text
    doc = tmp_path / "results.md"
    doc.write_text(f"# R\n\nbefore\n{BEGIN}\nold\n{END}\nafter\n")
    write_between_markers(doc, text)
    new = doc.read_text()
    assert "\nold\n" not in new and new.startswith("# R\n\nbefore\n") and new.endswith("after\n") and "+0.61" in new


def test_the_reading_changes_when_the_direction_does_not_transfer(tmp_path):
    archive(tmp_path, "all", "direction", "cannot tell", 0.2)
    archive(tmp_path, "all", "masks", "does not", 0.0)
    text = render(load_runs(tmp_path))
    assert "the plants do not separate" in text and "reads as" not in text


def test_a_direction_that_carries_on_the_estimates_is_read_as_such(tmp_path):
    """Verdicts 'cannot tell' (few random controls), cuts above zero, random directions removing little: read on the
    estimates, and said so; masks whose random controls remove as much do not carry."""
    archive(tmp_path, "all", "direction", "cannot tell", 0.9, random=1.15)
    archive(tmp_path, "all", "masks", "cannot tell", 0.5, random=0.8, diag="cannot tell")
    archive(tmp_path, "purchase", "direction", "cannot tell", 0.0)
    archive(tmp_path, "purchase", "masks", "cannot tell", 0.0, random=0.6, diag="cannot tell")
    text = render(load_runs(tmp_path))
    assert "(on the estimates, not on the verdicts:" in text and "with 2 random controls per cell" in text
    # the rule fixed before the runs is stated first, and the reading on the estimates is labelled exploratory
    assert text.index("By the rule fixed before the runs") < text.index("(on the estimates, not on the verdicts:")
    assert "neither method meets the expectation" in text and "is exploratory." in text
    assert "pruning from Purchase does not (finance cut +0.50 with random masks cutting +0.40;" in text
    assert "reads as \"the bias is not in units\"" in text
    # the masks' diagonal against their random masks, on both plants
    assert "(Purchase → Purchase): on `all` cut +0.80 [+0.50, +1.10], random masks +0.40; on `purchase` cut +0.80" \
           " [+0.50, +1.10], random masks +0.60." in text
    # purchase: sources other than Purchase carry nothing to Purchase here (their cut there is 0.0), so no such sentence
    assert "estimated where nothing is planted" not in text


def test_directions_from_unplanted_contexts_are_named(tmp_path):
    archive(tmp_path, "all", "direction", "transfers", 0.9)
    archive(tmp_path, "purchase", "direction", "cannot tell", 0.9)  # every off-diagonal cell, Purchase's column included
    text = render(load_runs(tmp_path))
    assert "directions estimated where nothing is planted (finance, activity, service) also remove Purchase's bias" \
           " (cuts +0.90 to +0.90; verdicts: cannot tell, cannot tell, cannot tell)" in text


def test_carries_on_constructed_cells():
    base = {"verdict": "cannot tell", "cut": 1.0, "cut_ci_low": 0.3, "unpruned_mean_abs_rank_smd": 1.8, "random_mean_abs_rank_smd": 1.6}
    assert carries(base) == "estimate"  # random removes 0.2 < half of 1.0
    assert carries(base | {"verdict": "transfers", "cut_ci_low": -0.1}) == "verdict"
    assert carries(base | {"verdict": "breaks answers"}) == ""
    assert carries(base | {"cut_ci_low": 0.0}) == ""  # interval touches zero
    assert carries(base | {"random_mean_abs_rank_smd": 1.3}) == ""  # random removes 0.5: half the cut
    assert carries(base | {"random_mean_abs_rank_smd": 1.31}) == "estimate"
    assert carries(base | {"cut": math.nan}) == "" and carries(None) == ""
