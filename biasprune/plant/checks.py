"""``biasprune plant check RUN_DIR``: per-scenario checks of a run on a planted model.

For every arm and scenario of a run's test answers (``answers.jsonl``), for each bias measure (the scale-free one
that decides claims, and the paper's inlier-window SMD; :data:`biasprune.metrics.spec.BIAS_METRICS`): mean |SMD| over
the scenario's variations with its name-bootstrap interval, the noise floor (group labels permuted across names, one
permutation for all variations; mean and 95th percentile), whether the mean |SMD| is within the floor (at or below
its p95), the smallest per-variation |SMD| and, for a pruned arm, the mean over its random controls of their own mean
|SMD| in the scenario (what pruning the same number of random units does there); and the inlier ratio and the parse
rate. The inlier bounds are the run's own (``inlier_bounds.json``). Random-control arms are summarized with their arm
(that last column), not listed. The table is written to ``scenario_checks.csv`` in the run directory
(docs/results.md, "Planted controls").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from biasprune.core import artifacts
from biasprune.metrics.spec import BIAS_METRICS
from biasprune.report import ReportError
from biasprune.stats.rows import EvaluationConfig, variation_rows
from biasprune.stats.summary import summarize_split

__all__ = ["COLUMNS", "format_checks", "scenario_checks"]

MEASURE_COLUMNS = ("mean_abs", "ci_low", "ci_high", "null_mean", "null_p95", "within_floor", "min_abs", "random_mean_abs")
COLUMNS = ("run", "scenario", "arm", "n_variations", *(f"{m.name}_{c}" for m in BIAS_METRICS for c in MEASURE_COLUMNS),
           "inlier_ratio", "parse_rate", "pruned_neurons")


def scenario_checks(run: str | Path, n_boot: int = 1000, n_perm: int = 1000) -> list[dict]:
    """The rows of ``scenario_checks.csv`` (written into ``run``), one per non-random arm and scenario."""
    run = Path(run)
    for name in ("answers.jsonl", "inlier_bounds.json"):
        if not (run / name).is_file():
            raise ReportError(f"{run}: no {name}; give the directory of a finished fit or validate run"
                                    " (with --model.evaluation.save_answers true)")
    records = [r for r in artifacts.read_jsonl(run / "answers.jsonl") if r["split"] == "test"]
    if not records:
        raise ReportError(f"{run}/answers.jsonl holds no answer on test names; the checks read test answers only")
    stored = artifacts.read_json(run / "inlier_bounds.json")["bounds_by_split"]["test"]
    bounds = {("test", *k.split("/")): tuple(v) for k, v in stored.items()}
    cfg = EvaluationConfig(bootstrap_samples=n_boot, permutation_samples=n_perm)
    out = []
    for scenario in dict.fromkeys(r["scenario"] for r in records):
        recs = [r for r in records if r["scenario"] == scenario]
        rows = variation_rows(recs, bounds, EvaluationConfig(bootstrap_samples=0, permutation_samples=0))
        summary = summarize_split(recs, bounds, rows, cfg, "test", {"neuron": 1, "head": 1})
        for s in summary.rows:
            if s["phase"] == "random":
                continue
            arm_rows = [r for r in rows if r["arm"] == s["arm"]]
            row = {"run": run.name, "scenario": scenario, "arm": s["arm"], "n_variations": s["n_variations"],
                   "inlier_ratio": s["inlier_ratio"], "parse_rate": s["parse_rate"], "pruned_neurons": s["pruned_neurons"]}
            for m in BIAS_METRICS:
                a = m.mean
                row |= {f"{m.name}_mean_abs": s[a], f"{m.name}_ci_low": s[f"{a}_ci_low"], f"{m.name}_ci_high": s[f"{a}_ci_high"],
                        f"{m.name}_null_mean": s[f"null_{a}"], f"{m.name}_null_p95": s[f"null_{a}_p95"],
                        f"{m.name}_within_floor": bool(s[a] <= s[f"null_{a}_p95"]),
                        f"{m.name}_min_abs": min(r[m.abs] for r in arm_rows),
                        f"{m.name}_random_mean_abs": s.get(f"random_{a}", math.nan)}
            out.append(row)
    artifacts.write_csv(run / "scenario_checks.csv", out, COLUMNS)
    return out


def format_checks(rows_by_run: Sequence[tuple[str, Sequence[dict]]]) -> str:
    """The printed table of one or more runs' checks."""
    measures = "".join(f"{m.label + ' mean|SMD|':>22} {'95% CI':<14}{'floor p95':>10}{'within':>7}" for m in BIAS_METRICS)
    lines = [f"{'run':<24}{'scenario':<10}{'arm':<10}{measures}{'inlier':>7}{'parse':>7}"]
    for run, rows in rows_by_run:
        for r in rows:
            cells = "".join(f"{r[f'{m.name}_mean_abs']:>22.3f} [{r[f'{m.name}_ci_low']:.2f}, {r[f'{m.name}_ci_high']:.2f}]"
                            f"{r[f'{m.name}_null_p95']:>10.3f}{str(r[f'{m.name}_within_floor']):>7}" for m in BIAS_METRICS)
            lines.append(f"{str(run)[-24:]:<24}{r['scenario']:<10}{r['arm']:<10}{cells}{r['inlier_ratio']:>7.3f}{r['parse_rate']:>7.3f}")
    return "\n".join(lines)
