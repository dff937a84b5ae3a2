"""The cross-context transfer matrix: row verdicts on constructed cells, and the study's transfer stage end to end on a
tiny model (both methods' arms answered beside their random controls, the CSV, the heatmap and the row verdicts)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from lightning.pytorch.loggers import TensorBoardLogger

from biasprune.answers.answering import TargetConfig
from biasprune.answers.generation import GenerationConfig
from biasprune.callbacks import PruningCallback
from biasprune.datamodules import AuditDataModule
from biasprune.metrics.spec import DECIDING, PAPER
from biasprune.pipeline.module import BiasPruneModule
from biasprune.pruning.direction import load_direction
from biasprune.pruning.masks import load_masks
from biasprune.report import build_report
from biasprune.stats.rows import EvaluationConfig
from biasprune.study.config import StudyConfig
from biasprune.study.trainer import BiasPruneTrainer
from biasprune.study.transfer import (
    ARM,
    CELL_VERDICTS,
    LAYER_COLUMNS,
    RANDOM,
    TRANSFER_COLUMNS,
    choose_layers,
    row_verdicts,
)


def cells(verdicts):
    return [{"source": s, "target": t, "verdict": v} for (s, t), v in verdicts.items()]


def test_row_verdicts_read_the_off_diagonal_cells():
    got = row_verdicts(cells({
        ("a", "a"): "does not", ("a", "b"): "transfers", ("a", "c"): "transfers",      # the diagonal does not count
        ("b", "a"): "does not", ("b", "b"): "transfers", ("b", "c"): "cannot tell",    # none holds, one does not
        ("c", "a"): "transfers", ("c", "b"): "cannot tell", ("c", "c"): "transfers",   # mixed
    }))
    assert got == {"a": "transfers", "b": "does not", "c": "cannot tell"}
    assert set(CELL_VERDICTS.values()) == {"transfers", "does not", "cannot tell", "breaks answers"}


def dev_cell(candidate, arm, rand, inlier=0.0, verdict="transfers"):
    """``inlier``: the lower end of the inlier ratio's paired interval against the unpruned model."""
    return {"source": "purchase", "candidate": candidate, "cut": 1.0 - arm, ARM: arm, RANDOM: rand,
            "inlier_ratio_vs_unpruned": inlier + 0.02, "inlier_ratio_vs_unpruned_ci_low": inlier, "parse_rate_vs_unpruned": 0.0,
            "parse_rate_vs_unpruned_ci_low": -0.01, "verdict": verdict}


def test_choose_layers_takes_the_lowest_over_random_among_qualified_candidates():
    pick, table = choose_layers([dev_cell("2", 0.30, 0.90), dev_cell("early", 0.10, 0.95, inlier=-0.15),  # early: inliers lost
                                 dev_cell("all", 0.05, 0.90, verdict="breaks answers"), dev_cell("0-1", 0.40, 1.00)], 30)
    assert pick == "2" and [t["qualifies"] for t in table] == [True, False, False, True] and [t["chosen"] for t in table] == [True, False, False, False]
    assert tuple(table[0]) == LAYER_COLUMNS and table[0]["layers"] == "2" and table[3]["layers"] == "0,1"
    # a tie in (arm - random) goes to fewer layers
    assert choose_layers([dev_cell("0-7", 0.2, 0.8), dev_cell("2", 0.3, 0.9)], 30)[0] == "2"
    assert choose_layers([dev_cell("all", 0.2, 0.8, inlier=-0.11)], 30)[0] is None
    assert choose_layers([dev_cell("all", 0.2, 0.8, inlier=-0.11)], 30, utility_margin=0.2)[0] == "all"  # the guard's margin
    no_boot = dict(dev_cell("2", 0.2, 0.8), inlier_ratio_vs_unpruned_ci_low=math.nan)  # no bootstrap: the estimate decides
    assert choose_layers([no_boot], 30)[0] == "2" and choose_layers([dict(no_boot, inlier_ratio_vs_unpruned=-0.3)], 30)[0] is None


