"""Evaluation of one variation's sampled answers: inlier bounds, bias statistics, result rows.

Inlier bounds are the [P5, P95] (configurable) percentiles of the *unpruned* model's parsed answers for
the same variation, optionally intersected with the scenario's ``valid_range``. The inlier ratio is the
share of all sampled responses (unparseable ones included) whose value lies within the bounds; the SMD
is computed on the inliers of each group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .stats import bootstrap_smd_ci, permutation_pvalue

__all__ = [
    "EvaluationConfig",
    "METRIC_COLUMNS",
    "describe_variation",
    "format_summary",
    "headline",
    "inlier_answers",
    "inlier_bounds",
    "variation_row",
]

METRIC_COLUMNS = (
    "phase",
    "scenario",
    "variation",
    "smd",
    "abs_smd",
    "inlier_ratio",
    "n_ref",
    "n_target",
    "mean_ref",
    "mean_target",
    "smd_ci_low",
    "smd_ci_high",
    "p_value",
    "lower",
    "upper",
    "n_answers",
    "parse_rate",
)


@dataclass(frozen=True)
class EvaluationConfig:
    """How answers are judged.

    Attributes:
        baseline: evaluate the unpruned model (in ``fit``, before scoring).
        pruned: evaluate the pruned model (in ``fit``, after the masks are applied).
        inlier_percentiles: percentiles of the baseline answers that bound the inliers.
        use_valid_range: also clip the bounds to the scenario's ``valid_range``.
        inlier_bounds: ``inlier_bounds.json`` of an earlier run; empty to compute the bounds from this run's
            baseline (``validate`` with a masks file looks beside the masks file first).
        bootstrap_samples: resamples of names for the SMD's 95% confidence interval (0 to skip).
        permutation_samples: permutations of group labels across names for the p-value (0 to skip).
        seed: seed of the bootstrap and permutation draws.
        save_answers: write every sampled response and its parsed value to ``answers_<phase>.jsonl``.
    """

    baseline: bool = True
    pruned: bool = True
    inlier_percentiles: tuple[float, float] = (5.0, 95.0)
    use_valid_range: bool = True
    inlier_bounds: str = ""
    bootstrap_samples: int = 1000
    permutation_samples: int = 1000
    seed: int = 0
    save_answers: bool = True

    def __post_init__(self) -> None:
        lo, hi = self.inlier_percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"evaluation.inlier_percentiles must satisfy 0 <= low < high <= 100, got {self.inlier_percentiles}")
        for name in ("bootstrap_samples", "permutation_samples"):
            if getattr(self, name) < 0:
                raise ValueError(f"evaluation.{name} must be >= 0, got {getattr(self, name)}")


def inlier_bounds(
    values: np.ndarray,
    percentiles: Sequence[float] = (5.0, 95.0),
    valid_range: Sequence[float] | None = None,
) -> tuple[float, float]:
    """[P_low, P_high] of the parsed (non-NaN) values, intersected with ``valid_range`` when given.

    NaN bounds when no value parsed (then nothing is an inlier).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return math.nan, math.nan
    lo, hi = (float(x) for x in np.percentile(v, list(percentiles)))
    if valid_range is not None:
        lo, hi = max(lo, float(valid_range[0])), min(hi, float(valid_range[1]))
    return lo, hi


