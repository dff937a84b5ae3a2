"""Figures of the generalization study (matplotlib, headless). Each function returns a Figure.

* :func:`strategy_bars` — per-variation |SMD| by strategy, with the inlier ratio (the paper's Fig. 2);
* :func:`overlap_heatmap` — share of a variation's pruned neurons also pruned for another (Fig. 3);
* :func:`layer_module_heatmap` — pruned neurons over layer x module (Fig. 4);
* :func:`grid_tradeoff` — mean |SMD| against inlier ratio over the p/q grid (Fig. 5).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["grid_tradeoff", "layer_module_heatmap", "overlap_heatmap", "save", "strategy_bars"]


def save(fig, path) -> None:
    fig.savefig(path, dpi=120, bbox_inches="tight")


def strategy_bars(
    variations: Sequence[str],
    abs_smd: Mapping[str, Sequence[float]],
    inlier: Mapping[str, Sequence[float]],
    title: str,
):
    """Grouped bars of |SMD| per variation (one bar per strategy), inlier ratio as dots on a right axis."""
    strategies = list(abs_smd)
    x = np.arange(len(variations))
    width = 0.8 / max(len(strategies), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(variations) * max(len(strategies), 1) / 2), 4))
    ax2 = ax.twinx()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, s in enumerate(strategies):
        offs = x - 0.4 + width * (i + 0.5)
        ax.bar(offs, np.asarray(abs_smd[s], dtype=float), width, label=s, color=colors[i % len(colors)])
        ax2.plot(offs, np.asarray(inlier[s], dtype=float), "o", color=colors[i % len(colors)], markeredgecolor="black", ms=4)
    ax.set_xticks(x, variations, rotation=30, ha="right")
    ax.set_ylabel("|SMD| (bars)")
    ax2.set_ylabel("inlier ratio (dots)")
    ax2.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def overlap_heatmap(rows: Sequence[str], cols: Sequence[str], overlap: np.ndarray, title: str):
    """``overlap[i, j] = |S_rows[i] ∩ S_cols[j]| / |S_cols[j]|`` as a heatmap with values."""
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(cols) + 2), max(3.0, 0.45 * len(rows) + 1.5)))
    im = ax.imshow(overlap, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i in range(overlap.shape[0]):
        for j in range(overlap.shape[1]):
            if np.isfinite(overlap[i, j]):
                ax.text(j, i, f"{overlap[i, j]:.2f}", ha="center", va="center", fontsize=6, color="white" if overlap[i, j] < 0.5 else "black")
    fig.colorbar(im, ax=ax, label="|S_v ∩ S_u| / |S_u|")
    ax.set_title(title)
    return fig


def layer_module_heatmap(modules: Sequence[str], counts: np.ndarray, sizes: np.ndarray, title: str):
    """Share of each module's neurons pruned, per layer (rows: modules, columns: layers)."""
    share = np.divide(counts, sizes, out=np.zeros_like(counts, dtype=float), where=sizes > 0)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * counts.shape[1] + 2), 0.5 * len(modules) + 1.5))
    im = ax.imshow(share, cmap="magma", aspect="auto", vmin=0)
    ax.set_yticks(range(len(modules)), modules)
    step = max(1, counts.shape[1] // 16)
    ax.set_xticks(range(0, counts.shape[1], step))
    ax.set_xlabel("layer")
    fig.colorbar(im, ax=ax, label="share of neurons pruned")
    ax.set_title(title)
    return fig


def grid_tradeoff(points: Sequence[Mapping[str, float]], baseline: Mapping[str, float], chosen: Mapping[str, float] | None, title: str):
    """Mean |SMD| against mean inlier ratio for each grid point; the baseline and the chosen point marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [p["mean_inlier_ratio"] for p in points]
    ys = [p["mean_abs_smd"] for p in points]
    ax.scatter(xs, ys, c="tab:blue", label="grid points")
    for p in points:
        ax.annotate(p["label"], (p["mean_inlier_ratio"], p["mean_abs_smd"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.scatter([baseline["mean_inlier_ratio"]], [baseline["mean_abs_smd"]], marker="s", c="black", label="unpruned")
    if chosen is not None:
        ax.scatter([chosen["mean_inlier_ratio"]], [chosen["mean_abs_smd"]], marker="*", s=200, c="tab:red", label="chosen")
    ax.set_xlabel("mean inlier ratio")
    ax.set_ylabel("mean |SMD|")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig
