"""Bias and utility metrics as pure functions (torchmetrics style: ``_update`` / ``_compute`` pairs).

Groups are ``0`` = reference (White-associated names) and ``1`` = target (Black-associated names);
other group ids are ignored. All arithmetic is float64.

Standardized mean difference (Cohen's d with the pooled standard deviation)::

    SMD = (mean_ref - mean_target) / s_pooled
    s_pooled = sqrt(((n_ref - 1) var_ref + (n_target - 1) var_target) / (n_ref + n_target - 2))
             = sqrt((m2_ref + m2_target) / (n_ref + n_target - 2))

with ``var`` the unbiased sample variance and ``m2 = sum((x - mean)^2) = (n - 1) var``. A positive SMD
means the reference group gets larger answers. The sufficient statistics are the per-group count,
mean and ``m2``; two sets of them merge exactly with the parallel formula of Chan, Golub & LeVeque
(1979), which is what makes the metric exact across batches and processes, and stable when the values
sit far from zero (values near 1e6 with sd 1 lose nothing, unlike sums of squares).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["inlier_ratio", "standardized_mean_difference"]

#: The pooled sd counts as zero when ``s_pooled <= ZERO_SD_RTOL * max(|mean_ref|, |mean_target|)``:
#: constant answers such as 0.1 (not exact in binary) leave a rounding residue of about 1e-17 in the
#: sd, which would otherwise turn two constant groups into an SMD of about 1e16 instead of NaN.
ZERO_SD_RTOL = 1e-12


def _as_float64(x: Any, device: torch.device | None = None) -> Tensor:
    """``x`` (tensor, array or sequence) as a flat float64 tensor; a tensor stays on its device."""
    if isinstance(x, Tensor):
        t = x.detach()
        return t.reshape(-1).to(dtype=torch.float64, device=device if device is not None else t.device)
    return torch.as_tensor(x, dtype=torch.float64, device=device).reshape(-1)


def _as_groups(groups: Any, device: torch.device) -> Tensor:
    if isinstance(groups, Tensor):
        return groups.detach().reshape(-1).to(device)
    return torch.as_tensor(groups, device=device).reshape(-1)


def smd_update(values: Tensor, groups: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-group count, mean and m2 of ``values``, each a float64 tensor of shape ``[2]``.

    ``values`` and ``groups`` may have any shape with the same number of elements. NaN values and
    group ids other than 0 and 1 are left out. An empty group has ``n = mean = m2 = 0``.

    The mean takes one correction pass, ``mean += sum(x - mean) / n``, which removes the rounding
    error of the first pass, so that constant values give ``m2 == 0`` exactly in practice.
    Everything is masked arithmetic (no boolean indexing), so there is no host-device sync.

    Raises:
        ValueError: when ``values`` and ``groups`` differ in size.
    """
    x = _as_float64(values)
    g = _as_groups(groups, x.device)
    if x.numel() != g.numel():
        raise ValueError(f"values and groups must have the same number of elements, got {x.numel()} and {g.numel()}")
    valid = ~torch.isnan(x)
    mask = torch.stack([(g == 0) & valid, (g == 1) & valid])  # [2, N]
    xx = x.unsqueeze(0)
    n = mask.sum(dim=1).to(torch.float64)
    safe_n = n.clamp(min=1.0)  # an empty group: sums are 0, mean 0, m2 0
    # torch.where, not multiplication by the mask: 0 * inf would be NaN and leak into the other group.
    mean = torch.where(mask, xx, 0.0).sum(dim=1) / safe_n
    mean = mean + torch.where(mask, xx - mean[:, None], 0.0).sum(dim=1) / safe_n
    m2 = torch.where(mask, (xx - mean[:, None]) ** 2, 0.0).sum(dim=1)
    return n, mean, m2


