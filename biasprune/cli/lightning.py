"""The Lightning CLI of biasprune: ``fit``, ``validate`` and ``study`` with one configuration language.

Every constructor argument of the module (``--model.*``), the data module (``--data.*``), the pruning
callback (``--pruning.*``) and the trainer (``--trainer.*``) is a flag, the same for every subcommand; the
study's own keys are under ``--study.*``. ``fit`` scores, then evaluates the unpruned model, the pruned model
and its random controls in a ``validate`` stage of the same run.

Before the model loads, every subcommand refuses (in one line) a run directory, study output or export
directory that cannot be written and a model id that names nothing loadable. The run's ``manifest.json`` is
written then, kept current at every stage (:mod:`biasprune.cli.runstate`) and completed at the end, before
``report.html``. ``--help`` leads with the tool's own groups; ``--help trainer`` adds Lightning's trainer options.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from biasprune.cli.runstate import Describe, RunState
from biasprune.core.errors import ConfigError, constructor_checks

__all__ = ["BiasPruneArgumentParser", "BiasPruneCLI", "run_lightning_cli"]

TRAINER_DEFAULTS = {
    "max_epochs": 1,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "biasprune"},
    },
}
#: The order of the groups in ``--help``: the tool's own first (a group is placed by its first option).
HELP_ORDER = ("model", "data", "pruning", "model.evaluation", "model.generation", "model.targets", "study", "study.grid")
#: Trainer options named in the short help (``--help trainer`` lists every one).
COMMON_TRAINER = ("accelerator", "devices", "strategy", "precision", "logger", "callbacks", "default_root_dir")
HELP_EXTRA = ("trainer", "all")


class BiasPruneArgumentParser(LightningArgumentParser):
    """Lightning's parser with a help that leads with the tool's groups and summarizes the trainer's options."""

    show_trainer = False  # ``--help trainer``: list Lightning's trainer options in full (set by run_lightning_cli)

    def format_help(self) -> str:
        def first(group) -> str:
            return group._group_actions[0].dest if group._group_actions else ""

        groups = list(self._action_groups)
        trainer = [g for g in groups if first(g).split(".")[0] == "trainer"]
        if not trainer:
            return super().format_help()

        def rank(group) -> int:
            dest = first(group)
            if dest in HELP_ORDER or dest.split(".")[0] in HELP_ORDER:
                return 1 + HELP_ORDER.index(dest if dest in HELP_ORDER else dest.split(".")[0])
            return 0 if dest in ("", "help", "config") else len(HELP_ORDER) + 1

        own = sorted((g for g in groups if g not in trainer), key=rank)
        options = [a.option_strings[0] for g in trainer for a in g._group_actions if a.option_strings and not a.dest.endswith(".help")]
        subcommand = self.prog.split()[-1]
        saved = (self._action_groups, self.usage, self.description, {g: g.title for g in groups})
        from biasprune.cli import SUBCOMMANDS

        self.description = f"biasprune {subcommand}: {SUBCOMMANDS.get(subcommand, '')}."
        for g in own:  # each group says which flags it holds
            dest = first(g)
            if dest == "ckpt_path":
                g.title = "The stage's own arguments (--ckpt_path: the checkpoint to start from; a fit run resumes from it)"
            elif g.title == "Linked arguments":
                g.title = "Linked arguments (set from --model.*, never given directly)"
            elif "." in dest or dest in HELP_ORDER:
                head = dest if dest in HELP_ORDER else dest.rsplit(".", 1)[0]
                g.title = f"--{head}.*: {g.title}"
        if self.show_trainer:
            shown = own + trainer
        else:
            stub = self.add_argument_group(
                f"Lightning Trainer (--trainer.*): {len(options)} options",
                f"Lightning's own trainer options, e.g. {', '.join('--trainer.' + o for o in COMMON_TRAINER)}."
                f" `biasprune {subcommand} --help trainer` lists every one with its help.",
            )
            shown = [*own, stub]
        groups_of_study = " [--study.KEY VALUE ...]" if any(first(g).startswith("study") for g in own) else ""
        self.usage = (f"%(prog)s [--config FILE ...] [--model.KEY VALUE ...] [--data.KEY VALUE ...] [--pruning.KEY VALUE ...]"
                      f"{groups_of_study} [--trainer.KEY VALUE ...] [--help [trainer]]")
        self._action_groups = shown
        try:
            return super().format_help()
        finally:
            self._action_groups, self.usage, self.description, titles = saved
            for g, title in titles.items():
                g.title = title


