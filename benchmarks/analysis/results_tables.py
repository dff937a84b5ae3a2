"""The tables of docs/results.md, generated from the runs' own files (never copied by hand).

    python -m benchmarks.analysis.results_tables ROOT [ROOT ...]                       # print the markdown
    python -m benchmarks.analysis.results_tables ROOT [ROOT ...] --write docs/results.md  # replace its generated sections

A ROOT is what ``bash benchmarks/gpu/run_h200_results.sh`` leaves (its archives unpacked: ``tar -xzf results.tar.gz``), or
any run directory itself. In it the script finds, by their files:

* **checks**: ``fit``/``validate`` runs (``summary.csv`` and ``answers.jsonl``; under ``runs/*/version_*``): per run,
  scenario and arm, both bias measures (with a pruned arm's random controls and the smallest per-variation |SMD|)
  against their noise floors, inlier and parse rates
  (:func:`biasprune.plant.checks.scenario_checks`, recomputed from ``answers.jsonl`` unless ``scenario_checks.csv``
  is there), then the run's claim;
* **rules**: studies whose ``grid.csv`` has more than one rule, or the ``rules``/``contrastive`` stage directories:
  every grid point on dev and test names, both measures against the point's random control, the utility guard,
  which point the dev names chose, and precision / recall against the plant's truth (``truth.csv``) when present;
* **studies**: the other studies (``results.csv``, ``claims.csv``): per (strategy, unit kind) and plant, the chosen
  arm on test names with both measures, its random control, the utility guard and the verdict;
* **changes**: every claim whose verdict differs from the one docs/results.md gave before the rule of issue 20
  (``benchmarks/analysis/results_previous.csv``), with the old and the new values.

``--write FILE`` replaces, for every section found, the text between ``<!-- results:NAME begin -->`` and
``<!-- results:NAME end -->`` in FILE (an error if a marker is missing), and leaves the rest of the file as it is.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from biasprune.core import artifacts
from biasprune.metrics.spec import BIAS_METRICS, DECIDING

SECTIONS = ("checks", "rules", "studies", "changes")
PREVIOUS = Path(__file__).with_name("results_previous.csv")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _num(row: Mapping | None, key: str) -> float:
    try:
        return float((row or {}).get(key, ""))
    except ValueError:
        return math.nan


def _f(x: float, digits: int = 3) -> str:
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


def _ci(row: Mapping, m) -> str:
    return f"{_f(_num(row, m.mean))} [{_f(_num(row, f'{m.mean}_ci_low'), 2)}, {_f(_num(row, f'{m.mean}_ci_high'), 2)}]"


def _plant(run: Path) -> str:
    manifest = artifacts.read_json(run / "manifest.json") if (run / "manifest.json").is_file() else {}
    model = manifest.get("model") or {}
    return model.get("plant") or str(model.get("id", run.name)).rsplit("/", 1)[-1]


def _md(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


# ------------------------------------------------------------------------------------------------------ discovery
def discover(roots: Sequence[Path]) -> dict[str, list[Path]]:
    """Run directories by kind: ``run`` (fit/validate), ``rules`` and ``study``."""
    found: dict[str, list[Path]] = {"run": [], "rules": [], "study": []}
    for root in roots:
        candidates = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
        for d in candidates:
            if (d / "results.csv").is_file() and (d / "grid.csv").is_file():
                rules = {r["rule"] for r in _rows(d / "grid.csv")}
                found["rules" if len(rules) > 1 or d.name in ("rules", "contrastive") else "study"].append(d)
            elif (d / "summary.csv").is_file() and (d / "claims.csv").is_file():
                found["run"].append(d)
    return found


# ------------------------------------------------------------------------------------------------------- sections
def checks_section(runs: Sequence[Path]) -> list[str]:
    from biasprune.plant.checks import COLUMNS, scenario_checks

    head = ["run", "plant", "scenario", "arm"] + [h for m in BIAS_METRICS for h in (f"{m.label} mean \\|SMD\\| [95% CI] (random)",
                                                                                   "min over variations", "floor p95", "within")]
    head += ["inlier", "parse"]
    rows, claims = [], []
    for run in runs:
        stored = _rows(run / "scenario_checks.csv") if (run / "scenario_checks.csv").is_file() else []
        if stored and set(COLUMNS) <= set(stored[0]):
            checks = stored
        elif (run / "answers.jsonl").is_file() and (run / "inlier_bounds.json").is_file():
            checks = [{k: str(v) for k, v in r.items()} for r in scenario_checks(run)]
        else:  # an older scenario_checks.csv without its answers: its columns as they are, the missing ones as "–"
            checks = stored
        name = run.parent.name if run.name.startswith("version_") else run.name
        for c in checks:
            cells = []
            for m in BIAS_METRICS:
                random = _num(c, f"{m.name}_random_mean_abs")
                cells += [f"{_f(_num(c, f'{m.name}_mean_abs'))} [{_f(_num(c, f'{m.name}_ci_low'), 2)}, {_f(_num(c, f'{m.name}_ci_high'), 2)}]"
                          + ("" if math.isnan(random) else f" ({_f(random)})"),
                          _f(_num(c, f"{m.name}_min_abs")), _f(_num(c, f"{m.name}_null_p95")), c.get(f"{m.name}_within_floor", "–")]
            rows.append([name, _plant(run), c["scenario"], c["arm"], *cells, _f(_num(c, "inlier_ratio")), _f(_num(c, "parse_rate"), 2)])
        claims += [f"* `{name}`: **{c['verdict']}** — {c['sentence']}" for c in _rows(run / "claims.csv")]
        if (run / "budget_choice.csv").is_file():
            chosen = next((r for r in _rows(run / "budget_choice.csv") if r["chosen"] == "True"), None)
            claims.append(f"* `{name}`: budget chosen on dev names: {chosen['point'] if chosen else 'none qualified'}")
    return _md(head, rows) + ([""] + claims if claims else [])


def rules_section(studies: Sequence[Path]) -> list[str]:
    out = []
    d, p = DECIDING, next(m for m in BIAS_METRICS if not m.deciding)
    head = ["study", "rule", "budget", "units pruned", f"dev {d.label} (random)", "dev utility", f"test {d.label} (random)",
            f"test {p.label} (random)", "test inlier", "test parse", "chosen on dev", "precision", "recall", "chance"]
    for study in studies:
        grid = _rows(study / "grid.csv")
        truth = {(r["rule"], r["budget"]): r for r in _rows(study / "truth.csv")} if (study / "truth.csv").is_file() else {}
        dev = {(r["rule"], r["budget"]): r for r in grid if r["split"] == "dev"}
        rows = []
        for r in (r for r in grid if r["split"] == "test"):
            k = (r["rule"], r["budget"])
            dv, t = dev.get(k, {}), truth.get(k, {})
            rows.append([study.name, r["rule"], r["budget"], _f(_num(r, "mean_pruned"), 0),
                         f"{_f(_num(dv, d.mean))} ({_f(_num(dv, f'random_{d.mean}'))})", dv.get("utility", "–"),
                         f"{_f(_num(r, d.mean))} ({_f(_num(r, f'random_{d.mean}'))})", f"{_f(_num(r, p.mean))} ({_f(_num(r, f'random_{p.mean}'))})",
                         _f(_num(r, "inlier_ratio")), _f(_num(r, "parse_rate"), 2), "yes" if dv.get("chosen") == "True" else "",
                         _f(_num(t, "precision")), _f(_num(t, "recall")), _f(_num(t, "chance"))])
        base = next((r for r in grid if r["split"] == "test"), {})
        out += [f"`{study.name}` (plant `{_plant(study)}`); unpruned on test: {d.label} {_f(_num(base, f'unpruned_{d.mean}'))},"
                f" {p.label} {_f(_num(base, f'unpruned_{p.mean}'))}, inlier ratio {_f(_num(base, 'unpruned_inlier_ratio'))}.", ""]
        out += _md(head, rows) + [""] + _claim_lines(study)
    return out


def _claim_lines(study: Path) -> list[str]:
    return [f"* **{c['verdict']}** ({c['family']}, {c['family_size']} claims) — {c['sentence']}" for c in _rows(study / "claims.csv")]


def _study_arms(study: Path) -> dict[tuple[str, str, str], tuple[dict, dict | None]]:
    """(units, strategy, context) -> (its results row, its claim) for the chosen arms (or the reason none was)."""
    claims = {c["claim"]: c for c in _rows(study / "claims.csv")}
    out = {}
    for r in _rows(study / "results.csv"):
        if r.get("phase") == "pruned":
            out[(r["units"], r["strategy"], r["context"])] = (r, claims.get(f"pruning lowers bias ({r['arm']})"))
    return out


def studies_section(studies: Sequence[Path]) -> list[str]:
    plants = [(s, _plant(s), _study_arms(s)) for s in studies]
    keys = list(dict.fromkeys(k for _, _, arms in plants for k in arms))
    head = ["strategy", "units"]
    for _, plant, _ in plants:
        head += [f"`{plant}`: " + ", ".join(f"{m.label} [95% CI] (random)" for m in BIAS_METRICS), "utility", "verdict"]
    rows = []
    for units, strategy, context in keys:
        row = [strategy.replace("_", "-") + (f": {context}" if context else ""), units]
        for _, _, arms in plants:
            r, c = arms.get((units, strategy, context), ({}, None))
            if r.get("excluded") == "no grid point qualified on dev names":
                row += ["no point qualified on dev names", "", "—"]
                continue
            row += ["; ".join(f"{_ci(r, m)} ({_f(_num(r, f'random_{m.mean}'))})" for m in BIAS_METRICS), r.get("utility", ""),
                    f"**{c['verdict']}**" if c else "—"]
        rows.append(row)
    out = []
    for s, plant, _ in plants:
        base = next((r for r in _rows(s / "results.csv") if r.get("phase") == "baseline"), {})
        out.append(f"* `{plant}` (`{s.name}`): unpruned " + ", ".join(f"{m.label} {_ci(base, m)}" for m in BIAS_METRICS)
                   + f", inlier ratio {_f(_num(base, 'inlier_ratio'))}")
    out += [""] + _md(head, rows) + [""]
    for s, plant, _ in plants:
        out += [f"Claims on `{plant}`:", ""] + _claim_lines(s) + [""]
    return out


def changes_section(found: Mapping[str, Sequence[Path]], previous: Path = PREVIOUS) -> list[str]:
    """Every claim of the new runs whose verdict differs from the one docs/results.md gave before issue 20."""
    new: dict[tuple[str, str, str, str, str, str], tuple[str, str]] = {}
    for stage, kind in (("studies", "study"), ("rules", "rules")):
        for s in found.get(kind, []):
            plant = _plant(s)
            for (units, strategy, context), (r, c) in _study_arms(s).items():
                verdict = c["verdict"] if c else (r.get("excluded") and "no point qualified on dev")
                values = ("no arm (no grid point qualified on dev names)" if r.get("excluded") and not c else
                          "; ".join(f"{m.label} {_ci(r, m)} (random {_f(_num(r, f'random_{m.mean}'))})" for m in BIAS_METRICS))
                new[(stage, plant, units, strategy, context, "pruning lowers bias")] = (verdict or "—", values)
            for c in _rows(s / "claims.csv"):
                if not c["claim"].startswith("pruning lowers bias"):
                    m = re.match(r"(.*?)(?: \((neurons|heads)\))?$", c["claim"])
                    new[(stage, plant, m.group(2) or "", "", "", m.group(1))] = (c["verdict"], f"{_f(_num(c, 'estimate'))}"
                                                                               f" [{_f(_num(c, 'ci_low'))}, {_f(_num(c, 'ci_high'))}]")
    head = ["stage", "plant", "claim", "before (issue 11 rule)", "now (issue 20 rule)", "new values"]
    rows, unmatched = [], []
    for old in _rows(previous):
        key = (old["stage"], old["plant"], old["units"], old["strategy"], old["context"], old["claim"])
        what = " ".join(x for x in (old["claim"], old["units"], old["strategy"].replace("_", "-"), old["context"]) if x)
        if key not in new:
            unmatched.append(f"{old['stage']} `{old['plant']}`: {what} (was {old['old_verdict']})")
            continue
        verdict, values = new[key]
        if verdict != old["old_verdict"]:
            rows.append([old["stage"], old["plant"], what, f"{old['old_verdict']}: {old['old_values'] or '–'}", f"**{verdict}**", values])
    note = f"{len(rows)} verdict(s) changed; {len(unmatched)} earlier claim(s) have no counterpart in these runs"
    return _md(head, rows) + [""] + [note + (": " + "; ".join(unmatched) + "." if unmatched else ".")]


def render(roots: Sequence[Path], previous: Path = PREVIOUS) -> dict[str, str]:
    """The markdown of every section that the roots have runs for."""
    found = discover(roots)
    out = {}
    if found["run"]:
        out["checks"] = checks_section(found["run"])
    if found["rules"]:
        out["rules"] = rules_section(found["rules"])
    if found["study"]:
        out["studies"] = studies_section(found["study"])
    if found["study"] or found["rules"]:
        out["changes"] = changes_section(found, previous)
    return {k: "\n".join(v).rstrip() + "\n" for k, v in out.items()}


def write_sections(path: Path, sections: Mapping[str, str]) -> None:
    """Replace each section's text between its markers in ``path``."""
    doc = path.read_text(encoding="utf-8")
    for name, text in sections.items():
        begin, end = f"<!-- results:{name} begin -->", f"<!-- results:{name} end -->"
        pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
        if not pattern.search(doc):
            raise SystemExit(f"{path}: no markers for the section {name!r} ({begin} ... {end})")
        block = f"{begin}\n{text}{end}"
        doc = pattern.sub(lambda _, block=block: block, doc)
    path.write_text(doc, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("roots", nargs="+", type=Path, help="unpacked archives of run_h200_results.sh, or run directories")
    ap.add_argument("--write", type=Path, default=None, help="replace the generated sections of this markdown file")
    ap.add_argument("--previous", type=Path, default=PREVIOUS, help="the verdicts before issue 20 (CSV)")
    args = ap.parse_args(argv)
    missing = [str(r) for r in args.roots if not r.is_dir()]
    if missing:
        raise SystemExit(f"not a directory: {', '.join(missing)}")
    sections = render(args.roots, args.previous)
    if not sections:
        raise SystemExit(f"no run, study or rules directory under {', '.join(map(str, args.roots))}")
    for name, text in sections.items():
        sys.stdout.write(f"<!-- results:{name} -->\n{text}\n")
    if args.write is not None:
        write_sections(args.write, sections)


if __name__ == "__main__":
    main()
