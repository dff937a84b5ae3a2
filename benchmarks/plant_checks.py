"""Per-scenario checks of a run on a planted model: bias per scenario against its noise floor, and parse rates.

    python -m benchmarks.plant_checks RUN_DIR [RUN_DIR ...]

For every arm and scenario of the run's test answers (``answers.jsonl``): mean |SMD| over the scenario's
variations with its name-bootstrap interval, the noise floor (labels permuted across names, one permutation
for all variations; mean and 95th percentile), whether the mean |SMD| is within the floor (at or below its
p95), the inlier ratio, the parse rate and the smallest per-variation |SMD|. The inlier bounds are the run's
own (``inlier_bounds.json``). Prints a table and writes ``scenario_checks.csv`` in each run directory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from biasprune.core import artifacts
from biasprune.stats.rows import EvaluationConfig, variation_rows
from biasprune.stats.summary import summarize_split

COLUMNS = ("run", "scenario", "arm", "n_variations", "mean_abs_smd", "ci_low", "ci_high", "null_mean_abs_smd", "null_p95",
           "within_floor", "min_abs_smd", "inlier_ratio", "parse_rate", "pruned_neurons")


def scenario_checks(run: Path, n_boot: int = 1000, n_perm: int = 1000) -> list[dict]:
    records = [r for r in artifacts.read_jsonl(run / "answers.jsonl") if r["split"] == "test"]
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
            out.append({
                "run": run.name, "scenario": scenario, "arm": s["arm"], "n_variations": s["n_variations"],
                "mean_abs_smd": s["mean_abs_smd"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
                "null_mean_abs_smd": s["null_mean_abs_smd"], "null_p95": s["null_p95"],
                "within_floor": bool(s["mean_abs_smd"] <= s["null_p95"]),
                "min_abs_smd": min(r["abs_smd"] for r in arm_rows), "inlier_ratio": s["inlier_ratio"],
                "parse_rate": s["parse_rate"], "pruned_neurons": s["pruned_neurons"],
            })
    artifacts.write_csv(run / "scenario_checks.csv", out, COLUMNS)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    print(f"{'run':<24}{'scenario':<10}{'arm':<10}{'mean|SMD|':>10} {'95% CI':<16}{'floor p95':>10}{'within':>7}{'min|SMD|':>9}{'inlier':>7}{'parse':>7}")
    for run in args.runs:
        for r in scenario_checks(run):
            print(f"{str(run)[-24:]:<24}{r['scenario']:<10}{r['arm']:<10}{r['mean_abs_smd']:>10.3f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]  "
                  f"{r['null_p95']:>8.3f}{str(r['within_floor']):>7}{r['min_abs_smd']:>9.3f}{r['inlier_ratio']:>7.3f}{r['parse_rate']:>7.3f}")


if __name__ == "__main__":
    main()
