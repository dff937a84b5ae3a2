"""Name bootstrap clustered across variations and paired across arms, and the noise floor, vs brute-force loops
that literally build the resampled / relabelled datasets and compute the SMD with biasprune.metrics.functional."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from biasprune.metrics.functional import standardized_mean_difference
from biasprune.stats.bootstrap import NameMoments, bootstrap_mean_abs_smd, null_mean_abs_smd, paired_bootstrap

# ---- constructed data ------------------------------------------------------------------------------------


def make_arms(
    seed: int, n_arms: int = 3, n_var: int = 3, k: tuple[int, int] = (5, 4), loc: float = 0.0, name_sd: float = 0.7
):
    """Arms asked about the same names; each name has one effect shared by all variations and arms (plus noise).

    Names get 1..6 answers, some answers are NaN or of another group (dropped), the order is shuffled, and
    arms lose different answers. Arm 1 loses every answer about name T0 in variation 0.
    """
    rng = np.random.default_rng(seed)
    names = [f"R{i}" for i in range(k[0])] + [f"T{i}" for i in range(k[1])]
    groups = [0] * k[0] + [1] * k[1]
    effect = rng.normal(0.0, name_sd, len(names))
    arms = []
    for a in range(n_arms):
        arm = []
        for v in range(n_var):
            vals, grps, nms = [], [], []
            for name, g, e in zip(names, groups, effect):
                m = int(rng.integers(1, 7))
                vals += list(loc + e + 0.4 * a * (g == 0) + rng.normal(0.0, 1.0, m))
                grps += [g] * m
                nms += [name] * m
            vals, grps, nms = np.array(vals), np.array(grps), np.array(nms, dtype=object)
            vals[rng.random(vals.size) < 0.1] = np.nan
            if a == 1 and v == 0:
                vals[nms == "T0"] = np.nan
            grps[0] = 2  # another group: dropped
            order = rng.permutation(vals.size)
            arm.append((vals[order], grps[order], nms[order]))
        arms.append(arm)
    return arms


def slow_mean_abs_smd(datasets: list[tuple[list[float], list[int]]]) -> float:
    """Mean over variations of |SMD| (biasprune.metrics.functional), NaN variations skipped."""
    smds = []
    for vals, grps in datasets:
        smd = float(standardized_mean_difference(torch.tensor(vals, dtype=torch.float64), torch.tensor(grps)))
        smds.append(abs(smd))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(smds)) if smds else math.nan


def answers_of(arm_v, name) -> list[float]:
    values, groups, names = arm_v
    sel = (names == name) & ~np.isnan(values) & ((groups == 0) | (groups == 1))
    return list(values[sel])


def name_lists(arms) -> tuple[list[str], list[str]]:
    """Each group's names, sorted (the documented order)."""
    found: dict[int, set] = {0: set(), 1: set()}
    for arm in arms:
        for values, groups, names in arm:
            for x, g, n in zip(values, groups, names):
                if not math.isnan(x) and g in (0, 1):
                    found[int(g)].add(n)
    return sorted(found[0]), sorted(found[1])


def slow_bootstrap(arms, n_boot: int, seed: int) -> np.ndarray:
    """The documented draws, applied by building each resampled dataset: a drawn name brings all its answers,
    in every variation and arm, once per time it is drawn."""
    ref, tgt = name_lists(arms)
    rng = np.random.default_rng(seed)
    idx = [rng.integers(0, len(ref), size=(n_boot, len(ref))), rng.integers(0, len(tgt), size=(n_boot, len(tgt)))]
    out = np.empty((len(arms), n_boot))
    for b in range(n_boot):
        drawn = [[ref[i] for i in idx[0][b]], [tgt[i] for i in idx[1][b]]]
        for a, arm in enumerate(arms):
            datasets = []
            for arm_v in arm:
                vals, grps = [], []
                for g in (0, 1):
                    for name in drawn[g]:
                        x = answers_of(arm_v, name)
                        vals += x
                        grps += [g] * len(x)
                datasets.append((vals, grps))
            out[a, b] = slow_mean_abs_smd(datasets)
    return out


