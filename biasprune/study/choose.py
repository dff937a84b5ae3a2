"""Reading an arm's answers back from the pieces, and choosing each strategy's pruning point on dev names.

The choice sees dev answers only: changing any test answer cannot change it. Among the grid points of one
(unit kind, strategy, context), a point qualifies if it prunes at least ``grid.min_pruned`` units in every
variation, its mean inlier ratio is at least ``grid.inlier_floor`` times the unpruned model's and its mean
|SMD| is defined. Points are compared at a matched budget: the criterion is the arm's mean |SMD| minus that
of its random control (same number of units pruned per module / in total), so a point that only adds noise
scores about 0 and one that removes bias scores below 0. The lowest criterion wins; ties go to the point
that prunes fewer units. A family with no qualifying point gets ``None`` (reported, never used in claims).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from biasprune.data.scenarios import variation_key
from biasprune.stats.rows import EvaluationConfig, compute_bounds, variation_rows
from biasprune.study.config import GridConfig
from biasprune.study.pieces import PieceStore
from biasprune.study.plan import ArmSpec, StudyPlan

__all__ = ["arm_id", "choose_points", "point_table", "spec_records"]


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


def _mean(rows: Sequence[Mapping], field: str) -> float:
    vals = [r[field] for r in rows if not math.isnan(r[field])]
    return float(np.mean(vals)) if vals else math.nan


def point_table(plan: StudyPlan, store: PieceStore, keys: Sequence[tuple[str, str, str]], grid: Sequence[ArmSpec],
                draws: int, valid_range, config: EvaluationConfig) -> list[dict]:
    """Per grid point and split: mean |SMD|, its random control's, the difference, inlier ratio, units pruned."""
    quick = EvaluationConfig(**{**config.__dict__, "bootstrap_samples": 0, "permutation_samples": 0})
    table = []
    for split in dict.fromkeys(k[0] for k in keys):
        sk = [k for k in keys if k[0] == split]
        base_recs = spec_records(plan, store, ArmSpec(), sk)
        bounds = compute_bounds(base_recs, quick, valid_range)
        base = variation_rows(base_recs, bounds, quick)
        for spec in grid:
            rows = variation_rows(spec_records(plan, store, spec, sk), bounds, quick)
            rand = [variation_rows(spec_records(plan, store, replace(spec, draw=d), sk), bounds, quick) for d in range(draws)]
            rand_means = [_mean(r, "abs_smd") for r in rand]
            n_pruned = [r["pruned_neurons"] + r["pruned_heads"] for r in rows]
            table.append({
                "split": split, "units": spec.units, "strategy": spec.strategy, "context": spec.context, "point": spec.point,
                "rule": spec.rule,
                "p": spec.p, "q": spec.q, "budget": "" if spec.budget is None else spec.budget,
                "mean_abs_smd": _mean(rows, "abs_smd"), "n_undefined": sum(math.isnan(r["smd"]) for r in rows),
                "n_variations": len(rows), "random_mean_abs_smd": _mean([{"v": m} for m in rand_means], "v"),
                "inlier_ratio": _mean(rows, "inlier_ratio"), "unpruned_inlier_ratio": _mean(base, "inlier_ratio"),
                "unpruned_mean_abs_smd": _mean(base, "abs_smd"),
                "min_pruned": min(n_pruned) if n_pruned else 0, "mean_pruned": float(np.mean(n_pruned)) if n_pruned else 0.0,
                "spec": spec,
            })
            t = table[-1]
            t["vs_random"] = t["mean_abs_smd"] - t["random_mean_abs_smd"]
    return table


def choose_points(table: Sequence[Mapping], grid_cfg: GridConfig) -> dict[tuple[str, str, str], ArmSpec | None]:
    """The chosen point of every (unit kind, strategy, context), from the ``dev`` rows of ``table`` only."""
    families: dict[tuple[str, str, str], list[Mapping]] = {}
    for row in table:
        if row["split"] == "dev":
            families.setdefault(row["spec"].family(), []).append(row)
    chosen: dict[tuple[str, str, str], ArmSpec | None] = {}
    for fam, rows in families.items():
        ok = [r for r in rows if r["min_pruned"] >= max(grid_cfg.min_pruned, 1)
              and r["inlier_ratio"] >= grid_cfg.inlier_floor * r["unpruned_inlier_ratio"]
              and not math.isnan(r["vs_random"])]
        best = min(ok, key=lambda r: (r["vs_random"], r["mean_pruned"])) if ok else None
        chosen[fam] = None if best is None else best["spec"]
    return chosen
