"""Selection rules, budgets and the random control against brute-force Python/numpy implementations."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch
from scipy.stats import chisquare, rankdata

from biasprune.pruning.rules import (
    RANKING_RULES,
    RULES,
    Budget,
    keep_masks,
    n_top,
    parse_budget,
    random_prune_like,
    select_prune,
    top_k_mask,
)


# ------------------------------------------------------------------------------ counting helpers of the tests
def _pruned(m: torch.Tensor) -> int:
    """Bool masks are prune masks (True = prune); integer masks are keep-masks (0 = pruned)."""
    return int(m.sum()) if m.dtype == torch.bool else int((m == 0).sum())


def pruned_counts(masks) -> dict[str, int]:
    """Pruned units per key."""
    return {k: _pruned(m) for k, m in masks.items()}


# ------------------------------------------------------------------------------ brute-force references
def ceil_frac(f: float, n: int) -> int:
    return min(n, math.ceil(round(f * n, 9)))


def order_by(stat: list[float]) -> list[int]:
    """Indices by (-stat, index): the highest first, ties to the lower index."""
    return sorted(range(len(stat)), key=lambda u: (-stat[u], u))


def brute_set_difference(t, r, p, q, k=None):
    n = len(t)
    protected = set(order_by(r)[: ceil_frac(p, n)])
    if k is None:
        chosen = set(order_by(t)[: ceil_frac(q, n)]) - protected
    else:
        chosen = set([u for u in order_by(t) if u not in protected][:k])
    return np.array([u in chosen for u in range(n)])


def brute_statistic(rule, t, r, fq=0.5):
    n = len(t)
    if rule == "target":
        return list(t)
    if rule == "difference":
        return [t[u] - r[u] for u in range(n)]
    if rule == "relative_difference":
        cut = float(np.quantile([t[u] + r[u] for u in range(n)], fq))
        return [(t[u] - r[u]) / (t[u] + r[u]) if t[u] + r[u] > cut else -math.inf for u in range(n)]
    if rule == "log_ratio":
        means = [(t[u] + r[u]) / 2 for u in range(n)]
        f = float(np.quantile(means, fq))
        if f <= 0:
            f = min([m for m in means if m > 0], default=1.0)
        return [math.log((t[u] + f) / (r[u] + f)) for u in range(n)]
    if rule == "rank_difference":
        if n == 1:
            return [0.0]
        ft, fr = (rankdata(t) - 1) / (n - 1), (rankdata(r) - 1) / (n - 1)
        return [float(ft[u] - fr[u]) for u in range(n)]
    raise AssertionError(rule)


def brute_rank_rule(rule, t, r, k, fq=0.5):
    stat = brute_statistic(rule, t, r, fq)
    chosen = [u for u in order_by(stat) if stat[u] != -math.inf][:k]
    return np.array([u in chosen for u in range(len(t))])


def brute(rule, t, r, p, q, budget, fq=0.5):
    n = len(t)
    if isinstance(budget, str):  # a percentage
        budget = float(budget[:-1]) / 100
    k = None if budget is None else (min(budget, n) if isinstance(budget, int) else ceil_frac(budget, n))
    if rule == "set_difference":
        return brute_set_difference(t, r, p, q, k)
    return brute_rank_rule(rule, t, r, k, fq)


def constructed(seed: int, distinct: int = 6):
    """A few pools with few distinct values, so ties are common."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 40, size=rng.integers(1, 5))
    tgt = {f"neuron/m{i}": rng.integers(0, distinct, size=n).astype(np.float64) for i, n in enumerate(sizes)}
    ref = {k: rng.integers(0, distinct, size=v.size).astype(np.float64) for k, v in tgt.items()}
    return rng, tgt, ref


def as_torch(d):
    return {k: torch.from_numpy(v).float() for k, v in d.items()}


