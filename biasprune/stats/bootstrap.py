"""Mean |SMD| over variations: a name bootstrap clustered across variations and paired across arms, and its noise floor.

Data model. An *arm* (the unpruned model, a pruned model, one random-mask draw, ...) is evaluated on V
variations that ask about the SAME names. Its inlier answers on one variation are flat arrays
``(values float[N], groups int[N], names [N])`` (:data:`Answers`): NaN values and groups other than
0 (reference) and 1 (target) are dropped; ``names`` are the cluster labels, and a name belongs to one
group everywhere. An arm is a sequence of V such triples (:data:`ArmAnswers`), in the same variation
order in every arm.

Everything runs on per-name sufficient statistics (:class:`NameMoments`: count, mean and m2 of each
name's answers, per arm and variation). A *weighting* of the names (how often each name is in a
resample, or which group a permutation puts it in) turns them into per-group moments with matrix
products, so the cost of a draw does not depend on the number of answers::

    N_g = sum_k w_gk n_k      S_g = sum_k w_gk n_k (mean_k - c)      Q_g = sum_k w_gk (m2_k + n_k (mean_k - c)^2)
    mean_g = c + S_g / N_g    m2_g = Q_g - S_g^2 / N_g
    SMD = (mean_0 - mean_1) / sqrt((m2_0 + m2_1) / (N_0 + N_1 - 2))

with ``c`` the arm's mean answer on the variation (centring keeps ``m2`` exact for values far from 0)
and the NaN rules of :func:`biasprune.metrics.functional.standardized_mean_difference`. A bootstrap keeps |SMD| per
arm, draw and variation (:class:`PairedBootstrap`), so that a contrast of arms can average over the variations
defined in every arm it involves, draw by draw (:mod:`biasprune.stats.intervals`); an arm on its own is averaged over
its defined variations (NaN if none is). The utility rates (share of all answers passing a test) are resampled
with the very same name weights (:func:`utility_bootstrap`).

Why clustered across variations: the answers about one name share what the model associates with that
name in every variation, so the variations' SMDs are correlated through the names. Redrawing names
independently per variation treats them as independent and gives intervals that are too narrow. Here one
draw of names is applied to every variation and every arm (so differences between arms are paired).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from biasprune.stats.moments import group_moments, smd_from_moments

__all__ = [
    "Answers",
    "ArmAnswers",
    "NameMoments",
    "NullFloor",
    "PairedBootstrap",
    "bootstrap_mean_abs_smd",
    "null_mean_abs_smd",
    "UtilityBootstrap",
    "paired_bootstrap",
    "utility_bootstrap",
]

Answers = tuple[np.ndarray, np.ndarray, np.ndarray]
"""One arm's inlier answers on one variation: ``(values float[N], groups int[N], names [N])``."""
ArmAnswers = Sequence[Answers]
"""One arm's answers, one :data:`Answers` per variation (same variation order in every arm)."""

_CHUNK = 512  # weightings per matrix product: bounds memory at [_CHUNK, arms x variations]


