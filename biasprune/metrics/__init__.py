"""Bias and utility metrics: pure functions and their torchmetrics classes, exact under DDP.

* :mod:`.functional`: the SMD and inlier ratio from sufficient statistics, with the Chan merge;
* :mod:`.classes`: :class:`StandardizedMeanDifference` and :class:`InlierRatio` (``biasprune.metrics.*``,
  a contract of the Python API).

May import: :mod:`biasprune.core`.
"""

from biasprune.metrics.classes import InlierRatio, StandardizedMeanDifference

__all__ = ["InlierRatio", "StandardizedMeanDifference"]
