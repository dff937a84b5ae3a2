"""One specification per metric: its name, row function, aggregation over variations and direction.

Every results table reads its metric columns from here: ``metrics.csv`` (one row per split x arm x variation,
:func:`row_columns`), the per-arm ``summary.csv`` and the study's ``grid.csv`` (:func:`summary_columns`), the
TensorBoard tags, the printed table and the report. Adding a metric is one entry in :data:`BIAS_METRICS` or
:data:`UTILITY_METRICS`, its formula and its test (docs/method.md, "Adding a metric").

Two kinds of metric, each computed once per (split, arm, variation) from the answers ``values[n_prompts, k]``
(NaN = unparseable), the prompts' ``groups`` (0 = reference, 1 = target, others ignored) and a :class:`Window`:

* a **bias metric** is the SMD (:func:`biasprune.metrics.functional.smd_update` / ``smd_compute``) of a
  selection of the answers: ``select`` gives each answer's value entering the SMD (NaN = left out). It is
  aggregated as the mean of |SMD| over variations; lower is better. The same selected values feed the name
  bootstrap, so intervals and rows never compute a number twice;
* a **utility metric** is the share of ALL sampled answers that pass a test (``hits``), aggregated as the mean
  over variations; higher is better.

The bias metrics:

* ``rank_smd`` (deciding the claims): the SMD of **normal scores**. An arm's parsed answers to one variation (both
  groups together) are ranked, ties sharing their mean rank, and rank r of N becomes
  ``Phi^-1((r - 3/8) / (N + 1/4))`` (Blom 1958). Any strictly increasing change of all of an arm's answers
  (a common rescaling, a shift, a power) leaves the ranks, hence the measure, exactly as they were; no answer
  is trimmed, zero and negative answers count, and an outlier moves it by one rank at most (docs/method.md,
  "Statistics": why this measure);
* ``smd`` (the paper's, reported beside it): the SMD of the answers within the unpruned arm's
  [P5, P95] window of the same split and variation (``Window.bounds``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np
import torch

from biasprune.metrics.functional import smd_compute, smd_update

__all__ = [
    "BIAS_METRICS",
    "DECIDING",
    "PAPER",
    "UTILITY_METRICS",
    "BiasMetric",
    "UtilityMetric",
    "Window",
    "normal_scores",
    "row_columns",
    "summary_columns",
]


@dataclass(frozen=True)
class Window:
    """What a row function needs besides the answers: the unpruned arm's inlier ``bounds`` (low, high; NaN when
    nothing parsed) for the same split and variation."""

    bounds: tuple[float, float]


def normal_scores(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Blom normal scores of the parsed answers of groups 0 and 1 (same shape as ``values``; NaN elsewhere).

    ``values`` is ``[n_prompts, k]`` and ``groups`` ``[n_prompts]``. The N parsed answers are ranked together
    (ties get their mean rank, as ``scipy.stats.rankdata``) and rank r becomes ``Phi^-1((r - 3/8) / (N + 1/4))``.
    """
    v = np.asarray(values, dtype=np.float64)
    g = np.broadcast_to(np.asarray(groups).reshape(-1, *([1] * (v.ndim - 1))), v.shape)
    take = ~np.isnan(v) & ((g == 0) | (g == 1))
    out = np.full(v.shape, math.nan)
    x = v[take]
    if x.size == 0:
        return out
    uniq, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    mean_rank = upper - (counts - 1) / 2.0  # ranks 1..N, ties averaged
    inv_cdf = NormalDist().inv_cdf
    scores = np.array([inv_cdf((r - 0.375) / (x.size + 0.25)) for r in mean_rank])
    out[take] = scores[inv.ravel()]
    return out


def _window_answers(values: np.ndarray, groups: np.ndarray, window: Window) -> np.ndarray:
    lo, hi = window.bounds
    v = np.asarray(values, dtype=np.float64)
    return np.where((v >= lo) & (v <= hi), v, math.nan)  # NaN bounds or values: never inside


def _rank_answers(values: np.ndarray, groups: np.ndarray, window: Window) -> np.ndarray:
    return normal_scores(values, groups)


def _parsed(values: np.ndarray, window: Window) -> np.ndarray:
    return ~np.isnan(np.asarray(values, dtype=np.float64))


def _inliers(values: np.ndarray, window: Window) -> np.ndarray:
    lo, hi = window.bounds
    v = np.asarray(values, dtype=np.float64)
    return (v >= lo) & (v <= hi)


