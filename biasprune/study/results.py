"""The study's results from its pieces: metrics, grid, per-strategy results on test names, claims, figures.

Headlines use test names only; the grid is published for dev (where points were chosen) and test. Each
strategy's chosen arm is compared with the unpruned model and with its own random controls (``study.grid.chosen_draws``
draws on test, none of them shared with dev or with another arm) by paired name-bootstrap intervals, with the
utility guard applied on test (:mod:`biasprune.stats.summary`); the ordering claims compare arms with each other
the same way. Each family of claims (the per-arm claims; the ordering claims) is adjusted by Holm's procedure
and says its size (:func:`biasprune.stats.claims.holm`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from biasprune.core import artifacts
from biasprune.metrics.spec import BIAS_METRICS, DECIDING
from biasprune.stats.claims import CLAIM_COLUMNS, ClaimResult, holm, ordering
from biasprune.stats.intervals import difference_interval
from biasprune.stats.rows import METRIC_COLUMNS, EvaluationConfig, compute_bounds, variation_rows, write_bounds
from biasprune.stats.summary import SUMMARY_COLUMNS, summarize_split
from biasprune.study.choose import GRID_COLUMNS, arm_id, spec_records
from biasprune.study.config import StudyConfig
from biasprune.study.figures import study_figures
from biasprune.study.plan import ArmSpec, StudyOutcome

__all__ = ["write_results"]

LABELS = ("units", "strategy", "context", "point", "rule", "p", "q", "budget")
PER_ARM_FAMILY = "pruning lowers bias (chosen arms)"
ORDERING_FAMILY = "orderings"


def _units_total(plan, variation: str) -> dict[str, int]:
    per_group = plan.scores([variation])
    one = next(iter(per_group.values()))
    return {k: sum(int(t.numel()) for key, t in one.items() if key.startswith(k + "/")) for k in ("neuron", "head")}


def _claims(summary, chosen: Mapping[tuple[str, str, str], ArmSpec | None], units: Sequence[str]) -> list[ClaimResult]:
    """Neurons beat heads (prompt-specific), and prompt-specific > within-context > cross-context per unit kind."""
    boot, out = summary.boot, []
    if boot is None:
        return out
    eligible = {r["arm"] for r in summary.rows if r["phase"] == "pruned" and not r["excluded"] and r["utility"] != "lost"}

    def arms(u: str, s: str) -> list[str]:
        return [arm_id(a) for (uu, ss, _), a in chosen.items() if uu == u and ss == s and a is not None and arm_id(a) in eligible]

    ps = {u: arms(u, "prompt_specific") for u in units}
    if all(ps.get(u) for u in ("neurons", "heads")):
        d = difference_interval(boot, ps["heads"], ps["neurons"])
        out.append(ordering("neurons beat heads", [("prompt-specific heads − neurons", d)], summary.mde))
    for u in units:
        chain = [arms(u, s) for s in ("prompt_specific", "within_context", "cross_context")]
        if all(chain):
            steps = [("within-context − prompt-specific", difference_interval(boot, chain[1], chain[0])),
                     ("cross-context (mean over contexts) − within-context", difference_interval(boot, chain[2], chain[1]))]
            out.append(ordering(f"prompt-specific > within-context > cross-context ({u})", steps, summary.mde))
    return out


def _f(x) -> str:
    return "-" if x is None or x == "" or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _markdown(results: Sequence[Mapping], claims: Sequence[ClaimResult]) -> str:
    head = " | ".join(f"{m.label} mean abs SMD [95% CI] (random)" for m in BIAS_METRICS)
    md = [f"| units | strategy | context | point | {head} | noise floor (p95) | inlier | parse | utility | excluded |",
          "|" + "---|" * (9 + len(BIAS_METRICS))]
    for r in results:
        if r["phase"] == "random":
            continue
        cells = " | ".join(f"{_f(r.get(m.mean))} [{_f(r.get(f'{m.mean}_ci_low'))}, {_f(r.get(f'{m.mean}_ci_high'))}]"
                           f" ({_f(r.get(f'random_{m.mean}'))})" for m in BIAS_METRICS)
        md.append(f"| {r.get('units', '')} | {r.get('strategy', '') or 'unpruned'} | {r.get('context', '')} | {r.get('point', '')} |"
                  f" {cells} | {_f(r.get(f'null_{DECIDING.mean}'))} ({_f(r.get(f'null_{DECIDING.mean}_p95'))}) |"
                  f" {_f(r.get('inlier_ratio'))} | {_f(r.get('parse_rate'))} | {r.get('utility', '')} | {r.get('excluded', '')} |")
    md += ["", "| family (size) | claim | verdict | estimate (95% CI) | sentence |", "|---|---|---|---|---|"]
    for c in claims:
        md.append(f"| {c.family} ({c.family_size}) | {c.claim} | **{c.verdict}** | {_f(c.estimate)} [{_f(c.low)}, {_f(c.high)}] |"
                  f" {c.sentence} |")
    return "\n".join(md) + "\n"


def _evaluated(eval_keys, table: Sequence[Mapping], chosen, cfg: StudyConfig, chosen_draws: int) -> dict[str, tuple[ArmSpec, list]]:
    """Arm id -> (spec, the keys it was answered on): the unpruned model, every grid point and its draws on dev
    and test, the chosen points' further draws on test (``chosen_draws`` in all)."""
    test_keys = [k for k in eval_keys if k[0] == "test"]
    evaluated: dict[str, tuple[ArmSpec, list]] = {}
    for spec in [ArmSpec(), *(r["spec"] for r in table if r["split"] == "dev")]:
        evaluated[arm_id(spec)] = (spec, list(eval_keys))
        for d in range(cfg.grid.random_draws if spec.units else 0):
            evaluated[arm_id(replace(spec, draw=d))] = (replace(spec, draw=d), list(eval_keys))
    for c in chosen.values():
        for d in range(cfg.grid.random_draws, chosen_draws if c is not None else 0):
            evaluated[arm_id(replace(c, draw=d))] = (replace(c, draw=d), test_keys)
    return evaluated