# ---- bootstrap ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_draws_match_brute_force(seed: int) -> None:
    arms = make_arms(seed, loc=1e5)  # far from zero: the centring must keep m2 exact
    got = bootstrap_mean_abs_smd(arms, n_boot=60, seed=seed)
    expected = slow_bootstrap(arms, n_boot=60, seed=seed)
    np.testing.assert_allclose(got, expected, rtol=1e-8)
    boot = paired_bootstrap(arms, n_boot=60, seed=seed)
    np.testing.assert_array_equal(boot.draws, got)  # the same draws for the same seed


def test_draws_skip_undefined_variations() -> None:
    """A variation where the target group has one name with answers is undefined whenever that name is not drawn."""
    arms = make_arms(3, n_arms=1, n_var=2, k=(4, 3))
    values, groups, names = arms[0][1]
    values = values.copy()
    values[(names != "T1") & (groups == 1)] = np.nan
    arms[0][1] = (values, groups, names)
    got = bootstrap_mean_abs_smd(arms, n_boot=80, seed=4)
    np.testing.assert_allclose(got, slow_bootstrap(arms, n_boot=80, seed=4), rtol=1e-9)
    per_var = paired_bootstrap([[arms[0][0]]], n_boot=80, seed=4).draws[0]
    assert np.any(got[0] == per_var)  # draws that left T1 out fall back to variation 0 alone


def test_jackknife_and_estimate_match_brute_force() -> None:
    arms = make_arms(5)
    boot = paired_bootstrap(arms, n_boot=10, seed=0)
    ref, tgt = name_lists(arms)
    for a, arm in enumerate(arms):
        for v, (values, groups, _) in enumerate(arm):
            keep = (groups == 0) | (groups == 1)
            smd = float(standardized_mean_difference(torch.tensor(values[keep]), torch.tensor(groups[keep])))
            assert boot.smd[a, v] == pytest.approx(smd, rel=1e-9)
        assert boot.estimate[a] == pytest.approx(np.mean(np.abs(boot.smd[a])), rel=1e-12)
        for k, left_out in enumerate(ref + tgt):
            datasets = []
            for arm_v in arm:
                vals, grps = [], []
                for g, group_names in enumerate((ref, tgt)):
                    for name in group_names:
                        if name != left_out:
                            x = answers_of(arm_v, name)
                            vals += x
                            grps += [g] * len(x)
                datasets.append((vals, grps))
            assert boot.jackknife[a, k] == pytest.approx(slow_mean_abs_smd(datasets), rel=1e-9)
    np.testing.assert_array_equal(boot.name_groups, [0] * len(ref) + [1] * len(tgt))


def test_answer_order_does_not_change_draws() -> None:
    arms = make_arms(6)
    rng = np.random.default_rng(0)
    shuffled = [[tuple(part[p] for part in av) for av in arm for p in [rng.permutation(av[0].size)]] for arm in arms]
    # same names drawn: equal up to the order of summation
    np.testing.assert_allclose(bootstrap_mean_abs_smd(shuffled, 50, 1), bootstrap_mean_abs_smd(arms, 50, 1), rtol=1e-12)


def test_undefined_arm_counts_variations() -> None:
    arms = make_arms(7, n_arms=1, n_var=3)
    values, groups, names = arms[0][2]
    arms[0][2] = (np.full(values.size, np.nan), groups, names)
    boot = paired_bootstrap(arms, n_boot=20, seed=0)
    assert boot.n_undefined.tolist() == [1]
    assert math.isnan(boot.smd[0, 2]) and np.isfinite(boot.estimate[0])


