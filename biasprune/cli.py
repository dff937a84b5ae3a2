"""The ``biasprune`` command: the Lightning CLI (fit, validate, test, predict) plus ``study``.

Every constructor argument of the module, the data module and the pruning callback is a flag
(``biasprune fit --help`` lists them all); YAML files under ``configs/`` group them by concern.
"""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

import biasprune.strategies  # noqa: F401  (registers the frozen_ddp strategies)
from biasprune.module import BiasPruneModule
from biasprune.callbacks.pruning import PruningCallback
from biasprune.datamodules.audit import AuditDataModule

__all__ = ["BiasPruneCLI", "main"]

TRAINER_DEFAULTS = {
    "max_epochs": 1,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "biasprune"},
    },
}


class BiasPruneCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(PruningCallback, "pruning")
        # The data module applies the model's chat template: it follows the model choice.
        parser.link_arguments("model.model_name_or_path", "data.tokenizer")
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] == "study":
        from biasprune.study import main as study_main

        study_main(argv[1:])
        return
    BiasPruneCLI(
        BiasPruneModule,
        AuditDataModule,
        seed_everything_default=0,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        args=args,  # None: LightningCLI reads sys.argv itself
    )


if __name__ == "__main__":
    main()
