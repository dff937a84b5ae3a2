"""The FSDP path (frozen_fsdp): weights sharded over 2 CPU processes (gloo) give the 1-process scores."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from biasprune.core.artifacts import read_jsonl, read_safetensors

ROOT = Path(__file__).resolve().parents[1]


def fit(model_dir: str, names: Path, out: Path, *extra: str) -> Path:
    cmd = [
        sys.executable, "-m", "biasprune", "fit", "--config", str(ROOT / "configs/quickstart.yaml"),
        "--model.model_name_or_path", model_dir, "--model.dtype", "float64", "--trainer.accelerator", "cpu",
        "--data.names", str(names), "--data.split_fractions", "[0.4, 0.2, 0.4]",
        "--data.scoring", "[purchase/car, purchase/piano]", "--data.evaluation", "[purchase/car]",
        "--data.batch_size", "2", "--data.eval_batch_size", "2", "--pruning.random_draws", "1",
        # the tiny model's pools hold at most 48 neurons: the config's 0.5% is under one unit of each and is refused;
        # one unit per pool is what it was rounded up to
        "--pruning.budget", "1",
        "--model.generation.samples", "2", "--model.generation.max_new_tokens", "5", "--model.targets.max_new_tokens", "5",
        "--model.evaluation.bootstrap_samples", "20", "--model.evaluation.permutation_samples", "20",
        "--trainer.logger.init_args.save_dir", str(out), "--trainer.enable_progress_bar", "false", *extra,
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out / "quickstart" / "version_0"


@pytest.mark.slow
def test_sharded_scores_equal_single_process(tiny_model_dir, tmp_path):
    names = tmp_path / "names.csv"  # 4 scoring names per group x 2 variations = 16 examples over 2 ranks, batches of 2
    names.write_text("name,group,gender\n" + "".join(f"N{i} X,{'white' if i % 2 else 'black'},man\n" for i in range(20)))
    one = fit(tiny_model_dir, names, tmp_path / "one")
    two = fit(tiny_model_dir, names, tmp_path / "two", "--trainer.strategy", "frozen_fsdp", "--trainer.devices", "2")
    a, meta_a = read_safetensors(one / "scores.safetensors")
    b, meta_b = read_safetensors(two / "scores.safetensors")
    assert meta_a["n_examples"] == meta_b["n_examples"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-7, msg=k)
    # evaluation ran in lockstep on both ranks (sharded weights) and answered every arm, as one process does
    rows = list(csv.DictReader(open(two / "metrics.csv")))
    assert [r["arm"] for r in rows] == ["unpruned", "pruned", "random/0"]
    assert int(rows[0]["n_answers"]) == 8 * 2  # 4 test names per group, 2 answers each
    answers = [[(r["arm"], r["name"], r["responses"]) for r in read_jsonl(run / "answers.jsonl")] for run in (one, two)]
    assert answers[0] == answers[1]
