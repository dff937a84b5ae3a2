"""Sanity checks of a localized plant: the bias is there, zeroing exactly its units removes it, a random set does not.

    python -m benchmarks.validation.localized_checks PLANT_ID --out DIR [--evaluation "[purchase]"] [--samples 6]
        [--random-draws 3] [any flag of biasprune validate, e.g. --data.eval_splits "[dev]"]

PLANT_ID is a model id whose last plant is localized (``biasprune plant --model.units``), e.g.
``embedded:SmolLM2-135M-Instruct+plant:format+plant:heads``. Steps:

1. ``DIR/planted_masks.safetensors``: the plant's units (its ``provenance.json``) as keep-masks. Heads as listed;
   an MLP neuron i as channel i of its ``gate_proj`` (zeroing it zeroes the neuron: the down projection reads
   act(gate)·up and act(0) = 0 for SiLU and GELU), so the mask prunes one unit per planted neuron and its random
   control prunes as many neurons;
2. ``DIR/random_masks.safetensors``: the tool's random control of that mask
   (:class:`biasprune.pruning.factory.MaskFactory` defaults: neurons drawn per module, heads over the whole model;
   split test, arm ``pruned``, draw 0), the arm ``random/0`` of the run below;
3. one ``biasprune validate`` run with ``--pruning.masks_file`` the planted mask and ``--pruning.random_draws``
   random controls, on the evaluation variations (default: all of Purchase) with the test names, so the baseline,
   the planted-units arm and the random sets answer the same prompts with the same sampling streams;
4. prints and writes ``DIR/checks.json``: the baseline |SMD| of every planted variation (target ≥ 1.0), the
   planted-units arm's mean |SMD| against its noise floor (p95 of the label-permutation null) and its inlier ratio
   against 0.9 × the baseline's, and the same for each random set (which should stay above the floor). |SMD| is the
   paper's inlier-window SMD, which these thresholds were set on; the scale-free measure that decides claims is
   printed beside it.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

from biasprune.models.loading import plant_chain, resolve_plant
from biasprune.plant.groundtruth import planted_units, truth_keep_masks
from biasprune.pruning.factory import MaskFactory
from biasprune.pruning.masks import load_masks, save_masks

TARGET_BASELINE = 1.0
INLIER_FACTOR = 0.9


def _layout(model_id: str):
    """The unit layout of a model id on a weightless (meta) copy of its base, with the default neuron modules (those
    of ``biasprune validate``)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from biasprune.models.architectures import resolve_units
    from biasprune.models.loading import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(model_id))
    with torch.device("meta"):
        return resolve_units(AutoModelForCausalLM.from_config(config))


def planted_masks(model_id: str) -> tuple[dict, dict[str, list[int]], dict]:
    """(keep-masks of the planted units, the plant's ground truth, masks metadata)."""
    _, plants = plant_chain(model_id)
    if not plants:
        raise SystemExit(f"{model_id!r} has no plant; give BASE+plant:NAME with a localized plant")
    truth = planted_units(resolve_plant(plants[-1], model_id))
    layout = _layout(model_id)
    gate = {f"neuron/{u.path}" for u in layout.neurons if u.kind == "gate_proj"}
    keys = [k for k in truth if k.startswith("head/") or k in gate]
    sizes = {k: n for k, n in layout.sizes().items() if k.startswith(("head/", "neuron/"))}
    masks = truth_keep_masks(truth, sizes, keys)
    meta = {"source": f"planted units of {model_id}", "units": json.dumps({k: truth[k] for k in keys})}
    return masks, truth, meta


def random_control(planted_file: Path) -> dict:
    """The validate run's arm ``random/0``: the factory's control of the arm "pruned" on the test split, draw 0.

    Drawn from the masks as read from the file, as the callback reads them (their key order decides a global draw).
    """
    (masks,) = MaskFactory().random_controls(load_masks(planted_file)[0], "test", "pruned", [0])
    return masks


