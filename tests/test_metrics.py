"""SMD and inlier ratio: torchmetrics classes vs functional vs independent numpy / scipy references."""

from __future__ import annotations

import math
import socket
import warnings
from decimal import Context, Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from scipy import stats

from biasprune.metrics.classes import InlierRatio, StandardizedMeanDifference
from biasprune.metrics.functional import (
    inlier_ratio,
    merge_moments,
    smd_compute,
    smd_update,
    standardized_mean_difference,
)

# ---- independent references ------------------------------------------------------------------------


def ref_smd(values: np.ndarray, groups: np.ndarray) -> float:
    """Pooled-sd SMD straight from the definition, with numpy's (two-pass) unbiased variance."""
    v, g = np.asarray(values, dtype=np.float64), np.asarray(groups)
    r, t = v[(g == 0) & ~np.isnan(v)], v[(g == 1) & ~np.isnan(v)]
    if r.size < 2 or t.size < 2:
        return math.nan
    s = math.sqrt(((r.size - 1) * np.var(r, ddof=1) + (t.size - 1) * np.var(t, ddof=1)) / (r.size + t.size - 2))
    return math.nan if s == 0 else float((r.mean() - t.mean()) / s)


def exact_smd(values: np.ndarray, groups: np.ndarray) -> float:
    """The SMD of the float64 inputs in exact rational arithmetic (50-digit square root).

    The reference for values far from zero: there even numpy's mean is off by an ulp or two of 1e6,
    which is ~1e-9 of an SMD of 0.2 (the numerator is a difference of two numbers near 1e6).
    """
    v, g = np.asarray(values, dtype=np.float64), np.asarray(groups)
    r = [Fraction(x) for x in v[(g == 0) & ~np.isnan(v)]]
    t = [Fraction(x) for x in v[(g == 1) & ~np.isnan(v)]]
    mean_r, mean_t = sum(r) / len(r), sum(t) / len(t)
    var_pooled = (sum((x - mean_r) ** 2 for x in r) + sum((x - mean_t) ** 2 for x in t)) / (len(r) + len(t) - 2)
    with localcontext(Context(prec=50)):
        num = Decimal(mean_r.numerator) / Decimal(mean_r.denominator) - Decimal(mean_t.numerator) / Decimal(mean_t.denominator)
        return float(num / (Decimal(var_pooled.numerator) / Decimal(var_pooled.denominator)).sqrt())


def scipy_smd(values: np.ndarray, groups: np.ndarray) -> float:
    """SMD from scipy's pooled two-sample t statistic: t = SMD / sqrt(1/n_r + 1/n_t)."""
    v, g = np.asarray(values, dtype=np.float64), np.asarray(groups)
    r, t = v[(g == 0) & ~np.isnan(v)], v[(g == 1) & ~np.isnan(v)]
    res = stats.ttest_ind(r, t, equal_var=True)
    return float(res.statistic * math.sqrt(1 / r.size + 1 / t.size))


def make_data(seed: int, n_ref: int, n_tgt: int, loc: float = 0.0, effect: float = 0.4, nan_frac: float = 0.0):
    """Shuffled values of two normal groups (optionally with NaNs and stray group ids 2 and -1)."""
    rng = np.random.default_rng(seed)
    v = np.concatenate([rng.normal(loc + effect, 1.0, n_ref), rng.normal(loc, 1.3, n_tgt), rng.normal(loc, 5.0, 7)])
    g = np.concatenate([np.zeros(n_ref, np.int64), np.ones(n_tgt, np.int64), np.array([2, 2, -1, 3, 2, -1, 5])])
    v[rng.random(v.size) < nan_frac] = np.nan
    perm = rng.permutation(v.size)
    return v[perm], g[perm]


def batches(v: np.ndarray, g: np.ndarray, sizes: list[int]):
    """Split into consecutive batches of the given sizes (the last one takes the rest)."""
    cuts = [0, *np.cumsum(sizes).tolist(), len(v)]
    return [(torch.from_numpy(v[a:b]), torch.from_numpy(g[a:b])) for a, b in zip(cuts[:-1], cuts[1:])]


# ---- StandardizedMeanDifference ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("n_ref", "n_tgt"), [(2, 2), (3, 40), (57, 13), (500, 321)])
def test_smd_matches_numpy_and_scipy(seed: int, n_ref: int, n_tgt: int) -> None:
    v, g = make_data(seed, n_ref, n_tgt)
    expected = ref_smd(v, g)
    assert expected == pytest.approx(scipy_smd(v, g), rel=1e-10)
    functional = standardized_mean_difference(torch.from_numpy(v), torch.from_numpy(g))
    assert functional.dtype == torch.float64 and functional.ndim == 0
    assert functional.item() == pytest.approx(expected, rel=1e-12)
    m = StandardizedMeanDifference()
    m.update(torch.from_numpy(v), torch.from_numpy(g))
    assert m.compute().item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_smd_with_nans_and_many_batches(seed: int) -> None:
    v, g = make_data(seed, 211, 97, nan_frac=0.2)
    expected = ref_smd(v, g)
    assert not math.isnan(expected)
    one = StandardizedMeanDifference()
    one.update(torch.from_numpy(v), torch.from_numpy(g))
    many = StandardizedMeanDifference()
    for bv, bg in batches(v, g, [1, 0, 5, 50, 3, 100]):  # includes a 1-element and an empty batch
        many.update(bv, bg)
    assert one.compute().item() == pytest.approx(expected, rel=1e-12)
    assert many.compute().item() == pytest.approx(expected, rel=1e-12)


def test_smd_large_offset_is_exact() -> None:
    """Values near 1e6 with sd 1: sums of squares would lose ~12 digits; the moments must not."""
    v, g = make_data(0, 3000, 2000, loc=1e6, effect=0.3)
    expected = exact_smd(v, g)
    assert ref_smd(v, g) == pytest.approx(expected, rel=1e-8)  # numpy: right up to its own rounding
    m = StandardizedMeanDifference()
    for bv, bg in batches(v, g, [17, 1000, 1, 2222]):
        m.update(bv, bg)
    assert m.compute().item() == pytest.approx(expected, rel=1e-9)
    assert standardized_mean_difference(v, g).item() == pytest.approx(expected, rel=1e-9)
    # Each group alone is a merge of many small batches: its moments match numpy's.
    n, mean, m2 = m.n, m.mean, m.m2
    r = v[g == 0]
    assert n[0].item() == r.size
    assert mean[0].item() == pytest.approx(r.mean(), rel=1e-15)
    assert m2[0].item() == pytest.approx(np.var(r) * r.size, rel=1e-9)


def test_smd_accepts_float32_lists_and_any_shape() -> None:
    v, g = make_data(3, 30, 20)
    expected = ref_smd(v.astype(np.float32).astype(np.float64), g)
    assert standardized_mean_difference(torch.from_numpy(v).float(), torch.from_numpy(g)).item() == pytest.approx(expected, rel=1e-12)
    assert standardized_mean_difference(v.tolist(), g.tolist()).item() == pytest.approx(ref_smd(v, g), rel=1e-12)
    vv, gg = v[:56].reshape(7, 8), g[:56].reshape(7, 8)
    assert standardized_mean_difference(torch.from_numpy(vv), torch.from_numpy(gg)).item() == pytest.approx(ref_smd(vv.ravel(), gg.ravel()), rel=1e-12)


def test_smd_sign_and_known_value() -> None:
    # ref mean 2, target mean 1, both variances 1 -> SMD = +1 (the reference gets more).
    v = torch.tensor([1.0, 2.0, 3.0, 0.0, 1.0, 2.0])
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    assert standardized_mean_difference(v, g).item() == 1.0
    assert standardized_mean_difference(v, 1 - g).item() == -1.0


@pytest.mark.parametrize(
    ("values", "groups"),
    [
        ([], []),  # nothing at all
        ([1.0, 2.0, 3.0], [0, 0, 0]),  # no target
        ([1.0, 2.0, 3.0, 4.0], [0, 0, 0, 1]),  # target with 1 value
        ([1.0, 5.0, 3.0, 4.0], [0, 1, 1, 1]),  # reference with 1 value
        ([1.0, math.nan, 3.0, 4.0], [0, 0, 1, 1]),  # reference down to 1 value after dropping NaN
        ([math.nan] * 6, [0, 0, 0, 1, 1, 1]),  # all NaN
        ([5.0, 5.0, 5.0, 3.0, 3.0], [0, 0, 0, 1, 1]),  # zero pooled sd
        ([0.1] * 7 + [0.3] * 5, [0] * 7 + [1] * 5),  # zero pooled sd, values not exact in binary
        ([1e6 + 0.1] * 9 + [0.7] * 4, [0] * 9 + [1] * 4),  # same, far from zero
        ([math.inf, 1.0, 2.0, 3.0], [0, 0, 1, 1]),  # infinite value
        ([1.0, 2.0, 3.0, 4.0], [2, 2, 3, -1]),  # only stray group ids
    ],
)
def test_smd_undefined_is_nan_never_raises(values: list[float], groups: list[int]) -> None:
    v = torch.tensor(values, dtype=torch.float64)
    g = torch.tensor(groups, dtype=torch.long)
    assert math.isnan(standardized_mean_difference(v, g).item())
    m = StandardizedMeanDifference()
    m.update(v, g)
    assert math.isnan(m.compute().item())


