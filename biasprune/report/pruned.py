"""The "what was pruned" part of a run's report, from ``masks.safetensors``: layer × module counts, heads, shares,
and the mechanism of the pruned heads from ``name_attention.csv`` (their attention to the name against all heads)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from biasprune.report import plots
from biasprune.report.html import empty_figure, esc, fig_png, figure_html, fmt, table
from biasprune.report.load import RunArtifacts, layer_and_kind, num, read_masks, read_table, text

__all__ = ["layer_counts", "mechanism_section", "pruned_section"]


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
    mech_html, mech_figs = mechanism_section(art)
    out.append(mech_html)
    out.append(_settings(meta))
    return "".join(out), figs + mech_figs


def mechanism_section(art: RunArtifacts) -> tuple[str, list[tuple[str, str, bytes]]]:
    """The pruned heads' attention from the answer positions to the name tokens, against every head's
    (``name_attention.csv``; nothing when the run has none)."""
    path = art.file("name_attention.csv")
    if not path.is_file():
        return "", []
    rows = read_table(path)
    values = np.array([num(r, "name_attention") for r in rows])
    pruned = np.array([num(r, "pruned") == 1 for r in rows])
    if not rows or not np.isfinite(values).all():
        return "<p>name_attention.csv holds no readable value.</p>", []
    n_seq = int(num(rows[0], "n_sequences"))
    out = ["<h3>Mechanism: do the pruned heads attend to the name?</h3>",
           f"<p>For each head, the attention that the answer positions pay to the name tokens (summed over the name's"
           f" tokens, averaged over the answer positions and over {n_seq} prompts: {n_seq // 2} name-swapped pairs of the"
           f" scoring examples, each prompt with its own answer). Over all {len(rows)} heads the mean is"
           f" <strong>{fmt(float(values.mean()), 3)}</strong> (median {fmt(float(np.median(values)), 3)}, 90th percentile"
           f" {fmt(float(np.quantile(values, 0.9)), 3)})"]
    if pruned.any():
        out.append(f"; over the {int(pruned.sum())} pruned heads it is <strong>{fmt(float(values[pruned].mean()), 3)}</strong>."
                   " A pruned head well above the rest reads the name directly; one near the mean acts on the answer some"
                   " other way (e.g. through later layers).</p>")
    else:
        out.append("; no head was pruned.</p>")
    fig = plots.name_attention_strip([int(num(r, "layer")) for r in rows], values, pruned, "attention from the answer to the name")
    figs = [("name_attention", "Each head's mean attention from the answer positions to the name tokens, by layer: pruned heads"
             " red, the others grey, the dashed line the mean over all heads.", fig_png(fig))]
    out += [figure_html(f) for f in figs]
    hrows = [[esc(text(r, "key").removeprefix("head/")), text(r, "head"), f"{fmt(num(r, 'name_attention'), 3)} ± {fmt(num(r, 'sd'), 3)}",
              f"{text(r, 'rank')} of {len(rows)}"] for r in sorted((r for r in rows if num(r, "pruned") == 1), key=lambda r: num(r, "rank"))]
    if hrows:
        out.append(table(["attention module", "head", "attention to the name (mean ± sd over prompts)", "rank among all heads"],
                         hrows, numeric=[1, 2, 3], raw=True, caption="the pruned heads, most attention first"))
    return "".join(out), figs
