"""The generalization study (``biasprune study``): how far a pruning mask carries.

* :mod:`.config`: ``--study.*`` settings (strategies, contexts, the tuning grid);
* :mod:`.plan`: arms as typed objects and the masks each uses on each variation;
* :mod:`.pieces`: the content-keyed piece store that makes a study resumable;
* :mod:`.choose`: each strategy's point, chosen on dev names only;
* :mod:`.run`: the orchestration of ``Trainer.fit`` and ``Trainer.validate``;
* :mod:`.results`, :mod:`.figures`: tables, claims and figures on test names;
* :mod:`.trainer`: :class:`~biasprune.study.trainer.BiasPruneTrainer`, a ``lightning.Trainer`` with ``study``.

May import: every layer below (core to report: the pipeline, the data module, the pruning callback, the
report's plots).
"""

from biasprune.study.config import GridConfig, StudyConfig

__all__ = ["GridConfig", "StudyConfig"]
