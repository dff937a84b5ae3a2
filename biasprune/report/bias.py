"""The "bias before and after" part of the report: per-arm summary, per-variation results, answer distributions.

Used for ``fit``/``validate`` runs and (without the distribution plot) for studies. The random-mask draws of a
pruned arm are the ``random`` arms named ``ARM/...`` (a study), or else every ``random`` arm of the split
(a ``fit`` run, whose random draws all control its one pruned arm).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from biasprune.metrics.spec import BIAS_METRICS, DECIDING, UTILITY_METRICS
from biasprune.report import plots
from biasprune.report.common import variation_label
from biasprune.report.html import esc, fig_png, fmt, fmtg, table
from biasprune.report.load import RunArtifacts, iter_answers, num, text

__all__ = ["Figure", "bias_figures", "chosen_variation", "controls_of", "distribution_figure", "summary_table", "variation_table"]

Figure = tuple[str, str, bytes]  # (name, caption, PNG)


def controls_of(rows: Sequence[Mapping]) -> dict[str, list[str]]:
    """Each pruned arm's random-control arms among ``rows`` (one split)."""
    randoms = [text(r, "arm") for r in rows if text(r, "phase") == "random"]
    out = {}
    for r in rows:
        if text(r, "phase") != "pruned":
            continue
        a = text(r, "arm")
        mine = [x for x in randoms if x.startswith(a + "/")]
        out[a] = mine or [x for x in randoms if not any(x.startswith(text(o, "arm") + "/") for o in rows if text(o, "phase") == "pruned")]
    return out


def _arm_label(row: Mapping) -> str:
    return text(row, "arm") or "?"


def summary_table(rows: Sequence[Mapping], split: str) -> str:
    """Per-arm mean |SMD| of each bias metric with its interval and random control, the noise floor, the utility rates
    with the guard, and what was pruned (one split)."""
    out, classes = [], []
    for r in rows:
        if text(r, "split") != split:
            continue
        pruned = []
        if num(r, "pruned_neurons") > 0:
            pruned.append(f"{fmt(num(r, 'pruned_neurons'), 0)} neurons ({fmt(num(r, 'share_neurons'), 4, pct=True)})")
        if num(r, "pruned_heads") > 0:
            pruned.append(f"{fmt(num(r, 'pruned_heads'), 0)} heads ({fmt(num(r, 'share_heads'), 3, pct=True)})")
        cells = []
        for m in BIAS_METRICS:
            rnd = "–"
            if num(r, "random_draws") > 0:
                rnd = f"{fmt(num(r, f'random_{m.mean}'))} ± {fmt(num(r, f'random_{m.mean}_sd'), 2)} ({fmt(num(r, 'random_draws'), 0)} draws)"
            cells += [f"{fmt(num(r, m.mean))} [{fmt(num(r, f'{m.mean}_ci_low'))}, {fmt(num(r, f'{m.mean}_ci_high'))}]", rnd]
        notes = [f"{fmt(num(r, f'{m.prefix}n_undefined'), 0)} undefined {m.label} SMD" for m in BIAS_METRICS
                 if num(r, f"{m.prefix}n_undefined") > 0]
        if num(r, "degenerate_bounds") > 0:
            notes.append(f"{fmt(num(r, 'degenerate_bounds'), 0)} degenerate bounds")
        if text(r, "excluded"):
            notes.append("excluded from claims: " + text(r, "excluded"))
        utility = [f"{u.label} {fmt(num(r, f'{u.name}_vs_unpruned'))} [{fmt(num(r, f'{u.name}_vs_unpruned_ci_low'))},"
                   f" {fmt(num(r, f'{u.name}_vs_unpruned_ci_high'))}]" for u in UTILITY_METRICS if math.isfinite(num(r, f"{u.name}_vs_unpruned"))]
        guard = (text(r, "utility") + ": " if text(r, "utility") else "") + "; ".join(utility)
        out.append([_arm_label(r), *cells, f"{fmt(num(r, f'null_{DECIDING.mean}'))} ({fmt(num(r, f'null_{DECIDING.mean}_p95'))})",
                    fmt(num(r, "inlier_ratio")), fmt(num(r, "parse_rate")), guard or "–",
                    ", ".join(pruned) or ("–" if text(r, "phase") == "baseline" else "nothing"), "; ".join(notes)])
        classes.append("ctrl" if text(r, "phase") == "random" else "")
    header = ["arm"] + [h for m in BIAS_METRICS for h in (f"{m.label} |SMD| [95% CI]", f"random control ({m.label})")]
    header += [f"noise floor ({DECIDING.label}, p95)", "inlier ratio", "parse rate", "utility vs unpruned (arm − unpruned)", "pruned", "notes"]
    n = 2 * len(BIAS_METRICS)
    return table(header, out, numeric=[*range(1, n + 4)], row_classes=classes,
                 caption=f"{split} names; {DECIDING.label}: {DECIDING.description} (decides the claims); {PAPER_NOTE};"
                         " grey rows are the random-mask draws")


