"""Two "nodes" on this host, each one process, give the one-process run: ``biasprune fit`` and ``study``.

Each node is its own launcher process, as on a cluster: ``torchrun --nnodes 2 --node-rank i`` with a static
rendezvous on 127.0.0.1, and, for SLURM, the environment that ``srun`` gives each task of a 2-node job (what
Lightning's ``SLURMEnvironment`` reads). The processes talk over gloo. The run directory is shared, as a
cluster's file system is.
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_study import assert_same_pieces, names_file
from test_study import study_args as small_study_args

from biasprune.core.artifacts import read_jsonl, read_safetensors

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fit_args(model_dir: str, tmp: Path, save_dir: Path) -> list[str]:
    return [
        "fit", "--model.model_name_or_path", model_dir, "--model.dtype", "float64",
        "--data.names", names_file(tmp), "--data.split_fractions", "[0.4, 0.2, 0.4]",
        "--data.scoring", "[purchase/car, purchase/piano]", "--data.evaluation", "[purchase/car]",
        "--data.batch_size", "3", "--data.eval_batch_size", "3",
        "--model.generation.samples", "3", "--model.generation.max_new_tokens", "5", "--model.targets.max_new_tokens", "5",
        "--model.evaluation.bootstrap_samples", "20", "--model.evaluation.permutation_samples", "20",
        "--pruning.random_draws", "1", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(save_dir),
    ]


def two_nodes(launcher: str, args: list[str], cwd: Path = ROOT) -> None:
    """Start both nodes at once and wait for both; each node runs 1 process (``--trainer.devices 1``)."""
    port = free_port()
    flags = ["--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.strategy", "frozen_ddp"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    procs = []
    for node in range(2):
        if launcher == "torchrun":
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                   "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
                   "-m", "biasprune", *args, *flags]
            node_env = env
        else:  # what srun sets for task `node` of `sbatch --nodes 2 --ntasks-per-node 1`
            cmd = [sys.executable, "-m", "biasprune", *args, *flags]
            node_env = env | {
                "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "biasprune", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1",
                "SLURM_NNODES": "2", "SLURM_NODELIST": "127.0.0.1", "SLURM_PROCID": str(node), "SLURM_LOCALID": "0",
                "SLURM_NODEID": str(node), "MASTER_PORT": str(port),
            }
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=node_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=900)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    logs = "".join(f"\n--- node {node} (exit {p.returncode}):\n{out[-3000:]}" for node, (p, out) in enumerate(zip(procs, outputs)))
    assert all(p.returncode == 0 for p in procs), logs


def run_dir(save_dir: Path) -> Path:
    runs = [p.parent for p in save_dir.rglob("metrics.csv")]
    assert len(runs) == 1, runs
    return runs[0]


def assert_same_run(one: Path, two: Path) -> None:
    """Scores, masks, target responses, answers and metrics of two run directories agree."""
    a, b = read_safetensors(one / "scores.safetensors")[0], read_safetensors(two / "scores.safetensors")[0]
    assert a and set(a) == set(b)
    for k in a:  # the all-reduce adds the two nodes' float64 sums in another order
        torch.testing.assert_close(b[k], a[k], rtol=1e-9, atol=1e-12, msg=k)
    ma, mb = read_safetensors(one / "masks.safetensors")[0], read_safetensors(two / "masks.safetensors")[0]
    assert set(ma) == set(mb) and all(torch.equal(ma[k], mb[k]) for k in ma)
    assert read_jsonl(one / "scoring_examples.jsonl") == read_jsonl(two / "scoring_examples.jsonl")
    answers = [{(r["arm"], r["name"]): r["responses"] for r in read_jsonl(run / "answers.jsonl")} for run in (one, two)]
    assert answers[0] and answers[0] == answers[1]
    rows = [list(csv.DictReader(open(run / "metrics.csv"))) for run in (one, two)]
    assert rows[0] and len(rows[0]) == len(rows[1])
    for ra, rb in zip(*rows):  # synced torchmetrics merge per-rank moments: equal up to the last bits
        for k in ra:
            try:
                assert float(rb[k]) == pytest.approx(float(ra[k]), rel=1e-9, nan_ok=True), k
            except ValueError:
                assert rb[k] == ra[k], k


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("one")
    cmd = [sys.executable, "-m", "biasprune", *fit_args(tiny_model_dir, tmp, tmp / "runs")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_dir(tmp / "runs")


@pytest.mark.parametrize("launcher", ["torchrun", "slurm"])
def test_fit_on_two_nodes_equals_one_process(launcher, one_process, tiny_model_dir, tmp_path):
    # the same names file content as the one-process run (names_file writes a fixed list)
    two_nodes(launcher, fit_args(tiny_model_dir, tmp_path, tmp_path / "runs"))
    assert_same_run(one_process, run_dir(tmp_path / "runs"))


def study_args(model_dir: str, tmp: Path, out: Path) -> list[str]:
    """test_study's small ``biasprune study``, writing to ``out`` (its runs beside it)."""
    return [*small_study_args(model_dir, tmp, out, out.parent / f"runs_{out.name}"), "--trainer.enable_progress_bar", "false"]


@pytest.mark.slow
def test_study_on_two_nodes_equals_one_process(tiny_model_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "biasprune", *study_args(tiny_model_dir, tmp_path, one)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    two_nodes("torchrun", study_args(tiny_model_dir, tmp_path, two))
    assert_same_pieces(one, two)
