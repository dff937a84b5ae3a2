"""docs/results.md's transfer tables are generated from archived runs: numbers and verdicts read from the CSVs,
the item-3 paragraph's reading chosen by its fixed rule, and the block replaced between its markers."""

from __future__ import annotations

import json

from benchmarks.analysis.direction_tables import BEGIN, END, load_runs, render, write_between_markers
from biasprune.core.artifacts import write_csv
from biasprune.study.transfer import LAYER_COLUMNS, choose_layers, write_transfer

SCEN = ("purchase", "finance", "activity", "service")


def archive(root, label, method, verdict_off, cut_off):
    d = root / f"{label}-{method}"
    d.mkdir(parents=True)
    cells = [{"method": method, "source": s, "target": t, "cell": "prompt-specific" if s == t else "cross-context",
              "cut": 0.8 if s == t else cut_off, "cut_ci_low": 0.5 if s == t else cut_off - 0.2, "cut_ci_high": 1.1 if s == t else cut_off + 0.2,
              "unpruned_mean_abs_rank_smd": 1.2, "arm_mean_abs_rank_smd": 0.4, "inlier_ratio": 0.9, "parse_rate": 1.0,
              "inlier_vs_unpruned": 0.97, "parse_vs_unpruned": 1.0, "n_variations": 2,
              "verdict": "transfers" if s == t else verdict_off, "claim": "", "sentence": ""}
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
    assert "Layers chosen on dev names (arm − random mean |SMD|): purchase: `2` -0.60, `early` -0.70 (chosen)." in text
    assert "reads as \"the method does not find the units\"" in text  # direction meets `all`, masks does not
    doc = tmp_path / "results.md"
    doc.write_text(f"# R\n\nbefore\n{BEGIN}\nold\n{END}\nafter\n")
    write_between_markers(doc, text)
    new = doc.read_text()
    assert "old" not in new and new.startswith("# R\n\nbefore\n") and new.endswith("after\n") and "+0.61" in new


def test_the_reading_changes_when_the_direction_does_not_transfer(tmp_path):
    archive(tmp_path, "all", "direction", "cannot tell", 0.2)
    archive(tmp_path, "all", "masks", "does not", 0.0)
    assert "the plants do not separate" in render(load_runs(tmp_path))
