"""What a design can detect: the within-name correlation (ICC) of the answers and the minimum detectable SMD.

The answers about one name are correlated (they share what the model associates with that name), so m
answers per name carry less information than m independent answers. With the intraclass correlation
``rho`` the variance of a group mean is inflated by the *design effect* ``1 + (m - 1) rho`` (Kish 1965).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from biasprune.core.checks import check_fraction
from biasprune.stats.bootstrap import ArmAnswers, NameMoments

__all__ = ["icc", "minimum_detectable_smd", "t_quantile", "within_name_icc"]


def _icc_from_moments(n: np.ndarray, mean: np.ndarray, m2: np.ndarray, strata: np.ndarray) -> float:
    """ICC(1) from per-cluster count, mean and m2 (clusters with n = 0 are ignored); formula in :func:`icc`."""
    keep = n > 0
    n, mean, m2, strata = n[keep], mean[keep], m2[keep], strata[keep]
    k, total = n.size, float(n.sum())
    levels = np.unique(strata)
    df_between, df_within = k - levels.size, total - k
    if df_between < 1 or df_within < 1:
        return math.nan
    ssb = n0_sum = 0.0
    for s in levels:
        ns, ms = n[strata == s], mean[strata == s]
        centre = float((ns * ms).sum() / ns.sum())
        ssb += float((ns * (ms - centre) ** 2).sum())
        n0_sum += float(ns.sum() - (ns**2).sum() / ns.sum())
    msb, msw = ssb / df_between, float(m2.sum()) / df_within
    n0 = n0_sum / df_between
    denom = msb + (n0 - 1.0) * msw
    if not denom > 0:
        return math.nan  # every value equal
    return max(0.0, (msb - msw) / denom)


def icc(
    values_by_name: Sequence[Sequence[float] | np.ndarray], strata: Sequence[int] | np.ndarray | None = None
) -> float:
    """One-way random-effects ICC(1) with unequal cluster sizes, clipped at 0 (Donner 1986; Shrout & Fleiss 1979).

    ``values_by_name[i]`` are the answers about name i (NaN dropped; empty names ignored). With k names,
    N answers, n_i answers and mean ybar_i for name i::

        MSB = sum_i n_i (ybar_i - ybar_s(i))^2 / (k - S)        MSW = sum_i sum_j (y_ij - ybar_i)^2 / (N - k)
        n0  = (N - sum_s sum_{i in s} n_i^2 / N_s) / (k - S)
        ICC = max(0, (MSB - MSW) / (MSB + (n0 - 1) MSW))

    ``strata`` (e.g. each name's group) nests the names in S strata: a name's mean is compared with its
    stratum's mean ``ybar_s``, so a difference between groups does not count as correlation within names.
    Without strata, S = 1 (the textbook one-way ANOVA estimator). NaN when ``k - S < 1``, ``N - k < 1``
    or every value is equal.
    """
    clusters = [np.asarray(x, dtype=np.float64).ravel() for x in values_by_name]
    clusters = [x[~np.isnan(x)] for x in clusters]
    s = np.zeros(len(clusters), dtype=np.int64) if strata is None else np.asarray(strata).ravel()
    if s.size != len(clusters):
        raise ValueError(f"strata must have one entry per name, got {s.size} for {len(clusters)} names")
    n = np.array([x.size for x in clusters], dtype=np.float64)
    mean = np.array([x.mean() if x.size else 0.0 for x in clusters])
    m2 = np.array([((x - x.mean()) ** 2).sum() if x.size else 0.0 for x in clusters])
    return _icc_from_moments(n, mean, m2, s)


def within_name_icc(arm: ArmAnswers | NameMoments) -> float:
    """The within-name correlation of one arm's answers: the mean over variations of :func:`icc` with the
    names nested in their groups (variations where it is undefined are skipped; NaN if all are)."""
    m = arm if isinstance(arm, NameMoments) else NameMoments.from_answers([arm])
    values = [
        _icc_from_moments(m.count[a, v], m.mean[a, v], m.m2[a, v], m.groups)
        for a in range(m.n_arms)
        for v in range(m.n_variations)
    ]
    ok = [x for x in values if not math.isnan(x)]
    return float(np.mean(ok)) if ok else math.nan


def _t_pdf(t: np.ndarray | float, df: float) -> np.ndarray:
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    return c * (1.0 + np.asarray(t) ** 2 / df) ** (-(df + 1) / 2)


def _t_cdf(t: float, df: float) -> float:
    x = np.linspace(0.0, abs(t), 4097)  # Simpson's rule on [0, |t|]: error far below 1e-10 for df >= 1
    f = _t_pdf(x, df)
    h = x[1] - x[0]
    area = h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())
    return 0.5 + math.copysign(area, t)


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t with ``df`` degrees of freedom (Newton's method on the cdf; normal for df = inf)."""
    z = NormalDist().inv_cdf(p)
    if math.isinf(df):
        return z
    t = z
    for _ in range(100):  # the cdf is concave beyond 0, so Newton from the normal quantile converges monotonically
        step = (_t_cdf(t, df) - p) / float(_t_pdf(t, df))
        t -= step
        if abs(step) < 1e-12 * max(1.0, abs(t)):
            break
    return t


def minimum_detectable_smd(
    names_ref: int,
    names_target: int,
    answers_per_name: float,
    icc: float,
    n_variations: int = 1,
    alpha: float = 0.05,
    power: float = 0.8,
) -> float:
    """The SMD per variation that a two-sided level-``alpha`` test detects with probability ``power``.

    With k_r and k_t names, m answers per name (per variation) and within-name correlation rho::

        SE^2 = (1/(k_r m) + 1/(k_t m)) * (1 + (m - 1) rho) * f_V
        MDE  = (t_{1 - alpha/2, nu} + t_{power, nu}) * SE,        nu = k_r + k_t - 2

    The unit of information is the name, so the degrees of freedom are those of a two-sample t-test on
    the names (k_r + k_t - 2), not of the answers. ``f_V = 1`` for one variation.

    Variations: with V variations and the same bias (size and sign) in each, averaging the V SMDs shrinks
    the variance only as far as their errors are independent. They are not: the same names appear in
    every variation. Conservatively, each name is assumed to carry the SAME effect in every variation (its
    share of the variance, ``m rho / (1 + (m - 1) rho)`` of Var(SMD), is then perfectly correlated across
    variations) while the answer-level noise is independent (answers are sampled separately)::

        f_V = (1 + (V - 1) r) / V,      r = m rho / (1 + (m - 1) rho)

    which is SE^2 = (1/k_r + 1/k_t) (rho + (1 - rho) / (m V)): V m answers per name, but never fewer
    than ``rho`` of a name's variance left. With rho = 0, f_V = 1/V; with a large m rho, f_V -> 1.
    If names' effects differ between variations the true MDE is smaller: this one errs on the safe side.

    Raises:
        ValueError: fewer than 2 names in a group, ``answers_per_name < 1``, ``icc`` not in [0, 1] (pass
            1.0 when it is unknown, the most conservative value), ``n_variations < 1``, ``alpha`` or
            ``power`` not in (0, 1).
    """
    for flag, k in (("names_ref", names_ref), ("names_target", names_target)):
        if not k >= 2:
            raise ValueError(f"{flag} must be >= 2 (names in the group), got {k!r}")
    if not answers_per_name >= 1:
        raise ValueError(f"answers_per_name must be >= 1, got {answers_per_name!r}")
    if not (isinstance(icc, (int, float)) and not math.isnan(icc)):
        raise ValueError(f"icc must be a number in [0, 1] (1.0 when unknown), got {icc!r}")
    check_fraction("icc", icc)
    if not n_variations >= 1:
        raise ValueError(f"n_variations must be >= 1, got {n_variations!r}")
    check_fraction("alpha", alpha, low_open=True, high_open=True)
    check_fraction("power", power, low_open=True, high_open=True)
    m, rho, v = float(answers_per_name), float(icc), int(n_variations)
    deff = 1.0 + (m - 1.0) * rho
    r = m * rho / deff
    se = math.sqrt((1.0 / (names_ref * m) + 1.0 / (names_target * m)) * deff * (1.0 + (v - 1.0) * r) / v)
    nu = names_ref + names_target - 2.0
    return (t_quantile(1.0 - alpha / 2.0, nu) + t_quantile(power, nu)) * se
