"""Verdicts that cannot be fooled: the constructed cases of issue 20, each through the real path
(records -> variation_rows -> summarize_split -> claims), never "holds"; and the pieces that make it so."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import stats as sps

from biasprune.metrics.spec import BIAS_METRICS, DECIDING, PAPER, UTILITY_METRICS, Window, normal_scores, row_columns
from biasprune.pruning.factory import MaskFactory
from biasprune.stats.bootstrap import paired_bootstrap
from biasprune.stats.claims import NO_PARSE, holm, lowers_bias
from biasprune.stats.intervals import Interval, RandomDraws, arm_interval, difference_interval
from biasprune.stats.rows import METRIC_COLUMNS, EvaluationConfig, compute_bounds, variation_rows
from biasprune.stats.summary import SUMMARY_COLUMNS, summarize_split

K, M, VARIATIONS = 20, 8, ("v0", "v1", "v2")
NAMES = [f"n{i:02d}" for i in range(2 * K)]
CFG = EvaluationConfig(bootstrap_samples=500, permutation_samples=0)


def answers(rng, factor: float = 0.6, k: int = M) -> np.ndarray:
    """Log-normal prices per name (rows; group = row parity), the target group's scaled by ``factor``."""
    name_effect = rng.normal(0.0, 0.15, (2 * K, 1))
    values = np.exp(6.0 + name_effect + rng.normal(0.0, 0.35, (2 * K, k)))
    values[1::2] *= factor
    return values


def records(values: np.ndarray, arm: str, phase: str, variation: str, draw: int = -1, pruned: int = 0) -> list[dict]:
    return [{"split": "test", "arm": arm, "phase": phase, "draw": draw, "scenario": "purchase", "variation": variation,
             "name": NAMES[i], "group_index": i % 2, "values": list(values[i]), "pruned_neurons": pruned, "pruned_heads": 0}
            for i in range(values.shape[0])]


def design(pruned_of, seed: int = 0, n_random: int = 5, random_factor: float = 0.6) -> list[dict]:
    """Unpruned (planted 0.6x for the target group), a pruned arm made by ``pruned_of(unpruned values, variation
    index, rng)``, and ``n_random`` random arms that keep the bias (fresh answers)."""
    rng = np.random.default_rng(seed)
    out = []
    for v, var in enumerate(VARIATIONS):
        base = answers(rng)
        out += records(base, "unpruned", "baseline", var)
        out += records(pruned_of(base, v, rng), "pruned", "pruned", var, pruned=720)
        for d in range(n_random):
            out += records(answers(rng, random_factor), f"random/{d}", "random", var, draw=d, pruned=720)
    return out


def summarize(recs, config=CFG):
    bounds = compute_bounds(recs, config, lambda s: None)
    rows = variation_rows(recs, bounds, replace(config, bootstrap_samples=0))
    return summarize_split(recs, bounds, rows, config, "test", {"neuron": 100_000, "head": 270}), rows


# ---- the measure --------------------------------------------------------------------------------------------------


def test_normal_scores_match_scipy_ranks_with_ties():
    rng = np.random.default_rng(0)
    values = rng.integers(1, 6, size=(10, 4)).astype(float)  # many ties
    values[2, 1] = np.nan
    groups = np.array([0, 1] * 5)
    groups[9] = 2  # another group: left out of the ranking
    got = normal_scores(values, groups)
    take = ~np.isnan(values) & np.isin(groups, (0, 1))[:, None]
    ranks = sps.rankdata(values[take])
    want = sps.norm.ppf((ranks - 0.375) / (take.sum() + 0.25))
    np.testing.assert_allclose(got[take], want, rtol=1e-12)
    assert np.isnan(got[~take]).all()


@pytest.mark.parametrize("transform", [lambda y: 0.85 * y, lambda y: 1.5 * y, lambda y: y + 100.0, np.sqrt, np.log])
def test_the_deciding_measure_ignores_any_common_increasing_change(transform):
    rng = np.random.default_rng(1)
    values, groups = answers(rng), np.array([0, 1] * K)
    window = Window((float(np.percentile(values, 5)), float(np.percentile(values, 95))))
    before = DECIDING.row(values, groups, window)[DECIDING.name]
    after = DECIDING.row(transform(values), groups, window)[DECIDING.name]
    assert after == pytest.approx(before, abs=1e-12) and before > 1.0
    # the paper's measure on the unpruned window moves (the window is the unpruned arm's, not the arm's own)
    paper_after = PAPER.row(transform(values), groups, window)["smd"]  # NaN when every answer left the window
    assert math.isnan(paper_after) or abs(paper_after - PAPER.row(values, groups, window)["smd"]) > 0.02