def merge_moments(
    n_a: Tensor, mean_a: Tensor, m2_a: Tensor, n_b: Tensor, mean_b: Tensor, m2_b: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Moments of the union of two disjoint samples (Chan et al.'s parallel formula), elementwise::

        n     = n_a + n_b
        delta = mean_b - mean_a
        mean  = mean_a + delta * n_b / n
        m2    = m2_a + m2_b + delta^2 * n_a * n_b / n

    Only differences of means enter, never sums of squares, so large offsets cost no precision.
    When one side is empty the other side's moments are returned unchanged (bit for bit).
    """
    n = n_a + n_b
    delta = mean_b - mean_a
    frac_b = n_b / n.clamp(min=1.0)
    mean = mean_a + delta * frac_b
    m2 = m2_a + m2_b + delta * delta * n_a * frac_b
    a_empty, b_empty = n_a == 0, n_b == 0
    mean = torch.where(a_empty, mean_b, torch.where(b_empty, mean_a, mean))
    m2 = torch.where(a_empty, m2_b, torch.where(b_empty, m2_a, m2))
    return n, mean, m2


def fold_moments(n: Tensor, mean: Tensor, m2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Merge stacked moments ``[k, 2]`` (one row per process or batch) into ``[2]``; ``[2]`` passes through."""
    if n.ndim == 1:
        return n, mean, m2
    n, mean, m2 = n.reshape(-1, n.shape[-1]), mean.reshape(-1, mean.shape[-1]), m2.reshape(-1, m2.shape[-1])
    out = (n[0], mean[0], m2[0])
    for i in range(1, n.shape[0]):
        out = merge_moments(*out, n[i], mean[i], m2[i])
    return out


def smd_compute(n: Tensor, mean: Tensor, m2: Tensor) -> Tensor:
    """SMD (float64 scalar tensor) from per-group moments ``[2]`` (or stacked ``[k, 2]``, merged first).

    ``SMD = (mean[0] - mean[1]) / sqrt((m2[0] + m2[1]) / (n[0] + n[1] - 2))``.
    NaN, never an error, when a group has fewer than 2 values (its variance is undefined) or the
    pooled sd is zero (see :data:`ZERO_SD_RTOL`) or not finite.
    """
    n, mean, m2 = fold_moments(n, mean, m2)
    dof = n[0] + n[1] - 2.0
    s_pooled = torch.sqrt((m2[0] + m2[1]) / dof.clamp(min=1.0))
    smd = (mean[0] - mean[1]) / s_pooled
    scale = torch.maximum(mean[0].abs(), mean[1].abs())
    # `not (s > tol)` rather than `s <= tol`: also true when s_pooled or the scale is NaN or inf.
    undefined = (n[0] < 2) | (n[1] < 2) | ~(s_pooled > ZERO_SD_RTOL * scale) | ~torch.isfinite(s_pooled)
    return torch.where(undefined, torch.full_like(smd, math.nan), smd)


def standardized_mean_difference(values: Tensor, groups: Tensor) -> Tensor:
    """SMD of ``values`` between group 0 (reference) and group 1 (target), NaN values ignored.

    ``(mean_ref - mean_target) / s_pooled`` with the pooled sd of the unbiased group variances (see
    the module docstring). Returns a float64 scalar tensor; NaN when a group has fewer than 2 values or
    the pooled sd is zero. Accepts tensors, numpy arrays or sequences of the same size.

    Example::

        >>> standardized_mean_difference(torch.tensor([1.0, 2.0, 3.0, 0.0, 1.0, 2.0]), torch.tensor([0, 0, 0, 1, 1, 1]))
        tensor(1., dtype=torch.float64)
    """
    return smd_compute(*smd_update(values, groups))


def check_bounds(lower: Any, upper: Any) -> tuple[float, float]:
    """``(lower, upper)`` as floats; real numbers or ±inf with ``lower <= upper``, else ValueError."""
    out = []
    for name, v in (("lower", lower), ("upper", upper)):
        if isinstance(v, (bool, str, bytes)):
            raise ValueError(f"{name} must be a real number or ±inf, got {v!r}")
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a real number or ±inf, got {v!r}") from None
        if math.isnan(f):
            raise ValueError(f"{name} must not be NaN, got {v!r}")
        out.append(f)
    if out[0] > out[1]:
        raise ValueError(f"lower must be <= upper, got lower={lower!r} > upper={upper!r}")
    return out[0], out[1]


def inlier_update(values: Tensor, lower: float, upper: float) -> tuple[Tensor, Tensor]:
    """``(n_inlier, n_total)`` as int64 scalars: values with ``lower <= v <= upper``, and all values.

    NaN (unparseable) values are counted in ``n_total`` and never inliers.
    """
    x = _as_float64(values)  # float64: comparing a float32 value with a float64 bound is then exact
    n_inlier = ((x >= lower) & (x <= upper)).sum()
    return n_inlier, torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


def inlier_compute(n_inlier: Tensor, n_total: Tensor) -> Tensor:
    """``n_inlier / n_total`` as float64; NaN when there were no values at all."""
    ratio = n_inlier.to(torch.float64) / n_total.to(torch.float64).clamp(min=1.0)
    return torch.where(n_total > 0, ratio, torch.full_like(ratio, math.nan))


def inlier_ratio(values: Tensor, lower: float, upper: float) -> Tensor:
    """Share of ALL values (NaN = unparseable included) with ``lower <= v <= upper``, float64 scalar.

    ``#{lower <= v <= upper} / #values``; NaN when there are no values. ``lower`` and ``upper`` may be
    ±inf (a one-sided bound).

    Raises:
        ValueError: when a bound is NaN or not a number, or ``lower > upper``.
    """
    lo, hi = check_bounds(lower, upper)
    return inlier_compute(*inlier_update(values, lo, hi))