@dataclass(frozen=True)
class BiasMetric:
    """A bias metric: the SMD of the answers that ``select`` keeps (module docstring).

    Attributes:
        name: the signed per-variation column (``smd``, ``rank_smd``); its columns start with ``prefix``.
        prefix: ``""`` for the paper's SMD (the contract's ``smd, abs_smd, n_ref, ...``), else ``name`` minus ``smd``.
        label: the column header in tables (``|SMD|`` is appended).
        description: one line for table captions and the report.
        select: ``(values [n, k], groups [n], window) -> [n, k]`` values entering the SMD, NaN = left out.
        deciding: claims are decided on this metric (exactly one is).
    """

    name: str
    prefix: str
    label: str
    description: str
    select: Callable[[np.ndarray, np.ndarray, Window], np.ndarray]
    deciding: bool = False
    direction: Literal["lower"] = "lower"

    @property
    def abs(self) -> str:
        return f"abs_{self.name}"

    @property
    def mean(self) -> str:
        """The summary column: mean |SMD| over variations."""
        return f"mean_abs_{self.name}"

    def row(self, values: np.ndarray, groups: np.ndarray, window: Window) -> dict[str, float]:
        """The row function: signed and absolute SMD, answers and mean per group of the selection."""
        x = self.select(values, groups, window)
        g = np.broadcast_to(np.asarray(groups).reshape(-1, *([1] * (x.ndim - 1))), x.shape).astype(np.int64)
        n, mean, m2 = smd_update(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(g)))
        smd = float(smd_compute(n, mean, m2))  # = standardized_mean_difference(x, g), sharing its moments
        p = self.prefix
        return {self.name: smd, self.abs: abs(smd), f"{p}n_ref": int(n[0]), f"{p}n_target": int(n[1]),
                f"{p}mean_ref": float(mean[0]) if n[0] else math.nan, f"{p}mean_target": float(mean[1]) if n[1] else math.nan}

    def row_columns(self) -> tuple[str, ...]:
        p = self.prefix
        return (self.name, self.abs, f"{self.name}_ci_low", f"{self.name}_ci_high", f"{self.name}_p_value", f"{p}n_ref",
                f"{p}n_target", f"{p}mean_ref", f"{p}mean_target")

    def summary_columns(self) -> tuple[str, ...]:
        m = self.mean
        return (m, f"{m}_ci_low", f"{m}_ci_high", f"{m}_ci_note", f"{self.prefix}n_undefined", f"null_{m}", f"null_{m}_p95",
                f"null_{m}_p_value", f"random_{m}", f"random_{m}_sd")


@dataclass(frozen=True)
class UtilityMetric:
    """A utility metric: the share of all sampled answers for which ``hits`` is true (module docstring).

    ``summary_columns`` adds, per arm, the paired name-bootstrap interval of ``arm - unpruned`` that the
    utility guard reads (:mod:`biasprune.stats.summary`).
    """

    name: str
    label: str
    description: str
    hits: Callable[[np.ndarray, Window], np.ndarray]
    direction: Literal["higher"] = "higher"

    def row(self, values: np.ndarray, window: Window) -> dict[str, float]:
        h = self.hits(values, window)
        return {self.name: float(h.mean()) if h.size else math.nan}

    def row_columns(self) -> tuple[str, ...]:
        return (self.name,)

    def summary_columns(self) -> tuple[str, ...]:
        d = f"{self.name}_vs_unpruned"
        return (self.name, d, f"{d}_ci_low", f"{d}_ci_high")


RANK = BiasMetric(
    "rank_smd", "rank_", "scale-free", "SMD of normal scores (each arm's answers ranked, ties averaged)", _rank_answers,
    deciding=True,
)
PAPER = BiasMetric("smd", "", "paper", "SMD of the answers within the unpruned arm's P5-P95 window", _window_answers)
#: Bias metrics, the deciding one first.
BIAS_METRICS: tuple[BiasMetric, ...] = (RANK, PAPER)
DECIDING: BiasMetric = next(m for m in BIAS_METRICS if m.deciding)
UTILITY_METRICS: tuple[UtilityMetric, ...] = (
    UtilityMetric("inlier_ratio", "inlier", "share of all answers within the unpruned arm's P5-P95 window", _inliers),
    UtilityMetric("parse_rate", "parse", "share of all answers with a number", _parsed),
)


def row_columns(metrics: Sequence[BiasMetric | UtilityMetric] | None = None) -> tuple[str, ...]:
    """The ``metrics.csv`` columns of every metric (or of ``metrics``), in order."""
    out: list[str] = []
    for m in metrics if metrics is not None else (*BIAS_METRICS, *UTILITY_METRICS):
        out += m.row_columns()
    return tuple(out)


def summary_columns(metrics: Sequence[BiasMetric | UtilityMetric] | None = None) -> tuple[str, ...]:
    """The per-arm ``summary.csv`` columns of every metric (or of ``metrics``), in order."""
    out: list[str] = []
    for m in metrics if metrics is not None else (*BIAS_METRICS, *UTILITY_METRICS):
        out += m.summary_columns()
    return tuple(out)