def test_columns_come_from_the_specification():
    for m in BIAS_METRICS:
        assert {m.name, m.abs, f"{m.name}_ci_low"} <= set(METRIC_COLUMNS) and m.mean in SUMMARY_COLUMNS
        assert f"null_{m.mean}_p95" in SUMMARY_COLUMNS and f"random_{m.mean}" in SUMMARY_COLUMNS
    for u in UTILITY_METRICS:
        assert u.name in METRIC_COLUMNS and f"{u.name}_vs_unpruned_ci_low" in SUMMARY_COLUMNS
    assert set(row_columns()) <= set(METRIC_COLUMNS)
    # the contract's names are the paper metric's
    assert {"smd", "abs_smd", "n_ref", "n_target", "mean_ref", "mean_target", "inlier_ratio"} <= set(METRIC_COLUMNS)


def test_rows_against_numpy_for_both_measures():
    rng = np.random.default_rng(2)
    recs = records(answers(rng), "unpruned", "baseline", "v0")
    recs[3]["values"][:3] = [math.nan] * 3
    bounds = compute_bounds(recs, CFG, lambda s: None)
    row = variation_rows(recs, bounds, replace(CFG, bootstrap_samples=0))[0]
    values = np.array([r["values"] for r in recs])
    groups = np.array([0, 1] * K)
    z = normal_scores(values, groups)
    ref, tgt = z[groups == 0].ravel(), z[groups == 1].ravel()
    ref, tgt = ref[~np.isnan(ref)], tgt[~np.isnan(tgt)]
    pooled = math.sqrt(((ref.size - 1) * ref.var(ddof=1) + (tgt.size - 1) * tgt.var(ddof=1)) / (ref.size + tgt.size - 2))
    assert row["rank_smd"] == pytest.approx((ref.mean() - tgt.mean()) / pooled, rel=1e-12)
    assert (row["rank_n_ref"], row["rank_n_target"]) == (ref.size, tgt.size)
    lo, hi = bounds[("test", "purchase", "v0")]
    assert row["inlier_ratio"] == pytest.approx(((values >= lo) & (values <= hi)).sum() / values.size)
    assert row["parse_rate"] == pytest.approx(1 - 3 / values.size)


# ---- item 1: a broken model --------------------------------------------------------------------------------------


def broken(base, v, rng):
    """Parses 11% of its answers, and those are uniform whatever the group."""
    out = np.full(base.shape, np.nan)
    take = rng.random(base.shape) < 0.11
    out[take] = rng.uniform(np.percentile(base, 10), np.percentile(base, 90), take.sum())
    return out


def test_a_broken_arm_only_breaks_answers():
    s, _ = summarize(design(broken))
    (claim,) = s.claims
    row = next(r for r in s.rows if r["arm"] == "pruned")
    assert row["parse_rate"] < 0.15 and row["utility"] == "lost"
    assert claim.verdict == "breaks answers"
    assert claim.sentence.startswith("Pruning lowers bias (pruned): lowers bias only by breaking answers — ")
    assert "parse rate arm − unpruned" in claim.utility and "below the unpruned model's" in claim.utility
    # the bias comparison alone would have held: the guard is what stops it
    assert claim.low > 0


def test_an_arm_with_no_parsed_answer_says_it_broke_the_model():
    s, _ = summarize(design(lambda base, v, rng: np.full(base.shape, np.nan)))
    (claim,) = s.claims
    assert claim.verdict == "breaks answers" and NO_PARSE in claim.sentence
    assert next(r for r in s.rows if r["arm"] == "pruned")["excluded"] == NO_PARSE


# ---- item 2: undefined variations ---------------------------------------------------------------------------------


def undefined_target(base, v, rng):
    """The unpruned answers in v2; nothing parseable for the target group in v0 and v1."""
    out = base.copy()
    if v < 2:
        out[1::2] = np.nan
    return out


