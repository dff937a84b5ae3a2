"""The cross-context transfer matrix: source scenario (where a mask or a direction is estimated) x target scenario
(where it is answered), on test names (docs/method.md, "Transfer matrix").

One ``Trainer.fit`` scores the source scenarios' evaluated variations (all of a source's variations when none of
them is evaluated) once, on scoring names (per-variation sums, as the study does);
each source's arm is made from the sum of its variations' sums: masks by the pruning callback's rule and budget
(``--pruning.method masks``), or the difference-of-means edit (``--pruning.method direction``, with
``--model.objective direction``). One ``Trainer.validate`` answers every target variation on test names with the
unpruned model, each source's arm and its random controls (masks pruning as many units, or random directions of the
same size), seeded by the callback's seed rule, (split, arm, draw), with the source's arm name as the arm
(:meth:`biasprune.pruning.factory.MaskFactory.control_seed`), so sources never share a control.

Each cell (source s, target t) is the run's own verdict machinery on the answers to t's variations with the arms of
s only: the unpruned model, s's arm renamed ``pruned`` and its controls renamed ``random/<d>``
(:func:`biasprune.stats.summary.summarize_split`). The cell holds the cut in mean |SMD| (unpruned minus arm) of
the deciding scale-free measure (``cut``; :data:`biasprune.metrics.spec.DECIDING`) and of the paper's
(``paper_cut``), each with its paired name-bootstrap interval, every arm's mean |SMD| per measure under the spec's
names (``unpruned_/arm_/random_mean_abs_<measure>``), the utility guard (the arm's inlier and parse rates, their
paired differences from the unpruned model with intervals, ``utility``: non-inferior or lost) and the ratios
``inlier_vs_unpruned`` / ``parse_vs_unpruned``, and the claim's verdict, read as "transfers" (holds), "does not"
(does not hold), "cannot tell" (inconclusive) or "breaks answers" (the guard failed). The diagonal is prompt-specific (the arm answers the scenario it was estimated
on, on other names); the off-diagonal is cross-context. A row's verdict reads its off-diagonal cells: "transfers"
when every one holds, "does not" when none holds and at least one does not hold, "cannot tell" otherwise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from biasprune.callbacks.pruning import PruningCallback
from biasprune.core import artifacts
from biasprune.core.distributed import barrier
from biasprune.data.scenarios import variation_key
from biasprune.datamodules.audit import AuditDataModule, PromptSelection
from biasprune.metrics.spec import BIAS_METRICS, DECIDING, PAPER, UTILITY_METRICS, summary_columns
from biasprune.pruning.arms import UNPRUNED, Arm, EvaluationPlan
from biasprune.pruning.direction import DirectionEdit, estimate_direction, parse_layers, random_direction
from biasprune.pruning.masks import save_masks
from biasprune.report import plots
from biasprune.scoring.accumulate import sum_scores
from biasprune.scoring.scorefile import read_scores, read_scores_meta
from biasprune.stats.intervals import arm_interval, difference_interval
from biasprune.stats.rows import EvaluationConfig, compute_bounds, variation_rows
from biasprune.stats.summary import summarize_split

__all__ = ["CELL_VERDICTS", "TRANSFER_COLUMNS", "TransferArms", "row_verdicts", "run_transfer", "transfer_cells", "write_transfer"]

CELL_VERDICTS = {"holds": "transfers", "does not hold": "does not", "inconclusive": "cannot tell", "breaks answers": "breaks answers"}
#: The cut's columns per bias measure: ``cut`` for the deciding one, ``paper_cut`` for the paper's.
CUT = {DECIDING.name: "cut", PAPER.name: "paper_cut"}
TRANSFER_COLUMNS = (
    "method", "source", "target", "cell",
    *(f"{CUT[m.name]}{x}" for m in BIAS_METRICS for x in ("", "_ci_low", "_ci_high")),
    *(f"{who}_{m.mean}" for m in BIAS_METRICS for who in ("unpruned", "arm", "random")),
    *summary_columns(UTILITY_METRICS), "utility", "inlier_vs_unpruned", "parse_vs_unpruned", "n_variations", "verdict", "claim",
    "sentence",
)


@dataclass(frozen=True)
class TransferArms:
    """The arms of the transfer stage: the same for every (split, variation)."""

    arms: tuple[Arm, ...]

    def arms_for(self, split: str, scenario: str, variation: str) -> Sequence[Arm]:
        return self.arms


def _source_of(arm: str, sources: Sequence[str]) -> tuple[str, str] | None:
    """(source, the arm's name within its source: ``pruned`` or ``random/<d>``), or None for another arm."""
    for s in sources:
        if arm == s:
            return s, "pruned"
        if arm.startswith(f"{s}/random/"):
            return s, arm[len(s) + 1 :]
    return None


def transfer_cells(records: Sequence[Mapping], bounds: Mapping, config: EvaluationConfig, units_total: Mapping[str, int],
                   sources: Sequence[str], targets: Sequence[str], method: str, split: str = "test") -> list[dict]:
    """One row of :data:`TRANSFER_COLUMNS` per (source, target), from the answers of one transfer stage."""
    cells = []
    for s in sources:
        for t in targets:
            sub = []
            for r in records:
                if r["split"] != split or r["scenario"] != t:
                    continue
                if r["arm"] == UNPRUNED.name:
                    sub.append(r)
                elif (found := _source_of(r["arm"], sources)) is not None and found[0] == s:
                    sub.append(dict(r, arm=found[1]))
            cell = {"method": method, "source": s, "target": t, "cell": "prompt-specific" if s == t else "cross-context"}
            if not sub:
                cells.append({c: cell.get(c, math.nan) for c in TRANSFER_COLUMNS} | {"verdict": "cannot tell", "claim": "",
                                                                                      "sentence": f"no answers to {t} on {split} names"})
                continue
            rows = variation_rows(sub, bounds, config)
            summary = summarize_split(sub, bounds, rows, config, split, units_total)
            by_arm = {r["arm"]: r for r in summary.rows}
            base, arm = by_arm.get(UNPRUNED.name, {}), by_arm.get("pruned", {})
            claim = next((c for c in summary.claims if c.claim.endswith("(pruned)")), None)
            randoms = tuple(a for a in by_arm if a.startswith("random/"))
            for m in BIAS_METRICS:
                boot = (summary.boots or {}).get(m.name)
                cut = difference_interval(boot, UNPRUNED.name, "pruned") if boot is not None else None
                name = CUT[m.name]
                cell |= {name: cut.estimate if cut else math.nan, f"{name}_ci_low": cut.low if cut else math.nan,
                         f"{name}_ci_high": cut.high if cut else math.nan, f"unpruned_{m.mean}": _arm_mean(boot, UNPRUNED.name),
                         f"arm_{m.mean}": _arm_mean(boot, "pruned"), f"random_{m.mean}": _arm_mean(boot, randoms)}
            cell |= {c: arm.get(c, math.nan) for c in summary_columns(UTILITY_METRICS)} | {"utility": arm.get("utility", "")}
            cell |= {
                "inlier_vs_unpruned": _ratio(arm, base, "inlier_ratio"), "parse_vs_unpruned": _ratio(arm, base, "parse_rate"),
                "n_variations": arm.get("n_variations", 0),
                "verdict": CELL_VERDICTS.get(claim.verdict, "cannot tell") if claim else "cannot tell",
                "claim": claim.verdict if claim else "", "sentence": claim.sentence if claim else "no claim (no bootstrap)",
            }
            cells.append(cell)
    return cells


def _ratio(arm: Mapping, base: Mapping, key: str) -> float:
    a, b = float(arm.get(key, math.nan)), float(base.get(key, math.nan))
    return a / b if b and not math.isnan(b) else math.nan


def _arm_mean(boot, arm: str | tuple[str, ...]) -> float:
    """Mean |SMD| of an arm (or the average of several: the random draws) in a cell's bootstrap of one measure."""
    if boot is None or (isinstance(arm, tuple) and not arm):
        return math.nan
    return arm_interval(boot, arm).estimate


#: The dev choice of layers reads the deciding measure's means.
ARM, RANDOM = f"arm_{DECIDING.mean}", f"random_{DECIDING.mean}"
#: The guard's columns in the layer table: each utility rate's difference from the unpruned model, with its lower end.
GUARD = tuple(c for u in UTILITY_METRICS for c in (f"{u.name}_vs_unpruned", f"{u.name}_vs_unpruned_ci_low"))
LAYER_COLUMNS = ("source", "candidate", "layers", "cut", ARM, RANDOM, "over_random", *GUARD, "inlier_vs_unpruned",
                 "parse_vs_unpruned", "verdict", "qualifies", "chosen")


def _guard(cell: Mapping, margin: float) -> bool:
    """The utility guard on dev, as the study's choice applies it (:mod:`biasprune.study.choose`): for the inlier
    ratio and the parse rate, the lower end of the paired interval of ``arm - unpruned`` (with no bootstrap, the
    estimate) is at or above ``-margin``."""
    for u in UTILITY_METRICS:
        d = f"{u.name}_vs_unpruned"
        low = float(cell.get(f"{d}_ci_low", math.nan))
        low = float(cell.get(d, math.nan)) if math.isnan(low) else low
        if math.isnan(low) or low < -margin:
            return False
    return True


def choose_layers(dev: Sequence[Mapping], n_layers: int, utility_margin: float = 0.1) -> tuple[str | None, list[dict]]:
    """The direction's layers for one source, from its dev cells (one per candidate, on the source's own variations).

    The rule (fixed before the runs; docs/results.md): a candidate qualifies if its dev verdict is not "breaks
    answers" and it passes the utility guard on dev (:func:`_guard`, ``utility_margin`` =
    ``--model.evaluation.utility_margin``, as the study's choice); among those, the lowest dev mean |SMD| minus its
    random-direction control's (the deciding scale-free measure); ties go to fewer layers, then to the earlier
    candidate. Returns the chosen candidate (None when none qualifies) and the table of every candidate."""
    table = []
    for i, c in enumerate(dev):
        over = c[ARM] - c[RANDOM]
        ok = c["verdict"] != "breaks answers" and _guard(c, utility_margin) and not math.isnan(over)
        layers = parse_layers(c["candidate"], n_layers)
        table.append({"source": c["source"], "candidate": c["candidate"], "layers": ",".join(map(str, layers)), "cut": c["cut"],
                      ARM: c[ARM], RANDOM: c[RANDOM], "over_random": over,
                      **{g: c.get(g, math.nan) for g in GUARD}, "inlier_vs_unpruned": c.get("inlier_vs_unpruned", math.nan),
                      "parse_vs_unpruned": c.get("parse_vs_unpruned", math.nan), "verdict": c["verdict"], "qualifies": ok,
                      "chosen": False, "_key": (over, len(layers), i)})
    ok = [t for t in table if t["qualifies"]]
    best = min(ok, key=lambda t: t["_key"]) if ok else None
    for t in table:
        t.pop("_key")
        t["chosen"] = t is best
    return (best["candidate"] if best else None), table


def row_verdicts(cells: Sequence[Mapping]) -> dict[str, str]:
    """Per source: "transfers" (every off-diagonal cell holds), "does not" (none holds, one does not hold), or
    "cannot tell"."""
    out = {}
    for s in dict.fromkeys(c["source"] for c in cells):
        off = [c["verdict"] for c in cells if c["source"] == s and c["target"] != s]
        if off and all(v == "transfers" for v in off):
            out[s] = "transfers"
        elif off and "transfers" not in off and "does not" in off:
            out[s] = "does not"
        else:
            out[s] = "cannot tell"
    return out


def write_transfer(out: str | Path, cells: Sequence[Mapping], method: str, experiment=None) -> dict[str, str]:
    """``transfer_<method>.csv``, ``transfer_<method>.png`` (heatmap of the cuts, verdicts in the cells) and the same
    figure in TensorBoard when ``experiment`` (a SummaryWriter) is given; returns the row verdicts."""
    out = Path(out)
    verdicts = row_verdicts(cells)
    artifacts.write_csv(out / f"transfer_{method}.csv", [dict(c) for c in cells], TRANSFER_COLUMNS)
    sources = list(dict.fromkeys(c["source"] for c in cells))
    targets = list(dict.fromkeys(c["target"] for c in cells))
    cut = np.full((len(sources), len(targets)), np.nan)
    text = [["" for _ in targets] for _ in sources]
    for c in cells:
        i, j = sources.index(c["source"]), targets.index(c["target"])
        cut[i, j] = c["cut"]
        text[i][j] = f"{c['cut']:.2f}\n[{c['cut_ci_low']:.2f}, {c['cut_ci_high']:.2f}]\n{c['verdict']}"
    fig = plots.transfer_heatmap([f"{s} ({verdicts[s]})" for s in sources], targets, cut, text,
                                 f"Cut in mean |SMD| by source x target ({method}, test names)")
    plots.save(fig, out / f"transfer_{method}.png")
    if experiment is not None and hasattr(experiment, "add_figure"):
        experiment.add_figure(f"transfer/{method}", fig, global_step=0)
    artifacts.write_json(out / f"transfer_{method}_rows.json", verdicts)
    return verdicts


def _seed(cb: PruningCallback, split: str, arm: str, draw: int) -> int:
    """A random direction's seed: the callback's seed of (split, the source's arm, draw), as for random masks."""
    return cb.factory.control_seed(split, arm, draw)


def _source_arms(cb: PruningCallback, module, dm: AuditDataModule, per_variation, sources: Sequence[str], meta: Mapping,
                 split: str, layers: Mapping[str, Sequence[str]] | None = None) -> list[Arm]:
    """The unpruned model and, per source, its arm and random controls on ``split`` (the controls are drawn per
    split, as the callback's). ``layers``: direction layer candidates per source; a source with several is given
    one arm ``<source>@<candidate>`` per candidate (the dev stage)."""
    groups = tuple(dm.groups)
    arms: list[Arm] = [UNPRUNED] if module.evaluation.baseline else []
    for s in sources:
        mine = [v for v in per_variation if v.split("/", 1)[0] == s]
        scores = sum_scores(per_variation, mine)
        labels = {"source": s}
        if cb.method == "direction":
            candidates = list((layers or {}).get(s) or [cb.direction_layers])
            for cand in candidates:
                name = s if len(candidates) == 1 else f"{s}@{cand}"
                chosen = parse_layers(cand, len(module.layout.heads))
                edit = estimate_direction(scores, groups, chosen, {"scoring": ",".join(mine), "source": s, "layers_rule": cand})
                arms.append(Arm(name, "pruned", edit=edit, labels=labels))
                arms += [Arm(f"{name}/random/{d}", "random", edit=random_direction(edit, _seed(cb, split, name, d)), draw=d, labels=labels)
                         for d in range(cb.random_draws)]
        else:
            n = {g: sum(int(meta.get(v, {}).get(g, 0)) for v in mine) for g in groups}
            masks = cb.select_point(scores, groups, n)
            arms.append(Arm(s, "pruned", masks, labels=labels))
            arms += [Arm(f"{s}/random/{d}", "random", m, draw=d, labels=labels) for d, m in enumerate(cb.random_controls(masks, split, s))]
    return arms


def _answer(trainer, module, dm: AuditDataModule, cb: PruningCallback, scoring: Sequence[str], split: str, arms: Sequence[Arm]):
    """One validate stage of ``arms`` on ``split`` names; (records, bounds) on every rank (the records are gathered)."""
    dm.configure_prompts(PromptSelection(tuple(scoring), (split,)))
    cb.configure_evaluation(EvaluationPlan(TransferArms(tuple(arms)), write_results=False))
    try:
        trainer.validate(module, datamodule=dm)
    finally:
        cb.configure_evaluation(None)
    records = module.evaluation_records
    return records, compute_bounds(records, module.evaluation, dm.valid_range)


def run_transfer(trainer, module, dm: AuditDataModule, output: str | Path, sources: Sequence[str] | None = None,
                 layer_candidates: Sequence[str] = ()) -> dict:
    """Score the sources' variations, answer every target variation on test names with each source's arm, and
    write the matrix into ``output`` (rank 0). ``sources``: scenarios (default: those of ``--data.evaluation``);
    the trainer's pruning callback gives the method, the rule, the budgets and the random draws. With
    ``layer_candidates`` (direction only), each source's layers are first chosen on dev names on its own
    variations by :func:`choose_layers` (``transfer_<method>_layers.csv``)."""
    found = [cb for cb in trainer.callbacks if isinstance(cb, PruningCallback)]
    if not found:
        raise ValueError("the transfer matrix needs the pruning callback (--pruning.method, rule, budgets, random_draws)")
    cb, out = found[0], Path(output)
    eval_rows = dm.rows(PromptSelection(dm.selection.scoring, ("test",)))[1]
    evaluated = list(dict.fromkeys(variation_key(r["scenario"], r["variation"]) for r in eval_rows))
    targets = list(dict.fromkeys(v.split("/", 1)[0] for v in evaluated))
    sources = list(sources or targets)
    # a source's arm comes from its evaluated variations (scoring names), or from all its variations when none is
    # evaluated: the diagonal is then prompt-specific (the same prompts with other names)
    scoring = tuple(v for s in sources for v in ([w for w in evaluated if w.split("/", 1)[0] == s]
                                                  or [variation_key(s, x.id) for x in dm.scenarios[s].variations]))
    if layer_candidates and cb.method != "direction":
        raise ValueError(f"study.transfer_layers={list(layer_candidates)} needs pruning.method=direction (got {cb.method!r})")
    n_layers = len(module.layout.heads) if module.model is not None else None
    if n_layers:
        for cand in layer_candidates:
            parse_layers(cand, n_layers, flag="study.transfer_layers")
    dm.configure_prompts(PromptSelection(scoring, ("test",)))
    trainer.fit(module, datamodule=dm)
    run_dir = Path(trainer.log_dir)
    per_variation, _ = read_scores(run_dir / "scores_by_variation.safetensors")
    n_by_var = read_scores_meta(run_dir / "scores_by_variation.safetensors").get("n_examples_by_variation", {})
    units_total = {k: sum(n for key, n in module.layout.sizes().items() if key.startswith(k + "/")) for k in ("neuron", "head")}
    chosen: dict[str, list[str]] | None = None
    if layer_candidates:
        dev_arms = _source_arms(cb, module, dm, per_variation, sources, n_by_var, "dev", {s: list(layer_candidates) for s in sources})
        records, bounds = _answer(trainer, module, dm, cb, scoring, "dev", dev_arms)
        chosen, table = {}, []
        for s in sources:
            names = [f"{s}@{c}" for c in layer_candidates] if len(layer_candidates) > 1 else [s]
            dev = transfer_cells(records, bounds, module.evaluation, units_total, names, [s], cb.method, split="dev")
            pick, rows = choose_layers([dict(c, source=s, candidate=cand) for c, cand in zip(dev, layer_candidates)],
                                       len(module.layout.heads), module.evaluation.utility_margin)
            chosen[s] = [pick or cb.direction_layers]
            table += rows
        if trainer.global_rank == 0:
            artifacts.write_csv(out / f"transfer_{cb.method}_layers.csv", table, LAYER_COLUMNS)
            rank_zero_info("direction layers chosen on dev names: " + ", ".join(f"{s}: {c[0]}" for s, c in chosen.items()))
    arms = _source_arms(cb, module, dm, per_variation, sources, n_by_var, "test", chosen)
    if trainer.global_rank == 0:  # each source's arm with its provenance: <output>/arms/<source>.safetensors
        meta = {k: json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in cb.settings().items()} | {"model": str(module.hparams.get("model_name_or_path", "")),
                                                                "reference_group": dm.groups[0], "target_group": dm.groups[1]}
        for arm in arms:
            if arm.phase != "pruned":
                continue
            path = out / "arms" / f"{arm.name}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            if arm.edit is not None:
                DirectionEdit(arm.edit.layers, arm.edit.units, arm.edit.targets, arm.edit.pooled, {**meta, **arm.edit.metadata}).save(path)
            else:
                save_masks(path, arm.masks, meta | {"source": arm.name})
    records, bounds = _answer(trainer, module, dm, cb, scoring, "test", arms)
    result: dict = {}
    if trainer.global_rank == 0:
        cells = transfer_cells(records, bounds, module.evaluation, units_total, sources, targets, cb.method)
        experiment = next((lg.experiment for lg in trainer.loggers if hasattr(getattr(lg, "experiment", None), "add_figure")), None)
        verdicts = write_transfer(out, cells, cb.method, experiment)
        for s, v in verdicts.items():
            rank_zero_info(f"transfer ({cb.method}) from {s}: {v}")
        result = {"cells": cells, "rows": verdicts}
    barrier()
    return result

