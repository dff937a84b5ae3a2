"""``--pruning.budget auto``: ``fit`` chooses its budget, and its rule among a short list, on dev names as the study does.

After scoring, and before the reported ``validate`` stage, :func:`choose_on_dev` runs one more ``validate`` stage
on the **dev** names only. It answers with the unpruned model and, for every candidate of
:meth:`~biasprune.callbacks.pruning.PruningCallback.candidates` (rule x budget), the pruned model and
``pruning.auto_draws`` random controls of its own (seeds by (``dev``, candidate, draw)). The choice is the study's
(:func:`biasprune.study.choose.choose`: the utility guard on dev, then the lowest scale-free mean |SMD| minus its
random control's), so no number of the reported stage was tuned on its own names. The dev table goes to
``budget_choice.csv`` in the run directory and to the log; the choice goes to the callback
(:meth:`~biasprune.callbacks.pruning.PruningCallback.configure_choice`) and from there into ``masks.safetensors``
and the manifest. When no candidate qualifies, the run stops with the table: nothing is reported that the guard
refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from biasprune.core import artifacts
from biasprune.pruning.arms import UNPRUNED, Arm, EvaluationPlan
from biasprune.stats.rows import compute_bounds, variation_rows
from biasprune.stats.summary import split_data
from biasprune.study.choose import GRID_COLUMNS, Candidate, choose, point_rows

__all__ = ["CHOICE_FILE", "FixedArms", "choose_on_dev", "point_name"]

CHOICE_FILE = "budget_choice.csv"


class FixedArms:
    """An arm source that gives every batch the same arms (the dev stage of ``auto``)."""

    def __init__(self, arms: Sequence[Arm]) -> None:
        self.arms = list(arms)

    def arms_for(self, split: str, scenario: str, variation: str) -> list[Arm]:
        return self.arms


def point_name(point: dict) -> str:
    """``rule budget=B[ head_budget=H]`` of a candidate (the arm's name on dev)."""
    parts = [point["rule"]] + [f"{k}={point[k]}" for k in ("budget", "head_budget") if point.get(k) is not None]
    return " ".join(parts)


def _arms(cb, scores, groups, n, points) -> tuple[list[Arm], list[Candidate]]:
    arms, candidates = [UNPRUNED], []
    for point in points:
        name = point_name(point)
        masks = cb.select_point(scores, groups, n, point)
        controls = cb.random_controls(masks, "dev", name, cb.auto_draws)
        arms.append(Arm(name, "pruned", masks))
        arms += [Arm(f"{name}/random {d}", "random", m, draw=d) for d, m in enumerate(controls)]
        labels = {"units": cb.units, "strategy": "", "context": "", "point": name, "rule": point["rule"], "p": cb.p, "q": cb.q,
                  "budget": point.get("budget") if point.get("budget") is not None else ""}
        candidates.append(Candidate(name, tuple(f"{name}/random {d}" for d in range(cb.auto_draws)), ("fit",), labels))
    return arms, candidates


def choose_on_dev(trainer: L.Trainer, module, datamodule, cb) -> dict | None:
    """Resolve ``cb``'s ``auto`` budget (and rule) on dev names; returns the chosen point (None without scores).

    Raises:
        ValueError: the data has no dev names, or no candidate passes the guard on them.
    """
    found = cb.run_scores(module)
    if found is None:
        return None
    scores, n, _ = found
    groups = datamodule.groups
    points = cb.candidates()
    arms, candidates = _arms(cb, scores, groups, n, points)
    selection = datamodule.selection
    datamodule.configure_prompts(replace(selection, eval_splits=("dev",)))
    cb.configure_evaluation(EvaluationPlan(FixedArms(arms), write_results=False))  # the dev stage only feeds the choice
    try:
        L.Trainer.validate(trainer, module, datamodule=datamodule)
    finally:
        cb.configure_evaluation(None)
        datamodule.configure_prompts(selection)
    records = [r for r in module.evaluation_records if r["split"] == "dev"]
    if not records:
        raise ValueError("pruning.budget=auto chooses on dev names, but the data has none: give data.split_fractions a dev share")
    config = module.evaluation
    bounds = compute_bounds(records, config, datamodule.valid_range)
    rows = variation_rows(records, bounds, replace(config, bootstrap_samples=0, permutation_samples=0))
    table = point_rows(split_data(records, bounds, rows, "dev"), candidates, replace(config, permutation_samples=0))
    best = choose(table, 1)
    chosen = None if best is None else points[[c.arm for c in candidates].index(best["point"])]
    for row in table:
        row["chosen"] = best is not None and row["point"] == best["point"]
    if trainer.global_rank == 0:
        artifacts.write_csv(Path(module.run_dir) / CHOICE_FILE, table, GRID_COLUMNS)
    rank_zero_info(_describe(table, chosen, config.utility_margin))
    if chosen is None:
        raise ValueError(f"pruning.budget=auto: no candidate passes the utility guard on dev names (table in {CHOICE_FILE});"
                         " give pruning.auto_budgets smaller budgets")
    cb.configure_choice(chosen)
    return chosen


def _describe(table: Sequence[dict], chosen: dict | None, margin: float) -> str:
    from biasprune.metrics.spec import DECIDING

    lines = [f"budget chosen on dev names (utility guard: lower ends ≥ −{margin:g}; criterion: {DECIDING.label} mean |SMD|"
             " − its random control's):"]
    for r in table:
        mark = "  <- chosen" if r.get("chosen") else ""
        lines.append(f"  {r['point']:<40} {r[DECIDING.mean]:.3f} − {r[f'random_{DECIDING.mean}']:.3f} ="
                     f" {r[f'vs_random_{DECIDING.name}']:+.3f}  inlier {r['inlier_ratio']:.3f}  parse {r['parse_rate']:.2f}"
                     f"  utility {r['utility']}{mark}")
    if chosen is None:
        lines.append("  no candidate qualifies")
    return "\n".join(lines)
