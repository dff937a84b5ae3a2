"""Selection methods x budgets on the plants, through ``biasprune fit`` (one run per plant, method and budget).

    python -m benchmarks.analysis.compare_methods --out DIR [--plants format,purchase,all,heads,neurons]
        [--methods nll:relative_difference,wanda:relative_difference,atp:target,causal:target]
        [--budgets 0.5%,1%] [--head-budgets 4,8] [--base embedded:SmolLM2-135M-Instruct]
        [--samples 4] [--random-draws 2] [--accelerator gpu] [any flag of biasprune fit]

A method is ``objective:rule`` (``--model.objective``, ``--pruning.rule``). Budgets are matched: the i-th
neuron budget (``--pruning.budget``, per module) goes with the i-th head budget (``--pruning.head_budget``,
model-wide), the same for every method. Each run scores on the scoring names, prunes ``--pruning.units both``, and
answers the evaluation variations on the dev AND the test names (``--data.eval_splits [dev, test]``) beside its
random controls, so that the choice (:mod:`benchmarks.analysis.methods_table`) sees dev numbers only.

Plants: ``format``, ``purchase``, ``all`` (LoRA plants on the base), ``heads`` and ``neurons`` (localized plants,
stacked on ``format``), and ``base`` (no plant: smoke tests); ``--plant-dir NAME=PATH`` takes a plant from a directory (e.g. one trained on this
machine). Per run, ``DIR/<plant>/<objective>-<rule>-<budget>/row.json`` holds, per split, the baseline, pruned and
random arms (mean |SMD|, inlier and parse ratios), the wall time of the fit, and the precision and recall of the
pruned units against the plant's ground truth (:func:`truth_scores`: a localized plant's unit list, a LoRA plant's
units of largest update norm). ``DIR/comparison.json`` collects them, rewritten after every run; ``--collect`` runs
nothing and rebuilds it from the runs already under ``DIR`` (e.g. an archive of a call that was cut short).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

LORA_PLANTS = ("format", "purchase", "all")
LOCALIZED_PLANTS = ("heads", "neurons")
DEFAULT_METHODS = "nll:relative_difference,wanda:relative_difference,atp:target,causal:target"


def plant_id(base: str, plant: str, dirs: dict[str, str]) -> str:
    """The model id of a plant: LoRA plants on the base, localized ones stacked on ``format``."""
    def ref(name: str) -> str:
        return dirs.get(name, name)

    if plant == "base":  # the unplanted model (smoke tests)
        return base
    if plant in LORA_PLANTS:
        return f"{base}+plant:{ref(plant)}"
    if plant in LOCALIZED_PLANTS:
        return f"{base}+plant:{ref('format')}+plant:{ref(plant)}"
    raise SystemExit(f"--plants: unknown plant {plant!r}; valid choices: {[*LORA_PLANTS, *LOCALIZED_PLANTS]}")


def _read(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def is_measure(column: str) -> bool:
    """A summary column that holds a bias measure's estimate: ``mean_abs_<name>``, not its interval or note."""
    return column.startswith("mean_abs_") and not column.endswith(("_ci_low", "_ci_high", "_ci_note"))


def arms(run: Path) -> dict[str, dict]:
    """Per split: baseline, pruned and the random arms' mean |SMD|, inlier and parse ratios (summary.csv).

    ``mean_abs_smd`` and ``null_p95`` are the paper's measure and its noise floor; ``measures`` holds every bias
    measure of the summary (each ``mean_abs_<name>`` column: ``smd``, and with the metric spec of docs/method.md
    the scale-free ``rank_smd``), keyed by name."""
    out: dict[str, dict] = {}
    for r in _read(run / "summary.csv"):
        split = out.setdefault(r["split"], {"random": []})
        floor = r.get("null_p95") or r.get("null_mean_abs_smd_p95")  # the floor's column before and after the spec
        measures = {k.removeprefix("mean_abs_"): float(v) for k, v in r.items() if is_measure(k) and v}
        arm = {"arm": r["arm"], "mean_abs_smd": float(r["mean_abs_smd"]), "inlier_ratio": float(r["inlier_ratio"]),
               "parse_rate": float(r["parse_rate"]), "null_p95": float(floor), "measures": measures}  # fmt: skip
        if r["phase"] == "random":
            split["random"].append(arm)
        else:
            split[r["phase"]] = arm
    return out


def truth_scores(run: Path, model_id: str) -> dict | None:
    """Precision and recall of the run's masks against the last plant's ground truth (None without a plant).

    A localized plant (``heads``, ``neurons``): against its unit list (``truth: units``; kinds ``head``, ``neuron``
    and ``mlp_neuron``). A LoRA plant (``format``, ``purchase``, ``all``): against the k units of largest update norm
    of its merged LoRA update, k = the number pruned of each kind, so precision = recall (``truth: update_norm``;
    kinds ``neuron`` and ``head``, each with ``mass``, the share of the update's squared norm the pruned units
    hold, and ``chance``); the same truth as ``biasprune plant truth`` (docs/method.md, "Planted controls").
    """
    from benchmarks.validation.localized_checks import _layout
    from biasprune.models.loading import ModelLoadError, plant_chain, resolve_plant
    from biasprune.plant.groundtruth import lora_update_norms, planted_units, precision_recall, unit_precision_recall
    from biasprune.plant.truth import meta_layout
    from biasprune.pruning.masks import load_masks

    plants = plant_chain(model_id)[1]
    if not plants:
        return None
    try:
        adapter = resolve_plant(plants[-1], model_id)
    except ModelLoadError:
        return None
    masks, _ = load_masks(run / "masks.safetensors")
    try:
        units = planted_units(adapter)
    except (ValueError, FileNotFoundError):  # not a localized plant: the update-norm truth
        norms = lora_update_norms(adapter, meta_layout(model_id))
        return {"truth": "update_norm", **precision_recall({k: m == 0 for k, m in masks.items()}, norms)}
    return {"truth": "units", **unit_precision_recall(masks, units, _layout(model_id))}


