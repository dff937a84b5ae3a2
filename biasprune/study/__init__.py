"""The generalization study (``biasprune study``): how far a pruning mask carries.

* :mod:`.config`: ``--study.*`` settings (strategies, contexts, the tuning grid);
* :mod:`.plan`: arms as typed objects and the masks each uses on each variation;
* :mod:`.pieces`: the content-keyed piece store that makes a study resumable;
* :mod:`.choose`: each strategy's point, chosen on dev names only (the utility guard, then the scale-free SMD
  against the point's own random control);
* :mod:`.auto`: ``fit --pruning.budget auto``: the same choice for ``fit``, in a validate stage on dev names;
* :mod:`.run`: the orchestration of ``Trainer.fit`` and ``Trainer.validate``;
* :mod:`.results`, :mod:`.figures`: tables, claims and figures on test names;
* :mod:`.trainer`: :class:`~biasprune.study.trainer.BiasPruneTrainer`, a ``lightning.Trainer`` with ``study``, whose
  ``validate`` makes the ``auto`` choice first.

May import: every layer below (core to report: the pipeline, the data module, the pruning callback, the
report's plots).
"""

from biasprune.study.config import GridConfig, StudyConfig

__all__ = ["GridConfig", "StudyConfig"]
