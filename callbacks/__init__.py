"""Lightning Callbacks of biasprune."""

from biasprune.callbacks.pruning import PruningCallback

__all__ = ["PruningCallback"]
