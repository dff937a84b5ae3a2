"""Lightning's Trainer with the generalization study as one more entry point (``biasprune study``)."""

from __future__ import annotations

import lightning as L

from biasprune.study.config import StudyConfig

__all__ = ["BiasPruneTrainer"]


class BiasPruneTrainer(L.Trainer):
    """A ``lightning.Trainer`` whose ``study`` method runs the generalization study on this trainer."""

    def study(self, model: L.LightningModule, datamodule: L.LightningDataModule, config: StudyConfig | None = None):
        """Prompt-specific vs within-context vs cross-context pruning, tuned on dev names, reported on test names.

        Scores every needed variation once (``fit``), evaluates every arm on the dev and test names
        (``validate``), chooses each strategy's pruning point on dev, and writes the results, claims and figures
        into ``config.output`` (``--study.output``).
        """
        config = config or StudyConfig()
        if config.transfer:  # the cross-context transfer matrix of --pruning.method (docs/method.md, "Transfer matrix")
            from biasprune.study.transfer import run_transfer

            return run_transfer(self, model, datamodule, config.output, config.transfer_sources, config.transfer_layers,
                                config.grid.inlier_floor)
        from biasprune.study.run import run_study

        return run_study(self, model, datamodule, config)