PAPER_NOTE = "paper: " + next(m.description for m in BIAS_METRICS if not m.deciding)


def variation_table(metrics: Sequence[Mapping], split: str, arms: Sequence[str], labels: Mapping[str, str] | None = None) -> str:
    """One row per variation × arm: each bias metric's SMD with its CI and p-value, means, answer counts, rates, inlier bounds."""
    rows = [r for r in metrics if text(r, "split") == split and text(r, "arm") in set(arms)]
    order = {a: i for i, a in enumerate(arms)}
    rows.sort(key=lambda r: (variation_label(r), order[text(r, "arm")]))
    out, classes, last = [], [], None
    for r in rows:
        v = variation_label(r)
        cls = "ctrl" if text(r, "phase") == "random" else ""
        bounds = f"[{fmtg(num(r, 'lower'))}, {fmtg(num(r, 'upper'))}]"
        if text(r, "bounds_degenerate") in ("True", "true", "1"):
            bounds += " degenerate"
        smds = [f"{fmt(num(r, m.name))} [{fmt(num(r, f'{m.name}_ci_low'))}, {fmt(num(r, f'{m.name}_ci_high'))}]"
                f" (p {fmt(num(r, f'{m.name}_p_value'))})" for m in BIAS_METRICS]
        out.append([v if v != last else "", (labels or {}).get(text(r, "arm"), text(r, "arm")), *smds,
                    f"{fmtg(num(r, 'mean_ref'))} / {fmtg(num(r, 'mean_target'))}", f"{fmt(num(r, 'n_ref'), 0)} / {fmt(num(r, 'n_target'), 0)}",
                    f"{fmt(num(r, 'inlier_ratio'), 2)} / {fmt(num(r, 'parse_rate'), 2)}", bounds])
        classes.append(" ".join(c for c in (cls, "sep" if v != last and last is not None else "") if c))
        last = v
    n = len(BIAS_METRICS)
    return table(["variation", "arm", *(f"{m.label} SMD [95% CI] (p)" for m in BIAS_METRICS), "mean answer ref / target (window)",
                  "inlier answers ref / target", "inlier ratio / parse rate", "inlier bounds"], out,
                 numeric=[*range(2, n + 5)], row_classes=classes,
                 caption=f"{split} names; SMD > 0: the reference group gets larger answers; means and counts over the inlier window")


def chosen_variation(metrics: Sequence[Mapping], split: str) -> Mapping | None:
    """The unpruned model's row with the largest |SMD| on ``split`` (the first on ties; None without one)."""
    rows = [r for r in metrics if text(r, "split") == split and text(r, "phase") == "baseline" and math.isfinite(num(r, "abs_smd"))]
    return max(rows, key=lambda r: num(r, "abs_smd")) if rows else None


def bias_figures(art: RunArtifacts, summary: Sequence[Mapping], split: str, arms: Sequence[str]) -> list[Figure]:
    """Per bias metric, the per-arm summary and the per-variation panel of one split."""
    figs: list[Figure] = []
    rows = [r for r in summary if text(r, "split") == split]
    main = [r for r in rows if text(r, "phase") != "random"]
    base = next((r for r in rows if text(r, "phase") == "baseline"), None)
    for m in BIAS_METRICS:
        suffix = "" if m.deciding else f"_{m.name}"
        floor = (num(base, f"null_{m.mean}"), num(base, f"null_{m.mean}_p95")) if base else None
        if main:
            by_arm = {text(r, "arm"): r for r in rows}
            ctrl = {a: [num(by_arm[c], m.mean) for c in cs if c in by_arm] for a, cs in controls_of(rows).items()}
            fig = plots.arm_summary([text(r, "arm") for r in main], [num(r, m.mean) for r in main], [num(r, f"{m.mean}_ci_low") for r in main],
                                    [num(r, f"{m.mean}_ci_high") for r in main], floor, ctrl, f"mean |SMD| ({m.label}) on {split} names")
            figs.append((f"mean_abs_smd{suffix}", f"Mean {m.label} |SMD| ({m.description}) over the variations per arm with its 95%"
                         " name-bootstrap interval (blue); grey band: the noise floor (mean |SMD| with the group labels permuted"
                         " across names, up to its 95th percentile); crosses: the random-mask draws, which prune as many units as"
                         f" the arm ({split} names).", fig_png(fig)))
        fig = _variation_panel(art, split, arms, m, floor)
        if fig is not None:
            figs.append((f"per_variation{suffix}", f"Left: {m.label} SMD per variation with its 95% interval for each arm (crosses:"
                         " random-mask draws; grey band: ± the unpruned model's noise-floor mean |SMD|). Right: inlier ratio"
                         " (filled) and parse rate (open) of the same arms.", fig))
    return figs


