"""The study on the Lightning spine: ``Trainer.fit`` scores, ``Trainer.validate`` answers, nothing else.

1. Every scoring variation the strategies need is scored once, in one ``fit`` (per-variation accumulators
   of the same LightningModule ``biasprune fit`` uses), and stored as a piece.
2. One ``validate`` answers every arm on the dev and test names: the unpruned model, every grid point of
   every (unit kind, strategy, context) and a random control per point. The pruning callback serves the
   arms from a :class:`~biasprune.study.plan.StudyPlan`.
3. Each (unit kind, strategy, context) takes its point on **dev** names only (:func:`choose_points`); a
   second ``validate`` adds random draws for the chosen points on test.
4. Results, grid, claims and figures are computed from the pieces (:mod:`biasprune.study.results`).

Pieces are content-keyed (:mod:`.pieces`), so an interrupted or changed study recomputes only what is
missing; any strategy (``frozen_ddp``, ``frozen_ddp_spawn``, ``frozen_fsdp``) runs it as it runs ``fit``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

from biasprune.core import artifacts
from biasprune.core.distributed import barrier
from biasprune.data.scenarios import variation_key
from biasprune.pruning.factory import DEFAULT_BUDGETS
from biasprune.scoring.scorefile import read_scores
from biasprune.stats.summary import format_summary
from biasprune.study.choose import choose_points, point_table
from biasprune.study.config import StudyConfig
from biasprune.study.pieces import PieceStore, digest
from biasprune.study.plan import ArmSpec, StudyPlan, strategy_variations

__all__ = ["run_study"]


def _callback(trainer):
    from biasprune.callbacks.pruning import PruningCallback

    found = [cb for cb in trainer.callbacks if isinstance(cb, PruningCallback)]
    if not found:
        raise ValueError("the study needs the pruning callback (its --pruning.* settings choose the rule and scopes)")
    return found[0]


def _pools(dm, cfg: StudyConfig, eval_vars: Sequence[str]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Within-context pools per scenario and the variations of each cross-context scenario."""
    scen_of = {v.split("/")[0] for v in eval_vars}
    within: dict[str, list[str]] = {}
    for scen in scen_of:
        all_vars = [variation_key(scen, v.id) for v in dm.scenarios[scen].variations] if dm.scenarios else []
        chosen = [w if "/" in w else variation_key(scen, w) for w in cfg.within_variations]
        bad = [w for w in chosen if w.split("/")[0] == scen and w not in all_vars]
        if bad:
            raise ValueError(f"study.within_variations: {bad} are not variations of {scen!r}; valid: {all_vars}")
        within[scen] = [w for w in chosen if w.split("/")[0] == scen] or all_vars
    contexts: dict[str, list[str]] = {}
    if "cross_context" in cfg.strategies:
        for c in cfg.contexts:
            if c not in dm.scenarios or c in scen_of:
                raise ValueError(f"study.contexts: {c!r} must be a loaded scenario other than the evaluated ones {sorted(scen_of)};"
                                 f" loaded: {sorted(dm.scenarios)}")
            contexts[c] = [variation_key(c, v.id) for v in dm.scenarios[c].variations]
    return within, contexts


def _score_keys(module, dm, needed: Sequence[str]) -> dict[str, str]:
    fp = module.fingerprint()
    dm.select(scoring=needed)
    rows: dict[str, list] = {}
    for r in dm.scoring_rows:
        rows.setdefault(variation_key(r["scenario"], r["variation"]), []).append([r["name"], r["group"], r["user_prompt"]])
    return {v: digest("scores", fp, dm.system_prompt, rows[v], dm.hparams.scoring_examples_file) for v in needed}


def _answer_prefixes(module, dm) -> dict[tuple[str, str], str]:
    fp = module.fingerprint()
    fp.pop("model.targets", None)  # answers do not depend on how target responses are made
    rows: dict[tuple[str, str], list] = {}
    for r in dm.eval_rows:
        rows.setdefault((r["split"], variation_key(r["scenario"], r["variation"])), []).append([r["name"], r["group"], r["user_prompt"]])
    gen = asdict(module.generation)
    return {k: digest("answers", fp, gen, dm.system_prompt, v) for k, v in rows.items()}


def _score_missing(trainer, module, dm, store: PieceStore, keys: dict[str, str]) -> None:
    missing = [v for v, k in keys.items() if not store.has_scores(k)]
    if not missing:
        return
    dm.select(scoring=missing)
    trainer.fit(module, datamodule=dm)
    run_dir = Path(trainer.log_dir)  # a collective: every rank asks
    if trainer.global_rank == 0:
        per_variation, meta = read_scores(run_dir / "scores_by_variation.safetensors")
        n = json.loads(meta.get("n_examples_by_variation", "{}"))
        for v in missing:
            store.write_scores(keys[v], per_variation[v], {"variation": v, "model": meta.get("model", ""), "n_examples": n.get(v, {})})
    barrier()


