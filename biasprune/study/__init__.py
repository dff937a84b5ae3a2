"""The generalization study (``biasprune study``): how far a pruning mask carries.

* :mod:`.config`: ``--study.*`` settings (strategies, contexts, the tuning grid);
* :mod:`.plan`: arms as typed objects and the masks each uses on each variation;
* :mod:`.pieces`: the content-keyed piece store that makes a study resumable;
* :mod:`.choose`: each strategy's point, chosen on dev names only;
* :mod:`.run`: the orchestration of ``Trainer.fit`` and ``Trainer.validate``;
* :mod:`.results`, :mod:`.figures`: tables, claims and figures on test names.
"""

from .config import GridConfig, StudyConfig

__all__ = ["GridConfig", "StudyConfig"]
