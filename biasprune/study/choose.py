"""Choosing a pruning point on dev names: the study's rule, also used by ``fit --pruning.budget auto``.

The choice sees dev answers only: changing any test answer cannot change it. Among the grid points of one
family (a study's (unit kind, strategy, context); ``fit``'s one pruned arm), a point qualifies if

* it prunes at least ``min_pruned`` units in every variation;
* its utility passes the guard on dev: for the inlier ratio and the parse rate, the paired name-bootstrap interval
  of ``point - unpruned`` has its lower end at or above ``-evaluation.utility_margin`` (with no bootstrap, the
  point estimate); the same guard that every claim applies (:mod:`biasprune.stats.claims`);
* its scale-free SMD, and that of its random control, is defined in every variation.

Points are compared at a matched budget: the criterion is the point's mean |SMD| (scale-free) minus that of its
random control (same number of units pruned per module / in total, drawn for this point on this split), so a
point that only adds noise scores about 0 and one that removes bias scores below 0. The lowest criterion wins;
ties go to the point that prunes fewer units. A family with no qualifying point gets ``None`` (reported, never
used in claims).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from biasprune.data.scenarios import variation_key
from biasprune.metrics.spec import BIAS_METRICS, DECIDING, UTILITY_METRICS
from biasprune.stats.intervals import utility_difference
from biasprune.stats.rows import EvaluationConfig, compute_bounds, variation_rows
from biasprune.stats.summary import SplitData, split_data, utility_draws
from biasprune.study.pieces import PieceStore
from biasprune.study.plan import ArmSpec, StudyPlan

__all__ = ["GRID_COLUMNS", "Candidate", "arm_id", "choose", "choose_points", "point_rows", "point_table", "spec_records"]

LABEL_COLUMNS = ("split", "units", "strategy", "context", "point", "rule", "p", "q", "budget")
GRID_COLUMNS = (
    *LABEL_COLUMNS,
    *(c for m in BIAS_METRICS for c in (m.mean, f"random_{m.mean}", f"vs_random_{m.name}", f"unpruned_{m.mean}", f"{m.prefix}n_undefined")),
    *(c for u in UTILITY_METRICS for c in (u.name, f"unpruned_{u.name}", f"{u.name}_vs_unpruned", f"{u.name}_vs_unpruned_ci_low")),
    "utility", "all_defined", "n_variations", "min_pruned", "mean_pruned", "chosen",
)


@dataclass(frozen=True)
class Candidate:
    """One point to compare on dev: its arm, its random-control arms, its family and labels (grid columns)."""

    arm: str
    controls: tuple[str, ...]
    family: tuple
    labels: Mapping[str, object]


def arm_id(spec: ArmSpec) -> str:
    """A readable, unique arm name: ``unpruned`` or ``units/strategy[:context]/point[/random d]``."""
    if not spec.units:
        return "unpruned"
    name = f"{spec.units}/{spec.strategy}{':' + spec.context if spec.context else ''}/{spec.point}"
    return name + (f"/random {spec.draw}" if spec.draw >= 0 else "")


def spec_records(plan: StudyPlan, store: PieceStore, spec: ArmSpec, keys: Sequence[tuple[str, str, str]]) -> list[dict]:
    """The answer records of ``spec`` on the (split, scenario, variation) ``keys``, labelled with its arm id."""
    out = []
    for split, scen, var in keys:
        for r in store.read_answers(plan.answer_key(spec, split, variation_key(scen, var))):
            out.append(dict(r, arm=arm_id(spec), phase=spec.phase, draw=spec.draw, **spec.labels()))
    return out


def _mean(rows: Sequence[Mapping | None], field: str) -> float:
    vals = [r[field] for r in rows if r is not None and not math.isnan(r[field])]
    return float(np.mean(vals)) if vals else math.nan


def _utility(row: dict, data: SplitData, ub, arm: str, margin: float) -> bool:
    """Fill the utility columns of one point; True when it passes the guard."""
    ok = True
    for u in UTILITY_METRICS:
        d = f"{u.name}_vs_unpruned"
        if ub is not None:
            iv = utility_difference(ub, u.name, arm, "unpruned")
            row[d], row[f"{d}_ci_low"] = iv.estimate, iv.low
        else:
            row[d] = row[f"{d}_ci_low"] = row[u.name] - row[f"unpruned_{u.name}"]
        ok = ok and row[f"{d}_ci_low"] >= -margin
    return ok


def point_rows(data: SplitData, candidates: Sequence[Candidate], config: EvaluationConfig) -> list[dict]:
    """One grid row per candidate on one split (columns :data:`GRID_COLUMNS` but ``chosen``)."""
    ub = utility_draws(data, config) if config.bootstrap_samples else None
    base = data.rows["unpruned"]
    out = []
    for c in candidates:
        rows = data.rows[c.arm]
        row = {"split": data.split, **c.labels, "family": c.family, "n_variations": sum(r is not None for r in rows)}
        for m in BIAS_METRICS:
            row[m.mean], row[f"unpruned_{m.mean}"] = _mean(rows, m.abs), _mean(base, m.abs)
            row[f"random_{m.mean}"] = _mean([{"v": _mean(data.rows[d], m.abs)} for d in c.controls], "v")
            row[f"vs_random_{m.name}"] = row[m.mean] - row[f"random_{m.mean}"]
            row[f"{m.prefix}n_undefined"] = sum(r is None or math.isnan(r[m.name]) for r in rows)
        for u in UTILITY_METRICS:
            row[u.name], row[f"unpruned_{u.name}"] = _mean(rows, u.name), _mean(base, u.name)
        row["utility"] = "non-inferior" if _utility(row, data, ub, c.arm, config.utility_margin) else "lost"
        undefined = row[f"{DECIDING.prefix}n_undefined"] + sum(
            r is None or math.isnan(r[DECIDING.name]) for d in c.controls for r in data.rows[d])
        row["all_defined"] = undefined == 0
        n_pruned = [r["pruned_neurons"] + r["pruned_heads"] for r in rows if r is not None]
        row["min_pruned"], row["mean_pruned"] = (min(n_pruned), float(np.mean(n_pruned))) if n_pruned else (0, 0.0)
        out.append(row)
    return out


def choose(rows: Sequence[Mapping], min_pruned: int) -> Mapping | None:
    """The row that wins among ``rows`` (one family, dev names), or None when none qualifies (module docstring)."""
    key = f"vs_random_{DECIDING.name}"
    ok = [r for r in rows if r["min_pruned"] >= max(min_pruned, 1) and r["utility"] == "non-inferior" and r["all_defined"]
          and not math.isnan(r[key])]
    return min(ok, key=lambda r: (r[key], r["mean_pruned"])) if ok else None


def point_table(plan: StudyPlan, store: PieceStore, keys: Sequence[tuple[str, str, str]], grid: Sequence[ArmSpec],
                draws: int, valid_range: Callable, config: EvaluationConfig) -> list[dict]:
    """Per grid point and split: both bias metrics, their random controls, the utility guard, units pruned."""
    quick = replace(config, permutation_samples=0)
    table = []
    for split in dict.fromkeys(k[0] for k in keys):
        sk = [k for k in keys if k[0] == split]
        specs = [ArmSpec(), *grid, *(replace(g, draw=d) for g in grid for d in range(draws))]
        records = [r for s in specs for r in spec_records(plan, store, s, sk)]
        bounds = compute_bounds([r for r in records if r["arm"] == "unpruned"], quick, valid_range)
        data = split_data(records, bounds, variation_rows(records, bounds, replace(quick, bootstrap_samples=0)), split)
        candidates = [Candidate(arm_id(g), tuple(arm_id(replace(g, draw=d)) for d in range(draws)), g.family(),
                                {k: g.labels()[k] for k in LABEL_COLUMNS[1:]}) for g in grid]
        for row, g in zip(point_rows(data, candidates, quick), grid):
            table.append(row | {"spec": g})
    return table


def choose_points(table: Sequence[Mapping], min_pruned: int) -> dict[tuple[str, str, str], ArmSpec | None]:
    """The chosen point of every (unit kind, strategy, context), from the ``dev`` rows of ``table`` only."""
    families: dict[tuple[str, str, str], list[Mapping]] = {}
    for row in table:
        if row["split"] == "dev":
            families.setdefault(row["spec"].family(), []).append(row)
    chosen: dict[tuple[str, str, str], ArmSpec | None] = {}
    for fam, rows in families.items():
        best = choose(rows, min_pruned)
        chosen[fam] = None if best is None else best["spec"]
    return chosen
