"""Intervals for mean |SMD| and paired differences: formulas vs hand-written references and scipy, notes, coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from biasprune.stats.bootstrap import NameMoments, paired_bootstrap
from biasprune.stats.intervals import (
    Interval,
    _interval,
    acceleration,
    arm_interval,
    contrast_interval,
    difference_interval,
    mean_abs_smd_interval,
    paired_difference_interval,
)


def make_arm(
    rng, k: int = 12, m: int = 4, n_var: int = 2, delta: float = 0.5, rho: float = 0.3, names_offset: float = 0.0
):
    """One arm: answers y = delta [ref] + u_name + e; u_name shared by all variations."""
    names = np.repeat([f"n{i:02d}" for i in range(2 * k)], m)
    groups = np.repeat([0] * k + [1] * k, m)
    u = rng.normal(0.0, math.sqrt(rho), 2 * k)
    out = []
    for _ in range(n_var):
        values = (
            names_offset + delta * (groups == 0) + np.repeat(u, m) + rng.normal(0.0, math.sqrt(1 - rho), names.size)
        )
        out.append((values, groups, names))
    return out


def simulate_moments(
    rng, k: int, m: int, rho: float, n_var: int, deltas: tuple[float, ...], lam: float = 0.5
) -> NameMoments:
    """Exact sufficient statistics; names' effects shared by variations, correlated lam between arms."""
    groups = np.repeat([0, 1], k)
    base = rng.normal(0.0, math.sqrt(rho), (1, 2 * k))
    mean = np.empty((len(deltas), n_var, 2 * k))
    for i, d in enumerate(deltas):
        u = base if i == 0 else lam * base + math.sqrt(1 - lam**2) * rng.normal(0.0, math.sqrt(rho), (1, 2 * k))
        mean[i] = d * (groups == 0) + u + rng.normal(0.0, math.sqrt((1 - rho) / m), (n_var, 2 * k))
    m2 = (1 - rho) * rng.chisquare(m - 1, size=mean.shape)
    names = np.array([f"n{i:02d}" for i in range(2 * k)], dtype=object)
    return NameMoments(names, groups, np.full_like(mean, m), mean, m2)


# ---- formulas ----------------------------------------------------------------------------------------------


def test_percentile_is_the_quantiles_of_the_draws() -> None:
    rng = np.random.default_rng(0)
    boot = paired_bootstrap([make_arm(rng), make_arm(rng, delta=0.1)], n_boot=500, seed=2, labels=["a", "b"])
    iv = arm_interval(boot, "a", method="percentile", level=0.9)
    assert (iv.low, iv.high) == pytest.approx(tuple(np.quantile(boot.draws[0], [0.05, 0.95])), rel=1e-12)
    assert iv.estimate == boot.estimate[0] and iv.n_boot == 500 and iv.level == 0.9
    assert (iv.names_ref, iv.names_target, iv.n_variations) == (12, 12, 2)
    d = difference_interval(boot, "a", "b", method="percentile")
    assert (d.low, d.high) == pytest.approx(
        tuple(np.quantile(boot.draws[0] - boot.draws[1], [0.025, 0.975])), rel=1e-12
    )
    assert d.estimate == pytest.approx(boot.estimate[0] - boot.estimate[1])


def slow_bca(
    estimate: float, draws: np.ndarray, jack: np.ndarray, groups: np.ndarray, level: float
) -> tuple[float, float]:
    """BCa written out with loops and scipy.stats.norm (Efron & Tibshirani 14.3; stratified jackknife)."""
    b = len(draws)
    p = (sum(1 for x in draws if x < estimate) + 0.5 * sum(1 for x in draws if x == estimate)) / b
    z0 = sps.norm.ppf(min(max(p, 0.5 / b), 1 - 0.5 / b))
    num = den = 0.0
    for g in (0, 1):
        vals = [j for j, gg in zip(jack, groups) if gg == g]
        n = len(vals)
        mean = sum(vals) / n
        for j in vals:
            u = (n - 1) / n * (mean - j)
            num += u**3
            den += u**2
    a = num / (6 * den**1.5)
    levels = []
    for q in ((1 - level) / 2, (1 + level) / 2):
        z = sps.norm.ppf(q)
        levels.append(sps.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))))
    return tuple(np.quantile(draws, levels))


def test_bca_matches_written_out_formula() -> None:
    rng = np.random.default_rng(1)
    arms = [make_arm(rng, k=9, delta=0.2), make_arm(rng, k=9, delta=0.6)]
    boot = paired_bootstrap(arms, n_boot=800, seed=5)
    for arm in (0, 1):
        iv = arm_interval(boot, arm, method="bca", level=0.9)
        expected = slow_bca(boot.estimate[arm], boot.draws[arm], boot.jackknife[arm], boot.name_groups, 0.9)
        assert (iv.low, iv.high) == pytest.approx(expected, rel=1e-10)
    d = difference_interval(boot, 1, 0, method="bca")
    expected = slow_bca(
        boot.estimate[1] - boot.estimate[0],
        boot.draws[1] - boot.draws[0],
        boot.jackknife[1] - boot.jackknife[0],
        boot.name_groups,
        0.95,
    )
    assert (d.low, d.high) == pytest.approx(expected, rel=1e-10)


def test_acceleration_unequal_groups_uses_stratified_influence() -> None:
    jack = np.array([1.0, 2.0, 4.0, 0.5, 0.7])
    strata = np.array([0, 0, 0, 1, 1])
    u = np.concatenate([(2 / 3) * (jack[:3].mean() - jack[:3]), 0.5 * (jack[3:].mean() - jack[3:])])
    assert acceleration(jack, strata) == pytest.approx((u**3).sum() / (6 * (u**2).sum() ** 1.5))
    assert acceleration(np.ones(5), strata) == 0.0


