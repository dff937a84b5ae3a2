"""Lightning's Trainer with the generalization study as one more entry point (``biasprune study``), and the choice
on dev names that ``--pruning.budget auto`` asks for before a ``validate`` stage."""

from __future__ import annotations

import lightning as L

from biasprune.study.config import StudyConfig

__all__ = ["BiasPruneTrainer"]


class BiasPruneTrainer(L.Trainer):
    """A ``lightning.Trainer`` whose ``study`` method runs the generalization study on this trainer, and whose
    ``validate`` first makes the pruning callback's ``auto`` choice on dev names (:mod:`biasprune.study.auto`)."""

    def validate(self, model: L.LightningModule | None = None, dataloaders=None, ckpt_path=None, verbose: bool = True,
                 datamodule: L.LightningDataModule | None = None, **kwargs):
        """``lightning.Trainer.validate``; with ``--pruning.budget auto`` (and scores from this run's ``fit``), one
        ``validate`` stage on dev names chooses the budget and rule first, as the study does."""
        from biasprune.callbacks.pruning import PruningCallback

        cb = next((c for c in self.callbacks if isinstance(c, PruningCallback)), None)
        if cb is not None and cb.auto and cb.chosen is None and cb.loaded is None and cb.plan is None and model is not None \
                and datamodule is not None:
            from biasprune.study.auto import choose_on_dev

            choose_on_dev(self, model, datamodule, cb)
        return super().validate(model, dataloaders, ckpt_path, verbose, datamodule, **kwargs)

    def study(self, model: L.LightningModule, datamodule: L.LightningDataModule, config: StudyConfig | None = None):
        """Prompt-specific vs within-context vs cross-context pruning, tuned on dev names, reported on test names.

        Scores every needed variation once (``fit``), evaluates every arm on the dev and test names
        (``validate``), chooses each strategy's pruning point on dev, and writes the results, claims and figures
        into ``config.output`` (``--study.output``).
        """
        config = config or StudyConfig()
        if config.transfer:  # the cross-context transfer matrix of --pruning.method (docs/method.md, "Transfer matrix")
            from biasprune.study.transfer import run_transfer

            return run_transfer(self, model, datamodule, config.output, config.transfer_sources, config.transfer_layers)
        from biasprune.study.run import run_study

        return run_study(self, model, datamodule, config)
