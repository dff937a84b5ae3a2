"""Lightning Callbacks of biasprune."""

from .pruning import PruningCallback

__all__ = ["PruningCallback"]
