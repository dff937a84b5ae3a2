"""From answer records to results: inlier bounds, one row per (split, arm, variation), all pure functions.

Inlier bounds are the [P5, P95] (configurable) percentiles of the *unpruned* model's parsed answers for the
same split and variation, optionally intersected with the scenario's ``valid_range``. The inlier ratio is
the share of all sampled responses (unparseable ones included) whose value lies within the bounds; the SMD
is computed on the inliers of each group. Bounds that collapse (P_low = P_high, or no parsed answer) are
flagged in the row (``bounds_degenerate``) and in the summary, never silently used.

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
from biasprune.core.checks import check_positive
from biasprune.stats.moments import bootstrap_smd_ci, permutation_pvalue

__all__ = [
    "METRIC_COLUMNS",
    "EvaluationConfig",
    "VariationKey",
    "compute_bounds",
    "group_records",
    "inlier_answers",
    "inlier_bounds",
    "read_bounds",
    "variation_rows",
    "write_bounds",
]

VariationKey = tuple[str, str, str]  # (split, scenario, variation)

METRIC_COLUMNS = (
    "split", "phase", "arm", "draw", "scenario", "variation", "smd", "abs_smd", "smd_ci_low", "smd_ci_high",
    "p_value", "inlier_ratio", "parse_rate", "n_ref", "n_target", "n_names_ref", "n_names_target", "mean_ref",
    "mean_target", "lower", "upper", "bounds_degenerate", "n_answers", "pruned_neurons", "pruned_heads",
    "edited_layers",
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
    """

    baseline: bool = True
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
            check_positive(f"evaluation.{name}", getattr(self, name), minimum=0)


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


def group_records(records: Iterable[Mapping]) -> dict[tuple[str, str], dict[tuple[str, str], list[Mapping]]]:
    """``{(split, arm): {(scenario, variation): [records]}}``, keeping first-seen order."""
    out: dict[tuple[str, str], dict[tuple[str, str], list[Mapping]]] = {}
    for r in records:
        out.setdefault((r["split"], r["arm"]), {}).setdefault((r["scenario"], r["variation"]), []).append(r)
    return out


def record_arrays(recs: Sequence[Mapping]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Parsed answers ``[n_prompts, k]``, group index per prompt and name per prompt."""
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


def variation_rows(
    records: Iterable[Mapping],
    bounds: Mapping[VariationKey, tuple[float, float]],
    config: EvaluationConfig,
    synced: Mapping[tuple[str, str, str, str], tuple[float, float]] | None = None,
) -> list[dict]:
    """One ``metrics.csv`` row per (split, arm, variation) of ``records``.

    ``synced`` optionally gives ``(smd, inlier_ratio)`` per ``(split, arm, scenario, variation)`` as the
    module's torchmetrics computed them across processes; they must agree with the values computed here from
    the gathered records, which are used otherwise.
    """
    import torch

    from biasprune.metrics.functional import standardized_mean_difference

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
            values, groups, names = record_arrays(recs)
            v, g, n = inlier_answers(values, groups, names, b)
            if synced and (split, arm, scen, var) in synced:
                smd, ratio = synced[(split, arm, scen, var)]
            else:
                smd = float(standardized_mean_difference(torch.from_numpy(v), torch.from_numpy(np.asarray(g, dtype=np.int64))))
                ratio = float((((values >= b[0]) & (values <= b[1])).sum()) / values.size) if values.size else math.nan
            ref, tgt = v[g == 0], v[g == 1]
            row = {
                "split": split, "phase": recs[0]["phase"], "arm": arm, "draw": recs[0].get("draw", -1),
                "scenario": scen, "variation": var, "smd": smd, "abs_smd": abs(smd), "inlier_ratio": ratio,
                "parse_rate": float((~np.isnan(values)).mean()) if values.size else math.nan,
                "n_ref": int(ref.size), "n_target": int(tgt.size),
                "n_names_ref": len({x for x, gi in zip(names, groups) if gi == 0}),
                "n_names_target": len({x for x, gi in zip(names, groups) if gi == 1}),
                "mean_ref": float(ref.mean()) if ref.size else math.nan,
                "mean_target": float(tgt.mean()) if tgt.size else math.nan,
                "lower": float(b[0]), "upper": float(b[1]), "bounds_degenerate": _degenerate(b),
                "n_answers": int(values.size), "smd_ci_low": math.nan, "smd_ci_high": math.nan, "p_value": math.nan,
                "pruned_neurons": recs[0].get("pruned_neurons", 0), "pruned_heads": recs[0].get("pruned_heads", 0),
                "edited_layers": recs[0].get("edited_layers", 0),
            }
            if config.bootstrap_samples and not math.isnan(smd):
                row["smd_ci_low"], row["smd_ci_high"] = bootstrap_smd_ci(v, g, n, n_boot=config.bootstrap_samples, seed=config.seed)
            if config.permutation_samples and not math.isnan(smd):
                row["p_value"] = permutation_pvalue(v, g, n, n_perm=config.permutation_samples, seed=config.seed)
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