# ------------------------------------------------------------------------------ rules vs brute force
@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("scope", ["module", "global"])
def test_set_difference_matches_brute_force(seed, scope):
    rng, tgt, ref = constructed(seed)
    p, q = float(rng.choice([0.0, 0.15, 0.35, 0.5, 1.0])), float(rng.choice([0.0, 0.15, 0.4, 0.7, 1.0]))
    got = select_prune(as_torch(tgt), as_torch(ref), p=p, q=q, scope=scope)
    if scope == "module":
        for k in tgt:
            np.testing.assert_array_equal(got[k].numpy(), brute_set_difference(tgt[k], ref[k], p, q))
    else:
        expect = brute_set_difference(np.concatenate(list(tgt.values())), np.concatenate(list(ref.values())), p, q)
        np.testing.assert_array_equal(np.concatenate([got[k].numpy() for k in tgt]), expect)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("scope", ["module", "global"])
@pytest.mark.parametrize("rule", RULES)
def test_rules_with_a_budget_match_brute_force(rule, scope, seed):
    rng, tgt, ref = constructed(seed, distinct=[3, 8, 1000][seed % 3])
    budget = [3, 0.1, 0.02, 0, "100%", 50][seed % 6]
    p, fq = float(rng.choice([0.0, 0.2, 0.5])), [0.5, 0.0, 0.25, 0.9][seed % 4]
    got = select_prune(as_torch(tgt), as_torch(ref), rule=rule, p=p, q=0.9, budget=budget, scope=scope, floor_quantile=fq)
    if scope == "module":
        for k in tgt:
            np.testing.assert_array_equal(got[k].numpy(), brute(rule, tgt[k], ref[k], p, 0.9, budget, fq), err_msg=k)
    else:
        t, r = np.concatenate(list(tgt.values())), np.concatenate(list(ref.values()))
        expect = brute(rule, t, r, p, 0.9, budget, fq)
        np.testing.assert_array_equal(np.concatenate([got[k].numpy() for k in tgt]), expect)


@pytest.mark.parametrize("rule", RANKING_RULES)
def test_ranking_rules_prune_exactly_the_budget_per_pool(rule):
    rng = np.random.default_rng(0)
    tgt = {f"neuron/m{i}": torch.from_numpy(rng.gamma(1.0, size=n)) for i, n in enumerate([500, 120, 37])}
    ref = {k: torch.from_numpy(rng.gamma(1.0, size=v.shape[0])) for k, v in tgt.items()}
    counts = pruned_counts(select_prune(tgt, ref, rule=rule, budget=0.02))
    assert counts == {"neuron/m0": 10, "neuron/m1": 3, "neuron/m2": 1}  # ceil(0.02 n)
    counts = pruned_counts(select_prune(tgt, ref, rule=rule, budget=7))
    assert counts == {"neuron/m0": 7, "neuron/m1": 7, "neuron/m2": 7}
    total = sum(pruned_counts(select_prune(tgt, ref, rule=rule, budget="0.5%", scope="global")).values())
    assert total == math.ceil(0.005 * 657)


def test_relative_difference_only_above_the_median():
    # The top two relative differences (units 0 and 1) have tiny totals: below the median, never pruned.
    t = torch.tensor([0.002, 0.003, 5.0, 6.0, 8.0, 3.0])
    r = torch.tensor([0.0, 0.0, 4.0, 1.0, 7.0, 3.0])
    # totals 0.002 0.003 9 7 15 6 -> median 6.5: eligible 2, 3, 4
    got = select_prune({"neuron/a": t}, {"neuron/a": r}, rule="relative_difference", budget=2)["neuron/a"]
    assert got.tolist() == [False, False, True, True, False, False]
    # more budget than eligible units: only the eligible ones are pruned
    got = select_prune({"neuron/a": t}, {"neuron/a": r}, rule="relative_difference", budget=5)["neuron/a"]
    assert got.tolist() == [False, False, True, True, True, False]


