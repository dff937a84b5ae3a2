"""From answer records to results: inlier bounds, one row per (split, arm, variation), all pure functions.

Inlier bounds are the [P5, P95] (configurable) percentiles of the *unpruned* model's parsed answers for the
same split and variation, optionally intersected with the scenario's ``valid_range``. Every metric of a row
(the scale-free and the paper's SMD, the inlier ratio, the parse rate) is computed once, by its row function in
:mod:`biasprune.metrics.spec`; the per-variation interval and p-value of each SMD come from
:mod:`biasprune.stats.moments` on the same selected answers. Bounds that collapse (P_low = P_high, or no parsed
answer) are flagged in the row (``bounds_degenerate``) and in the summary, never silently used.

Per-arm summaries (mean |SMD| with its interval, noise floor, random control, claims) are in
:mod:`biasprune.stats.summary`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biasprune.core.artifacts import read_json, write_json
from biasprune.core.checks import check_fraction, check_positive
from biasprune.metrics.spec import BIAS_METRICS, UTILITY_METRICS, BiasMetric, Window, row_columns
from biasprune.stats.moments import bootstrap_smd_ci, permutation_pvalue

__all__ = [
    "CHANGE_COLUMNS",
    "METRIC_COLUMNS",
    "EvaluationConfig",
    "VariationKey",
    "compute_bounds",
    "group_records",
    "inlier_bounds",
    "metric_answers",
    "read_bounds",
    "variation_rows",
    "write_bounds",
]

VariationKey = tuple[str, str, str]  # (split, scenario, variation)

KEY_COLUMNS = ("split", "phase", "arm", "draw", "scenario", "variation")
#: What an arm changes: pruned units per kind and, for a direction arm, its edited layers (docs/method.md, "Directions").
CHANGE_COLUMNS = ("pruned_neurons", "pruned_heads", "edited_layers")
METRIC_COLUMNS = (
    *KEY_COLUMNS, *row_columns(), "n_names_ref", "n_names_target", "lower", "upper", "bounds_degenerate", "n_answers",
    *CHANGE_COLUMNS,
)


@dataclass(frozen=True)
class EvaluationConfig:
    """How answers are judged.

    Attributes:
        baseline: evaluate the unpruned model (its answers also fix the inlier bounds); false needs
            ``inlier_bounds``.
        inlier_percentiles: percentiles of the unpruned model's answers that bound the inliers.
        use_valid_range: also clip the bounds to the scenario's ``valid_range``.
        inlier_bounds: ``inlier_bounds.json`` of an earlier run; empty to compute the bounds from this run's
            unpruned answers.
        bootstrap_samples: name-bootstrap draws for every confidence interval (0 to skip them).
        permutation_samples: label permutations across names for p-values and the noise floor (0 to skip).
        seed: seed of the bootstrap and permutation draws.
        save_answers: write every sampled response and its parsed value to ``answers.jsonl``.
        utility_margin: the utility guard's margin: "pruning lowers bias" holds only if, for the inlier ratio and the
            parse rate, the paired name-bootstrap interval of ``arm - unpruned`` has its lower end at or above
            ``-utility_margin`` (absolute).
        max_undefined_share: an arm whose scale-free SMD is undefined in more than this share of the variations is
            kept out of the claims (0: in any variation).
    """

    baseline: bool = True
    inlier_percentiles: tuple[float, float] = (5.0, 95.0)
    use_valid_range: bool = True
    inlier_bounds: str = ""
    bootstrap_samples: int = 1000
    permutation_samples: int = 1000
    seed: int = 0
    save_answers: bool = True
    utility_margin: float = 0.1
    max_undefined_share: float = 0.0

    def __post_init__(self) -> None:
        lo, hi = self.inlier_percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"evaluation.inlier_percentiles must satisfy 0 <= low < high <= 100, got {self.inlier_percentiles}")
        for name in ("bootstrap_samples", "permutation_samples"):
            check_positive(f"evaluation.{name}", getattr(self, name), minimum=0)
        check_fraction("evaluation.utility_margin", self.utility_margin)
        check_fraction("evaluation.max_undefined_share", self.max_undefined_share)


def inlier_bounds(
    values: np.ndarray, percentiles: Sequence[float] = (5.0, 95.0), valid_range: Sequence[float] | None = None
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


def group_records(records: Iterable[Mapping]) -> dict[tuple[str, str], dict[tuple[str, str], list[Mapping]]]:
    """``{(split, arm): {(scenario, variation): [records]}}``, keeping first-seen order."""
    out: dict[tuple[str, str], dict[tuple[str, str], list[Mapping]]] = {}
    for r in records:
        out.setdefault((r["split"], r["arm"]), {}).setdefault((r["scenario"], r["variation"]), []).append(r)
    return out


def record_arrays(recs: Sequence[Mapping]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Parsed answers ``[n_prompts, k]``, group index per prompt and name per prompt (``[0, 0]`` for no record)."""
    if not recs:
        return np.zeros((0, 0)), np.zeros(0, dtype=np.int64), []
    values = np.array([r["values"] for r in recs], dtype=np.float64).reshape(len(recs), -1)
    return values, np.array([r["group_index"] for r in recs], dtype=np.int64), [r["name"] for r in recs]


