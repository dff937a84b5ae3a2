"""Precision and recall of a study's masks against a plant's ground truth (the merged LoRA update's norms).

    python -m benchmarks.plant_truth STUDY_OUTPUT PLANT_ID [--out truth.csv]

For every grid point of the study (its ``grid.csv``), the masks of each evaluated variation are rebuilt from
the score pieces (exactly as the study built them), and their pruned units are compared with the top units
by ``||ΔW row||`` (neurons) / head update norm (heads) of the plant (:mod:`biasprune.plant.groundtruth`): precision,
recall and the share of the update's squared norm they hold, averaged over variations; ``chance`` is what a
random mask of the same size scores. Written to ``truth.csv`` in the study directory.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from biasprune.core import artifacts
from biasprune.models.loading import resolve_plant, split_model_id
from biasprune.plant.groundtruth import lora_update_norms, precision_recall
from biasprune.study.pieces import PieceStore
from biasprune.study.plan import ArmSpec, StudyPlan

COLUMNS = ("units", "strategy", "context", "rule", "budget", "point", "precision", "recall", "chance", "mass", "k", "n_variations")


def _plan(out: Path) -> tuple[StudyPlan, list[str]]:
    """The study's plan, rebuilt from its manifest and pieces (scores keys are read from the pieces' metadata)."""
    manifest = artifacts.read_json(out / "manifest.json")
    study = artifacts.read_json(out / "manifest.json")["study"] or {}
    root = Path(study.get("pieces") or out / "pieces")
    store = PieceStore(root)
    # the keys this study used (a shared store may hold other objectives' scores): recorded by the study
    score_keys = artifacts.read_json(out / "score_keys.json")
    pr = manifest["pruning"]
    data = manifest["data"]
    selection = {"scope": pr["scope"], "head_scope": pr["head_scope"], "random_seed": pr["random_seed"], "floor_quantile": pr["floor_quantile"]}
    by_scen: dict[str, list[str]] = {}
    for v in score_keys:
        by_scen.setdefault(v.split("/")[0], []).append(v)
    evaluated = data["evaluation"]
    within = {s: [v for v in by_scen.get(s, []) if not study.get("within_variations") or v.split("/")[1] in study["within_variations"]]
              for s in {e.split("/")[0] for e in evaluated}}
    contexts = {c: by_scen.get(c, []) for c in study.get("contexts", [])}
    plan = StudyPlan(store, score_keys, data["groups"], selection, within, contexts, {})
    return plan, evaluated


def _layout(model_id: str):
    """The unit layout of a model id, resolved on a weightless (meta) copy of its base."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from biasprune.models.architectures import resolve_units
    from biasprune.models.loading import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(model_id))
    with torch.device("meta"):
        return resolve_units(AutoModelForCausalLM.from_config(config))


def truth_table(out: Path, plant: str) -> list[dict]:
    plan, evaluated = _plan(out)
    adapter = resolve_plant(split_model_id(plant)[1], plant)
    norms = lora_update_norms(adapter, _layout(plant))
    rows = []
    for g in csv.DictReader(open(out / "grid.csv")):
        if g["split"] != "dev":
            continue
        budget = g["budget"] or None
        spec = ArmSpec(g["units"], g["strategy"], g["context"], float(g["p"]), float(g["q"]), budget, g["rule"])
        kind = "neuron" if spec.units == "neurons" else "head"
        stats = []
        for v in evaluated:
            masks = plan.masks(spec, v)
            prune = {k: m == 0 for k, m in masks.items() if k.startswith(kind + "/")}
            stats.append(precision_recall(prune, {k: t for k, t in norms.items() if k.startswith(kind + "/")})[kind])
        rows.append({
            "units": spec.units, "strategy": spec.strategy, "context": spec.context, "rule": spec.rule, "budget": budget or "",
            "point": spec.point, "n_variations": len(stats),
            **{m: float(np.mean([s[m] for s in stats])) for m in ("precision", "recall", "chance", "mass", "k")},
        })
    artifacts.write_csv(out / "truth.csv", rows, COLUMNS)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("plant", help="the planted model id, e.g. embedded:SmolLM2-135M-Instruct+plant:purchase")
    args = parser.parse_args()
    for r in truth_table(args.study, args.plant):
        print(f"{r['units']:<8}{r['strategy']:<16}{r['rule']:<20}{str(r['budget']):<8} precision {r['precision']:.3f} "
              f"recall {r['recall']:.3f} chance {r['chance']:.3f} mass {r['mass']:.3f}")


if __name__ == "__main__":
    main()
