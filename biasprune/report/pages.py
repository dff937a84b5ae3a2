"""The two kinds of page: a run's (``fit``/``validate``) and a study's. Each returns (HTML, generated figures)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from biasprune.metrics.spec import BIAS_METRICS, DECIDING
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
    out = [f"<p>A claim <em>holds</em> when every deciding 95% interval lies on its side of 0 and the arm's utility is"
           " non-inferior to the unpruned model's (inlier ratio and parse rate: the paired interval of arm − unpruned has its"
           " lower end at or above the margin); it <em>breaks answers</em> (\u201clowers bias only by breaking answers\u201d) when"
           " the utility is not shown non-inferior; it <em>does not hold</em> when a bias interval lies on the other side of 0,"
           f" and is <em>inconclusive</em> otherwise. Claims are decided on the {esc(DECIDING.label)} |SMD|"
           f" ({esc(DECIDING.description)}); the paper's inlier-window |SMD| is shown beside it. The estimate is the deciding"
           " paired difference of mean |SMD| (positive supports the claim); a family of claims is adjusted by Holm's procedure"
           " and gives its size.</p>"]
    rows = []
    for c in claims:
        low = num(c, "ci_low") if "ci_low" in c else num(c, "low")
        high = num(c, "ci_high") if "ci_high" in c else num(c, "high")
        extra = [text(c, "detail")] if text(c, "detail") else []
        extra += [f"utility {text(c, 'utility')}"] if text(c, "utility") else []
        extra += [f"family: {text(c, 'family')} ({text(c, 'family_size')} claims); {text(c, 'holm')}"] if text(c, "family") else []
        paper = (f"{fmt(num(c, 'paper_estimate'))}<br>[{fmt(num(c, 'paper_ci_low'))}, {fmt(num(c, 'paper_ci_high'))}]"
                 if math.isfinite(num(c, "paper_estimate")) else "–")
        rows.append([f"{badge(text(c, 'verdict'))}", f"<strong>{esc(text(c, 'claim'))}</strong><br>{esc(text(c, 'sentence'))}"
                     + "".join(f"<br><span class='small muted'>{esc(e)}</span>" for e in extra),
                     f"{fmt(num(c, 'estimate'))}<br>[{fmt(low)}, {fmt(high)}]", paper, esc(text(c, "method"))])
    out.append(table(["verdict", "claim", f"estimate [95% CI] ({DECIDING.label})", "paper's |SMD|: unpruned − arm", "method"], rows,
                     numeric=[2, 3], raw=True))
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
    d = DECIDING.mean
    for r in rows:
        if text(r, "phase") == "random" or (compact and text(r, "phase") != "baseline"):
            continue
        note = f"95% CI [{fmt(num(r, f'{d}_ci_low'))}, {fmt(num(r, f'{d}_ci_high'))}]"
        if num(r, "random_draws") > 0:
            note += f"; random control {fmt(num(r, f'random_{d}'))}"
        paper = next(m for m in BIAS_METRICS if not m.deciding)
        note += f"; paper's |SMD| {fmt(num(r, paper.mean))}"
        if text(r, "utility"):
            note += f"; utility {text(r, 'utility')}"
        cards.append((f"mean {DECIDING.label} |SMD|, {text(r, 'arm')}", fmt(num(r, d)), note))
    if base is not None:
        cards.append(("noise floor (no bias)", fmt(num(base, f"null_{d}")), f"95th percentile {fmt(num(base, f'null_{d}_p95'))}"))
        cards.append(("smallest detectable |SMD|", fmt(num(base, "mde"), 2), "per variation, 80% power"))
    out = [f"<p class=small>Headline numbers on the <strong>{esc(split)}</strong> names (never used to learn or choose the pruning).</p>",
           _cards(cards[:6])]
    if base is not None:
        p = num(base, f"null_{d}_p_value")
        verdict = ("above" if p < 0.05 else "not distinguishable from") if math.isfinite(p) else "not compared with"
        out.append(f"<p>Before pruning, the mean {esc(DECIDING.label)} |SMD| is {fmt(num(base, d))} [{fmt(num(base, f'{d}_ci_low'))},"
                   f" {fmt(num(base, f'{d}_ci_high'))}]: {verdict} the noise floor (p = {fmt(p)}).</p>")
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
