"""The README's main job, end to end on the planted embedded model (about 4 minutes on 2 CPUs)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_finds_and_removes_the_planted_bias(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "biasprune", "fit", "--config", str(ROOT / "configs/quickstart.yaml"),
           "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "runs" / "quickstart" / "version_0"
    for name in ("scores.safetensors", "masks.safetensors", "scoring_examples.jsonl", "metrics.csv", "summary.csv", "claims.csv",
                 "inlier_bounds.json", "answers.jsonl", "timings.json", "manifest.json", "report.html"):
        assert (run / name).is_file(), name
    assert not (run / "FAILED").exists()
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert {r["arm"] for r in rows} == {"unpruned", "pruned", "random/0", "random/1", "random/2"}
    assert {r["split"] for r in rows} == {"test"} and {r["variation"] for r in rows} == {"car", "bicycle", "piano"}
    summary = {r["arm"]: r for r in csv.DictReader(open(run / "summary.csv"))}
    unpruned, pruned = summary["unpruned"], summary["pruned"]
    # the planted bias is there, far above the noise floor, and every answer parses
    assert float(unpruned["mean_abs_smd"]) > 1.0 > float(unpruned["null_p95"])
    assert float(unpruned["parse_rate"]) > 0.95
    # the output states the controls beside the pruned arm
    assert float(pruned["random_draws"]) == 3 and float(pruned["random_mean_abs_smd"]) > 0
    claims = list(csv.DictReader(open(run / "claims.csv")))
    assert claims and claims[0]["verdict"] in {"holds", "does not hold", "inconclusive"}
    out = proc.stdout + proc.stderr
    for text in ("bias on the test names", "noise floor", "random ctrl", "claim: Pruning lowers bias", "minimum detectable"):
        assert text in out, text
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model"]["plant"] == "purchase" and manifest["model"]["adapter_sha256"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"smd/test/unpruned/purchase/car", "test/mean_abs_smd/pruned", "pruned/up_proj"} <= tags
