"""Figures of runs and studies. Each function returns a ``matplotlib.figure.Figure``.

Figures are built with matplotlib's object API (``Figure``), never ``pyplot``: no global state, no backend
switch, and nothing happens at import; ``save`` renders PNG with the Agg canvas.


* :func:`strategy_bars` — per-variation |SMD| by strategy, with the inlier ratio (the paper's Fig. 2);
* :func:`overlap_heatmap` — share of a variation's pruned neurons also pruned for another (Fig. 3);
* :func:`layer_module_heatmap` — pruned neurons over layer x module (Fig. 4);
* :func:`grid_tradeoff` — mean |SMD| against inlier ratio over the p/q grid (Fig. 5);
* :func:`arm_summary` — mean |SMD| per arm with its interval, the noise floor and the random-control draws;
* :func:`variation_panel` — signed SMD per variation with intervals, beside the inlier ratio and parse rate;
* :func:`answer_distributions` — the answers per group before and after pruning for one variation (Fig. 1);
* :func:`name_attention_strip` — every head's attention from the answer positions to the name, pruned heads marked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import rcParams
from matplotlib.figure import Figure

__all__ = [
    "answer_distributions", "arm_summary", "empty_panel_reason", "grid_tradeoff", "layer_module_heatmap", "name_attention_strip",
    "overlap_heatmap", "save", "strategy_bars", "variation_panel",
]


def _figure(width: float, height: float):
    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def save(fig: Figure, path) -> None:
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
    fig, ax = _figure(max(6.0, 0.9 * len(variations) * max(len(strategies), 1) / 2), 4)
    ax2 = ax.twinx()
    colors = rcParams["axes.prop_cycle"].by_key()["color"]
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
    fig, ax = _figure(max(5.0, 0.6 * len(cols) + 2), max(3.0, 0.45 * len(rows) + 1.5))
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


def transfer_heatmap(rows: Sequence[str], cols: Sequence[str], values: np.ndarray, text: Sequence[Sequence[str]], title: str):
    """Source (rows) x target (columns) cells coloured by ``values`` (a cut in mean |SMD|; diverging around 0), each
    with its own ``text``."""
    fig, ax = _figure(max(5.0, 1.6 * len(cols) + 2.5), max(3.0, 0.9 * len(rows) + 1.5))
    finite = values[np.isfinite(values)]
    lim = float(np.abs(finite).max()) if finite.size else 1.0
    im = ax.imshow(values, vmin=-lim, vmax=lim, cmap="RdBu", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("target scenario (answered)")
    ax.set_ylabel("source scenario (estimated)")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, label="cut in mean |SMD| (unpruned - arm)")
    ax.set_title(title)
    return fig


def layer_module_heatmap(modules: Sequence[str], counts: np.ndarray, sizes: np.ndarray, title: str, annotate: bool = False,
                         label: str = "share of neurons pruned"):
    """Share of each module's neurons pruned, per layer (rows: modules, columns: layers).

    ``annotate`` writes each cell's count of pruned units (when there are at most 400 cells).
    """
    share = np.divide(counts, sizes, out=np.zeros_like(counts, dtype=float), where=sizes > 0)
    fig, ax = _figure(max(6.0, 0.25 * counts.shape[1] + 2), 0.5 * len(modules) + 1.5)
    im = ax.imshow(share, cmap="magma", aspect="auto", vmin=0)
    ax.set_yticks(range(len(modules)), modules)
    step = max(1, counts.shape[1] // 16)
    ax.set_xticks(range(0, counts.shape[1], step))
    ax.set_xlabel("layer")
    if annotate and counts.size <= 400:
        top = share.max() if share.size else 0.0
        for i in range(counts.shape[0]):
            for j in range(counts.shape[1]):
                if sizes[i, j] > 0:
                    color = "black" if top and share[i, j] > 0.6 * top else "white"
                    ax.text(j, i, f"{counts[i, j]:.0f}", ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(title)
    return fig


def grid_tradeoff(points: Sequence[Mapping[str, float]], baseline: Mapping[str, float], chosen: Mapping[str, float] | None, title: str):
    """Mean |SMD| against mean inlier ratio for each grid point; the baseline and the chosen point marked."""
    fig, ax = _figure(6, 4)
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


def _finite(x) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    return a[np.isfinite(a)]


def arm_summary(
    arms: Sequence[str],
    mean: Sequence[float],
    low: Sequence[float],
    high: Sequence[float],
    floor: tuple[float, float] | None,
    controls: Mapping[str, Sequence[float]] | None,
    title: str,
):
    """Mean |SMD| per arm with its 95% interval (points and bars); the noise floor as a shaded band from 0 to
    its 95th percentile with its mean as a line; each arm's random-control draws as grey crosses."""
    y = np.arange(len(arms))[::-1]
    fig = Figure(figsize=(7.5, 0.55 * len(arms) + 2.0), layout="constrained")
    ax = fig.subplots()
    if floor is not None and np.isfinite(floor[1]):
        ax.axvspan(0, floor[1], color="0.88", label="noise floor: labels permuted (to its 95th percentile)", zorder=0)
        if np.isfinite(floor[0]):
            ax.axvline(floor[0], color="0.55", lw=1, ls="--", label="noise floor mean", zorder=1)
    m, lo, hi = (np.asarray(v, dtype=float) for v in (mean, low, high))
    err = np.vstack([np.where(np.isfinite(lo), m - lo, 0), np.where(np.isfinite(hi), hi - m, 0)])
    ax.errorbar(m, y, xerr=np.clip(err, 0, None), fmt="o", color="tab:blue", ecolor="tab:blue", capsize=4, label="mean |SMD| (95% CI)", zorder=3)
    labelled = False
    for i, a in enumerate(arms):
        draws = _finite((controls or {}).get(a, ()))
        if draws.size:
            ax.plot(draws, np.full(draws.size, y[i] - 0.22), "x", color="0.35", ms=5, zorder=2,
                    label=None if labelled else "its random-mask draws")
            labelled = True
    ax.set_yticks(y, arms)
    ax.set_ylim(-0.8, len(arms) - 0.2)
    ax.set_xlim(left=0)
    ax.set_xlabel("mean |SMD| over variations")
    ax.set_title(title)
    fig.legend(fontsize=7, loc="outside lower center", ncol=2, frameon=False)
    return fig


