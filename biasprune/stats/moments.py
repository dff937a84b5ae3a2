"""Uncertainty of one variation's SMD: cluster bootstrap interval and cluster permutation p-value.

(The mean |SMD| over variations, its intervals, noise floor and minimum detectable effect live in
:mod:`biasprune.stats.bootstrap`, :mod:`biasprune.stats.intervals` and :mod:`biasprune.stats.power`; they reuse the
moment helpers below.)

Answers are not independent: every name is asked several times (sampled answers), and the answers about
one name share whatever the model associates with that name. The unit of resampling is therefore the
*name* (a cluster), never the single answer: the bootstrap redraws names within each group and keeps
all answers of each drawn name; the permutation test reshuffles which names are in which group.

Inputs are the inlier answers of one variation: ``values`` (float; NaN values are dropped),
``groups`` (0 = reference, 1 = target; other ids are dropped) and ``clusters`` (one hashable label per
value, e.g. the name). A cluster is a ``(group, label)`` pair, so a label that occurs in both groups
forms two clusters. Clusters are numbered in order of first appearance. The SMD is the one of
:mod:`biasprune.metrics.functional` (pooled sd, unbiased variances, NaN when a group has < 2 values or the
pooled sd is zero).

Both functions work on per-cluster sufficient statistics (count, sum and sum of squares of the
values minus a centre), so each resample costs a few sums and everything is vectorised over resamples.
Centring first (on each group's mean for the bootstrap, on the overall mean for the permutation test)
keeps ``m2 = sum(d^2) - sum(d)^2 / n`` accurate when the values sit far from zero.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from biasprune.metrics.functional import ZERO_SD_RTOL

__all__ = ["bootstrap_smd_ci", "group_moments", "permutation_pvalue", "smd_from_moments"]


@dataclass(frozen=True)
class _Clustered:
    values: np.ndarray  # float64 [N], NaN and non-0/1 groups dropped
    groups: np.ndarray  # int64 [N], 0 or 1
    codes: np.ndarray  # int64 [N], cluster index of each value
    cluster_group: np.ndarray  # int64 [K], group of each cluster


def _clustered(
    values: Sequence[float] | np.ndarray, groups: Sequence[int] | np.ndarray, clusters: Sequence[Hashable] | np.ndarray
) -> _Clustered:
    v = np.asarray(values, dtype=np.float64).ravel()
    g = np.asarray(groups).ravel()
    c = np.asarray(clusters, dtype=object).ravel()
    if not v.size == g.size == c.size:
        raise ValueError(f"values, groups and clusters must have the same length, got {v.size}, {g.size} and {c.size}")
    keep = ~np.isnan(v) & ((g == 0) | (g == 1))
    v, g, c = v[keep], g[keep].astype(np.int64), c[keep]
    index: dict[tuple[int, Hashable], int] = {}
    codes = np.fromiter(
        (index.setdefault((int(gi), ci), len(index)) for gi, ci in zip(g, c)), dtype=np.int64, count=v.size
    )
    cluster_group = np.fromiter((k[0] for k in index), dtype=np.int64, count=len(index))
    return _Clustered(v, g, codes, cluster_group)


def smd_from_moments(
    n_r: np.ndarray, mean_r: np.ndarray, m2_r: np.ndarray, n_t: np.ndarray, mean_t: np.ndarray, m2_t: np.ndarray
) -> np.ndarray:
    """Vectorised SMD ``(mean_r - mean_t) / sqrt((m2_r + m2_t) / (n_r + n_t - 2))`` with the NaN rules of
    :func:`biasprune.metrics.functional.smd_compute` (a group with < 2 values, zero or non-finite pooled sd)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s_pooled = np.sqrt((m2_r + m2_t) / np.maximum(n_r + n_t - 2.0, 1.0))
        smd = (mean_r - mean_t) / s_pooled
        scale = np.maximum(np.abs(mean_r), np.abs(mean_t))
        undefined = (n_r < 2) | (n_t < 2) | ~(s_pooled > ZERO_SD_RTOL * scale) | ~np.isfinite(s_pooled)
    return np.where(undefined, np.nan, smd)


def group_moments(
    n: np.ndarray, s: np.ndarray, q: np.ndarray, centre: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, mean, m2) from count, sum and sum of squares of ``value - centre``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = centre + s / n
        m2 = np.maximum(q - s * s / n, 0.0)  # rounding can leave a tiny negative for constant values
    return n, mean, m2


def _observed_smd(data: _Clustered) -> float:
    """The SMD of the data, two-pass per group (as :func:`biasprune.metrics.functional.standardized_mean_difference`)."""
    moments = []
    for g in (0, 1):
        x = data.values[data.groups == g]
        if x.size == 0:
            moments += [0.0, 0.0, 0.0]
            continue
        mean = x.mean()
        mean += (x - mean).mean()
        moments += [float(x.size), mean, float(((x - mean) ** 2).sum())]
    return float(smd_from_moments(*(np.asarray(m, dtype=np.float64) for m in moments)))


