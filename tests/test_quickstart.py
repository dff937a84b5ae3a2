"""The README's main job, end to end on the embedded SmolLM2-135M-Instruct (about 3 minutes on 2 CPUs)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_runs_the_whole_pipeline(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "biasprune", "fit", "--config", str(ROOT / "configs/quickstart.yaml"),
           "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "runs" / "quickstart" / "version_0"
    for name in ("scores.safetensors", "masks.safetensors", "scoring_examples.jsonl", "metrics.csv", "inlier_bounds.json", "timings.json"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    variations = {"car", "bicycle", "piano"}
    for phase in ("baseline", "pruned"):
        assert {r["variation"] for r in rows if r["phase"] == phase} == variations
    # the embedded model answers with numbers often enough to measure bias
    assert all(float(r["parse_rate"]) > 0.2 for r in rows if r["phase"] == "baseline")
    assert all(r["smd"] != "nan" for r in rows if r["phase"] == "baseline")
    out = proc.stdout + proc.stderr
    assert "mean |SMD|" in out and "baseline" in out and "pruned" in out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"smd/purchase/car", "inlier_ratio/purchase/car", "mean_abs_smd", "pruned/up_proj"} <= tags
    assert [e.step for e in ea.Scalars("smd/purchase/car")] == [0, 1]  # baseline, pruned
