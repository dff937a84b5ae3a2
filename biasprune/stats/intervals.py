"""Confidence intervals for mean |SMD| and for paired differences between arms, from a :class:`PairedBootstrap`.

Every interval is for a *contrast* ``theta = sum_a w_a theta_a`` of the arms' mean |SMD| (one arm:
``w = 1``; a paired difference: ``+1`` and ``-1``; several random-mask draws averaged: ``1/n`` each). Its
estimate, draws and jackknife values are the same linear combination of the arms', so a difference is
paired: both arms use the same names in every draw. Draws where the contrast is undefined (an involved
arm with every variation undefined) are left out; ``n_boot`` counts the others.

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
paired differences**, chosen by simulation at the design's sizes (``python -m benchmarks.validation.coverage``;
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np

from biasprune.core.checks import check_choice
from biasprune.stats.bootstrap import ArmAnswers, NameMoments, PairedBootstrap, paired_bootstrap

__all__ = [
    "Interval",
    "arm_interval",
    "contrast_interval",
    "difference_interval",
    "mean_abs_smd_interval",
    "paired_difference_interval",
]

Method = Literal["bca", "percentile"]
METHODS = ("bca", "percentile")
ArmSet = int | str | Sequence[int | str]
"""One arm (index or label), or several arms whose mean |SMD| is averaged (e.g. the random-mask draws)."""

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
        names_ref, names_target: names per group in the bootstrap; n_variations: variations per arm.
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
    return Interval(float(estimate), low, high, method, int(ok.size), level, "; ".join(notes), **sizes)


def _weights(boot: PairedBootstrap, arms: Mapping[int | str, float]) -> dict[int, float]:
    out: dict[int, float] = {}
    for arm, w in arms.items():
        i = boot.index(arm)
        out[i] = out.get(i, 0.0) + float(w)
    if not out:
        raise ValueError("weights is empty: give at least one arm")
    return out


def contrast_interval(
    boot: PairedBootstrap, weights: Mapping[int | str, float], level: float = 0.95, method: Method = "percentile"
) -> Interval:
    """Interval of ``sum_a weights[a] * mean|SMD|_a`` (arms by index or label) from shared draws."""
    check_choice("method", method, METHODS)
    level = _check_level(level)
    w = _weights(boot, weights)
    idx, coef = np.array(list(w)), np.array(list(w.values()))
    estimate = float(coef @ boot.estimate[idx])
    draws = coef @ boot.draws[idx]
    jackknife = coef @ boot.jackknife[idx]
    k0, k1 = boot.names_per_group
    sizes = {"names_ref": k0, "names_target": k1, "n_variations": boot.n_variations}
    return _interval(estimate, draws, jackknife, boot.name_groups, level, method, sizes)


def _set_weights(arms: ArmSet, sign: float) -> list[tuple[int | str, float]]:
    members = [arms] if isinstance(arms, (int, str)) else list(arms)
    if not members:
        raise ValueError("an arm set is empty: give at least one arm")
    return [(a, sign / len(members)) for a in members]


def arm_interval(boot: PairedBootstrap, arm: ArmSet, level: float = 0.95, method: Method = "percentile") -> Interval:
    """Interval of one arm's mean |SMD| (or of the average over several arms, e.g. random-mask draws)."""
    w: dict[int | str, float] = {}
    for a, c in _set_weights(arm, 1.0):
        w[a] = w.get(a, 0.0) + c
    return contrast_interval(boot, w, level, method)


def difference_interval(
    boot: PairedBootstrap, minuend: ArmSet, subtrahend: ArmSet, level: float = 0.95, method: Method = "percentile"
) -> Interval:
    """Paired interval of ``mean|SMD|(minuend) - mean|SMD|(subtrahend)`` (each an arm or an average of arms).

    For "arm lowers bias" use ``minuend = "unpruned"`` (or the random draws) and ``subtrahend = arm``: an
    interval above 0 means the arm's mean |SMD| is lower.
    """
    w: dict[int | str, float] = {}
    for a, c in _set_weights(minuend, 1.0) + _set_weights(subtrahend, -1.0):
        w[a] = w.get(a, 0.0) + c
    return contrast_interval(boot, w, level, method)


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
