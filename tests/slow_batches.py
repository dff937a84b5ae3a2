"""A callback that slows each scoring batch down, so that a test can signal a run while it scores (CLI subprocesses)."""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import Callback


class SlowScoring(Callback):
    """Sleep ``seconds`` after every scoring batch."""

    def __init__(self, seconds: float = 1.0) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)
