"""The study's results from its pieces: metrics, grid, per-strategy results on test names, claims, figures.

Headlines use test names only; the grid is published for dev (where points were chosen) and test. Each
strategy's chosen arm is compared with the unpruned model and with its own random controls by paired name
bootstrap intervals (:mod:`biasprune.stats.summary`); the ordering claims compare arms with each other the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from biasprune.core import artifacts
from biasprune.stats.claims import CLAIM_COLUMNS, ClaimResult, ordering
from biasprune.stats.intervals import difference_interval
from biasprune.stats.rows import METRIC_COLUMNS, EvaluationConfig, compute_bounds, variation_rows, write_bounds
from biasprune.stats.summary import SUMMARY_COLUMNS, summarize_split
from biasprune.study.choose import arm_id, spec_records
from biasprune.study.config import StudyConfig
from biasprune.study.figures import study_figures
from biasprune.study.plan import ArmSpec, StudyOutcome

__all__ = ["write_results"]

LABELS = ("units", "strategy", "context", "point", "rule", "p", "q", "budget")
GRID_COLUMNS = ("split", "units", "strategy", "context", "point", "rule", "p", "q", "budget", "mean_abs_smd", "n_undefined", "n_variations",
                "random_mean_abs_smd", "vs_random", "inlier_ratio", "unpruned_inlier_ratio", "unpruned_mean_abs_smd", "min_pruned",
                "mean_pruned", "chosen")


def _units_total(plan, variation: str) -> dict[str, int]:
    per_group = plan.scores([variation])
    one = next(iter(per_group.values()))
    return {k: sum(int(t.numel()) for key, t in one.items() if key.startswith(k + "/")) for k in ("neuron", "head")}


def _claims(summary, chosen: Mapping[tuple[str, str, str], ArmSpec | None], units: Sequence[str]) -> list[ClaimResult]:
    """Neurons beat heads (prompt-specific), and prompt-specific > within-context > cross-context per unit kind."""
    boot, out = summary.boot, []
    if boot is None:
        return out
    eligible = {r["arm"] for r in summary.rows if r["phase"] == "pruned" and not r["excluded"]}

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


def _markdown(results: Sequence[Mapping], claims: Sequence[ClaimResult]) -> str:
    def f(x) -> str:
        return "-" if x is None or x == "" or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"

    md = ["| units | strategy | context | point | mean abs SMD | 95% CI | noise floor (p95) | random control | inlier | parse | excluded |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r["phase"] == "random":
            continue
        md.append(f"| {r.get('units', '')} | {r.get('strategy', '') or 'unpruned'} | {r.get('context', '')} | {r.get('point', '')} |"
                  f" {f(r['mean_abs_smd'])} | [{f(r.get('ci_low'))}, {f(r.get('ci_high'))}] | {f(r.get('null_mean_abs_smd'))}"
                  f" ({f(r.get('null_p95'))}) | {f(r.get('random_mean_abs_smd'))} | {f(r['inlier_ratio'])} | {f(r['parse_rate'])} |"
                  f" {r['excluded']} |")
    md += ["", "| claim | verdict | estimate (95% CI) | sentence |", "|---|---|---|---|"]
    for c in claims:
        md.append(f"| {c.claim} | **{c.verdict}** | {f(c.estimate)} [{f(c.low)}, {f(c.high)}] | {c.sentence} |")
    return "\n".join(md) + "\n"


def write_results(out: Path, outcome: StudyOutcome, cfg: StudyConfig, random_draws: int, ecfg: EvaluationConfig,
                  valid_range: Callable[[str], tuple[float, float] | None]) -> dict:
    """Write ``metrics.csv``, ``grid.csv``, ``results.csv``/``results.md``, ``claims.csv``, figures; return them.

    ``random_draws``: the random controls of every chosen arm on test (``--pruning.random_draws``);
    ``valid_range``: a scenario's plausibility bounds (:meth:`biasprune.datamodules.AuditDataModule.valid_range`).
    """
    plan, store, eval_keys, table, chosen = outcome.plan, outcome.plan.store, list(outcome.eval_keys), outcome.table, outcome.chosen
    test_keys = [k for k in eval_keys if k[0] == "test"]
    evaluated: dict[str, tuple[ArmSpec, list]] = {}  # arm id -> (spec, the keys it was answered on)
    grid_specs = [r["spec"] for r in table if r["split"] == "dev"]
    for spec in [ArmSpec(), *grid_specs]:
        evaluated[arm_id(spec)] = (spec, list(eval_keys))
        for d in range(cfg.grid.random_draws if spec.units else 0):
            evaluated[arm_id(replace(spec, draw=d))] = (replace(spec, draw=d), list(eval_keys))
    for c in chosen.values():
        for d in range(cfg.grid.random_draws, random_draws if c is not None else 0):
            evaluated[arm_id(replace(c, draw=d))] = (replace(c, draw=d), test_keys)
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
    ctrl_specs = [replace(c, draw=d) for c in final[1:] for d in range(random_draws)]
    test_records = [r for r in records if r["split"] == "test" and r["arm"] in {arm_id(s) for s in [*final, *ctrl_specs]}]
    test_rows = [r for r in rows if r["split"] == "test" and r["arm"] in {arm_id(s) for s in [*final, *ctrl_specs]}]
    controls = {arm_id(c): [arm_id(replace(c, draw=d)) for d in range(random_draws)] for c in final[1:]}
    units_total = _units_total(plan, next(iter(plan.score_keys)))
    summary = summarize_split(test_records, bounds, test_rows, ecfg, "test", units_total, controls, min_pruned=cfg.grid.min_pruned)
    results = [r | specs_by_id[r["arm"]].labels() for r in summary.rows]
    for fam, c in chosen.items():
        if c is None:  # no point qualified on dev: say so in the results, never report it as an effect
            u, s, ctx = fam
            results.append({"split": "test", "arm": f"{u}/{s}{':' + ctx if ctx else ''}", "phase": "pruned", "units": u, "strategy": s,
                            "context": ctx, "excluded": "no grid point qualified on dev names", "mean_abs_smd": math.nan,
                            "inlier_ratio": math.nan, "parse_rate": math.nan})
    claims = list(summary.claims) + _claims(summary, chosen, cfg.units)
    artifacts.write_csv(out / "results.csv", results, [*LABELS, *SUMMARY_COLUMNS])
    artifacts.write_csv(out / "claims.csv", [c.as_row() for c in claims], CLAIM_COLUMNS)
    artifacts.atomic_write_bytes(out / "results.md", _markdown(results, claims).encode())
    write_bounds(out / "inlier_bounds.json", bounds, ecfg.inlier_percentiles)
    study_figures(out, rows, table, chosen, plan, eval_keys)
    return {"results": results, "claims": claims, "grid": grid_rows}