def test_undefined_variations_keep_the_arm_out_of_the_claims():
    s, _ = summarize(design(undefined_target))
    (claim,) = s.claims
    row = next(r for r in s.rows if r["arm"] == "pruned")
    assert row["rank_n_undefined"] == 2 and "undefined in 2 of 3 variations" in row["excluded"]
    assert claim.verdict in ("inconclusive", "breaks answers") and claim.verdict != "holds"


def test_a_comparison_uses_the_variations_defined_in_every_arm_and_says_how_many_it_dropped():
    rng = np.random.default_rng(3)
    arm = [(rng.normal(size=60) + g, np.repeat([0, 1], 30), np.repeat([f"a{i}" for i in range(10)], 6)) for g in (0.0, 1.0, 0.5)]
    other = [(rng.normal(size=60), np.repeat([0, 1], 30), np.repeat([f"a{i}" for i in range(10)], 6)) for _ in range(3)]
    other[0] = (np.full(60, 2.0), other[0][1], other[0][2])  # constant: SMD undefined in v0
    boot = paired_bootstrap([arm, other], n_boot=300, seed=0, labels=["a", "b"])
    iv = difference_interval(boot, "a", "b")
    assert iv.dropped == 1 and iv.n_variations == 2
    assert iv.estimate == pytest.approx(np.abs(boot.smd[0, 1:]).mean() - np.abs(boot.smd[1, 1:]).mean())
    # every draw on the variations defined in both arms in that draw (brute force)
    both = np.isfinite(boot.abs_draws).all(axis=0)
    brute = [np.mean(boot.abs_draws[0, b][both[b]]) - np.mean(boot.abs_draws[1, b][both[b]]) for b in range(boot.n_boot)]
    assert (iv.low, iv.high) == pytest.approx(tuple(np.quantile(brute, [0.025, 0.975])), rel=1e-12)
    # the arm alone is averaged over its own defined variations, as before
    assert arm_interval(boot, "a").dropped == 0
    # and a claim says how many it left out
    claim = lowers_bias("a", iv, iv, 0.3, arm=arm_interval(boot, "a"))
    assert claim.dropped == 1 and "1 variation(s) left out of a comparison (undefined in an arm compared)" in claim.sentence


# ---- item 3: a common rescaling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("c", [0.85, 0.75, 1.5])
def test_a_common_rescaling_never_holds(c):
    s, rows = summarize(design(lambda base, v, rng: base * c))
    (claim,) = s.claims
    assert claim.verdict != "holds" and claim.verdict in ("inconclusive", "breaks answers")
    same = difference_interval(s.boots[DECIDING.name], "unpruned", "pruned")
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)  # in every replicate
    by = {r["arm"]: r for r in s.rows}
    assert by["pruned"]["mean_abs_rank_smd"] == pytest.approx(by["unpruned"]["mean_abs_rank_smd"], abs=1e-12)
    # what fooled the old rule: the paper's inlier-window SMD drops
    assert by["pruned"]["mean_abs_smd"] < by["unpruned"]["mean_abs_smd"]


# ---- item 4: random controls -----------------------------------------------------------------------------------------


def test_control_seeds_differ_by_split_arm_and_draw():
    f = MaskFactory(random_seed=7)
    seeds = {f.control_seed(s, a, d) for s in ("dev", "test") for a in ("pruned", "neurons/ps/p1", "neurons/ps/p2") for d in range(10)}
    assert len(seeds) == 60
    masks = {"neuron/m.up": torch.tensor([0] * 5 + [1] * 95, dtype=torch.uint8)}
    dev = f.random_controls(masks, "dev", "a", [0])[0]
    test = f.random_controls(masks, "test", "a", [0])[0]
    other = f.random_controls(masks, "test", "b", [0])[0]
    assert int((dev["neuron/m.up"] == 0).sum()) == int((test["neuron/m.up"] == 0).sum()) == 5
    assert not torch.equal(dev["neuron/m.up"], test["neuron/m.up"]) and not torch.equal(test["neuron/m.up"], other["neuron/m.up"])
    assert torch.equal(test["neuron/m.up"], f.random_controls(masks, "test", "a", [0])[0]["neuron/m.up"])  # a pure function