def test_log_ratio_shrinks_tiny_units_and_ranks_large_ones_by_ratio():
    t = torch.tensor([0.002, 4.0, 12.0, 2.0, 3.0])
    r = torch.tensor([0.0, 2.0, 10.0, 2.0, 3.0])  # raw ratios: inf, 2, 1.2, 1, 1
    got = select_prune({"neuron/a": t}, {"neuron/a": r}, rule="log_ratio", budget=2)["neuron/a"]
    assert got.tolist() == [False, True, True, False, False]


def test_log_ratio_floor_quantile_and_its_fallback():
    t, r = {"n/a": torch.tensor([0.0, 1.0, 30.0])}, {"n/a": torch.tensor([0.0, 0.0, 10.0])}
    # median floor f = 0.5 (means 0, 0.5, 20): log(1.5/0.5) = 1.10 > log(30.5/10.5) = 1.07
    assert select_prune(t, r, rule="log_ratio", budget=1)["n/a"].tolist() == [False, True, False]
    # floor at the 0.9 quantile, f = 16.1: the large unit wins
    assert select_prune(t, r, rule="log_ratio", budget=1, floor_quantile=0.9)["n/a"].tolist() == [False, False, True]
    # quantile 0 is a mean of 0: the floor falls back to the smallest positive mean, 0.5 (not the mean 10.25)
    assert select_prune(t, r, rule="log_ratio", budget=1, floor_quantile=0.0)["n/a"].tolist() == [False, True, False]


def test_means_when_counts_are_given():
    # Sums favour unit 0 for the difference, but the reference group has 4x the examples.
    t, r = torch.tensor([10.0, 3.0, 1.0]), torch.tensor([8.0, 0.0, 4.0])
    kw = dict(rule="difference", budget=1)
    assert select_prune({"h/a": t}, {"h/a": r}, **kw)["h/a"].tolist() == [False, True, False]
    got = select_prune({"h/a": t}, {"h/a": r}, n_target=1, n_reference=4, **kw)["h/a"]
    assert got.tolist() == [True, False, False]  # means 10 - 2 = 8 beats 3 - 0 = 3
    for rule in RULES[1:]:
        t_, r_ = np.array([10.0, 3.0, 1.0, 6.0]), np.array([8.0, 0.0, 4.0, 20.0])
        got = select_prune({"h/a": torch.tensor(t_)}, {"h/a": torch.tensor(r_)}, rule=rule, budget=2, n_target=2, n_reference=5)
        np.testing.assert_array_equal(got["h/a"].numpy(), brute_rank_rule(rule, t_ / 2, r_ / 5, 2))


def test_set_difference_budget_replaces_q():
    t = torch.tensor([9.0, 8.0, 7.0, 6.0, 5.0])
    r = torch.tensor([9.0, 0.0, 8.0, 0.0, 0.0])
    got = select_prune({"n/a": t}, {"n/a": r}, p=0.4, q=0.0, budget=2)["n/a"]  # q=0 would prune nothing
    assert got.tolist() == [False, True, False, True, False]  # best target scores outside r's top 2


def test_ties_go_to_the_lower_index():
    assert top_k_mask(torch.tensor([1.0, 3.0, 3.0, 3.0, 0.0]), 2).tolist() == [False, True, True, False, False]
    s = {"n/a": torch.ones(5)}
    for rule in ("set_difference", "target", "difference", "log_ratio", "rank_difference"):
        assert select_prune(s, s, rule=rule, p=0.0, budget=2)["n/a"].tolist() == [True, True, False, False, False]
    # all totals equal the median: no unit is strictly above it, so the relative difference prunes none
    assert not select_prune(s, s, rule="relative_difference", budget=2)["n/a"].any()


def test_n_top_is_robust_to_float_noise():
    assert 0.07 * 100 > 7  # the float product overshoots ...
    assert n_top(0.07, 100) == 7  # ... but means 7
    assert n_top(0.4, 10) == 4 and n_top(0.41, 10) == 5 and n_top(0.0, 7) == 0 and n_top(1.0, 7) == 7