class BiasPruneCLI(LightningCLI):
    """LightningCLI with the pruning callback's flags, the study subcommand, a validate stage after fit, early
    refusals of paths and model ids, and a manifest that tells the run's state."""

    def __init__(self, *args: Any, argv: list[str] | None = None, **kwargs: Any) -> None:
        self.argv = list(argv or [])
        self.state: RunState | None = None
        super().__init__(*args, **kwargs)

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

    def instantiate_classes(self) -> None:
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        try:
            with constructor_checks():  # constructors check their arguments: a ValueError there is the user's value
                super().instantiate_classes()
        except MisconfigurationException as err:  # Lightning's word for a trainer flag that cannot work
            raise ConfigError(str(err)) from err

    # ------------------------------------------------------------------------------------- the run
    def _pin_version(self) -> None:
        # Every stage of a run writes into one version directory, also when a strategy starts new processes
        # for each stage (spawn): fix the logger's version before the first stage.
        logger = self.trainer.logger
        if logger is not None and hasattr(logger, "version"):
            _ = logger.version

    def _pruning(self):
        from biasprune.callbacks.pruning import PruningCallback

        return next((cb for cb in self.trainer.callbacks if isinstance(cb, PruningCallback)), None)

    def _run_dir(self, kind: str) -> tuple[Path, str]:
        """The run directory and the flag that decides it."""
        if kind == "study":
            return Path(self.config_init[self.subcommand]["study"].output), "--study.output"
        logger = self.trainer.logger
        if logger is not None and getattr(logger, "save_dir", None):
            return Path(self.trainer.log_dir), "--trainer.logger.init_args.save_dir"
        return Path(self.trainer.log_dir or self.trainer.default_root_dir), "--trainer.default_root_dir"

    def _describe(self, kind: str) -> Describe:
        return Describe(kind, self.config_init[self.subcommand].get("study") if kind == "study" else None)

    def _config(self) -> Any:
        import yaml

        try:
            return yaml.safe_load(self._parser(self.subcommand).dump(self.config[self.subcommand], skip_none=False, skip_validation=True))
        except Exception:  # the manifest must not stop a run; config.yaml holds the configuration too
            return None

    def _begin(self, kind: str) -> None:
        """Refuse what cannot work before the model loads, then write the manifest of the starting run."""
        from biasprune.core.artifacts import check_writable_dir
        from biasprune.models.loading import check_model_id

        check_model_id(self.model.hparams.model_name_or_path)
        self._pin_version()
        run_dir, flag = self._run_dir(kind)
        check_writable_dir(run_dir, flag)
        cb = self._pruning()
        if cb is not None and cb.export_dir:
            check_writable_dir(cb.export_dir, "--pruning.export_dir")
        logger = self.trainer.logger
        version = getattr(logger, "version", None) if logger is not None and kind != "study" else None
        self.state = RunState(run_dir, kind, self.argv, self._config(), version, self._describe(kind))
        self.trainer.callbacks.append(self.state)
        ckpt = self.config[self.subcommand].get("ckpt_path")
        if self.trainer.global_rank == 0:
            self.state.start(ckpt)
            home = Path(str(ckpt)).resolve().parent.parent if ckpt and Path(str(ckpt)).parent.name == "checkpoints" else None
            if home is not None and home != run_dir.resolve():
                rank_zero_info(f"biasprune: resuming from {ckpt} in a new run directory, {run_dir}; to finish the checkpoint's own"
                               f" run directory ({home}) instead, give its version: --trainer.logger.init_args.version"
                               f" {home.name.removeprefix('version_')}")

    def before_fit(self) -> None:
        self._begin("fit")

    def before_validate(self) -> None:
        self._begin("validate")

    def before_study(self) -> None:
        self._begin("study")

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
        """The run's complete manifest (status ``finished``, every artifact), then its report (rank 0)."""
        if self.trainer.global_rank != 0:
            return
        from biasprune.report import write_report

        if self.state is None:
            self.state = RunState(run_dir, kind, self.argv, self._config())
        self.state.finish(self._describe(kind)(self.trainer, self.model, self.datamodule))
        try:
            write_report(run_dir)
        except Exception as err:  # the results are written; a report that fails must not fail the run
            rank_zero_warn(f"the report of {run_dir} could not be written ({type(err).__name__}: {err});"
                           f" rebuild it with: biasprune report {run_dir}")

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException as err:
            state, rank0 = self.state, self.trainer.global_rank == 0
            if state is not None and rank0 and state.was_interrupted(err):
                print(state.interrupted(self.trainer, self.model, err), file=sys.stderr, flush=True)
                raise SystemExit(128 + int(state.signal or 2)) from None
            if state is not None and rank0 and state.run_dir.is_dir():
                try:
                    state.fail(err)
                except OSError:  # the disk that failed the run may fail this too; FAILED below says it in one line
                    pass
            _mark_failed(self.trainer, err)
            raise
        finally:
            if self.state is not None:
                self.state.restore_signals()


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


def _help_extra(args: list[str]) -> tuple[list[str], bool]:
    """``--help trainer`` (or ``--help all``): drop the word, and say that the trainer's options are wanted."""
    for flag in ("--help", "-h"):
        if flag in args:
            i = args.index(flag)
            if i + 1 < len(args) and args[i + 1] in HELP_EXTRA:
                return args[: i + 1] + args[i + 2:], True
    return args, False


def run_lightning_cli(args: list[str]) -> None:
    from argparse import ArgumentError

    import biasprune.pipeline.parallel  # noqa: F401  (registers the frozen strategies)
    from biasprune.datamodules.audit import AuditDataModule
    from biasprune.pipeline.module import BiasPruneModule
    from biasprune.study.trainer import BiasPruneTrainer

    args, show_trainer = _help_extra(list(args))
    BiasPruneArgumentParser.show_trainer = show_trainer
    try:
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
                parser_class=BiasPruneArgumentParser,
                # parse errors raise (and main prints them in one line) instead of printing the whole usage
                parser_kwargs={"exit_on_error": False},
                auto_configure_optimizers=False,  # scoring has no optimizer: no --optimizer/--lr_scheduler flags
                args=args,
                argv=args,
            )
    except ArgumentError as err:  # a flag or a configuration key jsonargparse could not parse
        raise ConfigError(str(err)) from err
    finally:
        BiasPruneArgumentParser.show_trainer = False

