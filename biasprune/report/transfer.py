"""The report of a transfer study (``biasprune study --study.transfer true``): the source x target matrix of each
method in the directory, the random control beside every cell, the row verdicts and the dev-name layer choice."""

from __future__ import annotations

import json
from pathlib import Path

from biasprune.metrics.spec import DECIDING
from biasprune.report.common import artifacts_section, header, model_section
from biasprune.report.html import badge, esc, fmt, img, page, table
from biasprune.report.load import RunArtifacts, num, read_table, text

__all__ = ["has_transfer", "transfer_page"]

CELL_HELP = ("<p>Each arm is estimated on <strong>scoring</strong> names in its source scenario and answered on"
             " <strong>test</strong> names in every target scenario, beside the unpruned model and its random controls"
             " (masks pruning as many units, or random directions moving the mean activation as far). A cell gives the cut"
             " in mean |SMD| (unpruned − arm) of the scale-free measure that decides, with its 95% paired name-bootstrap"
             " interval, and the claim's verdict: <em>transfers</em> (below the unpruned model and its random control,"
             " answers kept by the utility guard), <em>does not</em>, <em>cannot tell</em>, <em>breaks answers</em> (the"
             " guard failed). The paper's measure's cut is beside it. The diagonal is prompt-specific, the rest cross-context.</p>")


def transfer_files(run_dir: Path) -> list[Path]:
    return sorted(p for p in Path(run_dir).glob("transfer_*.csv") if not p.name.endswith("_layers.csv"))


def has_transfer(run_dir: Path) -> bool:
    return bool(transfer_files(run_dir))


def _matrix(cells: list[dict]) -> str:
    sources = list(dict.fromkeys(text(c, "source") for c in cells))
    targets = list(dict.fromkeys(text(c, "target") for c in cells))
    at = {(text(c, "source"), text(c, "target")): c for c in cells}
    rows = []
    for s in sources:
        row = [esc(s)]
        for t in targets:
            c = at.get((s, t))
            row.append("" if c is None else f"{fmt(num(c, 'cut'))} [{fmt(num(c, 'cut_ci_low'))}, {fmt(num(c, 'cut_ci_high'))}]"
                                           f" {badge(text(c, 'verdict'))}")
        rows.append(row)
    return table(["source \\ target", *targets], rows, raw=True, caption="cut in mean |SMD| [95% interval] and verdict")


def _cells(cells: list[dict]) -> str:
    arm, rnd, base = (f"{who}_{DECIDING.mean}" for who in ("arm", "random", "unpruned"))
    rows = [[text(c, "source"), text(c, "target"), text(c, "cell"), fmt(num(c, base)), fmt(num(c, arm)), fmt(num(c, rnd)),
             fmt(num(c, "paper_cut")), fmt(num(c, "inlier_vs_unpruned"), 2), fmt(num(c, "parse_vs_unpruned"), 2), text(c, "utility"),
             text(c, "verdict"), text(c, "sentence")] for c in cells]
    return table(["source", "target", "cell", "unpruned", "arm", "random control", "paper's cut", "inlier ×", "parse ×", "utility",
                  "verdict", "claim"], rows, numeric=(3, 4, 5, 6, 7, 8),
                 caption=f"mean |SMD| of each arm ({DECIDING.label} measure, deciding), its random control beside it; the"
                         " paper's measure's cut")


def _layers(path: Path) -> str:
    if not path.is_file():
        return ""
    rows = [[text(r, "source"), text(r, "candidate"), text(r, "layers"), fmt(num(r, f"arm_{DECIDING.mean}")),
             fmt(num(r, f"random_{DECIDING.mean}")),
             fmt(num(r, "over_random")), fmt(num(r, "inlier_vs_unpruned"), 2), text(r, "verdict"),
             "chosen" if text(r, "chosen") == "True" else ("" if text(r, "qualifies") == "True" else "not qualified")] for r in read_table(path)]
    return ("<h3>Direction layers chosen on dev names</h3>"
            + table(["source", "candidate", "layers", "arm", "random", "arm − random", "inlier ×", "verdict", ""], rows, numeric=(3, 4, 5, 6)))


def transfer_page(art: RunArtifacts) -> tuple[str, list]:
    """The transfer study's page (figures are the heatmaps the study wrote; none is generated here)."""
    body = [CELL_HELP]
    for path in transfer_files(art.run_dir):
        method = path.stem.removeprefix("transfer_")
        cells = read_table(path)
        body.append(f"<h3>{esc(method)}</h3>" + _matrix(cells))
        verdicts = art.run_dir / f"transfer_{method}_rows.json"
        if verdicts.is_file():
            rows = json.loads(verdicts.read_text())
            body.append("<p>Rows: " + "; ".join(f"from {esc(s)}: {badge(v)}" for s, v in rows.items()) + "</p>")
        png = art.run_dir / f"transfer_{method}.png"
        if png.is_file():
            body.append(img(png.read_bytes(), f"transfer matrix {method}", f"Cut in mean |SMD| by source x target ({method})"))
        body.append(_cells(cells) + _layers(art.run_dir / f"transfer_{method}_layers.csv"))
    sections = [
        ("transfer", "Transfer matrix", "".join(body)),
        ("model", "The model", model_section(art)),
        ("artifacts", "Artifacts", artifacts_section(art)),
    ]
    model = (art.manifest.get("model") or {}).get("id", "")
    return page(f"Transfer matrix: {model}", header(art, ""), sections), []