def test_keep_masks_reproduce_the_old_call_and_take_rules():
    rng = np.random.default_rng(4)
    tgt = {f"neuron/m{i}": torch.from_numpy(rng.random(30)) for i in range(3)} | {"head/a": torch.rand(8)}
    ref = {k: torch.from_numpy(rng.random(v.shape[0])) for k, v in tgt.items()}
    keep = keep_masks(tgt, ref, "neuron", 0.35, 0.4, "module")
    assert list(keep) == ["neuron/m0", "neuron/m1", "neuron/m2"] and keep["neuron/m0"].dtype == torch.uint8
    for k in keep:
        np.testing.assert_array_equal(keep[k].numpy() == 0, brute_set_difference(tgt[k].numpy(), ref[k].numpy(), 0.35, 0.4))
    keep = keep_masks(tgt, ref, "neuron", 0.35, 0.4, "global", rule="log_ratio", budget=5)
    assert sum(pruned_counts(keep).values()) == 5


# ------------------------------------------------------------------------------ budgets and counts
@pytest.mark.parametrize(
    "value, expect",
    [
        (12, Budget(count=12)),
        (0, Budget(count=0)),
        (0.005, Budget(fraction=0.005)),
        ("100%", Budget(fraction=1.0)),
        (12.0, Budget(count=12)),
        ("0.5%", Budget(fraction=0.005)),
        (" 2% ", Budget(fraction=0.02)),
        ("12", Budget(count=12)),
        ("0.01", Budget(fraction=0.01)),
        (Budget(count=3), Budget(count=3)),
    ],
)
def test_parse_budget(value, expect):
    assert parse_budget(value) == expect


def test_budget_units_and_str():
    assert Budget(count=12).units(5) == 5 and Budget(count=12).units(500) == 12
    assert Budget(fraction=0.001).units(576) == 1 and Budget(fraction=0.02).units(1536) == 31
    assert str(Budget(fraction=0.005)) == "0.5%" and str(Budget(count=7)) == "7"
    with pytest.raises(ValueError, match=r"pruning\.budget=1\.0 is ambiguous: one unit \(give the integer 1\) or all units"):
        parse_budget(1.0)
    with pytest.raises(ValueError, match=r"pruning\.head_budget=1\.0 is ambiguous"):
        parse_budget("1.0", flag="pruning.head_budget")
    with pytest.raises(ValueError, match="exactly one of count and fraction"):
        Budget()


@pytest.mark.parametrize("value", ["abc", -1, 1.5, "150%", True, float("nan"), "-2%", None])
def test_parse_budget_errors(value):
    """A bad budget names the flag, the value and the three accepted forms."""
    with pytest.raises(ValueError, match=r"pruning\.budget=.* (is not a budget|negative count|neither a fraction).*0\.5%"):
        parse_budget(value)


# ------------------------------------------------------------------------------ the random control
def test_random_control_matches_counts_and_is_a_pure_function_of_the_seed():
    rng = np.random.default_rng(1)
    prune = {f"neuron/m{i}": torch.from_numpy(rng.random(n) < 0.2) for i, n in enumerate([50, 7, 120])}
    a = random_prune_like(prune, "module", seed=3)
    assert pruned_counts(a) == pruned_counts(prune)
    torch.manual_seed(123)  # the global RNG has no say
    b = random_prune_like(prune, "module", seed=3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], random_prune_like(prune, "module", seed=4)[k]) for k in a)
    # module scope: one key's draw does not depend on the other keys
    alone = random_prune_like({"neuron/m1": prune["neuron/m1"]}, "module", seed=3)
    assert torch.equal(alone["neuron/m1"], a["neuron/m1"])
    g = random_prune_like(prune, "global", seed=3)
    assert sum(pruned_counts(g).values()) == sum(pruned_counts(prune).values())
    assert [m.shape for m in g.values()] == [m.shape for m in prune.values()]