def _run_dir(root: Path) -> Path:
    versions = sorted(root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    if not versions:
        raise SystemExit(f"no run directory under {root}; see the validate log")
    return versions[-1]


def _read(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def summarize(run: Path, planted_variations: list[str]) -> dict:
    metrics = [r for r in _read(run / "metrics.csv") if r["split"] == "test"]
    summary = {r["arm"]: r for r in _read(run / "summary.csv") if r["split"] == "test"}
    base = {f"{r['scenario']}/{r['variation']}": float(r["abs_smd"]) for r in metrics if r["phase"] == "baseline"}
    planted = {v: base[v] for v in planted_variations if v in base}
    base_arm = next(a for a, r in summary.items() if r["phase"] == "baseline")
    b_inlier = float(summary[base_arm]["inlier_ratio"])

    def arm(name: str) -> dict:
        s = summary[name]
        mean, p95, inlier = float(s["mean_abs_smd"]), float(s["null_mean_abs_smd_p95"]), float(s["inlier_ratio"])
        return {"arm": name, "mean_abs_smd": mean, "ci": [float(s["mean_abs_smd_ci_low"]), float(s["mean_abs_smd_ci_high"])],
                "null_p95": p95, "rank_mean_abs_smd": float(s["mean_abs_rank_smd"]),
                "within_floor": mean <= p95, "inlier_ratio": inlier, "inlier_vs_baseline": inlier / b_inlier,
                "parse_rate": float(s["parse_rate"]), "pruned_neurons": float(s["pruned_neurons"]),
                "pruned_heads": float(s["pruned_heads"])}  # fmt: skip

    randoms = [arm(a) for a, r in summary.items() if r["phase"] == "random"]
    pruned = arm(next(a for a, r in summary.items() if r["phase"] == "pruned"))
    out = {
        "run": str(run),
        "baseline": arm(base_arm),
        "baseline_abs_smd": planted,
        "bias_there": bool(planted) and min(planted.values()) >= TARGET_BASELINE,
        "pruned": pruned,
        "planted_units_remove_it": pruned["within_floor"] and pruned["inlier_vs_baseline"] >= INLIER_FACTOR,
        "random": randoms,
        "random_does_not": all(not r["within_floor"] for r in randoms),
    }
    return out


def report(out: dict) -> str:
    lines = ["baseline |SMD| per planted variation (target >= 1.0):"]
    lines += [f"  {v:<28}{x:7.3f}" for v, x in out["baseline_abs_smd"].items()]
    vals = list(out["baseline_abs_smd"].values())
    lines.append(f"  smallest {min(vals):.3f}, mean {sum(vals) / len(vals):.3f}: {'met' if out['bias_there'] else 'MISSED'}")
    lines.append(f"{'arm':<12}{'mean|SMD|':>10} {'95% CI':<16}{'floor p95':>10}{'within':>8}{'scale-free':>11}{'inlier':>8}{'x base':>8}{'parse':>7}{'heads':>7}{'neurons':>9}")
    for a in [out["baseline"], out["pruned"], *out["random"]]:
        lines.append(f"{a['arm']:<12}{a['mean_abs_smd']:>10.3f} [{a['ci'][0]:.2f}, {a['ci'][1]:.2f}]  {a['null_p95']:>9.3f}"
                     f"{str(a['within_floor']):>8}{a['rank_mean_abs_smd']:>11.3f}{a['inlier_ratio']:>8.3f}{a['inlier_vs_baseline']:>8.2f}{a['parse_rate']:>7.2f}"
                     f"{a['pruned_heads']:>7.0f}{a['pruned_neurons']:>9.0f}")  # fmt: skip
    lines.append(f"planted units remove the bias (within the floor, inlier >= {INLIER_FACTOR}x): "
                 f"{'met' if out['planted_units_remove_it'] else 'MISSED'}")  # fmt: skip
    lines.append(f"no random set of the same size does: {'met' if out['random_does_not'] else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plant", help="model id whose last plant is localized")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--evaluation", default="[purchase]", help="--data.evaluation of the validate run")
    parser.add_argument("--samples", type=int, default=6, help="answers per prompt")
    parser.add_argument("--random-draws", type=int, default=3)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--eval-batch-size", type=int, default=64)
    args, validate_args = parser.parse_known_args(argv)  # the rest goes to biasprune validate
    args.out.mkdir(parents=True, exist_ok=True)
    masks, truth, meta = planted_masks(args.plant)
    planted_file = save_masks(args.out / "planted_masks.safetensors", masks, meta)
    # The callback draws its controls from the masks as read from the file (their key order decides a global draw).
    save_masks(args.out / "random_masks.safetensors", random_control(planted_file),
               {"source": "random control (split test, arm pruned, draw 0) of planted_masks"})
    name = "checks"
    cmd = [
        sys.executable, "-m", "biasprune", "validate", "--model.model_name_or_path", args.plant,
        "--pruning.masks_file", str(args.out / "planted_masks.safetensors"), "--pruning.random_draws", str(args.random_draws),
        "--data.evaluation", args.evaluation, "--model.generation.samples", str(args.samples),
        "--model.generation.max_new_tokens", "12", "--model.generation.decoder", "eager",
        "--data.eval_batch_size", str(args.eval_batch_size), "--trainer.accelerator", args.accelerator, "--trainer.devices", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(args.out / "runs"),
        "--trainer.logger.init_args.name", name, *[a for a in validate_args if a != "--"],
    ]  # fmt: skip
    print("+", " ".join(cmd), flush=True)
    with (args.out / "validate.log").open("w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc:
        print((args.out / "validate.log").read_text()[-4000:])
        raise SystemExit(f"biasprune validate exited {rc}; log: {args.out / 'validate.log'}")
    prov = json.loads((resolve_plant(plant_chain(args.plant)[1][-1], args.plant) / "provenance.json").read_text())
    out = summarize(_run_dir(args.out / "runs" / name), prov.get("planted_variations", []))
    out |= {"plant": args.plant, "truth": truth, "masks_units": json.loads(meta["units"])}
    (args.out / "checks.json").write_text(json.dumps(out, indent=2) + "\n")
    text = report(out)
    (args.out / "checks.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