@dataclass(frozen=True, eq=False)
class NameMoments:
    """Per arm, variation and name: count, mean and m2 (sum of squared deviations) of the answers.

    ``names`` lists group 0's names and then group 1's, each in sorted order (order of first appearance
    when the names do not sort); ``groups`` gives each name's group. A name without answers in an arm and
    variation has ``count = mean = m2 = 0`` there. Arrays ``count``, ``mean``, ``m2`` are ``[A, V, K]``.
    """

    names: np.ndarray  # object [K]
    groups: np.ndarray  # int64 [K], non-decreasing
    count: np.ndarray  # float64 [A, V, K]
    mean: np.ndarray  # float64 [A, V, K]
    m2: np.ndarray  # float64 [A, V, K]

    def __post_init__(self) -> None:
        k = self.groups.size
        if self.count.ndim != 3 or not self.count.shape == self.mean.shape == self.m2.shape or self.count.shape[2] != k:
            raise ValueError(
                f"NameMoments: count, mean and m2 must share one shape [arms, variations, {k} names], got "
                f"{self.count.shape}, {self.mean.shape} and {self.m2.shape}"
            )
        if self.names.size != k or np.any(np.diff(self.groups) < 0) or not np.isin(self.groups, (0, 1)).all():
            raise ValueError("NameMoments: names and groups must have one entry per name, group 0's names first")

    @property
    def n_arms(self) -> int:
        return self.count.shape[0]

    @property
    def n_variations(self) -> int:
        return self.count.shape[1]

    @property
    def names_per_group(self) -> tuple[int, int]:
        return int((self.groups == 0).sum()), int((self.groups == 1).sum())

    @classmethod
    def from_answers(cls, arms: Sequence[ArmAnswers], names: Mapping[Hashable, int] | None = None) -> NameMoments:
        """Moments of ``arms[a][v] = (values, groups, names)``; the names are the union over all arms.

        ``names`` (name -> group) adds the names of the design that have no answer left in any arm (e.g. every
        answer unparseable), so that a resample draws among all the names that were asked, as the utility
        bootstrap does.

        Raises:
            ValueError: no arm or no variation, arms with different numbers of variations, arrays of
                different lengths, or a name found in both groups.
        """
        if len(arms) == 0:
            raise ValueError("arms is empty: give at least one arm's answers")
        n_var = len(arms[0])
        if n_var == 0:
            raise ValueError("arms[0] has no variations: give one (values, groups, names) per variation")
        cells = []  # (a, v, unique names, inverse codes, values)
        group_of: dict[Hashable, tuple[int, int, int]] = {}  # name -> (group, arm, variation) where first seen
        for name, gi in (names or {}).items():
            if gi in (0, 1):
                group_of[name] = (int(gi), -1, -1)
        for a, arm in enumerate(arms):
            if len(arm) != n_var:
                raise ValueError(
                    f"arms[{a}] has {len(arm)} variations, arms[0] has {n_var}: every arm needs the same variations"
                )
            for v, answers in enumerate(arm):
                x, g, c = (np.asarray(part) for part in answers)
                x, g, c = x.astype(np.float64).ravel(), g.ravel(), c.ravel()
                if not x.size == g.size == c.size:
                    sizes = f"{x.size}, {g.size} and {c.size}"
                    raise ValueError(f"arms[{a}][{v}]: values, groups and names must have the same length, got {sizes}")
                keep = ~np.isnan(x) & ((g == 0) | (g == 1))
                x, g, c = x[keep], g[keep].astype(np.int64), c[keep]
                uniq, first, inv = _unique(c)
                gu = g[first]
                if np.any(g != gu[inv]):
                    bad = uniq[inv[np.flatnonzero(g != gu[inv])[0]]]
                    raise ValueError(f"arms[{a}][{v}]: name {bad!r} is in both groups; a name belongs to one group")
                for name, gi in zip(uniq.tolist(), gu.tolist()):
                    seen = group_of.setdefault(name, (gi, a, v))
                    if seen[0] != gi:
                        where = "the names given" if seen[1] < 0 else f"arms[{seen[1]}][{seen[2]}]"
                        raise ValueError(
                            f"name {name!r} is in group {seen[0]} in {where} and in group {gi} in "
                            f"arms[{a}][{v}]; a name belongs to one group"
                        )
                cells.append((a, v, uniq, inv, x))
        ordered = [_sorted([n for n, s in group_of.items() if s[0] == g]) for g in (0, 1)]
        names = np.empty(len(group_of), dtype=object)
        names[:] = ordered[0] + ordered[1]
        index = {n: i for i, n in enumerate(names.tolist())}
        shape = (len(arms), n_var, names.size)
        count, mean, m2 = np.zeros(shape), np.zeros(shape), np.zeros(shape)
        for a, v, uniq, inv, x in cells:
            if x.size == 0:
                continue
            cols = np.array([index[n] for n in uniq.tolist()], dtype=np.int64)
            n = np.bincount(inv, minlength=uniq.size).astype(np.float64)
            mu = np.bincount(inv, weights=x, minlength=uniq.size) / n
            mu += np.bincount(inv, weights=x - mu[inv], minlength=uniq.size) / n  # second pass removes rounding
            count[a, v, cols] = n
            mean[a, v, cols] = mu
            m2[a, v, cols] = np.bincount(inv, weights=(x - mu[inv]) ** 2, minlength=uniq.size)
        groups = np.repeat(np.array([0, 1], dtype=np.int64), [len(ordered[0]), len(ordered[1])])
        return cls(names, groups, count, mean, m2)


