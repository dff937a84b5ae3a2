"""The study's figures (PNG in the output directory and images in its TensorBoard events).

* ``fig2_strategies_<units>[_<metric>]``: |SMD| per test variation for the unpruned model and each strategy's chosen
  arm, one figure per bias metric (the scale-free one without suffix, the paper's with ``_smd``);
* ``fig3_overlap``: share of each variation's pruned neurons (prompt-specific) also pruned by another scenario's;
* ``fig4_layers``: pruned neurons by layer and module (prompt-specific, chosen point);
* ``fig5_grid_<units>_<split>[_<metric>]``: mean |SMD| against inlier ratio for every grid point on dev and test, per
  bias metric.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from biasprune.metrics.spec import BIAS_METRICS
from biasprune.report import plots
from biasprune.study.plan import ArmSpec, StudyPlan

__all__ = ["study_figures"]


def _overlap(a: Mapping, b: Mapping) -> float:
    """|S_a ∩ S_b| / |S_b| over pruned units (mask value 0)."""
    inter = sum(int(((a[k] == 0) & (b[k] == 0)).sum()) for k in b)
    total = sum(int((b[k] == 0).sum()) for k in b)
    return inter / total if total else math.nan


def _layer_kind(key: str) -> tuple[int, str]:
    m = re.search(r"\.(\d+)\.", key)
    return (int(m.group(1)) if m else 0), key.rsplit(".", 1)[-1]


def _strategy_figure(emit, rows, chosen, units, test_vars, labels, base, m, suffix) -> None:
    from biasprune.study.choose import arm_id

    bars = {"unpruned": [base[k][m.abs] for k in test_vars]}
    dots = {"unpruned": [base[k]["inlier_ratio"] for k in test_vars]}
    for (u, s, c), spec in chosen.items():
        if u != units or spec is None:
            continue
        mine = {(r["scenario"], r["variation"]): r for r in rows if r["split"] == "test" and r["arm"] == arm_id(spec)}
        name = s + (f":{c}" if c else "")
        bars[name] = [mine[k][m.abs] if k in mine else math.nan for k in test_vars]
        dots[name] = [mine[k]["inlier_ratio"] if k in mine else math.nan for k in test_vars]
    emit(plots.strategy_bars(labels, bars, dots, f"{m.label} |SMD| on test names by strategy ({units}, chosen points)"),
         f"fig2_strategies_{units}{suffix}")


def study_figures(out: Path, rows: Sequence[Mapping], table: Sequence[Mapping], chosen: Mapping, plan: StudyPlan, eval_keys) -> list[str]:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out / "tensorboard"))
    written = []

    def emit(fig, name: str) -> None:
        plots.save(fig, out / f"{name}.png")
        writer.add_figure(name, fig, 0)
        written.append(name)

    try:
        test_vars = [(s, v) for split, s, v in eval_keys if split == "test"]
        labels = [v for _, v in test_vars]
        base = {(r["scenario"], r["variation"]): r for r in rows if r["split"] == "test" and r["arm"] == "unpruned"}
        for units in dict.fromkeys(f[0] for f in chosen):
            for m in BIAS_METRICS:
                suffix = "" if m.deciding else f"_{m.name}"
                _strategy_figure(emit, rows, chosen, units, test_vars, labels, base, m, suffix)
                for split in ("dev", "test"):
                    pts = [t for t in table if t["units"] == units and t["split"] == split]
                    if not pts:
                        continue
                    points = [{"mean_inlier_ratio": t["inlier_ratio"], "mean_abs_smd": t[m.mean],
                               "label": f"{t['strategy'][:6]}{':' + t['context'] if t['context'] else ''} {t['point']}"} for t in pts]
                    baseline = {"mean_inlier_ratio": pts[0]["unpruned_inlier_ratio"], "mean_abs_smd": pts[0][f"unpruned_{m.mean}"]}
                    emit(plots.grid_tradeoff(points, baseline, None, f"grid on {split} names ({units}; {m.label} |SMD|)"),
                         f"fig5_grid_{units}_{split}{suffix}")
        ps = chosen.get(("neurons", "prompt_specific", ""))
        if ps is not None:
            variations = [f"{s}/{v}" for s, v in test_vars]
            masks = {v: plan.masks(ps, v) for v in variations}
            others = [w for ws in plan.contexts.values() for w in ws]
            if others:
                other_masks = {w: plan.masks(ArmSpec("neurons", "prompt_specific", "", ps.p, ps.q, ps.budget), w) for w in others}
                overlap = np.array([[_overlap(masks[v], other_masks[w]) for w in others] for v in variations])
                emit(plots.overlap_heatmap(variations, others, overlap, "pruned-neuron overlap (prompt-specific masks)"), "fig3_overlap")
            kinds: list[str] = []
            n_layers = 0
            for key in next(iter(masks.values())):
                layer, kind = _layer_kind(key)
                kinds = kinds if kind in kinds else [*kinds, kind]
                n_layers = max(n_layers, layer + 1)
            counts, sizes = np.zeros((len(kinds), n_layers)), np.zeros((len(kinds), n_layers))
            for m in masks.values():
                for key, t in m.items():
                    layer, kind = _layer_kind(key)
                    counts[kinds.index(kind), layer] += int((t == 0).sum())
                    sizes[kinds.index(kind), layer] += int(t.numel())
            emit(plots.layer_module_heatmap(kinds, counts, sizes, "pruned neurons by layer and module (prompt-specific)"), "fig4_layers")
    finally:
        writer.close()
    return written
