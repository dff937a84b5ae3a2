"""The study on the Lightning spine: ``Trainer.fit`` scores, ``Trainer.validate`` answers, nothing else.

1. Every scoring variation the strategies need is scored once, in one ``fit`` (per-variation accumulators
   of the same LightningModule ``biasprune fit`` uses), and stored as a piece.
2. One ``validate`` answers every arm on the dev and test names: the unpruned model, every grid point of
   every (unit kind, strategy, context) and a random control per point. The pruning callback hands the module
   the stage's arms (:meth:`~biasprune.study.plan.StudyPlan.stage`).
3. Each (unit kind, strategy, context) takes its point on **dev** names only (:func:`choose_points`); a
   second ``validate`` adds random draws for the chosen points on test.
4. Results, grid, claims and figures are computed from the pieces (:mod:`biasprune.study.results`).

Pieces are content-keyed (:mod:`.pieces`), so an interrupted or changed study recomputes only what is
missing; any strategy (``frozen_ddp``, ``frozen_ddp_spawn``, ``frozen_fsdp``) runs it as it runs ``fit``.

The study orchestrates; it does not reach into the objects it drives. Each Trainer call gets a typed plan
through a documented ``configure_*`` method: the data module the prompts it serves
(:class:`~biasprune.datamodules.audit.PromptSelection`: the variations scored, the name splits answered), the
pruning callback the arms to hand over (:class:`~biasprune.pruning.arms.EvaluationPlan`, whose
:class:`~biasprune.study.plan.StageArms` give each (split, variation) its masks, and which says that the study
writes the results itself). What the study needs of the callback it reads as one typed value
(:meth:`~biasprune.callbacks.pruning.PruningCallback.mask_settings`).
"""


from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

from biasprune.callbacks.pruning import PruningCallback
from biasprune.core import artifacts
from biasprune.core.distributed import barrier
from biasprune.data.scenarios import variation_key
from biasprune.datamodules.audit import AuditDataModule, PromptSelection
from biasprune.pruning.arms import EvaluationPlan
from biasprune.scoring.scorefile import read_scores
from biasprune.stats.summary import format_summary
from biasprune.study.choose import choose_points, point_table
from biasprune.study.config import StudyConfig
from biasprune.study.pieces import PieceStore, digest
from biasprune.study.plan import ArmSpec, EvalKey, StudyOutcome, StudyPlan, strategy_pools, strategy_variations
from biasprune.study.results import write_results

__all__ = ["run_study"]

EVAL_SPLITS = ("dev", "test")
Jobs = Mapping[EvalKey, Sequence[ArmSpec]]


def _callback(trainer) -> PruningCallback:
    found = [cb for cb in trainer.callbacks if isinstance(cb, PruningCallback)]
    if not found:
        raise ValueError("the study needs the pruning callback (its --pruning.* settings choose the rule and scopes)")
    return found[0]