def _never_chosen(chosen) -> list[dict]:
    """Rows for the families with no qualifying point on dev: reported, never an effect."""
    out = []
    for (u, s, ctx), c in chosen.items():
        if c is None:
            out.append({"split": "test", "arm": f"{u}/{s}{':' + ctx if ctx else ''}", "phase": "pruned", "units": u, "strategy": s,
                        "context": ctx, "excluded": "no grid point qualified on dev names", "inlier_ratio": math.nan,
                        "parse_rate": math.nan} | {m.mean: math.nan for m in BIAS_METRICS})
    return out


def write_results(out: Path, outcome: StudyOutcome, cfg: StudyConfig, random_draws: int, ecfg: EvaluationConfig,
                  valid_range: Callable[[str], tuple[float, float] | None]) -> dict:
    """Write ``metrics.csv``, ``grid.csv``, ``results.csv``/``results.md``, ``claims.csv``, figures; return them.

    ``random_draws``: the random controls of every chosen arm on test, in all (``--study.grid.chosen_draws``);
    ``valid_range``: a scenario's plausibility bounds (:meth:`biasprune.datamodules.AuditDataModule.valid_range`).
    """
    plan, store, eval_keys, table, chosen = outcome.plan, outcome.plan.store, list(outcome.eval_keys), outcome.table, outcome.chosen
    evaluated = _evaluated(eval_keys, table, chosen, cfg, random_draws)
    specs_by_id = {k: v[0] for k, v in evaluated.items()}
    records = [r for spec, keys in evaluated.values() for r in spec_records(plan, store, spec, keys)]
    bounds = compute_bounds(records, ecfg, valid_range)
    rows = variation_rows(records, bounds, ecfg)
    for r in rows:
        r.update(specs_by_id[r["arm"]].labels())
    artifacts.write_csv(out / "metrics.csv", rows, [*LABELS, *METRIC_COLUMNS])

    grid_rows = [{k: v for k, v in r.items() if k != "spec"} | {"chosen": chosen.get(r["spec"].family()) == r["spec"]} for r in table]
    artifacts.write_csv(out / "grid.csv", grid_rows, GRID_COLUMNS)

    final = [ArmSpec()] + [c for c in chosen.values() if c is not None]
    controls = {arm_id(c): [arm_id(replace(c, draw=d)) for d in range(random_draws)] for c in final[1:]}
    keep = {arm_id(s) for s in final} | {a for ctrl in controls.values() for a in ctrl}
    test_records = [r for r in records if r["split"] == "test" and r["arm"] in keep]
    test_rows = [r for r in rows if r["split"] == "test" and r["arm"] in keep]
    units_total = _units_total(plan, next(iter(plan.score_keys)))
    summary = summarize_split(test_records, bounds, test_rows, ecfg, "test", units_total, controls, min_pruned=cfg.grid.min_pruned)
    results = [r | specs_by_id[r["arm"]].labels() for r in summary.rows] + _never_chosen(chosen)
    claims = holm(summary.claims, PER_ARM_FAMILY) + holm(_claims(summary, chosen, cfg.units), ORDERING_FAMILY)
    artifacts.write_csv(out / "results.csv", results, [*LABELS, *SUMMARY_COLUMNS])
    artifacts.write_csv(out / "claims.csv", [c.as_row() for c in claims], CLAIM_COLUMNS)
    artifacts.atomic_write_bytes(out / "results.md", _markdown(results, claims).encode())
    write_bounds(out / "inlier_bounds.json", bounds, ecfg.inlier_percentiles)
    study_figures(out, rows, table, chosen, plan, eval_keys)
    return {"results": results, "claims": claims, "grid": grid_rows}
