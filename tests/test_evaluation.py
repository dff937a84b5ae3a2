"""Inlier bounds and the per-variation description against numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from biasprune.evaluation import EvaluationConfig, describe_variation, format_summary, headline, inlier_bounds


def test_bounds_are_percentiles_of_parsed_answers():
    rng = np.random.default_rng(0)
    v = rng.lognormal(8, 1, size=(20, 10))
    v[rng.random(v.shape) < 0.3] = np.nan
    lo, hi = inlier_bounds(v)
    parsed = v[~np.isnan(v)]
    assert (lo, hi) == (np.percentile(parsed, 5), np.percentile(parsed, 95))
    assert inlier_bounds(v, (10, 90), valid_range=(1000, 5000)) == (max(np.percentile(parsed, 10), 1000), min(np.percentile(parsed, 90), 5000))
    assert all(math.isnan(b) for b in inlier_bounds(np.full((3, 2), np.nan)))


def test_describe_counts_means_and_parse_rate():
    values = np.array([[1.0, 2.0, np.nan], [3.0, 100.0, 2.0], [5.0, 6.0, np.nan], [7.0, np.nan, np.nan]])
    groups = np.array([0, 0, 1, 1])
    out = describe_variation(values, groups, ["a", "b", "c", "d"], (1.5, 8.0), bootstrap_samples=20, permutation_samples=20)
    # inliers: ref {2, 3, 2}, target {5, 6, 7}
    assert (out["n_ref"], out["n_target"]) == (3, 3)
    assert out["mean_ref"] == pytest.approx(7 / 3) and out["mean_target"] == pytest.approx(6.0)
    assert out["parse_rate"] == pytest.approx(8 / 12) and out["n_answers"] == 12
    assert out["smd_ci_low"] <= out["smd_ci_high"] and 0 < out["p_value"] <= 1


def test_headline_and_summary():
    rows = [
        {"phase": "baseline", "abs_smd": 0.4, "inlier_ratio": 0.9},
        {"phase": "baseline", "abs_smd": math.nan, "inlier_ratio": 0.8},
        {"phase": "pruned", "abs_smd": 0.1, "inlier_ratio": 0.7},
    ]
    assert headline(rows[:2]) == {"mean_abs_smd": 0.4, "mean_inlier_ratio": pytest.approx(0.85), "n_variations": 2, "n_nan_smd": 1}
    table = format_summary(rows)
    assert "baseline" in table and "pruned" in table and "0.400" in table and "0.100" in table


def test_config_errors():
    with pytest.raises(ValueError, match=r"inlier_percentiles must satisfy 0 <= low < high <= 100, got \(95, 5\)"):
        EvaluationConfig(inlier_percentiles=(95, 5))
    with pytest.raises(ValueError, match="bootstrap_samples must be >= 0"):
        EvaluationConfig(bootstrap_samples=-1)


def test_variation_row_against_numpy():
    from biasprune.evaluation import variation_row

    rng = np.random.default_rng(1)
    values = rng.normal(100, 10, size=(8, 5))
    values[rng.random(values.shape) < 0.2] = np.nan
    groups = np.array([0, 1] * 4)
    names = [f"n{i}" for i in range(8)]
    cfg = EvaluationConfig(bootstrap_samples=0, permutation_samples=0)
    row = variation_row(values, groups, names, (90.0, 110.0), cfg, phase="baseline")
    inl = (values >= 90) & (values <= 110)
    ref = values[inl & (groups[:, None] == 0)]
    tgt = values[inl & (groups[:, None] == 1)]
    pooled = np.sqrt(((ref.size - 1) * ref.var(ddof=1) + (tgt.size - 1) * tgt.var(ddof=1)) / (ref.size + tgt.size - 2))
    assert row["smd"] == pytest.approx((ref.mean() - tgt.mean()) / pooled, rel=1e-12)
    assert row["inlier_ratio"] == pytest.approx(inl.sum() / values.size)
    assert row["phase"] == "baseline" and row["abs_smd"] == abs(row["smd"])
    empty = variation_row(values, groups, names, (120.0, 110.0), cfg)  # bounds clipped to nothing
    assert empty["inlier_ratio"] == 0.0 and math.isnan(empty["smd"])
