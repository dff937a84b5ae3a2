"""torchmetrics classes for the bias (SMD) and utility (inlier ratio) of sampled numeric answers.

Both are exact under DDP: :class:`StandardizedMeanDifference` gathers every rank's per-group moments
and merges them with the parallel formula (like torchmetrics' ``PearsonCorrCoef``);
:class:`InlierRatio` sums integer counts. Both return float64 scalar tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from biasprune.metrics.functional import (
    check_bounds,
    fold_moments,
    inlier_compute,
    inlier_update,
    merge_moments,
    smd_compute,
    smd_update,
)

__all__ = ["InlierRatio", "StandardizedMeanDifference"]


class StandardizedMeanDifference(Metric):
    """SMD between group 0 (reference) and group 1 (target) over every value seen.

    ``SMD = (mean_ref - mean_target) / s_pooled``,
    ``s_pooled = sqrt(((n_ref - 1) var_ref + (n_target - 1) var_target) / (n_ref + n_target - 2))``,
    with ``var`` the unbiased sample variance. NaN values are ignored (unparseable or filtered answers);
    group ids other than 0 and 1 are ignored. :meth:`compute` returns a float64 scalar tensor, NaN when
    a group has fewer than 2 values or the pooled sd is zero (see :func:`biasprune.metrics.functional.smd_compute`).

    States: ``n``, ``mean``, ``m2`` — per-group count, mean and sum of squared deviations, float64
    ``[2]``. ``dist_reduce_fx=None``: under DDP the ranks' states are gathered as ``[world, 2]`` and
    merged in :meth:`compute` with Chan et al.'s formula; a batch is merged into the running states the
    same way in :meth:`update`. The result does not depend on how the values were split into batches
    or ranks (up to float64 rounding).

    Example::

        >>> m = StandardizedMeanDifference()
        >>> m.update(torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0, 0, 1]))
        >>> m.update(torch.tensor([3.0, 1.0, float("nan"), 2.0]), torch.tensor([0, 1, 1, 1]))
        >>> m.compute()
        tensor(1., dtype=torch.float64)
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    n: Tensor
    mean: Tensor
    m2: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("n", "mean", "m2"):
            self.add_state(name, default=torch.zeros(2, dtype=torch.float64), dist_reduce_fx=None)

    def update(self, values: Tensor, groups: Tensor) -> None:
        """Merge a batch: ``values`` (NaN = ignored) and ``groups`` (0/1) of the same number of elements."""
        n_b, mean_b, m2_b = (t.to(self.n.device) for t in smd_update(values, groups))
        # The states are [2] except right after a manual `sync()`, when they are stacked [world, 2].
        n, mean, m2 = fold_moments(self.n, self.mean, self.m2)
        self.n, self.mean, self.m2 = merge_moments(n, mean, m2, n_b, mean_b, m2_b)

    def compute(self) -> Tensor:
        """The SMD of all values seen (on all ranks), float64 scalar; NaN when undefined."""
        return smd_compute(self.n, self.mean, self.m2)

    def _reduce_states(self, incoming_state: dict[str, Any]) -> None:
        """Merge another state into this one (used by ``forward`` and ``merge_state``).

        torchmetrics' default for ``dist_reduce_fx=None`` would stack the two states; moments must be
        merged instead, or the next update would see a ``[2, 2]`` state.
        """
        other = fold_moments(incoming_state["n"], incoming_state["mean"], incoming_state["m2"])
        mine = fold_moments(self.n, self.mean, self.m2)
        self.n, self.mean, self.m2 = merge_moments(*other, *mine)


class InlierRatio(Metric):
    """Share of all sampled answers whose value lies in ``[lower, upper]``.

    ``ratio = #{lower <= v <= upper} / #values``, NaN values (unparseable answers) counted in the
    denominator and never inliers. :meth:`compute` returns a float64 scalar tensor, NaN before any
    value was seen. States ``n_inlier`` and ``n_total`` are int64 counts summed across ranks, so the
    ratio is exact under DDP.

    Args:
        lower: lower bound, inclusive; a real number, or ``-inf`` for no lower bound.
        upper: upper bound, inclusive; a real number, or ``+inf`` for no upper bound.

    Raises:
        ValueError: when a bound is NaN or not a number (bools and strings included), or
            ``lower > upper`` (an empty interval is a configuration error, not a ratio of 0).

    Example::

        >>> m = InlierRatio(0.0, 10.0)
        >>> m.update(torch.tensor([1.0, 5.0, 50.0, float("nan")]))
        >>> m.compute()
        tensor(0.5000, dtype=torch.float64)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    n_inlier: Tensor
    n_total: Tensor

    def __init__(self, lower: float, upper: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lower, self.upper = check_bounds(lower, upper)
        self.add_state("n_inlier", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("n_total", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, values: Tensor) -> None:
        """Count a batch of values of any shape (NaN = unparseable, counted in the total)."""
        n_inlier, n_total = inlier_update(values, self.lower, self.upper)
        self.n_inlier += n_inlier.to(self.n_inlier.device)
        self.n_total += n_total.to(self.n_total.device)

    def compute(self) -> Tensor:
        """``n_inlier / n_total`` over all ranks, float64 scalar; NaN when no value was seen."""
        return inlier_compute(self.n_inlier, self.n_total)