def _simulate_moments(rng, n_var: int, k: int, m: int, rho: float, delta: float) -> NameMoments:
    """Exact sufficient statistics of answers y = delta [ref] + u_n + e, u_n shared by every variation."""
    groups = np.repeat([0, 1], k)
    u = rng.normal(0.0, math.sqrt(rho), 2 * k)
    mean = delta * (groups == 0) + u + rng.normal(0.0, math.sqrt((1 - rho) / m), (1, n_var, 2 * k))
    m2 = (1 - rho) * rng.chisquare(m - 1, size=(1, n_var, 2 * k))
    names = np.array([f"n{i:02d}" for i in range(2 * k)], dtype=object)
    return NameMoments(names, groups, np.full_like(mean, m), mean, m2)


def test_clustered_bootstrap_matches_sampling_spread() -> None:
    """Names carry the same effect in every variation: the clustered bootstrap sd matches the true sampling sd of
    mean |SMD|, while drawing names independently per variation (the old behaviour) is far too narrow."""
    rng = np.random.default_rng(11)
    estimates, boot_sd, naive_sd = [], [], []
    for r in range(150):
        mom = _simulate_moments(rng, n_var=5, k=20, m=10, rho=0.4, delta=0.8)
        boot = paired_bootstrap(mom, n_boot=300, seed=r)
        estimates.append(boot.estimate[0])
        boot_sd.append(boot.draws[0].std())
        per_var = [
            paired_bootstrap(
                NameMoments(mom.names, mom.groups, *(x[:, v : v + 1] for x in (mom.count, mom.mean, mom.m2))),
                300,
                1000 * r + v,
            ).draws[0]
            for v in range(5)
        ]
        naive_sd.append(np.mean(per_var, axis=0).std())
    true_sd = np.std(estimates)
    assert 0.8 < np.mean(boot_sd) / true_sd < 1.15
    assert np.mean(naive_sd) / true_sd < 0.7


def test_names_are_the_union_over_arms_and_sorted() -> None:
    arms = make_arms(8, n_arms=2)
    mom = NameMoments.from_answers(arms)
    assert mom.names.tolist() == ["R0", "R1", "R2", "R3", "R4", "T0", "T1", "T2", "T3"]
    assert mom.count[1, 0, 5] == 0  # arm 1 lost T0 in variation 0
    assert mom.names_per_group == (5, 4) and mom.n_arms == 2 and mom.n_variations == 3


def test_unsortable_names_keep_first_appearance() -> None:
    arm = [(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0, 0, 1, 1]), np.array([("a", 1), 2, "x", 3.5], dtype=object))]
    mom = NameMoments.from_answers([arm])
    assert mom.names.tolist() == [("a", 1), 2, "x", 3.5]


# ---- noise floor --------------------------------------------------------------------------------------------


def test_null_floor_matches_brute_force() -> None:
    arms = make_arms(9, n_arms=1, n_var=3, k=(5, 4))
    floor = null_mean_abs_smd(arms[0], n_perm=80, seed=3)
    ref, tgt = name_lists(arms)
    order = ref + tgt
    rng = np.random.default_rng(3)
    perms = rng.permuted(np.tile([0] * len(ref) + [1] * len(tgt), (80, 1)), axis=1)
    expected = []
    for row in perms:
        datasets = []
        for arm_v in arms[0]:
            vals, grps = [], []
            for name, g in zip(order, row):
                x = answers_of(arm_v, name)
                vals += x
                grps += [int(g)] * len(x)
            datasets.append((vals, grps))
        expected.append(slow_mean_abs_smd(datasets))
    expected = np.array(expected)
    np.testing.assert_allclose(floor.draws, expected, rtol=1e-9)
    assert floor.mean == pytest.approx(expected.mean())
    assert floor.p95 == pytest.approx(np.quantile(expected, 0.95))
    observed = paired_bootstrap(arms, n_boot=1).estimate[0]
    assert floor.observed == pytest.approx(observed)
    assert floor.p_value == pytest.approx((1 + np.sum(expected >= observed)) / 81)
    assert floor.n_perm == 80