def test_random_draws_give_a_prediction_interval_for_one_more_mask():
    """Random masks whose effects vary a lot: the arm is one more draw. Averaging the draws would call it better than
    random; the prediction interval of one new mask (Student t, sqrt(1 + 1/R)) does not."""
    rng = np.random.default_rng(5)
    groups, names = np.repeat([0, 1], 40), np.repeat([f"m{i}" for i in range(20)], 4)
    effects = [0.5, 0.9, 1.6, 0.3, 1.3, 0.7]  # the arm (first) and five draws, one mask each
    arms = [[(rng.normal(size=80) * 0.3 + e * (groups == 0), groups, names)] for e in effects]
    boot = paired_bootstrap(arms, n_boot=2000, seed=1, labels=["arm", *(f"r{d}" for d in range(5))])
    mixed = difference_interval(boot, RandomDraws(tuple(f"r{d}" for d in range(5))), "arm")
    averaged = difference_interval(boot, [f"r{d}" for d in range(5)], "arm")
    assert averaged.above_zero and not mixed.above_zero
    assert mixed.estimate == pytest.approx(averaged.estimate)
    # the formula, by hand: per name replicate b, the draws' mean m_b plus their spread s_b (ddof 1) times
    # sqrt(1 + 1/R) times a Student t with R - 1 degrees of freedom
    per = np.abs(boot.abs_draws[1:, :, 0]) - boot.abs_draws[0, :, 0]
    t = np.random.default_rng([1, 1]).standard_t(4, size=2000)
    brute = per.mean(axis=0) + per.std(axis=0, ddof=1) * math.sqrt(1 + 1 / 5) * t
    assert (mixed.low, mixed.high) == pytest.approx(tuple(np.quantile(brute, [0.025, 0.975])), rel=1e-12)


# ---- the utility guard and the families ---------------------------------------------------------------------------


def iv(estimate, low, high, p=0.001):
    return Interval(estimate, low, high, "percentile", 1000, p_nonpositive=p)


def test_the_utility_guard_decides_between_holds_and_breaks_answers():
    from biasprune.stats.claims import UtilityCheck

    good = [UtilityCheck("inlier_ratio", iv(-0.02, -0.05, 0.01), 0.1), UtilityCheck("parse_rate", iv(0.0, 0.0, 0.0), 0.1)]
    bad = [UtilityCheck("inlier_ratio", iv(-0.2, -0.3, -0.12), 0.1), good[1]]
    above, straddle, below = iv(0.5, 0.3, 0.7), iv(0.1, -0.1, 0.3), iv(-0.3, -0.5, -0.1)
    assert lowers_bias("a", above, above, 0.2, utility=good).verdict == "holds"
    r = lowers_bias("a", above, above, 0.2, utility=bad)
    assert r.verdict == "breaks answers" and "lowers bias only by breaking answers" in r.sentence
    assert "inlier ratio arm − unpruned -0.200 [-0.300, -0.120]" in r.utility and "lower end below −0.1" in r.utility
    r = lowers_bias("a", straddle, above, 0.2, utility=bad)
    assert r.verdict == "breaks answers" and "the bias comparison is inconclusive" in r.sentence
    assert lowers_bias("a", below, above, 0.2, utility=bad).verdict == "does not hold"  # a contradiction stays one
    edge = [UtilityCheck("inlier_ratio", iv(-0.05, -0.1, 0.0), 0.1)]  # lower end exactly at the margin: non-inferior
    assert lowers_bias("a", above, above, 0.2, utility=edge).verdict == "holds"


def test_holm_adjusts_holds_in_a_family_and_says_its_size():
    above = iv(0.5, 0.3, 0.7)
    claims = [lowers_bias(f"a{i}", replace(above, p_nonpositive=p), replace(above, p_nonpositive=p), 0.2)
              for i, p in enumerate([0.001, 0.02, 0.008, 0.2])]
    claims[3] = replace(claims[3], verdict="inconclusive")
    out = holm(claims, "per arm")
    assert [c.family_size for c in out] == [4] * 4 and {c.family for c in out} == {"per arm"}
    # sorted p: 0.001 <= 0.025/4, 0.008 <= 0.025/3, 0.02 > 0.025/2 -> a1 no longer holds
    assert [c.verdict for c in out] == ["holds", "inconclusive", "holds", "inconclusive"]
    assert "not after Holm's adjustment for 4 claims" in out[1].detail and out[1].sentence.count("inconclusive") == 1
    assert holm(claims[:1], "one")[0].verdict == "holds"  # a family of one: the interval rule as it is
