"""Cluster bootstrap CI and cluster permutation p-value vs slow plain-Python references."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from scipy import stats as sps

from biasprune.metrics.functional import standardized_mean_difference
from biasprune.stats.moments import bootstrap_smd_ci, permutation_pvalue


def make_names(
    seed: int,
    n_names: tuple[int, int] = (20, 16),
    per_name: int = 5,
    effect: float = 0.0,
    name_sd: float = 0.5,
    loc: float = 0.0,
):
    """Answers clustered by name: each name has its own random offset (answers about one name correlate).

    Names get a variable number of answers (1..per_name) so that clusters differ in size.
    """
    rng = np.random.default_rng(seed)
    values, groups, names = [], [], []
    for g, k in enumerate(n_names):
        for i in range(k):
            name = f"{'WB'[g]}{i}"
            offset = rng.normal(0.0, name_sd) + (effect if g == 0 else 0.0)
            m = int(rng.integers(1, per_name + 1))
            values += list(loc + offset + rng.normal(0.0, 1.0, m))
            groups += [g] * m
            names += [name] * m
    order = rng.permutation(len(values))  # interleaved, as answers come back from batches
    return np.array(values)[order], np.array(groups)[order], np.array(names, dtype=object)[order]


# ---- plain-Python references ---------------------------------------------------------------------


def slow_smd(r: list[float], t: list[float]) -> float:
    """Pooled-sd SMD with the statistics module (exact-rational variance)."""
    if len(r) < 2 or len(t) < 2:
        return math.nan
    s = math.sqrt(
        ((len(r) - 1) * statistics.variance(r) + (len(t) - 1) * statistics.variance(t)) / (len(r) + len(t) - 2)
    )
    return math.nan if s == 0 else (statistics.fmean(r) - statistics.fmean(t)) / s


def clusters_by_group(values, groups, names) -> dict[int, list[tuple[object, list[float]]]]:
    """{group: [(name, its values), ...]} in order of first appearance; NaN values and other groups dropped."""
    out: dict[int, dict[object, list[float]]] = {0: {}, 1: {}}
    for v, g, c in zip(values, groups, names):
        if not math.isnan(v) and g in (0, 1):
            out[int(g)].setdefault(c, []).append(float(v))
    return {g: list(d.items()) for g, d in out.items()}


def slow_bootstrap_same_draws(values, groups, names, n_boot: int, alpha: float, seed: int) -> tuple[float, float]:
    """The documented algorithm with loops, drawing exactly as documented (so results match to rounding)."""
    cl = clusters_by_group(values, groups, names)
    rng = np.random.default_rng(seed)
    idx = {g: rng.integers(0, len(cl[g]), size=(n_boot, len(cl[g]))) for g in (0, 1)}
    smds = []
    for b in range(n_boot):
        r = [x for i in idx[0][b] for x in cl[0][i][1]]
        t = [x for i in idx[1][b] for x in cl[1][i][1]]
        smds.append(slow_smd(r, t))
    smds = [s for s in smds if not math.isnan(s)]
    low, high = np.quantile(smds, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def slow_bootstrap_own_draws(values, groups, names, n_boot: int, alpha: float, seed: int) -> tuple[float, float]:
    """Independent draws (one ``choice`` per group per resample): agrees only statistically."""
    cl = clusters_by_group(values, groups, names)
    rng = np.random.default_rng(seed)
    smds = []
    for _ in range(n_boot):
        picked = {g: rng.choice(len(cl[g]), size=len(cl[g]), replace=True) for g in (0, 1)}
        r = [x for i in picked[0] for x in cl[0][i][1]]
        t = [x for i in picked[1] for x in cl[1][i][1]]
        smds.append(slow_smd(r, t))
    low, high = np.quantile([s for s in smds if not math.isnan(s)], [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def slow_permutation_same_draws(values, groups, names, n_perm: int, seed: int) -> float:
    """The documented permutation test with loops and the documented draws."""
    cl = clusters_by_group(values, groups, names)
    # The documented cluster order is first appearance of (group, name) over all values.
    order: dict[tuple[int, object], int] = {}
    for v, g, c in zip(values, groups, names):
        if not math.isnan(v) and g in (0, 1):
            order.setdefault((int(g), c), len(order))
    lookup = {(g, name): vals for g in (0, 1) for name, vals in cl[g]}
    clusters = [(g, lookup[(g, name)]) for (g, name) in order]
    cluster_group = np.array([g for g, _ in clusters])
    observed = slow_smd(*[[x for g, vals in clusters if g == k for x in vals] for k in (0, 1)])
    rng = np.random.default_rng(seed)
    perms = rng.permuted(np.tile(cluster_group, (n_perm, 1)), axis=1)
    count = valid = 0
    for row in perms:
        s = slow_smd(*[[x for (_, vals), lab in zip(clusters, row) if lab == k for x in vals] for k in (0, 1)])
        if not math.isnan(s):
            valid += 1
            count += abs(s) >= abs(observed) * (1 - 1e-12)
    return (1 + count) / (1 + valid)


# ---- bootstrap ---------------------------------------------------------------------------------------


def test_bootstrap_contains_estimate_on_clear_effect() -> None:
    v, g, n = make_names(0, effect=1.5)
    est = standardized_mean_difference(v, g).item()
    low, high = bootstrap_smd_ci(v, g, n, n_boot=1000, seed=0)
    assert 0 < low < est < high
    assert high - low < 2.0


def test_bootstrap_is_reproducible_with_seed() -> None:
    v, g, n = make_names(1, effect=0.5)
    a = bootstrap_smd_ci(v, g, n, n_boot=500, seed=3)
    assert bootstrap_smd_ci(v, g, n, n_boot=500, seed=3) == a
    assert bootstrap_smd_ci(list(v), list(g), list(n), n_boot=500, seed=3) == a  # lists work the same
    assert bootstrap_smd_ci(v, g, n, n_boot=500, seed=4) != a


@pytest.mark.parametrize("seed", range(3))
def test_bootstrap_matches_slow_reference_same_draws(seed: int) -> None:
    v, g, n = make_names(10 + seed, effect=0.7)
    v[::13] = np.nan  # dropped
    g[5] = 2  # dropped
    got = bootstrap_smd_ci(v, g, n, n_boot=300, alpha=0.1, seed=seed)
    expected = slow_bootstrap_same_draws(v, g, n, n_boot=300, alpha=0.1, seed=seed)
    assert got == pytest.approx(expected, rel=1e-9)


def test_bootstrap_matches_independent_reference_statistically() -> None:
    v, g, n = make_names(20, n_names=(30, 25), effect=0.8)
    low, high = bootstrap_smd_ci(v, g, n, n_boot=2000, seed=0)
    ref_low, ref_high = slow_bootstrap_own_draws(v, g, n, n_boot=2000, alpha=0.05, seed=12345)
    # Monte Carlo error of a 2.5% / 97.5% quantile of 2000 draws is a few hundredths here.
    assert low == pytest.approx(ref_low, abs=0.1)
    assert high == pytest.approx(ref_high, abs=0.1)


def test_bootstrap_resamples_names_not_answers() -> None:
    """With strongly correlated answers per name, the name bootstrap is much wider than an answer bootstrap."""
    v, g, n = make_names(30, per_name=10, effect=1.0, name_sd=2.0)
    low, high = bootstrap_smd_ci(v, g, n, n_boot=1000, seed=0)
    naive_low, naive_high = bootstrap_smd_ci(
        v, g, np.arange(v.size), n_boot=1000, seed=0
    )  # every answer its own cluster
    assert high - low > 1.5 * (naive_high - naive_low)


def test_bootstrap_large_offset_is_shift_invariant() -> None:
    v, g, n = make_names(40, effect=0.6)
    a = bootstrap_smd_ci(v, g, n, n_boot=400, seed=1)
    b = bootstrap_smd_ci(v + 1e6, g, n, n_boot=400, seed=1)
    assert b == pytest.approx(a, rel=1e-7)


# ---- permutation test --------------------------------------------------------------------------------


def test_permutation_small_for_strong_effect() -> None:
    v, g, n = make_names(2, effect=2.0)
    p = permutation_pvalue(v, g, n, n_perm=1000, seed=0)
    assert p < 0.01
    assert p >= 1 / 1001  # the observed assignment always counts


def test_permutation_is_reproducible() -> None:
    v, g, n = make_names(3, effect=0.3)
    p = permutation_pvalue(v, g, n, n_perm=500, seed=9)
    assert permutation_pvalue(list(v), list(g), list(n), n_perm=500, seed=9) == p
    assert 0 < p <= 1


@pytest.mark.parametrize("seed", range(3))
def test_permutation_matches_slow_reference_same_draws(seed: int) -> None:
    v, g, n = make_names(50 + seed, n_names=(9, 7), effect=0.4)
    v[::11] = np.nan
    assert permutation_pvalue(v, g, n, n_perm=400, seed=seed) == pytest.approx(
        slow_permutation_same_draws(v, g, n, n_perm=400, seed=seed), rel=1e-12
    )


def test_permutation_counts_equivalent_assignments_despite_rounding() -> None:
    """2 names per group, 1 answer each: 6 distinct splits; those equal to the observed one (up to
    swapping the groups) must count as |SMD| >= observed, whatever the rounding."""
    v = np.array([10.1, 10.3, 0.7, 0.2])
    g = np.array([0, 0, 1, 1])
    n = np.array(["a", "b", "c", "d"], dtype=object)
    p = permutation_pvalue(v, g, n, n_perm=3000, seed=0)
    assert p == pytest.approx(1 / 3, abs=0.04)  # the observed split and its mirror are the most extreme


def test_permutation_roughly_uniform_under_null() -> None:
    """No effect, answers correlated within names: cluster permutation p-values stay ~uniform."""
    datasets = [make_names(100 + s, name_sd=1.0) for s in range(300)]
    pvals = np.array([permutation_pvalue(v, g, n, n_perm=199, seed=s) for s, (v, g, n) in enumerate(datasets)])
    assert sps.kstest(pvals, "uniform").pvalue > 1e-3
    assert np.mean(pvals <= 0.05) < 0.05 + 3 * math.sqrt(0.05 * 0.95 / 300)
    assert 0.4 < np.mean(pvals) < 0.6
    # Control: permuting single answers (each its own cluster) ignores the correlation within names and
    # rejects far too often on the same data (about 20%), so the checks above do have power.
    naive = np.array(
        [permutation_pvalue(v, g, np.arange(v.size), n_perm=199, seed=s) for s, (v, g, _) in enumerate(datasets)]
    )
    assert np.mean(naive <= 0.05) > 0.1


# ---- NaN and error cases -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "groups", "names"),
    [
        ([], [], []),
        ([1.0, 2.0, 3.0], [0, 0, 0], ["a", "a", "b"]),  # no target
        ([1.0, 2.0, 3.0], [0, 0, 1], ["a", "b", "c"]),  # target with 1 value
        ([1.0, 2.0, math.nan, 4.0], [0, 0, 1, 1], ["a", "b", "c", "d"]),  # ... after dropping NaN
        ([5.0, 5.0, 3.0, 3.0], [0, 0, 1, 1], ["a", "b", "c", "d"]),  # zero pooled sd
        ([math.nan] * 4, [0, 0, 1, 1], ["a", "b", "c", "d"]),
        ([1.0, 2.0, 3.0, 4.0], [5, 5, 7, 7], ["a", "b", "c", "d"]),  # unknown groups only
    ],
)
def test_undefined_smd_gives_nan(values: list[float], groups: list[int], names: list[str]) -> None:
    low, high = bootstrap_smd_ci(values, groups, names, n_boot=50)
    assert math.isnan(low) and math.isnan(high)
    assert math.isnan(permutation_pvalue(values, groups, names, n_perm=50))


def test_same_label_in_both_groups_is_two_clusters() -> None:
    v, g, n = make_names(60, effect=1.0)
    shared = np.full(v.size, "X", dtype=object)  # one label everywhere: still one cluster per group
    low, high = bootstrap_smd_ci(v, g, shared, n_boot=100, seed=0)
    est = standardized_mean_difference(v, g).item()
    assert low == pytest.approx(est) and high == pytest.approx(est)  # one cluster per group: every resample is the data
    assert permutation_pvalue(v, g, shared, n_perm=100, seed=0) == 1.0  # the only other split is the mirror


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(n_boot=0), "n_boot must be >= 1"),
        (dict(alpha=0.0), r"alpha must be in \(0, 1\)"),
        (dict(alpha=1.0), r"alpha must be in \(0, 1\)"),
    ],
)
def test_bootstrap_argument_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bootstrap_smd_ci([1.0, 2.0], [0, 1], ["a", "b"], **kwargs)


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="n_perm must be >= 1"):
        permutation_pvalue([1.0, 2.0], [0, 1], ["a", "b"], n_perm=0)
    with pytest.raises(ValueError, match="same length"):
        bootstrap_smd_ci([1.0, 2.0], [0, 1], ["a"])
    with pytest.raises(ValueError, match="same length"):
        permutation_pvalue([1.0, 2.0, 3.0], [0, 1], ["a", "b", "c"])