def _variation_panel(art: RunArtifacts, split: str, arms: Sequence[str], m, floor) -> bytes | None:
    mrows = [r for r in art.metrics if text(r, "split") == split]
    variations = list(dict.fromkeys(variation_label(r) for r in mrows))
    if not variations:
        return None
    series = []
    for a in arms:
        per = {variation_label(r): r for r in mrows if text(r, "arm") == a}
        if not per:
            continue
        phase = text(next(iter(per.values())), "phase")
        cols = {"smd": m.name, "low": f"{m.name}_ci_low", "high": f"{m.name}_ci_high", "inlier": "inlier_ratio", "parse": "parse_rate"}
        series.append({"label": a, **{k: [num(per.get(v), c) for v in variations] for k, c in cols.items()}, "control": phase == "random"})
    fig = plots.variation_panel(variations, series, floor[0] if floor else None, f"per variation ({m.label} SMD), {split} names")
    return fig_png(fig)


def distribution_figure(art: RunArtifacts, split: str, arms: Sequence[str]) -> tuple[Figure | None, str]:
    """Figure 1 of the paper for the variation with the largest unpruned |SMD|: answers per group, before and after."""
    row = chosen_variation(art.metrics, split)
    if row is None:
        return None, "<p class=muted>No variation has a defined SMD for the unpruned model, so no distribution is shown.</p>"
    scen, var = text(row, "scenario"), text(row, "variation")
    path = art.file("answers.jsonl")
    why = (f"<p>Chosen variation: <code>{esc(scen)}/{esc(var)}</code>, the one with the largest unpruned |SMD|"
           f" ({fmt(num(row, 'abs_smd'))}) on the {esc(split)} names.</p>")
    if not path.is_file():
        return None, why + "<p class=muted>answers.jsonl is not in this run (evaluation.save_answers was false), so the answers cannot be plotted.</p>"
    panels_arms = [a for a in arms if a == "unpruned"] + [a for a in arms if a != "unpruned"]
    per_arm: dict[str, dict[str, list[float]]] = {a: {} for a in panels_arms}
    ref, tgt = art.groups
    for rec in iter_answers(path, split, scen, var, panels_arms):
        g = str(rec.get("group", ""))
        per_arm[rec["arm"]].setdefault(g, []).extend(float(v) for v in rec.get("values") or [] if v is not None)
    panels = []
    for a in panels_arms:
        groups = per_arm[a]
        ordered = {g: groups[g] for g in (ref, tgt) if g in groups} | {g: v for g, v in groups.items() if g not in (ref, tgt)}
        if ordered:
            label = "before pruning (unpruned)" if a == "unpruned" else f"after pruning ({a})"
            panels.append((label, ordered))
    if not panels:
        return None, why + "<p class=muted>answers.jsonl holds no answers for this variation.</p>"
    lo, hi = num(row, "lower"), num(row, "upper")
    bounds = (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None
    unit = next((s.get("unit", "") for s in (art.manifest.get("data") or {}).get("scenarios") or [] if s.get("name") == scen), "")
    fig = plots.answer_distributions(panels, bounds, unit, f"answers for {scen}/{var} by group ({split} names)")
    total = sum(np.isfinite(np.asarray(v, dtype=float)).sum() for _, per in panels for v in per.values())
    bounds_txt = f"[{fmt(lo, 4 if hi < 10 else 0)}, {fmt(hi, 4 if hi < 10 else 0)}]" if bounds else "(none)"
    cap = (f"Inlier answers per group for {scen}/{var}: the answers within the inlier bounds {bounds_txt}, which the SMD is computed"
           f" on; the legend also counts the parsed answers outside them. Vertical lines: each group's mean. {int(total)} parsed"
           " answers in all.")
    every = [x for _, per in panels for v in per.values() for x in v if math.isfinite(x)]
    window = bounds or ((min(every), max(every)) if every else (0.0, 1.0))
    for label, per in panels:
        why = plots.empty_panel_reason(per, window)
        if why:
            cap += f" The panel {label} is empty: {why}."
    return ("distribution", cap, fig_png(fig)), why