def _pools(dm: AuditDataModule, cfg: StudyConfig, eval_vars: Sequence[str]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Within-context pools per scenario and the variations of each cross-context scenario."""
    variations = {name: [variation_key(name, v.id) for v in scen.variations] for name, scen in dm.scenarios.items()}
    return strategy_pools(variations, eval_vars, cfg.strategies, cfg.within_variations, cfg.contexts)


def _score_keys(module, dm: AuditDataModule, selection: PromptSelection) -> dict[str, str]:
    """The score-piece key of every variation ``selection`` scores."""
    fp = module.fingerprint()
    rows: dict[str, list] = {}
    for r in dm.rows(selection)[0]:
        rows.setdefault(variation_key(r["scenario"], r["variation"]), []).append([r["name"], r["group"], r["user_prompt"]])
    return {v: digest("scores", fp, dm.system_prompt, rows[v], dm.hparams.scoring_examples_file) for v in selection.scoring}


def _answer_prefixes(module, dm: AuditDataModule, selection: PromptSelection) -> dict[tuple[str, str], str]:
    fp = module.fingerprint()
    fp.pop("model.targets", None)  # answers do not depend on how target responses are made
    rows: dict[tuple[str, str], list] = {}
    for r in dm.rows(selection)[1]:
        rows.setdefault((r["split"], variation_key(r["scenario"], r["variation"])), []).append([r["name"], r["group"], r["user_prompt"]])
    gen = asdict(module.generation)
    return {k: digest("answers", fp, gen, dm.system_prompt, v) for k, v in rows.items()}


def _score_missing(trainer, module, dm: AuditDataModule, store: PieceStore, keys: dict[str, str], study: PromptSelection) -> None:
    """Score the variations whose pieces are missing, in one fit stage."""
    missing = [v for v, k in keys.items() if not store.has_scores(k)]
    if not missing:
        return
    dm.configure_prompts(replace(study, scoring=tuple(missing)))
    trainer.fit(module, datamodule=dm)
    run_dir = Path(trainer.log_dir)  # a collective: every rank asks
    if trainer.global_rank == 0:
        per_variation, meta = read_scores(run_dir / "scores_by_variation.safetensors")
        n = json.loads(meta.get("n_examples_by_variation", "{}"))
        for v in missing:
            store.write_scores(keys[v], per_variation[v], {"variation": v, "model": meta.get("model", ""), "n_examples": n.get(v, {})})
    barrier()


def _answer_missing(trainer, module, dm: AuditDataModule, cb: PruningCallback, plan: StudyPlan, jobs: Jobs,
                    study: PromptSelection) -> None:
    """Answer the jobs whose pieces are missing, in one validate stage.

    Sharded weights (FSDP) need the same forward calls on every rank, so there every (split, variation) of the
    stage answers its whole job list (identical across keys by construction) whenever one piece is missing.
    """
    from lightning.pytorch.strategies import ModelParallelStrategy

    store = plan.store
    lockstep = isinstance(trainer.strategy, ModelParallelStrategy)
    missing = {k: [s for s in specs if not store.has_answers(plan.answer_key(s, k[0], f"{k[1]}/{k[2]}"))] for k, specs in jobs.items()}
    if not any(missing.values()):
        return
    stage = plan.stage({k: (jobs[k] if lockstep else todo) for k, todo in missing.items() if todo or lockstep})
    splits = tuple(dict.fromkeys(k[0] for k, specs in jobs.items() if specs))
    dm.configure_prompts(replace(study, eval_splits=splits))  # only the splits that have work: no batch runs without arms
    cb.configure_evaluation(EvaluationPlan(stage, write_results=False))  # the study aggregates all pieces itself
    try:
        trainer.validate(module, datamodule=dm)
    finally:
        cb.configure_evaluation(None)
    run_dir = Path(trainer.log_dir)  # a collective: every rank asks
    if trainer.global_rank == 0:
        by_arm: dict[str, list[dict]] = {}
        for r in artifacts.read_jsonl(run_dir / "answers.jsonl"):
            by_arm.setdefault(r["arm"], []).append(r)
        for key, recs in by_arm.items():
            store.write_answers(key, recs)
    barrier()


def _families(cfg: StudyConfig, contexts: Mapping[str, Sequence[str]]) -> list[tuple[str, str, str]]:
    return [(u, s, c) for u in cfg.units for s in cfg.strategies for c in (contexts if s == "cross_context" else [""])]


def run_study(trainer, module, dm: AuditDataModule, cfg: StudyConfig) -> dict:
    """Run (or continue) the study; returns the results rows, the claims and what was computed."""
    started = time.perf_counter()
    cb = _callback(trainer)
    masks = cb.mask_settings()
    out = Path(cfg.output)
    store = PieceStore(Path(cfg.pieces) if cfg.pieces else out / "pieces")
    eval_rows = dm.rows(PromptSelection(dm.selection.scoring, EVAL_SPLITS))[1]
    eval_keys: list[EvalKey] = list(dict.fromkeys((r["split"], r["scenario"], r["variation"]) for r in eval_rows))
    eval_vars = list(dict.fromkeys(variation_key(s, v) for _, s, v in eval_keys))
    within, contexts = _pools(dm, cfg, eval_vars)
    families = _families(cfg, contexts)
    needed = list(dict.fromkeys(w for v in eval_vars for (_, s, c) in families for w in strategy_variations(s, c, v, within, contexts)))
    study = PromptSelection(tuple(needed), EVAL_SPLITS)  # every prompt the study scores and answers

    score_keys = _score_keys(module, dm, study)
    _score_missing(trainer, module, dm, store, score_keys, study)
    if trainer.global_rank == 0:
        artifacts.write_json(out / "score_keys.json", score_keys)  # which pieces this study's masks come from
    plan = StudyPlan(store, score_keys, dm.groups, masks.factory, within, contexts, _answer_prefixes(module, dm, study))

    rules = [masks.factory.with_rule(r).rule for r in cfg.grid.rules or (masks.factory.rule_name,)]
    # without grid budgets a ranking rule takes the callback's budget; `auto` leaves it to the grid of its auto list
    grid = [ArmSpec(u, s, c, p, q, b, rule.name) for (u, s, c) in families for rule in rules
            for (p, q, b) in cfg.grid.points(u, rule, masks.default_budgets(u))]
    controls = [replace(a, draw=d) for a in grid for d in range(cfg.grid.random_draws)]
    _answer_missing(trainer, module, dm, cb, plan, {k: [ArmSpec(), *grid, *controls] for k in eval_keys}, study)

    table = point_table(plan, store, eval_keys, grid, cfg.grid.random_draws, dm.valid_range, module.evaluation)
    chosen = choose_points(table, cfg.grid.min_pruned)
    extra = [replace(a, draw=d) for a in chosen.values() if a is not None for d in range(cfg.grid.random_draws, cfg.grid.chosen_draws)]
    _answer_missing(trainer, module, dm, cb, plan, {k: extra for k in eval_keys if k[0] == "test"}, study)
    dm.configure_prompts(study)  # the data module ends up describing the whole study (its manifest says so)

    result = {}
    if trainer.global_rank == 0:
        outcome = StudyOutcome(plan, tuple(eval_keys), tuple(table), chosen)
        result = write_results(out, outcome, cfg, cfg.grid.chosen_draws, module.evaluation, dm.valid_range)
        rank_zero_info(f"\n{format_summary(result['results'], result['claims'])}\n(study directory: {out}; tables in results.md)\n")
        elapsed = time.perf_counter() - started
        artifacts.write_json(out / "timings.json", {"seconds": round(elapsed, 1), "computed": store.computed})
        result.update(seconds=elapsed, computed=dict(store.computed))
    barrier()
    return result