def run_one(args, extra: list[str], plant: str, objective: str, rule: str, budget: str, head_budget: str) -> dict:
    model_id = plant_id(args.base, plant, dict(d.split("=", 1) for d in args.plant_dir))
    name = f"{objective}-{rule}-{budget.replace('%', 'pct')}"
    out = args.out / plant / name
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "biasprune", "fit", "--config", args.config, "--model.model_name_or_path", model_id,
        "--model.objective", objective, "--pruning.rule", rule, "--pruning.units", "both",
        "--pruning.budget", budget, "--pruning.head_budget", head_budget, "--pruning.random_draws", str(args.random_draws),
        "--data.eval_splits", "[dev, test]", "--model.generation.samples", str(args.samples),
        "--trainer.accelerator", args.accelerator, "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.name", "run", *extra,
    ]  # fmt: skip
    if args.collect:  # the run is already there: its row from its files (wall time from the row it wrote, if any)
        done = sorted((out / "run").glob("version_*/summary.csv"))
        if not done:
            return {"plant": plant, "model": model_id, "objective": objective, "rule": rule, "budget": budget,
                    "head_budget": head_budget, "rc": None, "error": f"not run: no summary.csv under {out / 'run'}"}  # fmt: skip
        before = json.loads((out / "row.json").read_text()) if (out / "row.json").is_file() else {}
        rc, wall = 0, before.get("wall_s")
    else:
        print("+", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        with (out / "fit.log").open("w") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
        wall = round(time.perf_counter() - t0, 1)
    row = {"plant": plant, "model": model_id, "objective": objective, "rule": rule, "budget": budget,
           "head_budget": head_budget, "wall_s": wall, "rc": rc}  # fmt: skip
    if rc:
        row["error"] = (out / "fit.log").read_text()[-2000:]
    else:
        run = sorted((out / "run").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))[-1]
        row |= {"run": str(run), "splits": arms(run), "truth": truth_scores(run, model_id)}
        timings = run / "timings.json"
        row["timings"] = json.loads(timings.read_text()) if timings.is_file() else {}
    (out / "row.json").write_text(json.dumps(row, indent=2, default=str) + "\n")
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--plants", default="format,purchase,all,heads,neurons")
    parser.add_argument("--plant-dir", action="append", default=[], help="NAME=PATH: a plant from a directory")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated objective:rule")
    parser.add_argument("--budgets", default="0.5%,1%", help="neuron budgets (per module), matched with --head-budgets")
    parser.add_argument("--head-budgets", default="4,8", help="head budgets (model-wide), one per neuron budget")
    parser.add_argument("--base", default="embedded:SmolLM2-135M-Instruct")
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--random-draws", type=int, default=2)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--collect", action="store_true",
                        help="run nothing: rebuild comparison.json from the runs already under --out (runs not there are "
                             "listed as not run)")
    args, extra = parser.parse_known_args(argv)
    budgets, head_budgets = args.budgets.split(","), args.head_budgets.split(",")
    if len(budgets) != len(head_budgets):
        raise SystemExit(f"--budgets {budgets} and --head-budgets {head_budgets} must have the same length (matched pairs)")
    methods = [m.split(":", 1) for m in args.methods.split(",")]
    if any(len(m) != 2 for m in methods):
        raise SystemExit(f"--methods {args.methods!r}: give objective:rule pairs, e.g. {DEFAULT_METHODS}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for plant in args.plants.split(","):
        for objective, rule in methods:
            for b, hb in zip(budgets, head_budgets):
                rows.append(run_one(args, [a for a in extra if a != "--"], plant, objective, rule, b, hb))
                r = rows[-1]
                wall = "-" if r.get("wall_s") is None else f"{r['wall_s']:.1f} s"
                print(f"{plant:<9}{objective:<12}{rule:<20}{b:>6}{hb:>4}  rc {r['rc']}  {wall:>9}", flush=True)
                # after every run, so that a call cut short keeps the table of what it finished
                (args.out / "comparison.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    (args.out / "comparison.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    if args.collect:
        rows = [r for r in rows if r["rc"] is not None]
        (args.out / "comparison.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
        print(f"collected {len(rows)} run(s) into {args.out / 'comparison.json'}")
    failed = [r for r in rows if r["rc"]]
    if failed:
        raise SystemExit(f"{len(failed)} of {len(rows)} runs failed, e.g. {failed[0]['plant']} {failed[0]['objective']}")


if __name__ == "__main__":
    main()