def test_null_floor_is_calibrated_with_correlated_names() -> None:
    """No bias, answers correlated within names and across variations: the observed mean |SMD| is at or below
    the floor's p95 about 95% of the time. Control: a floor that permutes single answers (every answer its own
    name) ignores the correlation and is exceeded far more often."""
    rng = np.random.default_rng(12)
    below, naive_below = [], []
    for r in range(250):
        k, m, n_var = 10, 6, 3
        u = rng.normal(0.0, math.sqrt(0.3), 2 * k)
        arm, naive = [], []
        for _ in range(n_var):
            names = np.repeat(np.arange(2 * k), m)
            values = u[names] + rng.normal(0.0, math.sqrt(0.7), names.size)
            groups = (names >= k).astype(int)
            arm.append((values, groups, names))
            naive.append((values, groups, np.arange(names.size)))
        floor = null_mean_abs_smd(arm, n_perm=199, seed=r)
        below.append(floor.observed <= floor.p95)
        naive_floor = null_mean_abs_smd(naive, n_perm=199, seed=r)
        naive_below.append(naive_floor.observed <= naive_floor.p95)
    assert 0.91 <= np.mean(below) <= 0.99
    assert np.mean(naive_below) < 0.8


# ---- errors -------------------------------------------------------------------------------------------------


def _arm(names=("a", "b", "c", "d"), groups=(0, 0, 1, 1)):
    return [(np.array([1.0, 2.0, 3.0, 5.0]), np.array(groups), np.array(names, dtype=object))]


@pytest.mark.parametrize(
    ("arms", "match"),
    [
        ([], "arms is empty"),
        ([[]], "has no variations"),
        ([_arm(), _arm() * 2], r"arms\[1\] has 2 variations, arms\[0\] has 1"),
        (
            [[(np.ones(3), np.zeros(2), np.array(["a", "b", "c"]))]],
            r"arms\[0\]\[0\]: values, groups and names must have the same length",
        ),
        ([_arm(names=("a", "a", "a", "d"), groups=(0, 0, 1, 1))], r"name 'a' is in both groups"),
        (
            [_arm(), _arm(groups=(1, 0, 0, 1))],
            r"name 'a' is in group 0 in arms\[0\]\[0\] and in group 1 in arms\[1\]\[0\]",
        ),
    ],
)
def test_data_errors(arms, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NameMoments.from_answers(arms)


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="n_boot must be an integer >= 1, got 0"):
        paired_bootstrap([_arm()], n_boot=0)
    with pytest.raises(ValueError, match="n_boot must be an integer >= 1, got 2.5"):
        bootstrap_mean_abs_smd([_arm()], n_boot=2.5)
    with pytest.raises(ValueError, match="n_perm must be an integer >= 1"):
        null_mean_abs_smd(_arm(), n_perm=-1)
    with pytest.raises(ValueError, match="labels must name each of the 2 arms once"):
        paired_bootstrap([_arm(), _arm()], labels=["x", "x"])
    with pytest.raises(ValueError, match="null_mean_abs_smd takes one arm"):
        null_mean_abs_smd(NameMoments.from_answers([_arm(), _arm()]))
    boot = paired_bootstrap([_arm(), _arm()], n_boot=5, labels=["unpruned", "pruned"])
    with pytest.raises(
        ValueError, match=r"arm 'random' is not one of the bootstrap's arms; valid choices: \['unpruned', 'pruned'\]"
    ):
        boot.index("random")
    with pytest.raises(ValueError, match="arm index 2 is out of range for 2 arms"):
        boot.index(2)
    with pytest.raises(ValueError, match=r"NameMoments: count, mean and m2 must share one shape"):
        NameMoments(
            np.array(["a"], dtype=object), np.array([0]), np.zeros((1, 1, 2)), np.zeros((1, 1, 2)), np.zeros((1, 1, 2))
        )
    with pytest.raises(ValueError, match="group 0's names first"):
        NameMoments(np.array(["a", "b"], dtype=object), np.array([1, 0]), *(np.zeros((1, 1, 2)),) * 3)
