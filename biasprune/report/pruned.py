"""The "what was pruned" part of a run's report, from ``masks.safetensors``: layer × module counts, heads, shares."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from biasprune.report import plots
from biasprune.report.html import empty_figure, esc, fig_png, figure_html, fmt, table
from biasprune.report.load import RunArtifacts, layer_and_kind, read_masks, text

__all__ = ["layer_counts", "pruned_section"]


def layer_counts(masks: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Module kinds (neuron kinds first, ``heads`` last), pruned counts and sizes as [kind, layer] arrays."""
    kinds: list[str] = []
    n_layers = 0
    for key in masks:
        layer, kind = layer_and_kind(key)
        if kind not in kinds:
            kinds.append(kind)
        n_layers = max(n_layers, layer + 1)
    kinds.sort(key=lambda k: k == "heads")  # stable: keeps the model's module order
    counts, sizes = np.zeros((len(kinds), n_layers)), np.zeros((len(kinds), n_layers))
    for key, m in masks.items():
        layer, kind = layer_and_kind(key)
        counts[kinds.index(kind), layer] += int((m == 0).sum())
        sizes[kinds.index(kind), layer] += int(m.size)
    return kinds, counts, sizes


def _settings(meta: Mapping[str, str]) -> str:
    keys = ("units", "rule", "p", "q", "budget", "scope", "head_p", "head_q", "head_budget", "head_scope", "floor_quantile",
            "reference_group", "target_group", "scoring", "random_draws", "random_seed", "masks_file")
    units = meta.get("units", "")
    skip = {"head_p", "head_q", "head_budget", "head_scope"} if units == "neurons" else {"p", "q", "budget", "scope"} if units == "heads" else set()
    return table(["setting", "value"], [[k, meta[k]] for k in keys if k in meta and k not in skip and meta[k] not in ("", "None")],
                 caption="masks.safetensors metadata: the pruning settings")


def pruned_section(art: RunArtifacts, units_total: Mapping[str, int]) -> tuple[str, list[tuple[str, str, bytes]]]:
    """HTML and figures of what the run pruned (nothing for a run without masks)."""
    path = art.file("masks.safetensors")
    pruning = art.manifest.get("pruning") or {}
    source = pruning.get("masks_source") if isinstance(pruning.get("masks_source"), dict) else {}
    if not path.is_file():
        if source or pruning.get("masks_file") or any(text(r, "phase") == "pruned" for r in art.metrics) \
                or "masks.safetensors" in (art.manifest.get("artifacts") or {}):
            return ("<p class=empty>The pruned arm's masks (masks.safetensors) are missing from this run directory, so what was"
                    " pruned cannot be shown. The pruned arm's results above were measured with them.</p>"), []
        return ("<p>This run evaluates the unpruned model only: it has no masks.safetensors, so nothing was pruned. A <code>fit</code>"
                " run (or <code>validate --pruning.masks_file ...</code>) adds the pruned arm and its random controls.</p>"), []
    masks, meta = read_masks(path)
    kinds, counts, sizes = layer_counts(masks)
    total = int(counts.sum())
    n_neurons = int(sum(int((m == 0).sum()) for k, m in masks.items() if k.startswith("neuron/")))
    n_heads = int(sum(int((m == 0).sum()) for k, m in masks.items() if k.startswith("head/")))
    tot_n, tot_h = units_total.get("neuron", 0), units_total.get("head", 0)
    out = [f"<p>The pruned arm sets <strong>{n_neurons} neurons</strong>"
           f"{f' ({fmt(n_neurons / tot_n, 4, pct=True)} of {tot_n})' if tot_n else ''} and <strong>{n_heads} attention heads</strong>"
           f"{f' ({fmt(n_heads / tot_h, 3, pct=True)} of {tot_h})' if tot_h else ''} to zero. Neurons are output features of the"
           " listed linear modules; a pruned head has its attention output zeroed. The random controls prune the same number of"
           " units per module (neurons) or in total (heads), drawn at random.</p>"]
    if source:
        out.append(f"<p>These masks were given to this run (<code>--pruning.masks_file {esc(source.get('path', ''))}</code>, sha256"
                   f" <code>{esc(str(source.get('sha256', ''))[:16])}…</code>) and copied into it as masks.safetensors; their arm is"
                   f" <strong>{esc(source.get('arm', 'pruned'))}</strong>.</p>")
    figs = []
    if total and counts.size:
        fig = plots.layer_module_heatmap(kinds, counts, sizes, "pruned units by layer and module", annotate=True,
                                         label="share of the module's units pruned")
        figs.append(("pruned_by_layer", "Pruned units by layer (columns) and module (rows): colour is the share of the module's"
                     " units pruned, the number in each cell the count.", fig_png(fig)))
    out += [figure_html(f) for f in figs]
    if not figs:
        out.append(empty_figure("Pruned units by layer and module", "the masks keep every unit (0 units pruned)"
                                if counts.size else "masks.safetensors holds no mask"))
    rows = []
    for i, kind in enumerate(kinds):
        c, s = counts[i].sum(), sizes[i].sum()
        per_layer = ", ".join(f"{j}: {int(counts[i, j])}" for j in range(counts.shape[1]) if counts[i, j])
        rows.append([kind, f"{int(c)}", f"{int(s)}", fmt(c / s if s else float("nan"), 4, pct=True), per_layer or "–"])
    out.append("<h3>Share of each module pruned</h3>")
    out.append(table(["module", "pruned", "units", "share", "pruned per layer (layer: count)"], rows, numeric=[1, 2, 3],
                     caption="summed over layers"))
    heads = [(k, m) for k, m in masks.items() if k.startswith("head/")]
    out.append("<h3>Pruned attention heads</h3>")
    hrows = [[esc(k.removeprefix("head/")), ", ".join(str(i) for i in np.flatnonzero(m == 0)), f"{int((m == 0).sum())} of {m.size}"]
             for k, m in heads if (m == 0).any()]
    if hrows:
        out.append(table(["attention module", "pruned heads (index)", "count"], hrows, numeric=[2], raw=True))
    elif heads:
        out.append("<p>No attention head was pruned.</p>")
    else:
        out.append(f"<p>Heads were not pruned: this run prunes {esc(meta.get('units', 'neurons'))} only.</p>")
    out.append(_settings(meta))
    return "".join(out), figs