def _answer_missing(trainer, module, dm, cb, plan: StudyPlan, store: PieceStore, jobs: dict) -> None:
    """Answer the jobs whose pieces are missing, in one validate stage.

    Sharded weights (FSDP) need the same forward calls on every rank, so there every (split, variation) of the
    stage answers its whole job list (identical across keys by construction) whenever one piece is missing.
    """
    from lightning.pytorch.strategies import ModelParallelStrategy

    lockstep = isinstance(trainer.strategy, ModelParallelStrategy)
    missing = {k: [s for s in specs if not store.has_answers(plan.answer_key(s, k[0], f"{k[1]}/{k[2]}"))] for k, specs in jobs.items()}
    if not any(missing.values()):
        return
    plan.jobs = {k: (jobs[k] if lockstep else todo) for k, todo in missing.items() if todo or lockstep}
    splits = tuple(dict.fromkeys(k[0] for k, specs in jobs.items() if specs))
    dm.select(eval_splits=splits)  # only the splits that have work: no batch runs without arms
    cb.set_plan(plan)
    try:
        trainer.validate(module, datamodule=dm)
    finally:
        cb.set_plan(None)
        dm.select(eval_splits=("dev", "test"))
    run_dir = Path(trainer.log_dir)  # a collective: every rank asks
    if trainer.global_rank == 0:
        by_arm: dict[str, list[dict]] = {}
        for r in artifacts.read_jsonl(run_dir / "answers.jsonl"):
            by_arm.setdefault(r["arm"], []).append(r)
        for key, recs in by_arm.items():
            store.write_answers(key, recs)
    barrier()


def run_study(trainer, module, dm, cfg: StudyConfig) -> dict:
    """Run (or continue) the study; returns the results rows, the claims and what was computed."""
    from biasprune.study.results import write_results

    started = time.perf_counter()
    cb = _callback(trainer)
    out = Path(cfg.output)
    store = PieceStore(Path(cfg.pieces) if cfg.pieces else out / "pieces")
    module.summarize = False  # the study aggregates all pieces itself
    dm.select(eval_splits=("dev", "test"))
    eval_keys = [k for k in dm.eval_keys()]
    eval_vars = list(dict.fromkeys(variation_key(s, v) for _, s, v in eval_keys))
    within, contexts = _pools(dm, cfg, eval_vars)
    families = [(u, s, c) for u in cfg.units for s in cfg.strategies for c in (contexts if s == "cross_context" else [""])]
    needed = list(dict.fromkeys(w for v in eval_vars for (_, s, c) in families for w in strategy_variations(s, c, v, within, contexts)))

    score_keys = _score_keys(module, dm, needed)
    _score_missing(trainer, module, dm, store, score_keys)
    if trainer.global_rank == 0:
        artifacts.write_json(out / "score_keys.json", score_keys)  # which pieces this study's masks come from
    dm.select(scoring=needed, eval_splits=("dev", "test"))
    plan = StudyPlan(store, score_keys, dm.groups, cb.factory, within, contexts, _answer_prefixes(module, dm))

    rules = cfg.grid.rules or (cb.rule,)
    # without grid budgets a ranking rule takes the callback's budget; `auto` leaves it to the grid of its auto list
    budgets = {"neurons": cb.auto_budgets if cb.budget == "auto" else (cb.budget or DEFAULT_BUDGETS["neuron"],),
               "heads": cb.head_auto_budgets if cb.head_budget == "auto" else (cb.head_budget or DEFAULT_BUDGETS["head"],)}
    grid = [ArmSpec(u, s, c, p, q, b, rule) for (u, s, c) in families for rule in rules for (p, q, b) in cfg.grid.points(u, rule, budgets[u])]
    controls = [replace(a, draw=d) for a in grid for d in range(cfg.grid.random_draws)]
    jobs = {k: [ArmSpec(), *grid, *controls] for k in eval_keys}
    _answer_missing(trainer, module, dm, cb, plan, store, jobs)

    table = point_table(plan, store, eval_keys, grid, cfg.grid.random_draws, dm.valid_range, module.evaluation)
    chosen = choose_points(table, cfg.grid.min_pruned)
    extra = [replace(a, draw=d) for a in chosen.values() if a is not None for d in range(cfg.grid.random_draws, cfg.grid.chosen_draws)]
    jobs_test = {k: extra for k in eval_keys if k[0] == "test"}
    _answer_missing(trainer, module, dm, cb, plan, store, jobs_test)

    result = {}
    if trainer.global_rank == 0:
        result = write_results(out, plan, store, eval_keys, table, chosen, cfg, module.evaluation, dm)
        rank_zero_info(f"\n{format_summary(result['results'], result['claims'])}\n(study directory: {out}; tables in results.md)\n")
        elapsed = time.perf_counter() - started
        artifacts.write_json(out / "timings.json", {"seconds": round(elapsed, 1), "computed": store.computed})
        result.update(seconds=elapsed, computed=dict(store.computed))
    barrier()
    return result
