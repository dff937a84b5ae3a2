"""Bias and utility metrics: pure functions and their torchmetrics classes, exact under DDP.

* :mod:`.spec`: one specification per metric (name, row function, aggregation, direction), which every results
  table, TensorBoard tag, summary and report reads: the scale-free SMD that decides claims, the paper's inlier-window
  SMD, the inlier ratio and the parse rate;
* :mod:`.functional`: the SMD and inlier ratio from sufficient statistics, with the Chan merge;
* :mod:`.classes`: :class:`StandardizedMeanDifference` and :class:`InlierRatio` (``biasprune.metrics.*``,
  a contract of the Python API).

May import: :mod:`biasprune.core`.
"""

from biasprune.metrics.classes import InlierRatio, StandardizedMeanDifference

__all__ = ["InlierRatio", "StandardizedMeanDifference"]
