"""docs/results.md's "Directions and transfer" tables and paragraph, generated from archived transfer runs.

    python -m benchmarks.analysis.direction_tables RUNS_DIR [--write docs/results.md]

RUNS_DIR holds one directory per run named ``<model label>-<method>`` (what benchmarks/gpu/run_directions.sh
archives: ``all-masks``, ``all-direction``, ``purchase-masks``, ...), each with ``transfer_<method>.csv`` and
``settings.json``. Prints the markdown; with ``--write`` it replaces the text between
``<!-- directions:begin -->`` and ``<!-- directions:end -->`` of the given file (appending the section when the
markers are missing). Every number of the paragraph is read from the archives; the wording follows fixed rules
(:func:`plant_paragraph`).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
from pathlib import Path

from biasprune.metrics.spec import DECIDING

BEGIN, END = "<!-- directions:begin -->", "<!-- directions:end -->"
METHODS = ("masks", "direction")
METHOD_LABEL = {"masks": "pruning (masks)", "direction": "direction arm"}


def load_runs(root: str | Path) -> dict[tuple[str, str], dict]:
    """(label, method) -> {"cells": rows of transfer_<method>.csv, "settings": settings.json}."""
    out = {}
    for d in sorted(Path(root).iterdir()):
        m = re.fullmatch(r"(.+)-(masks|direction)", d.name)
        if not d.is_dir() or not m or not (d / f"transfer_{m.group(2)}.csv").is_file():
            continue
        cells = list(csv.DictReader(open(d / f"transfer_{m.group(2)}.csv")))
        for c in cells:
            for k in ("cut", "cut_ci_low", "cut_ci_high", "inlier_vs_unpruned", "parse_vs_unpruned", f"unpruned_{DECIDING.mean}",
                      "paper_cut"):
                c[k] = float(c[k]) if c.get(k) not in (None, "") else math.nan
        settings = json.loads((d / "settings.json").read_text()) if (d / "settings.json").is_file() else {}
        layers = d / f"transfer_{m.group(2)}_layers.csv"
        chosen = list(csv.DictReader(open(layers))) if layers.is_file() else []
        out[(m.group(1), m.group(2))] = {"cells": cells, "settings": settings, "layers": chosen}
    return out


def _f(x: float, sign: bool = True) -> str:
    return "—" if math.isnan(x) else (f"{x:+.2f}" if sign else f"{x:.2f}")


def matrix_table(cells: list[dict]) -> str:
    """Source rows x target columns: cut [interval] verdict, and the inlier and parse ratios."""
    sources = list(dict.fromkeys(c["source"] for c in cells))
    targets = list(dict.fromkeys(c["target"] for c in cells))
    at = {(c["source"], c["target"]): c for c in cells}
    lines = ["| source \\ target | " + " | ".join(targets) + " |", "| --- |" + " --- |" * len(targets)]
    for s in sources:
        row = []
        for t in targets:
            c = at.get((s, t))
            row.append("" if c is None else f"{_f(c['cut'])} [{_f(c['cut_ci_low'])}, {_f(c['cut_ci_high'])}] **{c['verdict']}**"
                       f" (inl ×{_f(c['inlier_vs_unpruned'], False)}, parse ×{_f(c['parse_vs_unpruned'], False)})")
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def layers_line(table: list[dict]) -> str:
    """The dev-name layer choice of a direction run: per source, each candidate's mean |SMD| minus its random control's."""
    per: dict[str, list[str]] = {}
    for r in table:
        over = float(r["over_random"]) if r.get("over_random") not in (None, "") else math.nan
        mark = " (chosen)" if r["chosen"] == "True" else ("" if r["qualifies"] == "True" else " (not qualified)")
        per.setdefault(r["source"], []).append(f"`{r['candidate']}` {_f(over)}{mark}")
    return "Layers chosen on dev names (arm − random mean |SMD|): " + "; ".join(f"{s}: {', '.join(v)}" for s, v in per.items()) + "."


def row_verdict_line(cells: list[dict]) -> str:
    from biasprune.study.transfer import row_verdicts

    return "; ".join(f"from {s}: {v}" for s, v in row_verdicts(cells).items())


def _cell(runs, label: str, method: str, source: str, target: str) -> dict | None:
    run = runs.get((label, method))
    return next((c for c in run["cells"] if c["source"] == source and c["target"] == target), None) if run else None


def _say(c: dict | None) -> str:
    if c is None:
        return "not run"
    return f"{_f(c['cut'])} [{_f(c['cut_ci_low'])}, {_f(c['cut_ci_high'])}], {c['verdict']}"


def plant_paragraph(runs) -> str:
    """Item 3 of the issue, in words fixed before the runs, with the numbers of the archives:

    * expectation on ``all``: the Purchase direction "transfers" to every other context; on ``purchase``: it cuts
      Purchase (the diagonal holds) and the others do not (nothing planted there); ``format``: no claim;
    * reading: if the direction meets the ``all`` expectation and pruning from Purchase does not, pruning's failure to
      generalize is a failure to find a shared mechanism that exists (it is a direction here), i.e. "the method does
      not find the units" is the better reading of the paper's result than "the bias is not shared"; if both meet
      it, neither reading is needed; if the direction does not, the plants do not separate the two readings.
    """
    others = lambda label, method: [c for c in (runs.get((label, method)) or {"cells": []})["cells"]  # noqa: E731
                                    if c["source"] == "purchase" and c["target"] != "purchase"]
    parts = []
    for method in METHODS:
        a = others("all", method)
        p_diag = _cell(runs, "purchase", method, "purchase", "purchase")
        p_off = others("purchase", method)
        if not a and p_diag is None:
            continue
        parts.append(
            f"{METHOD_LABEL[method].capitalize()} from Purchase — on `all`: "
            + ("; ".join(f"{c['target']} {_say(c)}" for c in a) or "not run")
            + f". On `purchase`: Purchase {_say(p_diag)}; "
            + ("; ".join(f"{c['target']} {_say(c)}" for c in p_off) or "others not run") + "."
        )
    meets = {m: bool(others("all", m)) and all(c["verdict"] == "transfers" for c in others("all", m)) for m in METHODS}
    if not parts:
        return "The plant runs are not archived yet (benchmarks/gpu/run_directions.sh)."
    if meets["direction"] and not meets["masks"]:
        reading = ("The direction meets the `all` expectation and pruning does not: the planted bias is shared across"
                   " contexts as one direction that unit masks selected in one context do not capture, so on this"
                   " evidence \"pruning does not generalize\" reads as \"the method does not find the units\" rather than"
                   " \"the bias is not shared\".")
    elif meets["direction"] and meets["masks"]:
        reading = "Both the direction and pruning from Purchase transfer on `all`: the plants do not separate the two readings."
    else:
        reading = ("The direction does not transfer in every context of `all` on this evidence: the plants do not"
                   " separate \"the bias is not in units\" from \"the method does not find the units\".")
    return " ".join(parts) + " " + reading + " On `format` no claim is made (its matrices are shown for completeness)."


def render(runs) -> str:
    if not runs:
        return "No transfer run archived yet: run benchmarks/gpu/run_directions.sh, then this generator."
    out = []
    labels = list(dict.fromkeys(label for label, _ in runs))
    for label in labels:
        for method in METHODS:
            run = runs.get((label, method))
            if run is None:
                continue
            s = run["settings"]
            out.append(f"**{label}, {METHOD_LABEL[method]}** (model `{s.get('model', '?')}`, {s.get('samples', '?')} answers"
                       f" per prompt, {s.get('random_draws', '?')} random controls"
                       + (f", layers `{s.get('layers')}`" if method == "direction" else "") + "; cell: cut in mean |SMD|"
                       " (unpruned − arm) [95% paired name-bootstrap interval] verdict, inlier and parse ratios over the"
                       " unpruned model's)\n")
            out.append(matrix_table(run["cells"]))
            out.append(f"\nRows: {row_verdict_line(run['cells'])}.\n")
            if run.get("layers"):
                out.append(layers_line(run["layers"]) + "\n")
    if any(label in ("all", "purchase", "format") for label in labels):
        out.append(plant_paragraph(runs))
    return "\n".join(out)


def write_between_markers(path: str | Path, text: str) -> None:
    path = Path(path)
    doc = path.read_text() if path.is_file() else ""
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in doc and END in doc:
        doc = doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip() + "\n\n## Directions and transfer\n\n" + block + "\n"
    path.write_text(doc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs")
    ap.add_argument("--write", default="")
    args = ap.parse_args(argv)
    text = render(load_runs(args.runs))
    print(text)
    if args.write:
        write_between_markers(args.write, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