def variation_panel(variations: Sequence[str], series: Sequence[Mapping], floor: float | None, title: str):
    """Signed SMD per variation with 95% intervals (left) and the inlier ratio and parse rate (right).

    ``series``: dicts with ``label``, ``smd``, ``low``, ``high``, ``inlier``, ``parse`` (one value per
    variation) and ``control`` (true: a random-mask draw, drawn small and grey, labelled once). ``floor``: the
    unpruned model's noise-floor mean |SMD|, shaded as ±floor.
    """
    n = len(variations)
    fig = Figure(figsize=(9.5, 0.42 * n * max(1, min(len(series), 4)) / 2 + 2.2), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [2.2, 1]})
    y = np.arange(n)[::-1].astype(float)
    main = [s for s in series if not s.get("control")]
    colors = ["black", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:blue", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
    step = 0.6 / max(len(main), 1)
    if floor is not None and np.isfinite(floor):
        ax.axvspan(-floor, floor, color="0.9", zorder=0, label="± noise floor (mean |SMD|, labels permuted)")
    ax.axvline(0, color="0.4", lw=0.8)
    ctrl_done = False
    k = 0
    for s in series:
        smd = np.asarray(s["smd"], dtype=float)
        if s.get("control"):
            ax.plot(smd, y, "x", color="0.5", ms=4, zorder=2, label=None if ctrl_done else "random-mask draws")
            ax2.plot(np.asarray(s["inlier"], dtype=float), y, "x", color="0.5", ms=4)
            ctrl_done = True
            continue
        off = y + 0.3 - step * (k + 0.5)
        lo, hi = np.asarray(s["low"], dtype=float), np.asarray(s["high"], dtype=float)
        err = np.clip(np.vstack([np.where(np.isfinite(lo), smd - lo, 0), np.where(np.isfinite(hi), hi - smd, 0)]), 0, None)
        c = colors[k % len(colors)]
        ax.errorbar(smd, off, xerr=err, fmt="o", color=c, ms=4, capsize=2, label=s["label"], zorder=3)
        ax2.plot(np.asarray(s["inlier"], dtype=float), off, "o", color=c, ms=4)
        ax2.plot(np.asarray(s["parse"], dtype=float), off, "s", mfc="none", color=c, ms=4)
        k += 1
    ax.set_yticks(y, variations)
    ax.set_xlabel("SMD = (mean reference − mean target) / pooled SD, with 95% CI")
    fig.legend(fontsize=7, loc="outside lower center", ncol=min(4, k + 2), frameon=False)
    ax2.set_xlim(-0.02, 1.02)
    ax2.set_xlabel("inlier ratio (●)  parse rate (□)")
    ax2.grid(axis="x", color="0.9")
    fig.suptitle(title)
    return fig


def empty_panel_reason(per: Mapping[str, Sequence[float]], bounds: tuple[float, float]) -> str:
    """Why a panel of :func:`answer_distributions` has no bar ('' when it has one)."""
    values = np.concatenate([_finite(v) for v in per.values()] or [np.zeros(0)])
    lo, hi = bounds
    if ((values >= lo) & (values <= hi)).any():
        return ""
    if values.size == 0:
        return "no parseable answers (parse 0.00): this arm broke the model"
    return f"no inlier answers: all {values.size} parsed answers lie outside the inlier bounds"


def answer_distributions(panels: Sequence[tuple[str, Mapping[str, Sequence[float]]]], bounds: tuple[float, float] | None, unit: str, title: str):
    """Histograms of the inlier answers per group, one panel per arm (e.g. before and after pruning).

    Only answers within ``bounds`` (the ones the SMD is computed on) are drawn; the legend counts them and the
    parsed answers outside. Each group's mean is a vertical line. A log scale is used for positive bounds more
    than two orders of magnitude apart.
    """
    fig = Figure(figsize=(9.5, 2.3 * max(len(panels), 1) + 0.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(max(len(panels), 1), 1, sharex=True))
    every = np.concatenate([_finite(v) for _, per in panels for v in per.values()] or [np.zeros(0)])
    lo, hi = bounds if bounds is not None else ((every.min(), every.max()) if every.size else (0.0, 1.0))
    log = lo > 0 and hi / lo > 100
    bins = np.geomspace(lo, hi, 31) if log else np.linspace(lo, hi if hi > lo else lo + 1, 31)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:purple"]
    for ax, (name, per) in zip(axes, panels):
        why = empty_panel_reason(per, (lo, hi))
        if why:  # an empty panel says why it is empty
            ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="0.3", wrap=True)
        for i, (group, vals) in enumerate(per.items()):
            v = _finite(vals)
            inl = v[(v >= lo) & (v <= hi)]
            c = colors[i % len(colors)]
            label = f"{group}: {inl.size} inlier answers" + (f", {v.size - inl.size} outside" if v.size > inl.size else "")
            ax.hist(inl, bins=bins, histtype="stepfilled", alpha=0.3, color=c, label=label)
            ax.hist(inl, bins=bins, histtype="step", color=c)
            if inl.size:
                ax.axvline(float(inl.mean()), color=c, lw=2)
        ax.set_ylabel("answers")
        ax.set_title(name, fontsize=9, loc="left")
        ax.legend(fontsize=7, loc="upper right")
        if log:
            ax.set_xscale("log")
    axes[-1].set_xlabel((f"answer ({unit})" if unit else "answer") + (", log scale" if log else "") + "; vertical lines: group means")
    fig.suptitle(title)
    return fig


def name_attention_strip(layers: Sequence[int], values: Sequence[float], pruned: Sequence[bool], title: str):
    """One dot per head at (layer, its mean attention to the name): kept heads grey, pruned heads red, and the mean
    over all heads as a dashed line."""
    layers, values, pruned = np.asarray(layers, dtype=float), np.asarray(values, dtype=float), np.asarray(pruned, dtype=bool)
    fig, ax = _figure(max(6.0, 0.2 * (layers.max() + 1 if layers.size else 1) + 3), 3.2)
    jitter = np.random.default_rng(0).uniform(-0.2, 0.2, layers.size)
    ax.scatter(layers[~pruned] + jitter[~pruned], values[~pruned], s=10, color="0.6", label="kept heads")
    if pruned.any():
        ax.scatter(layers[pruned], values[pruned], s=36, color="tab:red", marker="D", label="pruned heads", zorder=3)
    if values.size:
        ax.axhline(float(values.mean()), color="0.3", linestyle="--", linewidth=1, label="mean over all heads")
    ax.set_xlabel("layer")
    ax.set_ylabel("attention to the name")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title)
    return fig
