"""ICC(1) vs scipy's one-way ANOVA and direct formulas; the minimum detectable SMD vs simulated power."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from biasprune.stats.power import icc, minimum_detectable_smd, t_quantile, within_name_icc

# ---- ICC ---------------------------------------------------------------------------------------------------


def test_icc_matches_scipy_anova_with_unequal_sizes() -> None:
    """ICC(1) = (F - 1) / (F + n0 - 1) with F the one-way ANOVA F statistic (scipy.stats.f_oneway)."""
    rng = np.random.default_rng(0)
    clusters = [rng.normal(rng.normal(0, 0.8), 1.0, int(rng.integers(2, 9))) for _ in range(15)]
    f = sps.f_oneway(*clusters).statistic
    n = np.array([c.size for c in clusters])
    n0 = (n.sum() - (n**2).sum() / n.sum()) / (len(n) - 1)
    assert icc(clusters) == pytest.approx((f - 1) / (f + n0 - 1), rel=1e-10)


def test_icc_constructed_cases() -> None:
    assert icc([[1.0, 1.0], [3.0, 3.0]]) == 1.0  # all variance between names
    assert icc([[1.0, 2.0], [1.0, 2.0]]) == 0.0  # MSB = 0: (0 - MSW) / (MSW) = -1, clipped at 0
    # Hand computation: means 2 and 5 (n = 3, 2), grand mean 3.2; SSB = 3 * 1.44 + 2 * 3.24 = 10.8, MSB = 10.8;
    # SSW = 2 + 2 = 4, MSW = 4 / 3; n0 = (5 - 13/5) / 1 = 2.4; ICC = (10.8 - 4/3) / (10.8 + 1.4 * 4/3)
    assert icc([[1.0, 2.0, 3.0], [4.0, 6.0]]) == pytest.approx((10.8 - 4 / 3) / (10.8 + 1.4 * 4 / 3))
    assert icc([[1.0, math.nan, 2.0, 3.0], [4.0, 6.0], []]) == pytest.approx(icc([[1.0, 2.0, 3.0], [4.0, 6.0]]))
    assert math.isnan(icc([[1.0, 2.0]]))  # one name
    assert math.isnan(icc([[1.0], [2.0]]))  # no within-name variation to compare with
    assert math.isnan(icc([[2.0, 2.0], [2.0, 2.0]]))  # every value equal


def test_icc_with_strata_compares_names_with_their_group() -> None:
    """Names nested in groups: the between-name sum of squares is around each group's own mean."""
    values = [[1.0, 2.0], [2.0, 4.0], [10.0, 11.0], [13.0, 12.0], [9.0, 9.5]]
    strata = [0, 0, 1, 1, 1]
    n = np.array([2, 2, 2, 2, 2.0])
    means = np.array([np.mean(v) for v in values])
    group_mean = {0: np.mean(means[:2]), 1: np.mean(means[2:])}
    ssb = sum(2 * (mu - group_mean[s]) ** 2 for mu, s in zip(means, strata))
    ssw = sum(((np.array(v) - np.mean(v)) ** 2).sum() for v in values)
    msb, msw = ssb / (5 - 2), ssw / (10 - 5)
    n0 = (10 - 4 * 2 / 4 - 6 * 2 / 6) / (5 - 2)
    assert n0 == pytest.approx(2.0) and n.sum() == 10
    assert icc(values, strata) == pytest.approx((msb - msw) / (msb + (n0 - 1) * msw))
    assert icc(values) > icc(values, strata)  # the group difference is not within-name correlation


def test_icc_recovers_a_known_correlation() -> None:
    rng = np.random.default_rng(1)
    clusters = [
        rng.normal(0, math.sqrt(0.3), 1) + rng.normal(0, math.sqrt(0.7), int(rng.integers(5, 30))) for _ in range(400)
    ]
    assert icc(clusters) == pytest.approx(0.3, abs=0.04)


def test_within_name_icc_ignores_the_bias() -> None:
    """A large group difference and independent answers: ICC ~ 0 per variation; with name effects: ~ rho."""
    rng = np.random.default_rng(2)
    names = np.repeat(np.arange(60), 8)
    groups = (names >= 30).astype(int)
    arm = [(3.0 * groups + rng.normal(0, 1, names.size), groups, names) for _ in range(3)]
    assert within_name_icc(arm) < 0.03
    u = rng.normal(0, math.sqrt(0.25), 60)
    arm = [(3.0 * groups + u[names] + rng.normal(0, math.sqrt(0.75), names.size), groups, names) for _ in range(3)]
    assert within_name_icc(arm) == pytest.approx(0.25, abs=0.1)
    per_variation = [icc([v[n == k] for k in range(60)], strata=[0] * 30 + [1] * 30) for v, _, n in arm]
    assert within_name_icc(arm) == pytest.approx(np.mean(per_variation))


