"""The end of a ``validate`` stage: metrics synced across processes, results files, the summary and TensorBoard.

Everything computed here is a pure function of the gathered answer records (:mod:`biasprune.stats.rows`,
:mod:`biasprune.stats.summary`); this module only adds the torchmetrics synchronisation, writes the files on rank 0,
prints the summary table and logs scalars, the run's hyperparameters with its headline metrics (the HParams
view) and the report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from lightning.pytorch.utilities import rank_zero_info

from biasprune.core import artifacts
from biasprune.metrics.classes import InlierRatio, StandardizedMeanDifference
from biasprune.stats.rows import (
    METRIC_COLUMNS,
    compute_bounds,
    group_records,
    read_bounds,
    record_arrays,
    variation_rows,
    write_bounds,
)
from biasprune.stats.summary import CLAIM_COLUMNS, SUMMARY_COLUMNS, format_summary, summarize

__all__ = ["evaluate_and_write"]


def _synced(module, records: Sequence[dict], local: Sequence[dict], bounds) -> dict:
    """(SMD, inlier ratio) per (split, arm, scenario, variation) from torchmetrics, exact across processes.

    Every rank iterates the same keys (from the gathered records) in the same order: ``compute`` is a
    collective.
    """
    mine = group_records(local)
    out = {}
    for (split, arm), per_var in group_records(records).items():
        for (scen, var) in per_var:
            lo, hi = bounds[(split, scen, var)]
            recs = mine.get((split, arm), {}).get((scen, var), [])
            values, groups, names = record_arrays(recs) if recs else (torch.zeros(0, 1).numpy(), torch.zeros(0).numpy(), [])
            v = torch.as_tensor(values, dtype=torch.float64, device=module.device).reshape(-1)
            g = torch.as_tensor(groups, dtype=torch.long, device=module.device)[:, None].expand(values.shape).reshape(-1)
            inl = (v >= lo) & (v <= hi)
            smd = StandardizedMeanDifference().to(module.device)
            smd.update(torch.where(inl, v, torch.full_like(v, math.nan)), g)
            value = float(smd.compute())
            if lo <= hi:
                ratio_metric = InlierRatio(lo, hi).to(module.device)
                ratio_metric.update(v)
                ratio = float(ratio_metric.compute())
            else:  # NaN bounds (no unpruned answer parsed): nothing can be an inlier
                ratio = 0.0 if len(records) else math.nan
            out[(split, arm, scen, var)] = (value, ratio)
    return out


def evaluate_and_write(module, records: Sequence[dict], local: Sequence[dict]) -> dict:
    """Bounds, rows, summary and claims of a validate stage; files and the printed table on rank 0."""
    dm = module.datamodule
    cfg = module.evaluation
    stored = read_bounds(cfg.inlier_bounds) if cfg.inlier_bounds else None
    bounds = compute_bounds(records, cfg, dm.valid_range, stored)
    synced = _synced(module, records, local, bounds)
    if module.global_rank != 0:
        return {}
    rows = variation_rows(records, bounds, cfg, synced)
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


def _log(module, rows: Sequence[dict], summary: Sequence[dict]) -> None:
    scalars = {}
    for r in rows:
        tag = f"{r['split']}/{r['arm']}/{r['scenario']}/{r['variation']}"
        for name in ("smd", "abs_smd", "inlier_ratio"):
            if not math.isnan(r[name]):
                scalars[f"{name}/{tag}"] = r[name]
    headline = {}
    for s in summary:
        for name in ("mean_abs_smd", "null_p95", "inlier_ratio", "parse_rate"):
            if isinstance(s[name], float) and not math.isnan(s[name]):
                headline[f"{s['split']}/{name}/{s['arm']}"] = s[name]
    for logger in module.loggers:
        logger.log_metrics({**scalars, **headline}, step=0)
        if hasattr(logger, "log_hyperparams"):
            params = {k: str(v) for k, v in module.hparams.items()}
            logger.log_hyperparams(params, metrics=headline)  # the HParams view: settings beside the headline
        logger.save()

