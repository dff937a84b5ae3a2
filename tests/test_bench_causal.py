"""The causal-search timing benchmark: its --tiny path end to end on a CPU, and its projection by hand."""

from __future__ import annotations

import json

import pytest

from benchmarks.speed.bench_causal import main, project, random_pairs
from benchmarks.speed.study_budget import PAPER


def test_the_projection_by_hand():
    p = project(t_eval=0.1, t_grad=2.0, t_s=0.15, n_pairs=16, n_heads=1024, t_a=1e-3, t_p=2e-3, t_r=0.01)
    e_s = PAPER["V_s"] * PAPER["P_s"]  # 760 scoring examples, 380 pairs, 23.75 batches of 16
    assert p["E_s"] == e_s and p["E_p"] == 380
    assert p["T_causal_heads"] == pytest.approx(380 / 16 * 1025 * 0.1)
    assert p["T_causal"] == pytest.approx(380 / 16 * (1025 * 0.1 + 2.0) + 760 * 0.01)
    assert p["T_gradxact"] == pytest.approx(760 * (0.01 + 0.15))
    a_u = 10 * 100 * (40 + 20)
    a_p = 10 * 100 * (40 * 3 * 2 * 2 + 20 * 3 * 2 * 9)
    assert p["T_eval"] == pytest.approx(a_u * 1e-3 + a_p * 2e-3)
    assert p["T_study_causal"] == pytest.approx(p["T_eval"] + p["T_causal"])
    assert p["T_greedy_max"] == pytest.approx(6 * (63 + 62 + 61) * 380 / 16 * 0.1)


def test_random_pairs_differ_only_in_the_name():
    for p in random_pairs(3, 12, 2, 100, seed=0):
        diff = [i for i, (a, b) in enumerate(zip(p.target, p.reference)) if a != b]
        assert len(p.target) == len(p.reference) == 12 and diff and set(diff) <= {4, 5}


def test_the_tiny_path_runs_and_writes_its_figures(tmp_path):
    out = tmp_path / "causal.json"
    assert main(["--tiny", "--out", str(out), "--pairs", "1", "--prompt-len", "8", "--iters", "1"]) == 0
    rec = json.loads(out.read_text())["causal"]
    assert "error" not in rec and rec["sequences"] == 4 and rec["n_heads"] == 8
    assert rec["t_eval"] > 0 and rec["t_grad"] > 0 and rec["t_s"] > 0
    # the check search ablates layer 0's 4 heads alone (1 + 4 evaluations), then at most 4 + 3 + 2 greedy ones
    assert 5 <= rec["check"]["evaluations"] <= 14 and rec["check"]["heads"] == 4
    assert rec["projection"]["T_causal"] > rec["projection"]["T_causal_heads"] > 0