def test_icc_errors() -> None:
    with pytest.raises(ValueError, match="strata must have one entry per name, got 1 for 2 names"):
        icc([[1.0, 2.0], [3.0, 4.0]], strata=[0])


# ---- minimum detectable SMD ------------------------------------------------------------------------------------


def test_t_quantile_matches_scipy() -> None:
    for df in (2, 5, 18, 38, 198, math.inf):
        for p in (0.8, 0.975, 0.995, 0.1):
            assert t_quantile(p, df) == pytest.approx(sps.t.ppf(p, df), abs=1e-8)


def test_mde_formula() -> None:
    k_r, k_t, m, rho = 20, 15, 10, 0.2
    se = math.sqrt((1 / (k_r * m) + 1 / (k_t * m)) * (1 + (m - 1) * rho))
    expected = (sps.t.ppf(0.975, 33) + sps.t.ppf(0.8, 33)) * se
    assert minimum_detectable_smd(k_r, k_t, m, rho) == pytest.approx(expected, rel=1e-8)
    # variations: independent answers average fully; a name's effect shared by all variations caps the gain
    one = minimum_detectable_smd(20, 20, 10, 0.0)
    assert minimum_detectable_smd(20, 20, 10, 0.0, n_variations=4) == pytest.approx(one / 2)
    capped = math.sqrt((2 / 20) * (0.2 + 0.8 / (10 * 4))) * (sps.t.ppf(0.975, 38) + sps.t.ppf(0.8, 38))
    assert minimum_detectable_smd(20, 20, 10, 0.2, n_variations=4) == pytest.approx(capped, rel=1e-8)
    assert minimum_detectable_smd(20, 20, 10, 1.0, n_variations=4) == pytest.approx(
        minimum_detectable_smd(20, 20, 10, 1.0)
    )


def _power(k: int, m: int, rho: float, n_var: int, delta: float, reps: int, seed: int) -> float:
    """Rejection rate of the two-sided t-test on name means (all of a name's answers in all variations), with
    answers y = delta [ref] + u_name + e, u_name ~ N(0, rho) shared by every variation, e ~ N(0, 1 - rho)."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0, math.sqrt(rho), (reps, 2 * k))
    e = rng.normal(0, math.sqrt(1 - rho), (reps, 2 * k, n_var * m)).mean(axis=2)
    name_means = u + e + delta * (np.arange(2 * k) < k)
    p = sps.ttest_ind(name_means[:, :k], name_means[:, k:], axis=1).pvalue
    return float(np.mean(p < 0.05))


@pytest.mark.parametrize(("m", "rho", "n_var"), [(10, 0.2, 1), (1, 0.0, 1), (10, 0.2, 3), (4, 0.0, 3)])
def test_power_at_the_mde_is_80_percent(m: int, rho: float, n_var: int) -> None:
    """Simulated power at the MDE ~ 0.8 (4000 replications: Monte Carlo SE 0.006), for the worst case the MDE
    assumes across variations (each name's effect the same in every variation)."""
    mde = minimum_detectable_smd(20, 20, m, rho, n_variations=n_var)
    assert _power(20, m, rho, n_var, mde, reps=4000, seed=m + n_var) == pytest.approx(0.8, abs=0.025)
    assert _power(20, m, rho, n_var, 0.0, reps=4000, seed=7) == pytest.approx(0.05, abs=0.015)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(names_ref=1), r"names_ref must be >= 2 \(names in the group\), got 1"),
        (dict(names_target=0), r"names_target must be >= 2"),
        (dict(answers_per_name=0.5), "answers_per_name must be >= 1, got 0.5"),
        (dict(icc=math.nan), r"icc must be a number in \[0, 1\] \(1.0 when unknown\), got nan"),
        (dict(icc=1.5), r"icc=1.5 must be a fraction in \[0, 1\]"),
        (dict(n_variations=0), "n_variations must be >= 1, got 0"),
        (dict(alpha=0.0), r"alpha=0.0 must be a fraction in \(0, 1\)"),
        (dict(power=1.0), r"power=1.0 must be a fraction in \(0, 1\)"),
    ],
)
def test_mde_errors(kwargs: dict, match: str) -> None:
    args = dict(names_ref=20, names_target=20, answers_per_name=10, icc=0.2)
    with pytest.raises(ValueError, match=match):
        minimum_detectable_smd(**{**args, **kwargs})