def test_smd_compute_before_update_is_nan() -> None:
    m = StandardizedMeanDifference()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns about compute() before update()
        assert math.isnan(m.compute().item())


def test_smd_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="same number of elements"):
        standardized_mean_difference(torch.zeros(3), torch.zeros(4))


def test_merge_moments_is_exact_and_empty_passes_through() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(1e6, 1.0, 400), rng.normal(1e6 + 2, 3.0, 33)
    ga, gb = np.zeros(a.size, np.int64), np.zeros(b.size, np.int64)
    n, mean, m2 = merge_moments(*smd_update(a, ga), *smd_update(b, gb))
    both = np.concatenate([a, b])
    assert n[0].item() == both.size
    assert mean[0].item() == pytest.approx(both.mean(), rel=1e-15)
    assert m2[0].item() == pytest.approx(np.var(both) * both.size, rel=1e-10)
    empty = smd_update(np.array([]), np.array([], dtype=np.int64))
    mom = smd_update(a, ga)
    for x, y in zip(merge_moments(*empty, *mom), mom):
        assert torch.equal(x, y)
    for x, y in zip(merge_moments(*mom, *empty), mom):
        assert torch.equal(x, y)


def test_smd_compute_folds_stacked_states() -> None:
    """compute() after a DDP gather sees [world, 2] states; it must merge them, not misread them."""
    v, g = make_data(11, 80, 60)
    parts = [smd_update(bv, bg) for bv, bg in batches(v, g, [30, 0, 41])]
    stacked = [torch.stack([p[i] for p in parts]) for i in range(3)]
    assert smd_compute(*stacked).item() == pytest.approx(ref_smd(v, g), rel=1e-12)


def test_smd_forward_and_merge_state() -> None:
    """forward() returns the batch value and accumulates; merge_state combines two metrics exactly."""
    v, g = make_data(5, 120, 90)
    parts = batches(v, g, [70, 40, 50])
    m = StandardizedMeanDifference()
    for bv, bg in parts:
        batch_val = m(bv, bg)
        assert batch_val.item() == pytest.approx(ref_smd(bv.numpy(), bg.numpy()), rel=1e-12, nan_ok=True)
    assert m.n.shape == (2,)
    assert m.compute().item() == pytest.approx(ref_smd(v, g), rel=1e-12)

    left, right = StandardizedMeanDifference(), StandardizedMeanDifference()
    left.update(*parts[0])
    for bv, bg in parts[1:]:
        right.update(bv, bg)
    left.merge_state(right)
    assert left.compute().item() == pytest.approx(ref_smd(v, g), rel=1e-12)


def test_smd_reset() -> None:
    v, g = make_data(1, 20, 20)
    m = StandardizedMeanDifference()
    m.update(torch.from_numpy(v + 100.0), torch.from_numpy(g))
    m.reset()
    m.update(torch.from_numpy(v), torch.from_numpy(g))
    assert m.compute().item() == pytest.approx(ref_smd(v, g), rel=1e-12)


def test_smd_attributes() -> None:
    m = StandardizedMeanDifference()
    assert m.higher_is_better is None and m.is_differentiable is False and m.full_state_update is False
    assert all(getattr(m, s).dtype == torch.float64 and getattr(m, s).shape == (2,) for s in ("n", "mean", "m2"))
    assert m._reductions["n"] is None


# ---- InlierRatio ---------------------------------------------------------------------------------------


def ref_inlier_ratio(values: np.ndarray, lower: float, upper: float) -> float:
    v = np.asarray(values, dtype=np.float64)
    return math.nan if v.size == 0 else float(np.count_nonzero((v >= lower) & (v <= upper)) / v.size)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("lower", "upper"), [(-1.0, 1.0), (0.0, 0.0), (-math.inf, 0.5), (0.25, math.inf), (-math.inf, math.inf)])
def test_inlier_ratio_matches_numpy(seed: int, lower: float, upper: float) -> None:
    rng = np.random.default_rng(seed)
    v = np.round(rng.normal(size=301), 1)  # rounded: many values exactly on the bounds
    v[rng.random(v.size) < 0.15] = np.nan
    expected = ref_inlier_ratio(v, lower, upper)
    assert inlier_ratio(torch.from_numpy(v), lower, upper).item() == pytest.approx(expected, rel=1e-15)
    m = InlierRatio(lower, upper)
    for part in np.split(v, [10, 10, 200]):
        m.update(torch.from_numpy(part))
    out = m.compute()
    assert out.dtype == torch.float64 and out.item() == pytest.approx(expected, rel=1e-15)