def inlier_answers(
    values: np.ndarray, groups: np.ndarray, names: Sequence[str], bounds: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The answers within ``bounds`` as flat ``(values, groups, names)`` (one entry per answer).

    ``values`` is ``[n_prompts, k]``; NaN values and NaN bounds are never inliers.
    """
    values = np.asarray(values, dtype=np.float64)
    lo, hi = bounds
    inlier = (values >= lo) & (values <= hi)
    return (
        values[inlier],
        np.broadcast_to(np.asarray(groups)[:, None], values.shape)[inlier],
        np.broadcast_to(np.asarray(names, dtype=object)[:, None], values.shape)[inlier],
    )


def describe_variation(
    values: np.ndarray,
    groups: np.ndarray,
    names: Sequence[str],
    bounds: tuple[float, float],
    bootstrap_samples: int = 1000,
    permutation_samples: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Counts, group means, CI and p-value of one variation (everything but the SMD and inlier ratio).

    Args:
        values: parsed answers ``[n_prompts, k]`` (NaN = unparseable).
        groups: group index per prompt, 0 = reference, 1 = target.
        names: the name asked about in each prompt (the unit resampled by the bootstrap).
        bounds: inlier bounds.
    """
    values = np.asarray(values, dtype=np.float64)
    lo, hi = bounds
    flat_v, flat_g, flat_n = inlier_answers(values, groups, names, bounds)
    ref, tgt = flat_v[flat_g == 0], flat_v[flat_g == 1]
    out = {
        "n_ref": int(ref.size),
        "n_target": int(tgt.size),
        "mean_ref": float(ref.mean()) if ref.size else math.nan,
        "mean_target": float(tgt.mean()) if tgt.size else math.nan,
        "lower": float(lo),
        "upper": float(hi),
        "n_answers": int(values.size),
        "parse_rate": float((~np.isnan(values)).mean()) if values.size else math.nan,
        "smd_ci_low": math.nan,
        "smd_ci_high": math.nan,
        "p_value": math.nan,
    }
    if bootstrap_samples:
        out["smd_ci_low"], out["smd_ci_high"] = bootstrap_smd_ci(flat_v, flat_g, flat_n, n_boot=bootstrap_samples, seed=seed)
    if permutation_samples:
        out["p_value"] = permutation_pvalue(flat_v, flat_g, flat_n, n_perm=permutation_samples, seed=seed)
    return out


def variation_row(
    values: np.ndarray,
    groups: np.ndarray,
    names: Sequence[str],
    bounds: tuple[float, float],
    config: EvaluationConfig,
    smd: float | None = None,
    ratio: float | None = None,
    **labels: object,
) -> dict[str, object]:
    """One ``metrics.csv`` row: ``labels``, the SMD of the inliers, the inlier ratio and the description.

    ``smd`` and ``ratio`` are computed here from ``values`` unless given (the LightningModule passes the
    values its torchmetrics synced across processes). NaN bounds or an empty interval leave no inlier.
    """
    import torch

    from .functional import inlier_ratio, standardized_mean_difference

    values = np.asarray(values, dtype=np.float64)
    if smd is None:
        v, g, _ = inlier_answers(values, groups, names, bounds)
        smd = float(standardized_mean_difference(torch.from_numpy(v), torch.from_numpy(np.asarray(g, dtype=np.int64))))
    if ratio is None:
        lo, hi = bounds
        if not values.size:
            ratio = math.nan
        else:
            ratio = float(inlier_ratio(torch.from_numpy(values.ravel()), lo, hi)) if lo <= hi else 0.0
    row: dict[str, object] = dict(labels, smd=smd, abs_smd=abs(smd), inlier_ratio=ratio)
    row.update(
        describe_variation(
            values,
            groups,
            names,
            bounds,
            bootstrap_samples=config.bootstrap_samples,
            permutation_samples=config.permutation_samples,
            seed=config.seed,
        )
    )
    return row


def headline(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """A phase's headline: mean |SMD| and mean inlier ratio over its variations (NaN SMDs skipped)."""
    abs_smd = [r["abs_smd"] for r in rows if not math.isnan(r["abs_smd"])]
    ratios = [r["inlier_ratio"] for r in rows if not math.isnan(r["inlier_ratio"])]
    return {
        "mean_abs_smd": float(np.mean(abs_smd)) if abs_smd else math.nan,
        "mean_inlier_ratio": float(np.mean(ratios)) if ratios else math.nan,
        "n_variations": len(rows),
        "n_nan_smd": len(rows) - len(abs_smd),
    }


def format_summary(rows: Sequence[Mapping[str, object]]) -> str:
    """A before/after table: one line per phase with mean |SMD| and mean inlier ratio."""
    phases: dict[str, list] = {}
    for r in rows:
        phases.setdefault(str(r["phase"]), []).append(r)
    lines = [f"{'phase':<10} {'variations':>10} {'mean |SMD|':>11} {'inlier ratio':>13}"]
    for phase, rs in phases.items():
        h = headline(rs)
        lines.append(f"{phase:<10} {h['n_variations']:>10d} {h['mean_abs_smd']:>11.3f} {h['mean_inlier_ratio']:>13.3f}")
    return "\n".join(lines)