def compute_bounds(
    records: Iterable[Mapping],
    config: EvaluationConfig,
    valid_range: Callable[[str], Sequence[float] | None],
    stored: Mapping[str, Sequence[float]] | None = None,
) -> dict[VariationKey, tuple[float, float]]:
    """Bounds per (split, scenario, variation) from the ``unpruned`` arm's answers.

    ``stored`` (``inlier_bounds.json`` contents, keyed ``scenario/variation``) wins over computed bounds.
    """
    out: dict[VariationKey, tuple[float, float]] = {}
    for (split, arm), per_var in group_records(records).items():
        if arm != "unpruned":
            continue
        for (scen, var), recs in per_var.items():
            vr = valid_range(scen) if config.use_valid_range else None
            out[(split, scen, var)] = inlier_bounds(record_arrays(recs)[0], config.inlier_percentiles, vr)
    for key, b in (stored or {}).items():  # stored bounds hold for every split
        scen, var = key.split("/", 1)
        for split in ("dev", "test"):
            out[(split, scen, var)] = (float(b[0]), float(b[1]))
    return out


def _degenerate(bounds: tuple[float, float]) -> bool:
    lo, hi = bounds
    return bool(math.isnan(lo) or math.isnan(hi) or not lo < hi)


def metric_answers(metric: BiasMetric, values: np.ndarray, groups: np.ndarray, names: Sequence[str],
                   window: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The answers that ``metric`` keeps, as flat ``(values, groups, names)`` (one entry per answer; selected
    values, e.g. normal scores)."""
    x = metric.select(values, groups, window)
    keep = ~np.isnan(x)
    return (
        x[keep],
        np.broadcast_to(np.asarray(groups)[:, None], x.shape)[keep],
        np.broadcast_to(np.asarray(names, dtype=object)[:, None], x.shape)[keep],
    )


def _bias_columns(metric: BiasMetric, values, groups, names, window: Window, config: EvaluationConfig) -> dict:
    row = metric.row(values, groups, window)
    ci = (math.nan, math.nan)
    p = math.nan
    if not math.isnan(row[metric.name]) and (config.bootstrap_samples or config.permutation_samples):
        v, g, n = metric_answers(metric, values, groups, names, window)
        if config.bootstrap_samples:
            ci = bootstrap_smd_ci(v, g, n, n_boot=config.bootstrap_samples, seed=config.seed)
        if config.permutation_samples:
            p = permutation_pvalue(v, g, n, n_perm=config.permutation_samples, seed=config.seed)
    return row | {f"{metric.name}_ci_low": ci[0], f"{metric.name}_ci_high": ci[1], f"{metric.name}_p_value": p}


def variation_rows(
    records: Iterable[Mapping],
    bounds: Mapping[VariationKey, tuple[float, float]],
    config: EvaluationConfig,
) -> list[dict]:
    """One ``metrics.csv`` row per (split, arm, variation) of ``records`` (columns :data:`METRIC_COLUMNS`).

    Every metric comes from its row function (:mod:`biasprune.metrics.spec`) on the gathered records, the one
    computation of each number: under DDP the records of every process are gathered first, so the rows are
    exact whatever the world size.
    """
    rows = []
    for (split, arm), per_var in group_records(records).items():
        for (scen, var), recs in per_var.items():
            key = (split, scen, var)
            if key not in bounds:
                raise RuntimeError(
                    f"no inlier bounds for {split}/{scen}/{var}: they come from the unpruned model's answers; keep"
                    " --model.evaluation.baseline true, or give --model.evaluation.inlier_bounds covering it"
                )
            b = bounds[key]
            window = Window((float(b[0]), float(b[1])))
            values, groups, names = record_arrays(recs)
            row = {"split": split, "phase": recs[0]["phase"], "arm": arm, "draw": recs[0].get("draw", -1), "scenario": scen,
                   "variation": var}
            for metric in BIAS_METRICS:
                row |= _bias_columns(metric, values, groups, names, window, config)
            for metric in UTILITY_METRICS:
                row |= metric.row(values, window)
            row |= {
                "n_names_ref": len({x for x, gi in zip(names, groups) if gi == 0}),
                "n_names_target": len({x for x, gi in zip(names, groups) if gi == 1}),
                "lower": window.bounds[0], "upper": window.bounds[1], "bounds_degenerate": _degenerate(b),
                "n_answers": int(values.size), **{c: recs[0].get(c, 0) for c in CHANGE_COLUMNS},
            }
            rows.append(row)
    return rows


def write_bounds(path: str | Path, bounds: Mapping[tuple[str, str, str], Sequence[float]], percentiles: Sequence[float]) -> Path:
    """``inlier_bounds.json``: ``bounds`` (``scenario/variation`` -> [low, high]) of the reported split (test
    when evaluated, else dev), which a later ``validate`` can reuse, and ``bounds_by_split``."""
    by_split: dict[str, dict[str, list[float]]] = {}
    for (split, scen, var), b in bounds.items():
        by_split.setdefault(split, {})[f"{scen}/{var}"] = [float(b[0]), float(b[1])]
    main = by_split.get("test") or next(iter(by_split.values()), {})
    return write_json(path, {"percentiles": list(percentiles), "bounds": main, "bounds_by_split": by_split})


def read_bounds(path: str | Path) -> dict[str, tuple[float, float]]:
    """The ``bounds`` of an ``inlier_bounds.json`` (``scenario/variation`` -> (low, high)), checked."""
    try:
        data = read_json(path)
        return {k: (float(v[0]), float(v[1])) for k, v in data["bounds"].items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise ValueError(f"inlier bounds file {str(path)!r} is not readable: {err}") from err
