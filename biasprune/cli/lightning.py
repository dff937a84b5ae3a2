"""The Lightning CLI of biasprune: ``fit``, ``validate`` and ``study`` with one configuration language.

Every constructor argument of the module (``--model.*``), the data module (``--data.*``), the pruning
callback (``--pruning.*``) and the trainer (``--trainer.*``) is a flag, the same for every subcommand; the
study's own keys are under ``--study.*``. ``fit`` scores, then evaluates the unpruned model, the pruned model
and its random controls in a ``validate`` stage of the same run. Every stage ends with ``manifest.json`` and
``report.html`` in the run directory.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["BiasPruneCLI", "run_lightning_cli"]

TRAINER_DEFAULTS = {
    "max_epochs": 1,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "biasprune"},
    },
}


class BiasPruneCLI(LightningCLI):
    """LightningCLI with the pruning callback's flags, the study subcommand and a validate stage after fit."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {
            "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
            "validate": {"model", "dataloaders", "datamodule"},
            "study": {"model", "datamodule", "config"},
        }

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs):
        if subcommand != "study":
            return super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        # The study takes the same groups as fit, plus its own keys under one group (--study.*).
        from biasprune.study.config import StudyConfig

        parser = self.init_parser(**kwargs)
        self._add_arguments(parser)
        parser.add_class_arguments(StudyConfig, "study")
        self._subcommand_method_arguments[subcommand] = []
        return parser

    def study(self, model, datamodule) -> None:
        self.trainer.study(model, datamodule, config=self.config_init[self.subcommand]["study"])

    def add_arguments_to_parser(self, parser) -> None:
        from biasprune.callbacks.pruning import PruningCallback

        parser.add_lightning_class_args(PruningCallback, "pruning")
        # The data module applies the model's chat template: it follows the model choice.
        parser.link_arguments("model.model_name_or_path", "data.tokenizer")
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")

    def _pin_version(self) -> None:
        # Every stage of a run writes into one version directory, also when a strategy starts new processes
        # for each stage (spawn): fix the logger's version before the first stage.
        logger = self.trainer.logger
        if logger is not None and hasattr(logger, "version"):
            _ = logger.version

    def before_fit(self) -> None:
        self._pin_version()

    def before_validate(self) -> None:
        self._pin_version()

    def before_study(self) -> None:
        self._pin_version()

    def after_fit(self) -> None:
        if self.trainer.interrupted:
            return
        self.trainer.validate(self.model, datamodule=self.datamodule)
        self._finish("fit", Path(self.trainer.log_dir))

    def after_validate(self) -> None:
        self._finish("validate", Path(self.trainer.log_dir))

    def after_study(self) -> None:
        self._finish("study", Path(self.config_init[self.subcommand]["study"].output))

    def _finish(self, kind: str, run_dir: Path) -> None:
        """The run's manifest and its report (rank 0)."""
        if self.trainer.global_rank != 0:
            return
        from biasprune.callbacks.pruning import PruningCallback
        from biasprune.pipeline.manifest import build_manifest, write_manifest
        from biasprune.report import write_report

        pruning = next((cb.settings() for cb in self.trainer.callbacks if isinstance(cb, PruningCallback)), None)
        study = self.config_init[self.subcommand].get("study") if kind == "study" else None
        write_manifest(run_dir, build_manifest(kind, self.trainer, self.model, self.datamodule, pruning, study))
        try:
            write_report(run_dir)
        except Exception as err:  # the results are written; a report that fails must not fail the run
            rank_zero_warn(f"the report of {run_dir} could not be written ({type(err).__name__}: {err});"
                           f" rebuild it with: biasprune report {run_dir}")

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException as err:
            _mark_failed(self.trainer, err)
            raise


def _mark_failed(trainer, err: BaseException) -> None:
    """Leave ``FAILED`` (with the reason) in a run directory that exists, so it never passes for a result."""
    try:
        logger = trainer.logger
        run_dir = Path(logger.log_dir) if logger is not None and getattr(logger, "log_dir", None) else None
    except Exception:  # the logger itself may be what failed
        return
    if run_dir is not None and run_dir.is_dir() and trainer.global_rank == 0:
        (run_dir / "FAILED").write_text(f"{type(err).__name__}: {err}\n")


# Lightning warns about what scoring does on purpose: no optimizer, a frozen model in eval mode.
_EXPECTED_WARNINGS = (
    r".*configure_optimizers.* returned .None.",
    r".*module\(s\) in eval mode at the start of training",
    r"LightningCLI's args parameter is intended to run from within Python",
    r"The number of training batches .* is smaller than the logging interval",
    r".*does not have many workers.*",
)


def run_lightning_cli(args: list[str]) -> None:
    import biasprune.pipeline.parallel  # noqa: F401  (registers the frozen strategies)
    from biasprune.datamodules.audit import AuditDataModule
    from biasprune.pipeline.module import BiasPruneModule
    from biasprune.study.trainer import BiasPruneTrainer

    with warnings.catch_warnings():
        for pattern in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        BiasPruneCLI(
            BiasPruneModule,
            AuditDataModule,
            trainer_class=BiasPruneTrainer,
            seed_everything_default=0,
            trainer_defaults=TRAINER_DEFAULTS,
            save_config_kwargs={"overwrite": True},
            # parse errors raise (and main prints them in one line) instead of printing the whole usage
            parser_kwargs={"exit_on_error": False},
            args=args,
        )
