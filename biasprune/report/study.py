"""A study's report: the results on test names, the grid on dev and test names, claims and the study's figures.

The study writes its own figures (``fig2``-``fig5`` PNGs, already in its TensorBoard events); the page embeds them
as they are, and adds the per-arm and per-variation figures built from ``results.csv`` and ``metrics.csv``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from biasprune.metrics.spec import BIAS_METRICS, DECIDING
from biasprune.report.bias import Figure, bias_figures, controls_of, variation_table
from biasprune.report.common import artifacts_section, header, limits_section, model_section, question_section
from biasprune.report.html import figure_html, fmt, img, page, table
from biasprune.report.load import RunArtifacts, num, text
from biasprune.report.pages import claims_section, headline

__all__ = ["study_page"]

#: The study's figure files by section: (glob prefix, title of the pair, caption).
STUDY_FIGURES = {
    "fig2_": "|SMD| per test variation for the unpruned model and each strategy's chosen point (bars), with the inlier ratio (dots).",
    "fig5_": "Mean |SMD| against the inlier ratio for every grid point (dev names: where points were chosen; test names: reported).",
    "fig4_": "Pruned neurons by layer and module (prompt-specific masks at the chosen point, summed over the evaluated variations).",
    "fig3_": "Overlap across strategies: the share of each evaluated variation's pruned neurons (prompt-specific masks) that another"
             " scenario's mask also prunes.",
}


def _pngs(art: RunArtifacts, prefix: str) -> str:
    files = sorted(art.run_dir.glob(f"{prefix}*.png"))
    if not files:
        return ""
    figs = "".join(img(p.read_bytes(), p.stem, p.name) for p in files)
    cap = STUDY_FIGURES.get(prefix, "")
    return f"<div class=pair>{figs}</div>" + (f"<p class='small muted'>{cap}</p>" if cap else "")


def _leftover_pngs(art: RunArtifacts) -> str:
    """Figures of the study not placed in a section (newer studies may write more)."""
    known = tuple(STUDY_FIGURES)
    files = [p for p in sorted(art.run_dir.glob("fig*.png")) if not p.name.startswith(known)]
    return "".join(img(p.read_bytes(), p.stem, p.name) for p in files)


def _label(r: Mapping) -> str:
    if text(r, "phase") == "baseline":
        return "unpruned"
    parts = [text(r, "units"), text(r, "strategy") + (f" ({text(r, 'context')})" if text(r, "context") else ""), text(r, "point")]
    return " · ".join(p for p in parts if p) or text(r, "arm")


def _grid_table(grid: Sequence[Mapping], split: str) -> str:
    rows = [r for r in grid if text(r, "split") == split]
    out = []
    for r in rows:
        cells = [c for m in BIAS_METRICS for c in (fmt(num(r, m.mean)), fmt(num(r, f"random_{m.mean}")), fmt(num(r, f"vs_random_{m.name}")))]
        out.append([text(r, "units"), text(r, "strategy") + (f" ({text(r, 'context')})" if text(r, "context") else ""), text(r, "point"),
                    *cells, fmt(num(r, "inlier_ratio")), fmt(num(r, "parse_rate")), text(r, "utility"), fmt(num(r, "mean_pruned"), 1),
                    "chosen" if text(r, "chosen") in ("True", "true", "1") else ""])
    base = rows[0] if rows else None
    cap = (f"{split} names; unpruned: mean |SMD| " + ", ".join(f"{m.label} {fmt(num(base, f'unpruned_{m.mean}'))}" for m in BIAS_METRICS)
           + f", inlier ratio {fmt(num(base, 'unpruned_inlier_ratio'))}; vs random = mean |SMD| of the arm − of its random control;"
           " utility: the guard on this split (a point qualifies on dev only if non-inferior)") if base else split
    head = [h for m in BIAS_METRICS for h in (f"{m.label} |SMD|", "random control", "vs random")]
    n = 3 * len(BIAS_METRICS)
    return f"<h3>{split} names</h3>" + table(["units", "strategy", "point", *head, "inlier ratio", "parse rate", "utility", "units pruned", ""],
                                              out, numeric=[*range(3, n + 5), n + 6], caption=cap)


def _results_table(results: Sequence[Mapping]) -> str:
    rows = []
    for r in results:
        if text(r, "phase") == "random":
            continue
        cells = []
        for m in BIAS_METRICS:
            rnd = f"{fmt(num(r, f'random_{m.mean}'))} ± {fmt(num(r, f'random_{m.mean}_sd'), 2)}" if num(r, "random_draws") > 0 else "–"
            cells += [f"{fmt(num(r, m.mean))} [{fmt(num(r, f'{m.mean}_ci_low'))}, {fmt(num(r, f'{m.mean}_ci_high'))}]", rnd]
        pruned = num(r, "pruned_neurons") + num(r, "pruned_heads")
        rows.append([_label(r), *cells, f"{fmt(num(r, f'null_{DECIDING.mean}'))} ({fmt(num(r, f'null_{DECIDING.mean}_p95'))})",
                     fmt(num(r, "inlier_ratio")), fmt(num(r, "parse_rate")), text(r, "utility") or "–",
                     fmt(pruned, 1) if text(r, "phase") != "baseline" else "–", text(r, "excluded")])
    head = [h for m in BIAS_METRICS for h in (f"{m.label} |SMD| [95% CI]", f"random control ({m.label})")]
    n = 2 * len(BIAS_METRICS)
    return table(["arm (units · strategy · point)", *head, f"noise floor ({DECIDING.label}, p95)", "inlier", "parse", "utility",
                  "units pruned", "excluded from claims"], rows, numeric=[*range(1, n + 4), n + 5],
                 caption="test names; each strategy's point was chosen on dev names; random control: mean ± SD over its draws")


def study_page(art: RunArtifacts) -> tuple[str, list[Figure]]:
    data, study = art.manifest.get("data") or {}, art.manifest.get("study") or {}
    results = [dict(r, split=text(r, "split") or "test") for r in art.summary]
    results = [r for r in results if r["split"] == "test"]
    split = "test"
    main = [text(r, "arm") for r in results if text(r, "phase") != "random" and math.isfinite(num(r, DECIDING.mean))]
    figs = bias_figures(art, results, split, main)
    settings = [[k, ", ".join(map(str, v)) if isinstance(v, list) else v] for k, v in study.items() if k not in ("grid", "output")]
    settings += [[f"grid.{k}", ", ".join(map(str, v)) if isinstance(v, list) else v] for k, v in (study.get("grid") or {}).items()]
    design = ("<p>The study learns masks per strategy (prompt-specific: the evaluated variation itself; within-context: the"
              " other variations of its scenario; cross-context: another scenario), picks each strategy's p/q point on dev"
              " names, and reports it on test names against the unpruned model and random masks of the same size.</p>"
              + table(["setting", "value"], settings, caption="the study's settings (manifest.json)"))
    bias = [_results_table(results), *[figure_html(f) for f in figs], _pngs(art, "fig2_"), _leftover_pngs(art),
            "<h3>Per variation, test names</h3>" + variation_table(art.metrics, split, main, {text(r, "arm"): _label(r) for r in results})]
    grid = [_grid_table(art.grid, s) for s in ("dev", "test") if any(text(r, "split") == s for r in art.grid)]
    ctrl = controls_of(results)
    counts = table(["arm", "neurons pruned", "heads pruned", "random draws"],
                   [[_label(r), fmt(num(r, "pruned_neurons"), 1), fmt(num(r, "pruned_heads"), 1), str(len(ctrl.get(text(r, "arm"), [])))]
                    for r in results if text(r, "phase") == "pruned" and math.isfinite(num(r, DECIDING.mean))],
                   numeric=[1, 2, 3], caption="units pruned per chosen arm (mean over the test variations)")
    sections = [
        ("question", "The question", question_section(art, list(data.get("evaluation") or []), list(data.get("scoring") or []))),
        ("model", "The model", model_section(art)),
        ("design", "The study", design),
        ("bias", "Results on test names", "".join(bias)),
        ("grid", "The grid on dev and test names", "".join(grid) + _pngs(art, "fig5_")),
        ("pruned", "What was pruned", counts + _pngs(art, "fig4_") + _pngs(art, "fig3_")),
        ("claims", "Claims", claims_section(art.claims)),
        ("limits", "Limits: what the numbers do not show", limits_section(art, results, art.metrics)),
        ("artifacts", "Artifacts", artifacts_section(art)),
    ]
    model = (art.manifest.get("model") or {}).get("id", "")
    title = re.sub(r"\s+", " ", f"Bias study: {model}")
    return page(title, header(art, headline(results, art.claims, split, compact=True)), sections), figs