def _unique(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(c, return_index=True, return_inverse=True)``, also for labels that do not sort."""
    try:
        uniq, first, inv = np.unique(c, return_index=True, return_inverse=True)
        return uniq, first, inv.ravel()
    except TypeError:
        codes: dict[Hashable, int] = {}
        inv = np.fromiter((codes.setdefault(x, len(codes)) for x in c.tolist()), dtype=np.int64, count=c.size)
        uniq = np.empty(len(codes), dtype=object)
        uniq[:] = list(codes)
        first = np.unique(inv, return_index=True)[1]
        return uniq, first, inv


def _sorted(names: list[Hashable]) -> list[Hashable]:
    try:
        return sorted(names)  # type: ignore[type-var]
    except TypeError:
        return names  # first-appearance order


def _as_moments(arms: Sequence[ArmAnswers] | NameMoments) -> NameMoments:
    return arms if isinstance(arms, NameMoments) else NameMoments.from_answers(arms)


def weighted_smd(m: NameMoments, w_ref: np.ndarray, w_target: np.ndarray) -> np.ndarray:
    """Signed SMD ``[D, A, V]`` of each weighting ``d``: name k counts ``w_ref[d, k]`` times in the
    reference group and ``w_target[d, k]`` times in the target group (formulas in the module docstring)."""
    a, v, k = m.count.shape
    total = m.count.sum(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        centre = np.where(total > 0, (m.count * m.mean).sum(axis=2) / total, 0.0)
    dev = m.mean - centre[..., None]
    stats = [x.reshape(a * v, k).T for x in (m.count, m.count * dev, m.m2 + m.count * dev * dev)]  # [K, A*V]
    c = centre.reshape(-1)
    out = np.empty((w_ref.shape[0], a * v))
    for start in range(0, w_ref.shape[0], _CHUNK):
        rows = slice(start, start + _CHUNK)
        ref = group_moments(*(w_ref[rows] @ s for s in stats), c)
        tgt = group_moments(*(w_target[rows] @ s for s in stats), c)
        out[rows] = smd_from_moments(*ref, *tgt)
    return out.reshape(-1, a, v)


def _mean_abs(smd: np.ndarray) -> np.ndarray:
    """``[D, A, V]`` signed SMDs -> ``[A, D]`` mean |SMD| over the defined variations (NaN if none)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all variations undefined: NaN, as documented
        return np.nanmean(np.abs(smd), axis=2).T


def _group_weights(groups: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return w * (groups == 0), w * (groups == 1)


def _bootstrap_weights(groups: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``W[b, k]``: how often name k is drawn in draw b. Draws: ``rng = np.random.default_rng(seed)``, then for
    group 0 and then group 1 (a group without names draws nothing), ``rng.integers(0, K_g, size=(n_boot, K_g))``,
    indices into that group's names in :class:`NameMoments` order."""
    rng = np.random.default_rng(seed)
    w = np.zeros((n_boot, groups.size))
    rows = np.arange(n_boot)[:, None]
    for g in (0, 1):
        members = np.flatnonzero(groups == g)
        if members.size:
            np.add.at(w, (rows, members[rng.integers(0, members.size, size=(n_boot, members.size))]), 1.0)
    return w


def _check_count(flag: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{flag} must be an integer >= 1, got {value!r}")
    return int(value)


@dataclass(frozen=True, eq=False)
class PairedBootstrap:
    """Shared name-bootstrap draws of several arms' |SMD| per variation, with the leave-one-name-out jackknife.

    Every array's first axis is the arm (in the order given). ``smd[a, v]`` is the observed signed SMD (NaN =
    undefined), ``abs_draws[a, b, v]`` the |SMD| of draw b and ``abs_jackknife[a, k, v]`` the |SMD| with name k
    left out of every variation (``name_groups[k]`` is its group). A contrast of arms averages |SMD| over the
    variations defined in every arm it involves, in the estimate and in each draw separately
    (:mod:`biasprune.stats.intervals`); ``estimate``, ``draws`` and ``jackknife`` are each arm's own mean |SMD|
    over its defined variations (NaN when none is).
    """

    labels: tuple[str, ...]
    smd: np.ndarray  # [A, V]
    abs_draws: np.ndarray  # [A, n_boot, V]
    abs_jackknife: np.ndarray  # [A, K, V]
    name_groups: np.ndarray  # [K]
    seed: int

    @property
    def n_boot(self) -> int:
        return self.abs_draws.shape[1]

    @property
    def n_variations(self) -> int:
        return self.smd.shape[1]

    @property
    def estimate(self) -> np.ndarray:
        """``[A]`` each arm's mean |SMD| over its defined variations."""
        return _nanmean_last(np.abs(self.smd))

    @property
    def draws(self) -> np.ndarray:
        """``[A, n_boot]`` each arm's mean |SMD| per draw over the variations defined in that draw."""
        return _nanmean_last(self.abs_draws)

    @property
    def jackknife(self) -> np.ndarray:
        """``[A, K]`` each arm's mean |SMD| with one name left out."""
        return _nanmean_last(self.abs_jackknife)

    @property
    def n_undefined(self) -> np.ndarray:
        """Per arm, how many variations have an undefined (NaN) observed SMD."""
        return np.isnan(self.smd).sum(axis=1)

    @property
    def names_per_group(self) -> tuple[int, int]:
        return int((self.name_groups == 0).sum()), int((self.name_groups == 1).sum())

    def index(self, arm: int | str) -> int:
        """Position of ``arm`` (an index or one of ``labels``)."""
        if isinstance(arm, str):
            if arm not in self.labels:
                raise ValueError(f"arm {arm!r} is not one of the bootstrap's arms; valid choices: {list(self.labels)}")
            return self.labels.index(arm)
        if not -len(self.labels) <= int(arm) < len(self.labels):
            raise ValueError(f"arm index {arm} is out of range for {len(self.labels)} arms")
        return int(arm) % len(self.labels)


def _nanmean_last(x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all variations undefined: NaN, as documented
        return np.nanmean(x, axis=-1)


def paired_bootstrap(
    arms: Sequence[ArmAnswers] | NameMoments,
    n_boot: int = 2000,
    seed: int = 0,
    labels: Sequence[str] | None = None,
    observed: np.ndarray | None = None,
) -> PairedBootstrap:
    """Name bootstrap of |SMD| per variation for several arms at once, clustered across variations and paired
    across arms.

    Draw b resamples, within each group, as many names as the group has, uniformly with replacement
    (draws of :func:`_bootstrap_weights`); a name drawn w times counts w times with all its answers in
    every variation and every arm. The jackknife leaves out one name at a time, from every variation and
    arm. Interval functions (:mod:`biasprune.stats.intervals`) work on the result.

    Args:
        arms: one :data:`ArmAnswers` per arm, or their :class:`NameMoments`.
        n_boot: number of draws.
        seed: seed of ``np.random.default_rng``; the same ``seed`` and ``n_boot`` give the same draws as
            :func:`bootstrap_mean_abs_smd`.
        labels: a name per arm (default ``"0", "1", ...``).
        observed: ``[A, V]`` the observed SMDs when they were computed already (the rows of ``metrics.csv``);
            by default they are computed from the moments (the same formula).
    """
    n_boot = _check_count("n_boot", n_boot)
    m = _as_moments(arms)
    labels = tuple(str(i) for i in range(m.n_arms)) if labels is None else tuple(labels)
    if len(labels) != m.n_arms or len(set(labels)) != len(labels):
        raise ValueError(f"labels must name each of the {m.n_arms} arms once, got {list(labels)}")
    if observed is None:
        observed = weighted_smd(m, *_group_weights(m.groups, np.ones((1, m.groups.size))))[0]  # [A, V]
    elif np.shape(observed) != (m.n_arms, m.n_variations):
        raise ValueError(f"observed must be [arms, variations] = {(m.n_arms, m.n_variations)}, got {np.shape(observed)}")
    draws = np.abs(weighted_smd(m, *_group_weights(m.groups, _bootstrap_weights(m.groups, n_boot, seed)))).transpose(1, 0, 2)
    jackknife = np.abs(weighted_smd(m, *_group_weights(m.groups, 1.0 - np.eye(m.groups.size)))).transpose(1, 0, 2)
    return PairedBootstrap(labels, np.asarray(observed, dtype=np.float64), draws, jackknife, m.groups.copy(), int(seed))


def bootstrap_mean_abs_smd(arms: Sequence[ArmAnswers] | NameMoments, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """The draws ``[n_arms, n_boot]`` of :func:`paired_bootstrap` (the same draws for the same ``seed`` and
    ``n_boot``), without the jackknife: per draw, the mean over variations of |SMD| (undefined variations
    skipped; NaN if all are)."""
    n_boot = _check_count("n_boot", n_boot)
    m = _as_moments(arms)
    return _mean_abs(weighted_smd(m, *_group_weights(m.groups, _bootstrap_weights(m.groups, n_boot, seed))))


@dataclass(frozen=True, eq=False)
class UtilityBootstrap:
    """Shared name-bootstrap draws of utility rates (share of ALL answers passing a test) per arm.

    ``rates[u][a, b]`` is metric u's rate of arm a in draw b, averaged over the variations;
    ``estimate[u][a]`` the observed one. Draw b weights the names exactly as :func:`paired_bootstrap` draw b
    with the same seed and names, so utility and bias intervals are paired with each other too.
    """

    labels: tuple[str, ...]
    metrics: tuple[str, ...]
    estimate: dict[str, np.ndarray]  # u -> [A]
    rates: dict[str, np.ndarray]  # u -> [A, n_boot]
    seed: int

    def index(self, arm: str) -> int:
        if arm not in self.labels:
            raise ValueError(f"arm {arm!r} is not one of the bootstrap's arms; valid choices: {list(self.labels)}")
        return self.labels.index(arm)


def utility_bootstrap(
    names: np.ndarray,
    groups: np.ndarray,
    total: np.ndarray,
    hits: Mapping[str, np.ndarray],
    n_boot: int,
    seed: int,
    labels: Sequence[str],
) -> UtilityBootstrap:
    """Name bootstrap of utility rates from per-name counts.

    Args:
        names, groups: the names in :class:`NameMoments` order (group 0's first) and their groups.
        total: ``[A, V, K]`` answers per arm, variation and name (unparseable ones included).
        hits: metric -> ``[A, V, K]`` answers that pass its test.

    Per draw b with name weights ``W[b, k]`` (:func:`_bootstrap_weights`): ``rate = mean_v sum_k W h / sum_k W n``
    (a variation whose drawn names have no answer is skipped).
    """
    n_boot = _check_count("n_boot", n_boot)
    w = _bootstrap_weights(np.asarray(groups), n_boot, seed)  # [B, K]
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = np.einsum("bk,avk->abv", w, total)
        est_denom = total.sum(axis=2)
        rates = {u: _nanmean_last(np.einsum("bk,avk->abv", w, h) / denom) for u, h in hits.items()}
        estimate = {u: _nanmean_last(h.sum(axis=2) / est_denom) for u, h in hits.items()}
    return UtilityBootstrap(tuple(labels), tuple(hits), estimate, rates, int(seed))


@dataclass(frozen=True, eq=False)
class NullFloor:
    """The mean |SMD| an arm shows with no group difference at all (group labels permuted across names).

    ``mean`` and ``p95`` (95th percentile, ``np.quantile`` linear) summarise the defined ``draws``
    (``[n_perm]``, NaN where every variation is undefined); ``observed`` is the arm's mean |SMD| and
    ``p_value = (1 + #{draws >= observed}) / (1 + #defined draws)`` the permutation test of "no bias in
    any variation" (NaN when ``observed`` is).
    """

    mean: float
    p95: float
    draws: np.ndarray
    n_perm: int
    observed: float
    p_value: float


def null_mean_abs_smd(arm: ArmAnswers | NameMoments, n_perm: int = 1000, seed: int = 0) -> NullFloor:
    """Noise floor of one arm's mean |SMD|: group labels permuted across names, one permutation for all variations.

    Each permutation reassigns the names to the two groups, keeping each group's number of names; a name
    takes all its answers, in every variation, to its new group. Sharing the permutation across
    variations keeps the correlation of the variations through the names, so the floor is the one the
    observed statistic would have with no bias. Draws: ``rng = np.random.default_rng(seed)``, then
    ``rng.permuted(np.tile(groups, (n_perm, 1)), axis=1)`` with ``groups`` the names' groups in
    :class:`NameMoments` order.

    Args:
        arm: one arm's answers (one per variation), or :class:`NameMoments` of a single arm.
    """
    n_perm = _check_count("n_perm", n_perm)
    m = arm if isinstance(arm, NameMoments) else NameMoments.from_answers([arm])
    if m.n_arms != 1:
        raise ValueError(f"null_mean_abs_smd takes one arm, got NameMoments of {m.n_arms} arms")
    observed = float(_mean_abs(weighted_smd(m, *_group_weights(m.groups, np.ones((1, m.groups.size)))))[0, 0])
    rng = np.random.default_rng(seed)
    target = rng.permuted(np.tile(m.groups, (n_perm, 1)), axis=1) == 1
    draws = _mean_abs(weighted_smd(m, (~target).astype(np.float64), target.astype(np.float64)))[0]
    ok = draws[np.isfinite(draws)]
    if ok.size == 0:
        return NullFloor(math.nan, math.nan, draws, n_perm, observed, math.nan)
    # ties up to rounding count as ">=" (as scipy's permutation_test), so a relabelling equivalent to the data counts
    tol = 100 * np.finfo(np.float64).eps * abs(observed)
    p_value = math.nan if math.isnan(observed) else float((1 + (ok >= observed - tol).sum()) / (1 + ok.size))
    return NullFloor(float(ok.mean()), float(np.quantile(ok, 0.95)), draws, n_perm, observed, p_value)
