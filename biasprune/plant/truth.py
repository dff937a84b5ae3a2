"""``biasprune plant truth STUDY_DIR PLANT_ID``: precision and recall of a study's masks against a plant's truth.

For every grid point of a study (its ``grid.csv``, dev rows), the masks of each evaluated variation are rebuilt
from the score pieces exactly as the study built them (:class:`biasprune.study.plan.StudyPlan`, from the
study's ``manifest.json`` and ``score_keys.json``), and their pruned units are compared with the units of
largest update norm of the plant's merged LoRA update (:mod:`biasprune.plant.groundtruth`): precision, recall
and the share of the update's squared norm they hold, averaged over the evaluated variations; ``chance`` is
what a random mask of the same size scores. Written to ``truth.csv`` in the study directory
(docs/method.md, "Planted controls").
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from biasprune.core import artifacts
from biasprune.models.architectures import UnitLayout
from biasprune.models.loading import ModelLoadError, resolve_plant, split_model_id
from biasprune.plant.groundtruth import lora_update_norms, precision_recall
from biasprune.pruning.factory import MaskFactory
from biasprune.report import ReportError
from biasprune.study.pieces import PieceStore
from biasprune.study.plan import ArmSpec, StudyPlan, strategy_pools

__all__ = ["COLUMNS", "format_truth", "meta_layout", "study_plan", "truth_table"]

COLUMNS = ("units", "strategy", "context", "rule", "budget", "point", "precision", "recall", "chance", "mass", "k", "n_variations")


def study_plan(out: str | Path) -> tuple[StudyPlan, list[str]]:
    """A finished study's plan (its masks, without answer keys) and its evaluated variations, from its files."""
    out = Path(out)
    for name in ("manifest.json", "score_keys.json", "grid.csv"):
        if not (out / name).is_file():
            raise ReportError(f"{out}: no {name}; give the --study.output directory of a finished study")
    manifest = artifacts.read_json(out / "manifest.json")
    study, pruning, data = manifest.get("study") or {}, manifest["pruning"], manifest["data"]
    score_keys = artifacts.read_json(out / "score_keys.json")  # the pieces this study's masks come from
    variations = {s["name"]: [f"{s['name']}/{v['id']}" for v in s["variations"]] for s in data["scenarios"]}
    within, contexts = strategy_pools(variations, data["evaluation"], study.get("strategies", ()),
                                      study.get("within_variations", ()), study.get("contexts", ()))
    # Each arm's rule comes from grid.csv (StudyPlan.masks); the factory holds the scopes, floor and random seed.
    factory = MaskFactory("set_difference", pruning["scope"], pruning["head_scope"], float(pruning["floor_quantile"]),
                          int(pruning["random_seed"]))
    store = PieceStore(Path(study.get("pieces") or out / "pieces"))
    return StudyPlan(store, score_keys, data["groups"], factory, within, contexts, {}), list(data["evaluation"])


def meta_layout(model_id: str) -> UnitLayout:
    """The unit layout of a model id, resolved on a weightless (meta) copy of its base."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from biasprune.models.architectures import resolve_units
    from biasprune.models.loading import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(model_id))
    with torch.device("meta"):
        return resolve_units(AutoModelForCausalLM.from_config(config))


def _budget(text: str) -> int | float | str | None:
    """A grid.csv budget back as the study gave it (``12``, ``0.005``, ``0.5%``; empty: none)."""
    if not text:
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def truth_table(out: str | Path, plant: str) -> list[dict]:
    """The rows of ``truth.csv`` (written into ``out``): one per dev grid point of the study."""
    out = Path(out)
    base, plant_name = split_model_id(plant)
    if not plant_name:
        raise ModelLoadError(f"{plant!r} names no plant; give a planted model id, e.g. {base}+plant:purchase")
    plan, evaluated = study_plan(out)
    norms = lora_update_norms(resolve_plant(plant_name, plant), meta_layout(plant))
    rows = []
    with open(out / "grid.csv", newline="") as fh:
        grid = [g for g in csv.DictReader(fh) if g["split"] == "dev"]
    for g in grid:
        spec = ArmSpec(g["units"], g["strategy"], g["context"], float(g["p"]), float(g["q"]), _budget(g["budget"]), g["rule"])
        kind = "neuron" if spec.units == "neurons" else "head"
        truth = {k: t for k, t in norms.items() if k.startswith(kind + "/")}
        stats = []
        for v in evaluated:
            prune = {k: m == 0 for k, m in plan.masks(spec, v).items() if k.startswith(kind + "/")}
            stats.append(precision_recall(prune, truth)[kind])
        rows.append({
            "units": spec.units, "strategy": spec.strategy, "context": spec.context, "rule": spec.rule,
            "budget": g["budget"], "point": spec.point, "n_variations": len(stats),
            **{m: float(np.mean([s[m] for s in stats])) for m in ("precision", "recall", "chance", "mass", "k")},
        })  # fmt: skip
    artifacts.write_csv(out / "truth.csv", rows, COLUMNS)
    return rows


def format_truth(rows: list[dict]) -> str:
    return "\n".join(f"{r['units']:<8}{r['strategy']:<16}{r['context']:<10}{r['rule']:<20}{str(r['budget']):<8}"
                     f" precision {r['precision']:.3f} recall {r['recall']:.3f} chance {r['chance']:.3f} mass {r['mass']:.3f}"
                     for r in rows)