def test_random_control_is_uniform_within_a_module():
    """Every 2-subset of 6 units equally likely (chi-square over 3000 fixed seeds)."""
    prune = {"neuron/a": torch.tensor([True, True, False, False, False, False])}
    seen = Counter(tuple(random_prune_like(prune, "module", s)["neuron/a"].nonzero().flatten().tolist()) for s in range(3000))
    assert set(seen) == set(itertools.combinations(range(6), 2))
    assert chisquare(list(seen.values())).pvalue > 1e-3


def test_random_control_is_uniform_over_the_pooled_keys():
    """Global scope: the 2 pruned units fall on every 2-subset of the 3 + 5 pooled units equally often."""
    prune = {"head/a": torch.tensor([True, True, False]), "head/b": torch.zeros(5, dtype=torch.bool)}
    seen = Counter()
    for s in range(4000):
        m = random_prune_like(prune, "global", s)
        seen[tuple(torch.cat([m["head/a"], m["head/b"]]).nonzero().flatten().tolist())] += 1
    assert set(seen) == set(itertools.combinations(range(8), 2))
    assert chisquare(list(seen.values())).pvalue > 1e-3


def test_random_control_type_and_scope_checks():
    keep = {"neuron/a": torch.tensor([1, 0, 0, 1, 1], dtype=torch.uint8)}
    with pytest.raises(TypeError, match=r"bool prune masks.*'neuron/a' is torch.uint8.*pass keep-masks as \{key: m == 0\}"):
        random_prune_like(keep, "module", seed=0)
    with pytest.raises(ValueError, match=r"pruning\.scope='layer' is not valid; valid choices: \['module', 'global'\]"):
        random_prune_like({}, "layer", seed=0)


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(p=1.5, q=0.1), r"pruning\.p=1.5 must be a fraction in \[0, 1\]"),
        (dict(p=0.1, q=-0.1), r"pruning\.q=-0.1 must be a fraction"),
        (dict(scope="layer"), r"pruning\.scope='layer' is not valid; valid choices: \['module', 'global'\]"),
        (dict(rule="best"), r"pruning\.rule='best' is not valid; valid choices: \['set_difference', 'target', 'difference'"),
        (dict(rule="difference"), r"pruning\.rule='difference' ranks units and needs a budget: set pruning\.budget"),
        (dict(rule="target", budget="lots"), r"pruning\.budget='lots' is not a budget"),
        (dict(n_target=0, n_reference=3), r"example counts must be positive, got n_target=0"),
        (dict(floor_quantile=1.2), r"pruning\.floor_quantile=1.2 must be a fraction in \[0, 1\]"),
    ],
)
def test_bad_arguments(kwargs, match):
    s = {"neuron/a": torch.ones(3)}
    with pytest.raises(ValueError, match=match):
        select_prune(s, s, **kwargs)


def test_head_flags_in_keep_masks_errors():
    s = {"head/a": torch.ones(3)}
    with pytest.raises(ValueError, match=r"pruning\.head_p=1.5 must be a fraction"):
        keep_masks(s, s, "head", 1.5, 0.1, "global")
    with pytest.raises(ValueError, match=r"pruning\.rule='target' ranks units and needs a budget: set pruning\.head_budget"):
        keep_masks(s, s, "head", 0.1, 0.1, "global", rule="target")


def test_bad_scores():
    with pytest.raises(KeyError, match="reference scores lack 1 unit group"):
        select_prune({"neuron/a": torch.ones(3)}, {}, p=0.1, q=0.1)
    with pytest.raises(ValueError, match=r"target scores of 'neuron/a' hold 1 non-finite value"):
        select_prune({"neuron/a": torch.tensor([1.0, math.nan])}, {"neuron/a": torch.ones(2)})
    with pytest.raises(ValueError, match=r"scores of 'neuron/a' differ in shape: \(2,\) vs \(3,\)"):
        select_prune({"neuron/a": torch.ones(2)}, {"neuron/a": torch.ones(3)})
    with pytest.raises(ValueError, match=r"reference scores of 'neuron/a' have shape \(3, 1\)"):
        select_prune({"neuron/a": torch.ones(3)}, {"neuron/a": torch.ones(3, 1)})
