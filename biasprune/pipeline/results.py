"""The end of a ``validate`` stage: results files, the summary and TensorBoard.

Everything computed here is a pure function of the answer records gathered from every process
(:mod:`biasprune.stats.rows`, :mod:`biasprune.stats.summary`), each number by its one row function
(:mod:`biasprune.metrics.spec`): the gathered records are complete, so the rows are exact whatever the number of
processes. This module writes the files on rank 0, prints the summary table and logs scalars (tags from the metric
specification), the run's hyperparameters with its headline metrics (the HParams view) and the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from lightning.pytorch.utilities import rank_zero_info

from biasprune.core import artifacts
from biasprune.metrics.spec import BIAS_METRICS, UTILITY_METRICS
from biasprune.stats.rows import METRIC_COLUMNS, compute_bounds, read_bounds, variation_rows, write_bounds
from biasprune.stats.summary import CLAIM_COLUMNS, SUMMARY_COLUMNS, format_summary, summarize

__all__ = ["evaluate_and_write", "scalar_tags"]


def evaluate_and_write(module, records: Sequence[dict]) -> dict:
    """Bounds, rows, summary and claims of a validate stage; files and the printed table on rank 0."""
    dm = module.datamodule
    cfg = module.evaluation
    stored = read_bounds(cfg.inlier_bounds) if cfg.inlier_bounds else None
    if module.global_rank != 0:
        return {}
    bounds = compute_bounds(records, cfg, dm.valid_range, stored)
    rows = variation_rows(records, bounds, cfg)
    units_total = {k: sum(n for key, n in module.layout.sizes().items() if key.startswith(k + "/")) for k in ("neuron", "head")}
    summary, claims = summarize(records, bounds, rows, cfg, units_total)
    run = module.run_dir
    artifacts.write_csv(run / "metrics.csv", rows, METRIC_COLUMNS)
    artifacts.write_csv(run / "summary.csv", summary, SUMMARY_COLUMNS)
    artifacts.write_csv(run / "claims.csv", [c.as_row() for c in claims], CLAIM_COLUMNS)
    write_bounds(run / "inlier_bounds.json", bounds, cfg.inlier_percentiles)
    artifacts.write_json(run / "timings.json", {k: round(v, 3) for k, v in module.timings.items()})
    rank_zero_info(f"\n{format_summary(summary, claims, dm)}\n(run directory: {run})\n")
    _log(module, rows, summary)
    return {"rows": rows, "summary": summary, "claims": claims}


def scalar_tags(rows: Sequence[dict], summary: Sequence[dict]) -> tuple[dict[str, float], dict[str, float]]:
    """TensorBoard scalars from the metric specification: per variation ``<column>/<split>/<arm>/<scenario>/<variation>``
    for every bias metric's signed and absolute SMD and every utility metric; the headline per arm
    ``<split>/<summary column>/<arm>`` (mean |SMD| and noise floor of each bias metric, each utility rate)."""
    per_row = [c for m in BIAS_METRICS for c in (m.name, m.abs)] + [u.name for u in UTILITY_METRICS]
    per_arm = [c for m in BIAS_METRICS for c in (m.mean, f"null_{m.mean}_p95")] + [u.name for u in UTILITY_METRICS]
    scalars = {}
    for r in rows:
        tag = f"{r['split']}/{r['arm']}/{r['scenario']}/{r['variation']}"
        for name in per_row:
            if isinstance(r.get(name), float) and not math.isnan(r[name]):
                scalars[f"{name}/{tag}"] = r[name]
    headline = {}
    for s in summary:
        for name in per_arm:
            if isinstance(s.get(name), float) and not math.isnan(s[name]):
                headline[f"{s['split']}/{name}/{s['arm']}"] = s[name]
    return scalars, headline


def _log(module, rows: Sequence[dict], summary: Sequence[dict]) -> None:
    scalars, headline = scalar_tags(rows, summary)
    for logger in module.loggers:
        logger.log_metrics({**scalars, **headline}, step=0)
        if hasattr(logger, "log_hyperparams"):
            params = {k: str(v) for k, v in module.hparams.items()}
            logger.log_hyperparams(params, metrics=headline)  # the HParams view: settings beside the headline
        logger.save()