def bootstrap_smd_ci(
    values: Sequence[float] | np.ndarray,
    groups: Sequence[int] | np.ndarray,
    clusters: Sequence[Hashable] | np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile ``1 - alpha`` interval of the SMD under a cluster (name) bootstrap.

    Each of the ``n_boot`` resamples draws, within each group separately, as many clusters as the group
    has, uniformly with replacement, and keeps all values of every drawn cluster (a cluster drawn twice
    counts twice); the SMD of the resample is computed as usual. The interval is the
    ``(alpha/2, 1 - alpha/2)`` quantiles (``np.quantile``, linear interpolation) of the resampled SMDs.
    Resamples whose SMD is undefined (NaN) are left out.

    Draws, for reproducibility: ``rng = np.random.default_rng(seed)``, then for group 0 and then group 1,
    ``rng.integers(0, k_g, size=(n_boot, k_g))`` (cluster indices within the group, clusters numbered
    in order of first appearance).

    Returns:
        ``(low, high)`` as floats; ``(nan, nan)`` when the observed SMD is NaN (a group with < 2 values,
        zero pooled sd) or no resample gives a defined SMD.

    Raises:
        ValueError: lengths differ, ``n_boot < 1`` or ``alpha`` not in (0, 1).
    """
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    data = _clustered(values, groups, clusters)
    if math.isnan(_observed_smd(data)):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    moments: list[np.ndarray] = []
    for g in (0, 1):
        in_group = data.groups == g
        x = data.values[in_group]
        centre = float(x.mean())
        # Renumber this group's clusters 0..k_g-1 (first-appearance order is kept).
        local = np.cumsum(data.cluster_group == g) - 1
        codes = local[data.codes[in_group]]
        k = int((data.cluster_group == g).sum())
        d = x - centre
        cnt = np.bincount(codes, minlength=k).astype(np.float64)
        s = np.bincount(codes, weights=d, minlength=k)
        q = np.bincount(codes, weights=d * d, minlength=k)
        idx = rng.integers(0, k, size=(int(n_boot), k))
        moments += group_moments(cnt[idx].sum(axis=1), s[idx].sum(axis=1), q[idx].sum(axis=1), centre)
    smd = smd_from_moments(*moments)
    smd = smd[~np.isnan(smd)]
    if smd.size == 0:
        return math.nan, math.nan
    low, high = np.quantile(smd, [float(alpha) / 2.0, 1.0 - float(alpha) / 2.0])
    return float(low), float(high)


def permutation_pvalue(
    values: Sequence[float] | np.ndarray,
    groups: Sequence[int] | np.ndarray,
    clusters: Sequence[Hashable] | np.ndarray,
    n_perm: int = 1000,
    seed: int = 0,
) -> float:
    """Two-sided Monte Carlo permutation p-value of the SMD, permuting group labels across clusters.

    Each permutation shuffles the group labels of the clusters (names), keeping the number of clusters
    per group; every value follows its cluster. With ``SMD_obs`` the observed SMD::

        p = (1 + #{perm : |SMD_perm| >= |SMD_obs|}) / (1 + n_valid)

    where ``n_valid`` counts the permutations with a defined SMD (the others are left out). The ``+1``
    counts the observed assignment itself, so ``p`` is never 0 and the test is valid (Phipson & Smyth,
    2010). Ties are decided with a relative tolerance of ``100 * eps`` (as scipy's ``permutation_test``),
    so that rounding never hides a permutation equivalent to the observed one.

    Draws, for reproducibility: ``rng = np.random.default_rng(seed)``, then
    ``rng.permuted(np.tile(cluster_group, (n_perm, 1)), axis=1)`` with ``cluster_group`` the group of each
    cluster in order of first appearance.

    Returns:
        ``p`` in (0, 1] as a float; NaN when the observed SMD is NaN.

    Raises:
        ValueError: lengths differ or ``n_perm < 1``.
    """
    if int(n_perm) < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")
    data = _clustered(values, groups, clusters)
    observed = _observed_smd(data)
    if math.isnan(observed):
        return math.nan
    centre = float(data.values.mean())
    d = data.values - centre
    k = data.cluster_group.size
    cnt = np.bincount(data.codes, minlength=k).astype(np.float64)
    s = np.bincount(data.codes, weights=d, minlength=k)
    q = np.bincount(data.codes, weights=d * d, minlength=k)
    rng = np.random.default_rng(seed)
    permuted = rng.permuted(np.tile(data.cluster_group, (int(n_perm), 1)), axis=1)
    # Row 0 is the observed assignment, computed the same way as the permutations so that an
    # equivalent permutation reproduces it up to the last bits (the tolerance covers the rest).
    target = np.vstack([data.cluster_group[None, :], permuted]) == 1  # [1 + n_perm, K]
    stats = np.stack([cnt, s, q], axis=1)  # [K, 3]
    tgt = target.astype(np.float64) @ stats  # per row: count, sum and sum of squares of the target group
    ref = (~target).astype(np.float64) @ stats
    smd = smd_from_moments(*group_moments(*ref.T, centre), *group_moments(*tgt.T, centre))
    if not math.isnan(smd[0]):
        observed = float(smd[0])
    smd = smd[1:]
    valid = ~np.isnan(smd)
    tol = 100 * np.finfo(np.float64).eps * abs(observed)
    extreme = np.abs(smd[valid]) >= abs(observed) - tol
    return float((1 + extreme.sum()) / (1 + valid.sum()))

