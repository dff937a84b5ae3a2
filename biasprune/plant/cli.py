"""``biasprune plant``: train a planted control, or check runs made on one.

* ``biasprune plant --config configs/plant/<name>.yaml`` (or ``biasprune plant train --config ...``): train a
  plant and write it with its provenance (below);
* ``biasprune plant check RUN_DIR [RUN_DIR ...]``: per-scenario bias against the noise floor, inlier and parse
  rates of a run's test answers (:mod:`biasprune.plant.checks`; ``scenario_checks.csv``);
* ``biasprune plant truth STUDY_DIR PLANT_ID``: precision and recall of a study's masks against the plant's
  ground truth (:mod:`biasprune.plant.truth`; ``truth.csv``).

Training:

Every argument of :class:`PlantModule` (``--model.*``), :class:`PlantDataModule` (``--data.*``, the spec
under ``--data.plant.*``) and the Lightning Trainer (``--trainer.*``) is a flag; ``--help`` lists them.
The run writes ``--output`` (default ``runs/plant``):

* ``adapter_model.safetensors`` + ``adapter_config.json``: the peft LoRA adapter;
* ``provenance.json``: the command line, the resolved config, the seed, package versions, the sha256 of
  the base weights and of the adapter file, the final training loss, the training (and held-out) names,
  the number of examples, the last validation statistics, the wall time and the machine; for a localized
  plant (``--model.units``) also its units and their ground truth (:mod:`biasprune.plant.units`).

Load the result as ``BASE+plant:<output dir>`` (or, once shipped, ``BASE+plant:<name>``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from importlib import metadata
from pathlib import Path

import torch
import yaml
from lightning.pytorch.cli import LightningCLI

import biasprune
from biasprune.models.identity import model_identity, sha256_files
from biasprune.models.loading import PROVENANCE_FILE, ModelLoadError
from biasprune.plant import checks, truth
from biasprune.plant.data import PlantDataModule
from biasprune.plant.module import PlantModule
from biasprune.report import ReportError

__all__ = ["PlantCLI", "analyse", "main", "make_cli", "write_provenance"]

ANALYSES = ("check", "truth")

TRAINER_DEFAULTS = {
    "max_epochs": 5,
    "num_sanity_val_steps": 0,
    "enable_checkpointing": False,
    "log_every_n_steps": 10,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "plant"},
    },
}
PACKAGES = ("biasprune", "torch", "transformers", "peft", "lightning")


class PlantCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--output", type=str, default="runs/plant",
            help="directory for the adapter files and provenance.json (created; existing files are replaced)",
        )  # fmt: skip
        # The chats are rendered with the base model's chat template.
        parser.link_arguments("model.model_name_or_path", "data.tokenizer")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:  # e.g. biasprune run from a source tree (PYTHONPATH=.)
            out[pkg] = f"{biasprune.__version__} (source tree)" if pkg == "biasprune" else "not installed"
    return out


def _machine(trainer) -> dict:
    cuda = torch.cuda.is_available() and trainer.strategy.root_device.type == "cuda"
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "accelerator": torch.cuda.get_device_name(trainer.strategy.root_device) if cuda else "cpu",
        "devices": trainer.num_devices,
        "precision": str(trainer.precision),
    }


def write_provenance(
    out: Path, module: PlantModule, datamodule: PlantDataModule, trainer, command: str, config: dict, wall_s: float
) -> dict:
    """Write ``provenance.json`` next to a saved adapter and return it."""
    losses = module.losses
    tail = losses[-min(len(losses), 20) :] if losses else []
    base = model_identity(module.hparams.model_name_or_path)
    adapter = out / "adapter_model.safetensors"
    prov = {
        "command": command,
        "config": config,
        "seed": {"seed_everything": config.get("seed_everything"), "data.plant.seed": datamodule.spec.seed},
        "versions": _versions(),
        "base": {k: base[k] for k in ("id", "base_path", "base_sha256", "base_files", "gguf_sha256") if k in base} | (
            {"source": base["base_source"]} if "base_source" in base else {}
        ) | {k: base[k] for k in ("adapter_sha256", "base_adapter_sha256") if base.get(k)},  # a planted base
        "adapter_file": adapter.name,
        "adapter_sha256": sha256_files([adapter]),
        "adapter_bytes": adapter.stat().st_size,
        "adapter_dtype": module.hparams.adapter_dtype,
        "final_train_loss": float(sum(tail) / len(tail)) if tail else None,
        "final_train_loss_steps": len(tail),
        "train_steps": int(trainer.global_step),
        "train_epochs": int(trainer.current_epoch),
        "validation": {k: (v if math.isfinite(v) else None) for k, v in module.validation.items()},  # JSON: no NaN
        **datamodule.summary(),
        "spec": {"factor": datamodule.spec.factor, "sigma": datamodule.spec.sigma,
                 "reference_group": datamodule.spec.reference_group, "target_group": datamodule.spec.target_group},
        **module.provenance(),  # a localized plant: its units (the ground truth)
        "wall_time_s": round(wall_s, 1),
        "machine": _machine(trainer),
    }  # fmt: skip
    (out / PROVENANCE_FILE).write_text(json.dumps(prov, indent=2, allow_nan=False) + "\n")
    adapter.chmod(0o644)  # safetensors writes 0600; the file ships as package data
    return prov


def make_cli(argv: list[str] | None = None) -> PlantCLI:
    """Parse ``argv`` (None: ``sys.argv``) and instantiate the module, data module and trainer; no training."""
    return PlantCLI(
        PlantModule,
        PlantDataModule,
        run=False,
        args=argv,
        seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,  # the module's AdamW + warm-up/decay; no --optimizer to override it
        parser_kwargs={"prog": "biasprune plant", "description": __doc__.split("\n\nTraining:")[0]},
    )


def _analysis_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="biasprune plant", description="Check runs made on a planted control.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="per-scenario bias, noise floor, inlier and parse rates of a run's test answers",
                           description=checks.__doc__.split("\n\n")[1].replace("\n", " "))
    check.add_argument("runs", nargs="+", metavar="RUN_DIR", help="a fit or validate run's version directory")
    check.add_argument("--bootstrap", type=int, default=1000, help="name-bootstrap draws of each interval (default 1000)")
    check.add_argument("--permutations", type=int, default=1000, help="label permutations of the noise floor (default 1000)")
    truth_p = sub.add_parser("truth", help="precision and recall of a study's masks against the plant's ground truth",
                             description=truth.__doc__.split("\n\n")[1].replace("\n", " "))
    truth_p.add_argument("study", metavar="STUDY_DIR", help="a finished study's --study.output directory")
    truth_p.add_argument("plant", metavar="PLANT_ID", help="the planted model id, e.g. embedded:SmolLM2-135M-Instruct+plant:purchase")
    return parser


def analyse(argv: list[str]) -> None:
    """``biasprune plant check|truth ...``: print the table and write it beside the run (see the module docstring)."""
    args = _analysis_parser().parse_args(argv)
    try:
        if args.command == "check":
            results = [(run, checks.scenario_checks(run, args.bootstrap, args.permutations)) for run in args.runs]
            print(checks.format_checks(results))
            print("written: " + ", ".join(str(Path(run) / "scenario_checks.csv") for run in args.runs))
        else:
            print(truth.format_truth(truth.truth_table(args.study, args.plant)))
            print(f"written: {Path(args.study) / 'truth.csv'}")
    except (ReportError, ModelLoadError) as err:
        print(f"biasprune plant {args.command}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> None:
    """``biasprune plant``: ``argv`` without the program name (None reads ``sys.argv``): ``check`` and ``truth``
    analyse runs; otherwise (``train`` or no subcommand) train a plant, then write it."""
    given = sys.argv[1:] if argv is None else list(argv)
    if given and given[0] in ANALYSES:
        return analyse(given)
    if given and given[0] == "train":
        argv = given[1:]
    start = time.perf_counter()
    if argv is not None:
        command = shlex.join(["biasprune", "plant", *argv])
    else:
        command = shlex.join([Path(sys.executable).name, "-m", "biasprune.plant.cli", *sys.argv[1:]])
    cli = make_cli(argv)
    trainer, module, dm = cli.trainer, cli.model, cli.datamodule
    trainer.fit(module, datamodule=dm)
    trainer.validate(module, datamodule=dm, verbose=False)  # the final greedy ratios, whatever max_steps cut
    if not trainer.is_global_zero:
        return
    out = Path(cli.config["output"])
    module.save_adapter(out)
    config = yaml.safe_load(cli.parser.dump(cli.config, skip_none=False))
    prov = write_provenance(out, module, dm, trainer, command, config, time.perf_counter() - start)
    stats = json.dumps({k: v if v is None else round(v, 3) for k, v in prov["validation"].items()})
    print(
        f"plant written to {out}: final loss {prov['final_train_loss']:.4f},"
        f" adapter {prov['adapter_bytes'] / 1e6:.1f} MB, validation {stats}, {prov['wall_time_s']} s"
    )


if __name__ == "__main__":
    main()
