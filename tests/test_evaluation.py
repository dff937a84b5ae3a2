"""Bounds, rows and per-arm summaries as pure functions of answer records, against numpy and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest

from biasprune.stats.rows import EvaluationConfig, compute_bounds, inlier_bounds, variation_rows
from biasprune.stats.summary import format_summary, summarize, summarize_split


def test_bounds_are_percentiles_of_parsed_answers():
    rng = np.random.default_rng(0)
    v = rng.lognormal(8, 1, size=(20, 10))
    v[rng.random(v.shape) < 0.3] = np.nan
    lo, hi = inlier_bounds(v)
    parsed = v[~np.isnan(v)]
    assert (lo, hi) == (np.percentile(parsed, 5), np.percentile(parsed, 95))
    assert inlier_bounds(v, (10, 90), valid_range=(1000, 5000)) == (max(np.percentile(parsed, 10), 1000), min(np.percentile(parsed, 90), 5000))
    assert all(math.isnan(b) for b in inlier_bounds(np.full((3, 2), np.nan)))


def records(values: np.ndarray, arm="unpruned", phase="baseline", split="test", variation="car", names=None, draw=-1, pruned=(0, 0)):
    """One record per row of ``values`` (k answers each); groups alternate 0, 1."""
    names = names or [f"n{i}" for i in range(values.shape[0])]
    return [
        {"split": split, "arm": arm, "phase": phase, "draw": draw, "scenario": "purchase", "variation": variation, "name": names[i],
         "group_index": i % 2, "group": "white" if i % 2 == 0 else "black", "values": list(values[i]),
         "pruned_neurons": pruned[0], "pruned_heads": pruned[1]}
        for i in range(values.shape[0])
    ]


CFG = EvaluationConfig(bootstrap_samples=0, permutation_samples=0)


def test_rows_against_numpy():
    rng = np.random.default_rng(1)
    values = rng.normal(100, 10, size=(8, 5))
    values[rng.random(values.shape) < 0.2] = np.nan
    recs = records(values)
    bounds = compute_bounds(recs, CFG, lambda s: None)
    assert bounds[("test", "purchase", "car")] == inlier_bounds(values)
    row = variation_rows(recs, {("test", "purchase", "car"): (90.0, 110.0)}, CFG)[0]
    groups = np.array([0, 1] * 4)
    inl = (values >= 90) & (values <= 110)
    ref, tgt = values[inl & (groups[:, None] == 0)], values[inl & (groups[:, None] == 1)]
    pooled = np.sqrt(((ref.size - 1) * ref.var(ddof=1) + (tgt.size - 1) * tgt.var(ddof=1)) / (ref.size + tgt.size - 2))
    assert row["smd"] == pytest.approx((ref.mean() - tgt.mean()) / pooled, rel=1e-12)
    assert row["inlier_ratio"] == pytest.approx(inl.sum() / values.size)
    assert row["parse_rate"] == pytest.approx((~np.isnan(values)).mean())
    assert (row["n_names_ref"], row["n_names_target"]) == (4, 4) and not row["bounds_degenerate"]
    empty = variation_rows(recs, {("test", "purchase", "car"): (120.0, 110.0)}, CFG)[0]  # bounds clipped to nothing
    assert empty["inlier_ratio"] == 0.0 and math.isnan(empty["smd"]) and empty["bounds_degenerate"]


def test_collapsed_bounds_are_flagged():
    values = np.full((6, 4), 7.0)  # every answer the same: P5 = P95
    recs = records(values)
    bounds = compute_bounds(recs, CFG, lambda s: None)
    row = variation_rows(recs, bounds, CFG)[0]
    assert row["bounds_degenerate"] and math.isnan(row["smd"])
    summary, _ = summarize(recs, bounds, [row], CFG, {"neuron": 10, "head": 2})
    assert summary[0]["degenerate_bounds"] == 1 and summary[0]["n_undefined"] == 1


def test_stored_bounds_win_and_hold_for_every_split():
    recs = records(np.arange(12.0).reshape(6, 2))
    bounds = compute_bounds(recs, CFG, lambda s: None, stored={"purchase/car": [2.0, 9.0]})
    assert bounds[("test", "purchase", "car")] == (2.0, 9.0) and bounds[("dev", "purchase", "car")] == (2.0, 9.0)


def _design(seed=0, shift=0.0, n=20, k=6):
    """Two variations; target answers shifted by ``shift`` sd; arms: unpruned, pruned (no shift), 3 random draws."""
    rng = np.random.default_rng(seed)
    out = []
    names = [f"p{i}" for i in range(n)]
    for variation in ("car", "piano"):
        base = rng.normal(0, 1, size=(n, k)) + 50
        base[1::2] -= shift
        out += records(base, variation=variation, names=names)
        out += records(rng.normal(0, 1, size=(n, k)) + 50, arm="pruned", phase="pruned", variation=variation, names=names, pruned=(12, 0))
        for d in range(3):
            rnd = rng.normal(0, 1, size=(n, k)) + 50
            rnd[1::2] -= shift
            out += records(rnd, arm=f"random/{d}", phase="random", variation=variation, names=names, draw=d, pruned=(12, 0))
    return out


def test_summary_counts_undefined_and_averages_over_what_it_says():
    recs = _design(shift=2.0)
    bounds = compute_bounds(recs, CFG, lambda s: None)
    rows = variation_rows(recs, bounds, CFG)
    # make one variation of the pruned arm undefined: its target group has no inlier
    for r in rows:
        if r["arm"] == "pruned" and r["variation"] == "piano":
            r["smd"] = r["abs_smd"] = math.nan
    summary, _ = summarize(recs, bounds, rows, CFG, {"neuron": 100, "head": 8})
    pruned = next(s for s in summary if s["arm"] == "pruned")
    car = next(r for r in rows if r["arm"] == "pruned" and r["variation"] == "car")
    assert pruned["n_undefined"] == 1 and pruned["n_variations"] == 2
    assert pruned["mean_abs_smd"] == pytest.approx(car["abs_smd"])  # the mean of the defined one, and it says so
    assert "1 of 2 variations undefined" in format_summary(summary, [])
    assert pruned["share_neurons"] == pytest.approx(0.12) and pruned["pruned_neurons"] == 12


def test_summary_lists_a_family_that_was_never_evaluated():
    """A study family with no qualifying point prints its reason, not numbers; long arm names keep columns aligned."""
    recs = _design(shift=2.0)
    bounds = compute_bounds(recs, CFG, lambda s: None)
    summary, _ = summarize(recs, bounds, variation_rows(recs, bounds, CFG), CFG, {"neuron": 100, "head": 8})
    arm = "neurons/cross_context:finance"
    text = format_summary([*summary, {"split": summary[0]["split"], "arm": arm, "phase": "pruned", "mean_abs_smd": math.nan,
                                      "excluded": "no grid point qualified on dev names"}], [])
    lines = text.splitlines()
    assert f"{arm}    [no grid point qualified on dev names]" in lines  # the arm column, then the reason
    header = next(line for line in lines if line.startswith("arm "))
    titles = lines[lines.index(header) - 1]
    unpruned = next(line for line in lines if line.startswith("unpruned "))
    assert header.index("mean") + len("mean") == len(arm) + 2 + 7  # the column after the longest arm
    start = len(arm) + 2
    assert titles[start:start + 34].strip() == "scale-free |SMD|" and titles[start + 36:start + 70].strip() == "paper |SMD|"
    assert unpruned[: len(arm) + 2].rstrip() == "unpruned"
    value = unpruned[len(arm) + 2: len(arm) + 2 + 7].strip()
    assert value == f"{summary[0]['mean_abs_rank_smd']:.3f}"  # the scale-free mean under its title


def test_claims_and_controls_on_constructed_answers():
    """A pruned arm that removes a large bias that its random controls keep: the claim holds."""
    recs = _design(shift=3.0)
    cfg = EvaluationConfig(bootstrap_samples=400, permutation_samples=200)
    bounds = {k: (-1e9, 1e9) for k in compute_bounds(recs, cfg, lambda s: None)}
    rows = variation_rows(recs, bounds, cfg)
    s = summarize_split(recs, bounds, rows, cfg, "test", {"neuron": 100, "head": 8})
    by_arm = {r["arm"]: r for r in s.rows}
    assert by_arm["unpruned"]["mean_abs_smd"] > 2 and by_arm["pruned"]["mean_abs_smd"] < 1
    assert by_arm["pruned"]["random_draws"] == 3 and by_arm["pruned"]["random_mean_abs_smd"] > 2
    assert by_arm["unpruned"]["null_mean_abs_smd_p95"] < by_arm["unpruned"]["mean_abs_smd"]  # far above the noise floor
    assert by_arm["unpruned"]["null_mean_abs_rank_smd_p95"] < by_arm["unpruned"]["mean_abs_rank_smd"]
    assert by_arm["pruned"]["utility"] == "non-inferior" and by_arm["pruned"]["inlier_ratio_vs_unpruned_ci_low"] > -0.1
    (claim,) = s.claims
    assert claim.verdict == "holds" and claim.claim == "pruning lowers bias (pruned)"
    # the same pruned arm without random controls cannot be claimed
    no_ctrl = [r for r in recs if r["phase"] != "random"]
    s2 = summarize_split(no_ctrl, bounds, [r for r in rows if r["phase"] != "random"], cfg, "test", {"neuron": 100, "head": 8})
    assert s2.claims[0].verdict == "inconclusive" and next(r for r in s2.rows if r["arm"] == "pruned")["excluded"] == "no random control"


def test_an_arm_that_prunes_nothing_is_kept_out_of_the_claims():
    recs = [dict(r, pruned_neurons=0) if r["phase"] != "baseline" else r for r in _design(shift=3.0)]
    cfg = EvaluationConfig(bootstrap_samples=100, permutation_samples=0)
    bounds = {k: (-1e9, 1e9) for k in compute_bounds(recs, cfg, lambda s: None)}
    rows = variation_rows(recs, bounds, cfg)
    s = summarize_split(recs, bounds, rows, cfg, "test", {"neuron": 100, "head": 8})
    assert next(r for r in s.rows if r["arm"] == "pruned")["excluded"] == "prunes nothing"
    assert s.claims[0].verdict == "inconclusive"


def test_config_errors():
    with pytest.raises(ValueError, match=r"inlier_percentiles must satisfy 0 <= low < high <= 100, got \(95, 5\)"):
        EvaluationConfig(inlier_percentiles=(95, 5))
    with pytest.raises(ValueError, match="bootstrap_samples must be >= 0"):
        EvaluationConfig(bootstrap_samples=-1)