def names_file(tmp_path, n=16):
    path = tmp_path / "names.csv"
    path.write_text("name,group,gender\n" + "".join(
        f"Person{i} {'Becker' if i % 2 else 'Washington'},{'white' if i % 2 else 'black'},{'man' if i % 4 < 2 else 'woman'}\n"
        for i in range(n)))
    return str(path)


@pytest.mark.parametrize("method", ["direction", "masks"])
def test_the_study_writes_the_transfer_matrix(tiny_model_dir, tmp_path, method):
    module = BiasPruneModule(tiny_model_dir, dtype="float64", objective="direction" if method == "direction" else "nll",
                             targets=TargetConfig(max_new_tokens=3), generation=GenerationConfig(samples=2, max_new_tokens=4),
                             evaluation=EvaluationConfig(bootstrap_samples=30, permutation_samples=30))
    dm = AuditDataModule(scoring=["chess"], evaluation=["chess", "finance/investments_in_stocks"], tokenizer=tiny_model_dir,
                         names=names_file(tmp_path), batch_size=4, eval_batch_size=8)
    cb = PruningCallback(method=method, direction_layers="0", random_draws=2, budget=4, head_budget=1)
    trainer = BiasPruneTrainer(max_epochs=1, accelerator="cpu", devices=1, logger=TensorBoardLogger(tmp_path, name="t"),
                               callbacks=[cb], enable_progress_bar=False, enable_model_summary=False)
    out = tmp_path / "study"
    layers = ("0", "all") if method == "direction" else ()
    result = trainer.study(module, dm, StudyConfig(output=str(out), transfer=True, transfer_layers=layers))
    rows = list(csv.DictReader(open(out / f"transfer_{method}.csv")))
    assert tuple(rows[0]) == TRANSFER_COLUMNS
    assert [(r["source"], r["target"]) for r in rows] == [("chess", "chess"), ("chess", "finance"), ("finance", "chess"), ("finance", "finance")]
    assert [r["cell"] for r in rows] == ["prompt-specific", "cross-context", "cross-context", "prompt-specific"]
    for r in rows:
        assert r["verdict"] in CELL_VERDICTS.values() and r["method"] == method
        for cut_name, m in (("cut", DECIDING), ("paper_cut", PAPER)):  # each measure's cut is its own means' difference
            cut, base, arm = float(r[cut_name]), float(r[f"unpruned_{m.mean}"]), float(r[f"arm_{m.mean}"])
            if not math.isnan(cut):
                assert cut == pytest.approx(base - arm, abs=1e-9)
        assert r["utility"] in ("non-inferior", "lost", "")
        assert (r["verdict"] == "breaks answers") == (r["claim"] == "breaks answers")
    assert result["rows"] == row_verdicts(result["cells"])
    assert (out / f"transfer_{method}.png").stat().st_size > 0
    for source in ("chess", "finance"):  # each source's arm saved with its provenance
        saved = out / "arms" / f"{source}.safetensors"
        if method == "direction":
            edit = load_direction(saved)
            assert edit.metadata["source"] == source and edit.metadata["method"] == "direction" and edit.metadata["model"] == tiny_model_dir
        else:
            masks, meta = load_masks(saved)
            assert masks and meta["source"] == source
    if method == "direction":  # chosen on dev names, one row per (source, candidate), one chosen per source at most
        table = list(csv.DictReader(open(out / "transfer_direction_layers.csv")))
        assert [(r["source"], r["candidate"]) for r in table] == [("chess", "0"), ("chess", "all"), ("finance", "0"), ("finance", "all")]
        assert all(sum(r["chosen"] == "True" for r in table if r["source"] == s) <= 1 for s in ("chess", "finance"))
    (out / "manifest.json").write_text(json.dumps({"kind": "study", "model": {"id": "tiny"}}))
    html, _ = build_report(out)  # the report shows the matrix with the random control beside each cell
    assert "Transfer matrix" in html and "random control" in html and f"transfer matrix {method}" in html
    assert all(r["verdict"] in html for r in rows)
    if method == "direction":
        assert "Direction layers chosen on dev names" in html
    arms = {json.loads(line)["arm"] for line in open(Path(trainer.log_dir) / "answers.jsonl")}
    assert arms == {"unpruned", "chess", "chess/random/0", "chess/random/1", "finance", "finance/random/0", "finance/random/1"}