def test_inlier_ratio_counts_nan_and_bounds_are_inclusive() -> None:
    v = torch.tensor([[1.0, 5.0], [10.0, 10.5], [math.nan, -0.0]])
    assert inlier_ratio(v, 0.0, 10.0).item() == pytest.approx(4 / 6)
    m = InlierRatio(0, 10)
    m.update(v)
    assert m.compute().item() == pytest.approx(4 / 6)
    assert (m.n_inlier.item(), m.n_total.item()) == (4, 6)
    assert inlier_ratio(torch.tensor([math.nan, math.nan]), 0.0, 1.0).item() == 0.0


def test_inlier_ratio_empty_is_nan() -> None:
    assert math.isnan(inlier_ratio(torch.tensor([]), 0.0, 1.0).item())
    m = InlierRatio(0.0, 1.0)
    m.update(torch.tensor([]))
    assert math.isnan(m.compute().item())


@pytest.mark.parametrize(
    ("lower", "upper", "match"),
    [
        (2.0, 1.0, r"lower must be <= upper, got lower=2\.0 > upper=1\.0"),
        (math.inf, 1.0, r"lower must be <= upper"),
        (math.nan, 1.0, r"lower must not be NaN"),
        (0.0, math.nan, r"upper must not be NaN"),
        ("0", 1.0, r"lower must be a real number or ±inf, got '0'"),
        (0.0, None, r"upper must be a real number or ±inf, got None"),
        (True, 2.0, r"lower must be a real number"),
        (0.0, [1.0], r"upper must be a real number"),
    ],
)
def test_inlier_ratio_constructor_errors(lower: object, upper: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        InlierRatio(lower, upper)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        inlier_ratio(torch.zeros(2), lower, upper)  # type: ignore[arg-type]


def test_inlier_ratio_accepts_ints_numpy_and_tensor_bounds() -> None:
    assert InlierRatio(0, 10).upper == 10.0
    assert InlierRatio(np.float32(0.5), torch.tensor(2.0)).lower == 0.5
    assert InlierRatio(-math.inf, math.inf).lower == -math.inf


# ---- DDP: 2 gloo processes, unequal shards ----------------------------------------------------------


def _ddp_worker(rank: int, world: int, port: int, shards: list, out) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        smd, ratio, one_sided = StandardizedMeanDifference(), InlierRatio(999_999.0, 1_000_001.0), StandardizedMeanDifference()
        v, g, sizes = shards[rank]
        for bv, bg in batches(v, g, sizes):
            smd.update(bv, bg)
            ratio.update(bv)
        # On rank 1 only reference values: that rank's target moments are empty and must merge cleanly.
        keep = g == 0 if rank == 1 else np.ones(g.size, bool)
        one_sided.update(torch.from_numpy(v[keep]), torch.from_numpy(g[keep]))
        out.put((rank, smd.compute().item(), ratio.compute().item(), one_sided.compute().item(), smd.n.shape))
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_single_process() -> None:
    v, g = make_data(42, 700, 450, loc=1e6, effect=0.25, nan_frac=0.1)
    cut = 377  # unequal shards: 377 and 780 values
    shards = [(v[:cut], g[:cut], [100, 1]), (v[cut:], g[cut:], [5, 400, 0])]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    q = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_ddp_worker, args=(2, port, shards, q), nprocs=2, start_method="spawn")
    results = sorted(q.get() for _ in range(2))

    expected_smd = exact_smd(v, g)
    expected_ratio = ref_inlier_ratio(v, 999_999.0, 1_000_001.0)
    keep = np.concatenate([np.ones(cut, bool), g[cut:] == 0])
    expected_one_sided = exact_smd(v[keep], g[keep])
    single = StandardizedMeanDifference()
    single.update(torch.from_numpy(v), torch.from_numpy(g))
    single_smd = single.compute().item()
    assert single_smd == pytest.approx(expected_smd, rel=1e-9)
    for rank, smd, ratio, one_sided, local_shape in results:
        assert smd == pytest.approx(single_smd, rel=1e-9), rank
        assert smd == pytest.approx(expected_smd, rel=1e-9), rank
        assert ratio == pytest.approx(expected_ratio, rel=1e-15), rank
        assert one_sided == pytest.approx(expected_one_sided, rel=1e-9), rank
        assert tuple(local_shape) == (2,)  # compute() restored the local (unsynced) state