def test_bca_agrees_with_scipy_on_one_answer_per_name() -> None:
    """One answer per name and one variation: the name bootstrap is scipy's two-sample bootstrap."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(0.6, 1.0, 25), rng.normal(0.0, 1.0, 25)
    arm = [(np.concatenate([x, y]), np.repeat([0, 1], 25), np.arange(50))]
    ours = mean_abs_smd_interval(arm, n_boot=20000, seed=0, method="bca")

    def abs_smd(a, b, axis=-1):
        na, nb = a.shape[axis], b.shape[axis]
        s = np.sqrt(((na - 1) * a.var(axis=axis, ddof=1) + (nb - 1) * b.var(axis=axis, ddof=1)) / (na + nb - 2))
        return np.abs(a.mean(axis=axis) - b.mean(axis=axis)) / s

    ref = sps.bootstrap((x, y), abs_smd, n_resamples=20000, method="BCa", vectorized=True, rng=np.random.default_rng(1))
    assert ours.estimate == pytest.approx(abs_smd(x, y))
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=0.03)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=0.03)


def test_sets_of_arms_are_averaged() -> None:
    rng = np.random.default_rng(4)
    arms = [make_arm(rng, delta=d) for d in (0.5, 0.2, 0.3, 0.4)]
    boot = paired_bootstrap(arms, n_boot=300, seed=1, labels=["pruned", "r0", "r1", "r2"])
    iv = difference_interval(boot, ["r0", "r1", "r2"], "pruned")
    diff = boot.draws[1:].mean(axis=0) - boot.draws[0]
    assert iv.estimate == pytest.approx(boot.estimate[1:].mean() - boot.estimate[0])
    assert (iv.low, iv.high) == pytest.approx(tuple(np.quantile(diff, [0.025, 0.975])), rel=1e-12)
    avg = arm_interval(boot, ["r0", "r1", "r2"])
    assert avg.estimate == pytest.approx(boot.estimate[1:].mean())
    same = contrast_interval(boot, {"r0": 1 / 3, "r1": 1 / 3, "r2": 1 / 3})
    assert (same.low, same.high) == pytest.approx((avg.low, avg.high), rel=1e-12)


def test_convenience_functions_match_the_bootstrap() -> None:
    rng = np.random.default_rng(5)
    a, b = make_arm(rng, delta=0.7), make_arm(rng, delta=0.1)
    assert mean_abs_smd_interval(a, n_boot=400, seed=3) == arm_interval(paired_bootstrap([a], 400, 3), 0)
    assert paired_difference_interval(a, b, n_boot=400, seed=3, method="bca") == difference_interval(
        paired_bootstrap([a, b], 400, 3), 0, 1, method="bca"
    )


# ---- notes --------------------------------------------------------------------------------------------------


def test_interval_that_excludes_its_estimate_says_why() -> None:
    """The case from the study: 0.068 [0.071, 0.170] with the percentile method."""
    draws = np.linspace(0.07, 0.175, 1000)
    sizes = {"names_ref": 10, "names_target": 10, "n_variations": 3}
    iv = _interval(0.068, draws, np.zeros(20), np.repeat([0, 1], 10), 0.95, "percentile", sizes)
    assert iv.low > iv.estimate
    assert "the estimate lies below the interval (only 0.0% of the draws are below it)" in iv.note
    assert "biased upward when the SMDs are near 0" in iv.note
    bca = _interval(0.068, draws, np.zeros(20), np.repeat([0, 1], 10), 0.95, "bca", sizes)
    assert "BCa needs the" in bca.note and "extreme draws" in bca.note
    inside = _interval(0.12, draws, np.zeros(20), np.repeat([0, 1], 10), 0.95, "percentile", sizes)
    assert inside.note == "" and inside.low <= inside.estimate <= inside.high


def test_undefined_intervals() -> None:
    groups = np.repeat([0, 1], 3)
    iv = _interval(math.nan, np.ones(10), np.ones(6), groups, 0.95, "percentile", {})
    assert math.isnan(iv.low) and not iv.defined and "undefined: the estimate is undefined" in iv.note
    iv = _interval(0.3, np.array([0.2, math.nan, math.nan]), np.ones(6), groups, 0.95, "bca", {})
    assert math.isnan(iv.high) and "only 1 defined bootstrap draws" in iv.note
    assert not iv.above_zero and not iv.below_zero


def test_interval_str_and_sides() -> None:
    iv = Interval(0.12, 0.05, 0.2, "percentile", 100)
    assert str(iv) == "0.120 [0.050, 0.200]" and iv.above_zero and not iv.below_zero and iv.defined


def test_argument_errors() -> None:
    rng = np.random.default_rng(6)
    boot = paired_bootstrap([make_arm(rng)], n_boot=20, labels=["pruned"])
    with pytest.raises(ValueError, match=r"method='normal' is not valid; valid choices: \['bca', 'percentile'\]"):
        arm_interval(boot, "pruned", method="normal")
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\), got 95"):
        arm_interval(boot, "pruned", level=95)
    with pytest.raises(ValueError, match="arm 'x' is not one of the bootstrap's arms"):
        difference_interval(boot, "x", "pruned")
    with pytest.raises(ValueError, match="an arm set is empty"):
        difference_interval(boot, [], "pruned")
    with pytest.raises(ValueError, match="weights is empty"):
        contrast_interval(boot, {})


# ---- coverage (small sizes, loose tolerance; benchmarks/validation/calibration_intervals.py runs the design's sizes) ---------------


def _coverage(deltas: tuple[float, ...], reps: int, method: str) -> tuple[float, float, float]:
    rng = np.random.default_rng(2026)
    hits = above = below = 0
    truth = abs(deltas[0]) - (abs(deltas[1]) if len(deltas) == 2 else 0.0)
    for r in range(reps):
        boot = paired_bootstrap(simulate_moments(rng, k=10, m=5, rho=0.2, n_var=2, deltas=deltas), n_boot=400, seed=r)
        iv = (
            arm_interval(boot, 0, method=method) if len(deltas) == 1 else difference_interval(boot, 0, 1, method=method)
        )
        hits += iv.low <= truth <= iv.high
        above += iv.above_zero
        below += iv.below_zero
    return hits / reps, above / reps, below / reps


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_coverage_with_a_clear_bias(method: str) -> None:
    cover, _, _ = _coverage((0.8,), reps=200, method=method)
    assert 0.86 <= cover <= 0.99


def test_paired_difference_of_equal_arms_rarely_excludes_zero() -> None:
    cover, above, below = _coverage((0.3, 0.3), reps=200, method="percentile")
    assert cover >= 0.9 and above <= 0.05 and below <= 0.05


def test_no_interval_of_mean_abs_smd_covers_zero_bias() -> None:
    """With no bias the population mean |SMD| is 0, which an interval of positive draws cannot contain."""
    cover, above, _ = _coverage((0.0,), reps=40, method="percentile")
    assert cover == 0.0 and above == 1.0


def test_pairing_narrows_the_difference() -> None:
    """Arms that share their names' effects (lam = 0.9): the paired interval is much narrower than one from
    independent draws per arm (as if the arms were asked about different names)."""
    rng = np.random.default_rng(8)
    mom = simulate_moments(rng, k=15, m=5, rho=0.5, n_var=2, deltas=(0.6, 0.5), lam=0.95)
    boot = paired_bootstrap(mom, n_boot=1000, seed=0)
    paired = difference_interval(boot, 0, 1)
    other = paired_bootstrap(mom, n_boot=1000, seed=1)
    unpaired = np.quantile(boot.draws[0] - other.draws[1], [0.025, 0.975])
    assert paired.high - paired.low < 0.6 * (unpaired[1] - unpaired[0])
