"""Confidence intervals for mean |SMD| and for paired differences between arms, from a :class:`PairedBootstrap`.

Every interval is for a *contrast* ``theta = sum_a w_a theta_a`` of the arms' mean |SMD| (one arm:
``w = 1``; a paired difference: ``+1`` and ``-1``; several arms averaged: ``1/n`` each). Each ``theta_a`` is
averaged over the variations defined in EVERY arm of the contrast, in the estimate and, separately, in each draw,
so no arm is averaged over fewer variations than another; ``Interval.dropped`` says how many were left out. Its
estimate, draws and jackknife values are the same linear combination of the arms', so a difference is
paired: both arms use the same names in every draw. Draws where the contrast is undefined (no variation
defined in every arm) are left out; ``n_boot`` counts the others. Random-mask draws enter as one new random mask
(a prediction interval: :class:`RandomDraws`).

**BCa** (bias-corrected and accelerated; Efron 1987, Efron & Tibshirani 1993 ch. 14).
With the estimate ``t``, the B defined draws ``t*_b`` and the standard normal cdf ``Phi``::

    z0    = Phi^-1( (#{t*_b < t} + #{t*_b == t} / 2) / B )          clipped to [1/(2B), 1 - 1/(2B)]
    a     = sum_g sum_{i in g} U_gi^3 / (6 (sum_g sum_{i in g} U_gi^2)^(3/2)),
            U_gi = (K_g - 1)/K_g * (mean_i' t_(g,i') - t_(g,i))           (leave-one-name-out jackknife,
                                                                            names nested in their group)
    level = Phi(z0 + (z0 + z_q) / (1 - a (z0 + z_q)))   for z_q = Phi^-1((1 -+ level)/2)
    [low, high] = np.quantile(t*, [level_low, level_high])   (linear interpolation)

``U_gi`` are the jackknife influence values of a two-sample (stratified) design (Davison & Hinkley 1997,
eq. 5.24); with equal group sizes the factor cancels and ``a`` is scipy's multi-sample acceleration.

**Percentile**: ``np.quantile(t*, [(1 - level)/2, (1 + level)/2])``. **The default, for one arm and for
paired differences**, chosen by simulation at the design's sizes (``python -m benchmarks.validation.calibration --intervals``;
table in docs/method.md, "Statistics"):

* Mean |SMD| is biased upward when the true SMDs are small (|.| folds the noise onto the positive side),
  and the draws are biased upward from the estimate by about as much again. BCa's ``z0`` measures that
  second bias and moves the interval down. But the bias depends steeply on the true SMD (|.| is not
  smooth at 0), and BCa assumes it does not: when the true SMD is 0.15-0.3 and the estimate happens to
  be low, BCa moves the interval down and away from the truth. With within-name correlation 0.2, BCa
  then covers the population mean |SMD| 69-91% of the time, the percentile interval 96-97%. At 0.8
  both cover 91-95%; the acceleration is close to 0 throughout (BCa ~ BC).
* For paired differences BCa has more power (it finds an arm without bias better than one with 0.3
  in 29-38% of runs, percentile 9-13%), but when two arms have the same mean |SMD| its interval lies
  entirely above 0 in up to 5.4% of runs and entirely below in up to 6.6% (nominal 2.5% each); the
  percentile interval does so in at most 1.8% and 3.4%, so a claim decided on it keeps its error rate.
* Neither interval can cover a population mean |SMD| of 0 (no bias at all): both lie above 0. Whether an
  arm differs from no bias is the noise floor's question (:func:`biasprune.stats.bootstrap.null_mean_abs_smd`).
* Both exclude their own estimate in the same cases, when fewer than 2.5% of the draws lie below it:
  with SMDs near 0 (2-13% of arms without bias, up to 9% with a true SMD of 0.15). BCa then lies below
  the estimate, the percentile interval above it; the interval's ``note`` says so.

An interval that does not contain its own estimate carries a ``note`` saying why.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np

from biasprune.core.checks import check_choice
from biasprune.stats.bootstrap import ArmAnswers, NameMoments, PairedBootstrap, UtilityBootstrap, paired_bootstrap

__all__ = [
    "Interval",
    "RandomDraws",
    "arm_interval",
    "contrast_interval",
    "difference_interval",
    "mean_abs_smd_interval",
    "paired_difference_interval",
    "utility_difference",
]

Method = Literal["bca", "percentile"]
METHODS = ("bca", "percentile")

_NORMAL = NormalDist()


@dataclass(frozen=True)
class Interval:
    """An estimate with its bootstrap interval (scipy.stats result style).

    Attributes:
        estimate: the observed value (mean |SMD|, or a difference of them).
        low, high: the interval's ends (NaN when undefined; ``note`` says why).
        method: ``"bca"`` or ``"percentile"``.
        n_boot: the number of defined bootstrap draws used.
        level: the confidence level.
        note: empty, or why the interval is undefined, does not contain the estimate, or rests on few draws.
        names_ref, names_target: names per group in the bootstrap; n_variations: variations compared (those
            defined in every arm of the contrast).
        dropped: variations left out of the comparison because an arm's SMD is undefined there (for a random
            set, the most that any of its draws left out).
        p_nonpositive: ``(1 + #{draws <= 0}) / (1 + n_boot)``, the one-sided bootstrap p-value of "the contrast is
            above 0" that a Holm adjustment reads (:mod:`biasprune.stats.claims`).
    """

    estimate: float
    low: float
    high: float
    method: str
    n_boot: int
    level: float = 0.95
    note: str = ""
    names_ref: int = 0
    names_target: int = 0
    n_variations: int = 0
    dropped: int = 0
    p_nonpositive: float = math.nan

    @property
    def above_zero(self) -> bool:
        """The whole interval lies above 0 (False when undefined)."""
        return bool(self.low > 0)

    @property
    def below_zero(self) -> bool:
        """The whole interval lies below 0 (False when undefined)."""
        return bool(self.high < 0)

    @property
    def defined(self) -> bool:
        return not (math.isnan(self.estimate) or math.isnan(self.low) or math.isnan(self.high))

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _check_level(level: float) -> float:
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    return float(level)


def _ppf(p: float) -> float:
    return _NORMAL.inv_cdf(p)


def _cdf(z: float) -> float:
    return 0.0 if z == -math.inf else 1.0 if z == math.inf else _NORMAL.cdf(z)


def acceleration(jackknife: np.ndarray, strata: np.ndarray) -> float:
    """BCa acceleration ``a`` from leave-one-out values ``jackknife[i]`` with ``strata[i]`` the dropped name's
    group (formula in the module docstring); NaN values are left out; 0 when the jackknife does not vary."""
    num = den = 0.0
    for g in np.unique(strata):
        jg = jackknife[(strata == g) & np.isfinite(jackknife)]
        if jg.size < 2:
            continue
        u = (jg.size - 1) / jg.size * (jg.mean() - jg)
        num += float((u**3).sum())
        den += float((u**2).sum())
    return num / (6.0 * den**1.5) if den > 0 else 0.0


def bca_levels(estimate: float, draws: np.ndarray, accel: float, level: float) -> tuple[float, float, float]:
    """``(level_low, level_high, z0)``: the quantile levels of the draws that BCa uses (module docstring)."""
    b = draws.size
    below = (np.sum(draws < estimate) + 0.5 * np.sum(draws == estimate)) / b
    z0 = _ppf(min(max(below, 0.5 / b), 1.0 - 0.5 / b))
    out = []
    for q in ((1.0 - level) / 2.0, (1.0 + level) / 2.0):
        t = z0 + _ppf(q)
        denom = 1.0 - accel * t
        out.append(_cdf(z0 + t / denom) if denom > 0 else (1.0 if t > 0 else 0.0))
    return out[0], out[1], z0


def _interval(
    estimate: float,
    draws: np.ndarray,
    jackknife: np.ndarray,
    strata: np.ndarray,
    level: float,
    method: str,
    sizes: dict,
) -> Interval:
    ok = draws[np.isfinite(draws)]
    if math.isnan(estimate) or ok.size < 2:
        why = (
            "the estimate is undefined (every variation's SMD is)"
            if math.isnan(estimate)
            else f"only {ok.size} defined bootstrap draws"
        )
        return Interval(estimate, math.nan, math.nan, method, int(ok.size), level, f"undefined: {why}", **sizes)
    notes = []
    if method == "bca":
        accel = acceleration(jackknife, strata)
        lo_level, hi_level, z0 = bca_levels(estimate, ok, accel, level)
        if min(lo_level, 1.0 - hi_level) < 1.0 / ok.size:
            notes.append(
                f"BCa needs the {lo_level:.4f} and {hi_level:.4f} quantiles of {ok.size} draws (z0 = {z0:.2f}): an end "
                "rests on the most extreme draws; more draws (n_boot) would help"
            )
    else:
        lo_level, hi_level, z0 = (1.0 - level) / 2.0, (1.0 + level) / 2.0, math.nan
    low, high = (float(x) for x in np.quantile(ok, [lo_level, hi_level]))
    p_nonpositive = float((1 + np.sum(ok <= 0)) / (1 + ok.size))
    share_below = float(np.mean(ok < estimate))
    if estimate < low or estimate > high:
        side, share = (
            ("below", f"only {share_below:.1%} of the draws are below it")
            if estimate < low
            else ("above", f"{1 - share_below:.1%} of the draws are above it")
        )
        notes.append(
            f"the estimate lies {side} the interval ({share}): mean |SMD| is biased upward when the SMDs are "
            "near 0, and the draws add that bias again"
            + ("" if method == "percentile" else f"; BCa (z0 = {z0:.2f}) shifted the interval down to undo it")
            + "; the SMDs are likely near 0 (compare the noise floor)"
        )
    return Interval(float(estimate), low, high, method, int(ok.size), level, "; ".join(notes), p_nonpositive=p_nonpositive, **sizes)


@dataclass(frozen=True)
class RandomDraws:
    """The random-mask draws that control one arm, compared as ONE new random mask (a prediction interval).

    An arm whose selection is no better than random is one more draw from the distribution of masks of its size, so
    "random - arm" must be judged against the spread of one mask, not of the mean of R masks. With ``C[r, b]`` the
    contrast computed with draw r in name replicate b, the estimate is the mean over draws, and replicate b becomes::

        t*_b = m_b + s_b sqrt(1 + 1/R) T_b,      m_b = mean_r C[r, b],   s_b = sd_r C[r, b] (ddof 1),
        T_b ~ Student t with R - 1 degrees of freedom   (``np.random.default_rng([seed, 1]).standard_t``)

    the textbook prediction interval of one new draw against the mean of R (``sqrt(1 + 1/R)``: the arm's own mask
    and the mean's), with the t quantiles that estimating the spread from R draws needs; the name bootstrap keeps
    every arm paired through ``m_b`` and ``s_b``. Resampling the R draws themselves would put the interval's ends at
    the extreme draws: with 5 draws a mask that is simply the luckiest of 6 would beat "random" about once in six
    (docs/method.md, "Statistics"; ``python -m benchmarks.validation.calibration``, case "random masks that vary a lot"). With
    one draw the spread is unknown and the contrast treats the draw as fixed.
    """

    arms: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.arms:
            raise ValueError("RandomDraws needs at least one arm")


Term = int | str | RandomDraws


def _weights(boot: PairedBootstrap, arms: Mapping[Term, float]) -> tuple[dict[int, float], tuple[RandomDraws, float] | None]:
    out: dict[int, float] = {}
    draws: tuple[RandomDraws, float] | None = None
    for arm, w in arms.items():
        if isinstance(arm, RandomDraws):
            if draws is not None:
                raise ValueError("a contrast takes at most one set of random draws")
            draws = (arm, float(w))
            continue
        i = boot.index(arm)
        out[i] = out.get(i, 0.0) + float(w)
    if not out and draws is None:
        raise ValueError("weights is empty: give at least one arm")
    return {i: w for i, w in out.items() if w != 0.0}, draws


def _common(values: np.ndarray, coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values[n, ..., V]`` (|SMD| of the contrast's n arms) -> ``(sum_i coef_i mean_common(values_i), n_common)``
    with the mean over the variations defined in all n arms (NaN where there is none)."""
    ok = np.isfinite(values).all(axis=0)
    count = ok.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        means = np.where(ok, values, 0.0).sum(axis=-1) / count
    out = np.tensordot(coef, means, axes=1)
    return np.where(count > 0, out, np.nan), count


def _fixed_contrast(boot: PairedBootstrap, fixed: Mapping[int, float]):
    """Estimate, draws, jackknife and variations compared of a contrast of fixed arms (common variations)."""
    if not fixed:
        return 0.0, np.zeros(boot.n_boot), np.zeros(boot.name_groups.size), boot.n_variations
    idx, coef = np.array(list(fixed)), np.array(list(fixed.values()))
    est, n_common = _common(np.abs(boot.smd[idx]), coef)
    draws, _ = _common(boot.abs_draws[idx], coef)
    jack, _ = _common(boot.abs_jackknife[idx], coef)
    return float(est), draws, jack, int(n_common)


def contrast_interval(
    boot: PairedBootstrap, weights: Mapping[Term, float], level: float = 0.95, method: Method = "percentile"
) -> Interval:
    """Interval of ``sum_a weights[a] * mean|SMD|_a`` (arms by index or label, or one :class:`RandomDraws`) from
    shared draws, each mean taken over the variations defined in every arm of the contrast, in the estimate
    and in each draw (a draw where none is common is left out)."""
    check_choice("method", method, METHODS)
    level = _check_level(level)
    fixed, random = _weights(boot, weights)
    if random is None:
        estimate, draws, jackknife, n_common = _fixed_contrast(boot, fixed)
        common = [n_common]
    else:
        members, w = random
        parts = []
        for r in members.arms:
            i = boot.index(r)
            parts.append(_fixed_contrast(boot, {**fixed, i: fixed.get(i, 0.0) + w}))
        estimates = np.array([p[0] for p in parts])
        estimate = float(np.nanmean(estimates)) if np.isfinite(estimates).any() else math.nan
        per_draw = np.stack([p[1] for p in parts])  # [R, B]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            centre = np.nanmean(per_draw, axis=0)
            jackknife = np.nanmean(np.stack([p[2] for p in parts]), axis=0)
        draws = centre
        r = len(parts)
        if r > 1:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                spread = np.nanstd(per_draw, axis=0, ddof=1) * math.sqrt(1.0 + 1.0 / r)
            draws = centre + spread * np.random.default_rng([boot.seed, 1]).standard_t(r - 1, size=boot.n_boot)
        common = [p[3] for p in parts]
    k0, k1 = boot.names_per_group
    sizes = {"names_ref": k0, "names_target": k1, "n_variations": min(common), "dropped": boot.n_variations - min(common)}
    return _interval(estimate, draws, jackknife, boot.name_groups, level, method, sizes)


ArmTerms = int | str | RandomDraws | Sequence[int | str]


def _set_weights(arms: ArmTerms, sign: float) -> list[tuple[Term, float]]:
    if isinstance(arms, RandomDraws):
        return [(arms, sign)]
    members = [arms] if isinstance(arms, (int, str)) else list(arms)
    if not members:
        raise ValueError("an arm set is empty: give at least one arm")
    return [(a, sign / len(members)) for a in members]


def arm_interval(boot: PairedBootstrap, arm: ArmTerms, level: float = 0.95, method: Method = "percentile") -> Interval:
    """Interval of one arm's mean |SMD| (or of the average over several arms, or of one random mask)."""
    w: dict[Term, float] = {}
    for a, c in _set_weights(arm, 1.0):
        w[a] = w.get(a, 0.0) + c
    return contrast_interval(boot, w, level, method)


def difference_interval(
    boot: PairedBootstrap, minuend: ArmTerms, subtrahend: ArmTerms, level: float = 0.95, method: Method = "percentile"
) -> Interval:
    """Paired interval of ``mean|SMD|(minuend) - mean|SMD|(subtrahend)`` (each an arm, an average of arms, or
    :class:`RandomDraws`), over the variations defined in every arm involved.

    For "arm lowers bias" use ``minuend = "unpruned"`` (or the random draws) and ``subtrahend = arm``: an
    interval above 0 means the arm's mean |SMD| is lower.
    """
    w: dict[Term, float] = {}
    for a, c in _set_weights(minuend, 1.0) + _set_weights(subtrahend, -1.0):
        w[a] = w.get(a, 0.0) + c
    return contrast_interval(boot, w, level, method)


def utility_difference(ub: UtilityBootstrap, metric: str, arm: str, base: str, level: float = 0.95) -> Interval:
    """Percentile interval of ``rate(arm) - rate(base)`` of one utility metric, paired over the name draws."""
    level = _check_level(level)
    i, j = ub.index(arm), ub.index(base)
    estimate = float(ub.estimate[metric][i] - ub.estimate[metric][j])
    draws = ub.rates[metric][i] - ub.rates[metric][j]
    return _interval(estimate, draws, np.zeros(0), np.zeros(0, dtype=np.int64), level, "percentile", {})


def mean_abs_smd_interval(
    arm: ArmAnswers | NameMoments, n_boot: int = 2000, seed: int = 0, level: float = 0.95, method: Method = "percentile"
) -> Interval:
    """Interval of one arm's mean |SMD| over variations (name bootstrap clustered across variations)."""
    m = arm if isinstance(arm, NameMoments) else NameMoments.from_answers([arm])
    return arm_interval(paired_bootstrap(m, n_boot=n_boot, seed=seed), 0, level, method)


def paired_difference_interval(
    a: ArmAnswers, b: ArmAnswers, n_boot: int = 2000, seed: int = 0, level: float = 0.95, method: Method = "percentile"
) -> Interval:
    """Paired interval of ``mean|SMD|(a) - mean|SMD|(b)`` for two arms asked about the same names."""
    return difference_interval(paired_bootstrap([a, b], n_boot=n_boot, seed=seed), 0, 1, level, method)
