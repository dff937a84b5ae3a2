"""Lightning Callbacks of biasprune.

* :mod:`.pruning`: the pruning callback (the arm under test of every ``validate`` stage, the arms of each batch);
* :mod:`.settings`: its arguments, their checks and what is decided from them without a trainer;
* :mod:`.monitor`: its log and TensorBoard output of the selected masks;
* :mod:`.mechanism`: the name attention of every head (``name_attention.csv``).
"""

from biasprune.callbacks.pruning import PruningCallback

__all__ = ["PruningCallback"]
