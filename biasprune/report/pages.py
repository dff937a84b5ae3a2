"""The two kinds of page: a run's (``fit``/``validate``) and a study's. Each returns (HTML, generated figures)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from biasprune.report.bias import Figure, bias_figures, distribution_figure, summary_table, variation_table
from biasprune.report.common import artifacts_section, header, limits_section, model_section, question_section
from biasprune.report.html import badge, empty_figure, esc, figure_html, fmt, page, table
from biasprune.report.load import RunArtifacts, num, text
from biasprune.report.pruned import pruned_section

__all__ = ["claims_section", "headline", "run_page"]


def claims_section(claims: Sequence[Mapping]) -> str:
    if not claims:
        return ("<p>No claim was tested: a claim needs a pruned arm, the unpruned arm and bootstrap intervals"
                " (evaluation.bootstrap_samples &gt; 0).</p>")
    out = ["<p>A claim <em>holds</em> when every deciding 95% interval lies on its side of 0, <em>does not hold</em> when one lies"
           " on the other side, and is <em>inconclusive</em> otherwise. The estimate is the deciding paired difference of mean"
           " |SMD| (positive supports the claim).</p>"]
    rows = []
    for c in claims:
        low = num(c, "ci_low") if "ci_low" in c else num(c, "low")
        high = num(c, "ci_high") if "ci_high" in c else num(c, "high")
        rows.append([f"{badge(text(c, 'verdict'))}", f"<strong>{esc(text(c, 'claim'))}</strong><br>{esc(text(c, 'sentence'))}"
                     + (f"<br><span class='small muted'>{esc(text(c, 'detail'))}</span>" if text(c, "detail") else ""),
                     f"{fmt(num(c, 'estimate'))}<br>[{fmt(low)}, {fmt(high)}]", esc(text(c, "method"))])
    out.append(table(["verdict", "claim", "estimate [95% CI]", "method"], rows, numeric=[2], raw=True))
    return "".join(out)


def _cards(items: Sequence[tuple[str, str, str]]) -> str:
    return "<div class=cards>" + "".join(f"<div class=card><div class=k>{esc(k)}</div><div class=v>{esc(v)}</div>"
                                         f"<div class='small muted'>{esc(n)}</div></div>" for k, v, n in items) + "</div>"


def headline(summary: Sequence[Mapping], claims: Sequence[Mapping], split: str, compact: bool = False) -> str:
    """The box at the top: headline numbers on ``split`` and every claim's verdict (``compact``: the unpruned arm's
    numbers and one line per claim, for studies with many arms)."""
    rows = [r for r in summary if text(r, "split") == split]
    base = next((r for r in rows if text(r, "phase") == "baseline"), None)
    cards = []
    for r in rows:
        if text(r, "phase") == "random" or (compact and text(r, "phase") != "baseline"):
            continue
        note = f"95% CI [{fmt(num(r, 'ci_low'))}, {fmt(num(r, 'ci_high'))}]"
        if num(r, "random_draws") > 0:
            note += f"; random control {fmt(num(r, 'random_mean_abs_smd'))}"
        cards.append((f"mean |SMD|, {text(r, 'arm')}", fmt(num(r, "mean_abs_smd")), note))
    if base is not None:
        cards.append(("noise floor (no bias)", fmt(num(base, "null_mean_abs_smd")), f"95th percentile {fmt(num(base, 'null_p95'))}"))
        cards.append(("smallest detectable |SMD|", fmt(num(base, "mde"), 2), "per variation, 80% power"))
    out = [f"<p class=small>Headline numbers on the <strong>{esc(split)}</strong> names (never used to learn or choose the pruning).</p>",
           _cards(cards[:6])]
    if base is not None:
        p = num(base, "null_p_value")
        verdict = ("above" if p < 0.05 else "not distinguishable from") if math.isfinite(p) else "not compared with"
        out.append(f"<p>Before pruning, the mean |SMD| is {fmt(num(base, 'mean_abs_smd'))} [{fmt(num(base, 'ci_low'))},"
                   f" {fmt(num(base, 'ci_high'))}]: {verdict} the noise floor (p = {fmt(p)}).</p>")
    if compact and claims:
        out.append("<ul class=plain>" + "".join(
            f"<li>{badge(text(c, 'verdict'))} {esc(text(c, 'claim'))}: {fmt(num(c, 'estimate'))} [{fmt(num(c, 'ci_low'))},"
            f" {fmt(num(c, 'ci_high'))}]</li>" for c in claims) + "</ul><p class=small>Sentences and details: see Claims.</p>")
    else:
        for c in claims:
            out.append(f"<p>{badge(text(c, 'verdict'))} {esc(text(c, 'sentence'))}</p>")
    return "<div class='banner info'>" + "".join(out) + "</div>"


def run_page(art: RunArtifacts) -> tuple[str, list[Figure]]:
    """A ``fit`` or ``validate`` run's report."""
    split = art.headline_split
    summary = art.summary
    data = art.manifest.get("data") or {}
    variations = list(dict.fromkeys(f"{text(r, 'scenario')}/{text(r, 'variation')}" for r in art.metrics)) or list(data.get("evaluation") or [])
    arms = list(dict.fromkeys(text(r, "arm") for r in art.metrics if text(r, "split") == split))
    main_arms = [a for a in arms if not a.startswith("random")] + [a for a in arms if a.startswith("random")]
    figs = bias_figures(art, summary, split, main_arms)
    dist, dist_html = distribution_figure(art, split, [a for a in arms if any(text(r, "arm") == a and text(r, "phase") != "random"
                                                                               for r in art.metrics)])
    bias = ["<p>Each arm answers the same prompts about the same names. <strong>unpruned</strong> is the model as shipped;"
            " <strong>pruned</strong> has the selected units zeroed; <strong>random/…</strong> prune as many units chosen at"
            " random (the control: does any pruning of this size lower |SMD|?). The noise floor is the mean |SMD| expected with"
            " no bias at all, from permuting the group labels across names.</p>"]
    for s in art.splits:
        bias.append(f"<h3>Per arm, {esc(s)} names</h3>" + summary_table(summary, s))
        if s == split:
            bias += [figure_html(f) for f in figs]
            names = {f[0] for f in figs}
            if "mean_abs_smd" not in names:
                bias.append(empty_figure("Mean |SMD| per arm", f"summary.csv has no row for the {s} names" if art.summary else
                                         "this run has no summary.csv"))
            if "per_variation" not in names:
                bias.append(empty_figure("SMD per variation", f"metrics.csv has no row for the {s} names"))
        bias.append(f"<h3>Per variation, {esc(s)} names</h3>" + variation_table(art.metrics, s, main_arms))
    if not art.splits:
        bias.append(empty_figure("Bias per arm and per variation", "metrics.csv has no row"))
    bias.append("<div class=block><h3>The answers, before and after</h3>" + dist_html
                + (figure_html(dist) if dist is not None else "") + "</div>")
    if dist is not None:
        figs.append(dist)
    pruned_html, pruned_figs = pruned_section(art, art.manifest.get("units") or {})
    figs += pruned_figs
    sections = [
        ("question", "The question", question_section(art, variations, list(data.get("scoring") or []) if art.kind == "fit" else [])),
        ("model", "The model", model_section(art)),
        ("bias", "Bias before and after", "".join(bias)),
        ("pruned", "What was pruned", pruned_html),
        ("claims", "Claims", claims_section(art.claims)),
        ("limits", "Limits: what the numbers do not show", limits_section(art, summary, art.metrics)),
        ("artifacts", "Artifacts", artifacts_section(art)),
    ]
    model = (art.manifest.get("model") or {}).get("id", "")
    return page(f"Bias audit: {model}", header(art, headline(summary, art.claims, split)), sections), figs
