"""Set-difference selection of the units to prune (after Wei et al., 2024).

With n units in a selection pool, unit u is pruned iff it is among the ceil(q*n) highest target-group
scores and NOT among the ceil(p*n) highest reference-group scores: the units that matter for the
target group's answers but not for the reference group's. Ties break towards the lower index.

The pool is one module (scope ``module``) or all units of a kind across the model (scope ``global``,
units ordered as the model's layers are).
"""

from __future__ import annotations

import math
from typing import Literal, Mapping, Sequence

import torch

__all__ = ["Scope", "keep_masks", "n_top", "select_prune", "top_k_mask"]

Scope = Literal["module", "global"]
SCOPES = ("module", "global")


def n_top(fraction: float, n: int) -> int:
    """ceil(fraction * n), robust to float noise (0.07 * 100 is 7.000000000000001, and means 7)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    return min(n, math.ceil(round(fraction * n, 9)))


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the k highest scores; among equal scores the lower index wins."""
    mask = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
    if k <= 0:
        return mask
    # A stable sort keeps equal scores in index order, so ties go to the lower index.
    order = torch.sort(scores.double(), descending=True, stable=True).indices
    mask[order[:k]] = True
    return mask


def _prune_pool(target: torch.Tensor, reference: torch.Tensor, p: float, q: float) -> torch.Tensor:
    if target.shape != reference.shape:
        raise ValueError(f"target and reference scores differ in shape: {tuple(target.shape)} vs {tuple(reference.shape)}")
    n = target.shape[0]
    return top_k_mask(target, n_top(q, n)) & ~top_k_mask(reference, n_top(p, n))


def select_prune(
    target: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    p: float,
    q: float,
    scope: Scope = "module",
    keys: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Boolean prune masks (True = prune) for each key of ``target``.

    Args:
        target: scores S_target per unit group (e.g. ``neuron/model.layers.0.mlp.up_proj``).
        reference: scores S_reference with the same keys and shapes.
        p: fraction of each pool's units protected as most important for the reference group.
        q: fraction of each pool's units considered most important for the target group.
        scope: ``module`` selects within each key; ``global`` pools all keys (in ``keys`` order).
        keys: the groups to select over, in order; defaults to ``target``'s keys.
    """
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r} is not valid; valid choices: {list(SCOPES)}")
    for name, v in (("p", p), ("q", q)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name}={v} must be a fraction in [0, 1]")
    keys = list(target) if keys is None else list(keys)
    missing = [k for k in keys if k not in reference]
    if missing:
        raise KeyError(f"reference scores lack {len(missing)} unit group(s), e.g. {missing[:3]}")
    if not keys:
        return {}
    if scope == "module":
        return {k: _prune_pool(target[k], reference[k], p, q) for k in keys}
    sizes = [target[k].shape[0] for k in keys]
    pooled = _prune_pool(torch.cat([target[k] for k in keys]), torch.cat([reference[k] for k in keys]), p, q)
    return dict(zip(keys, torch.split(pooled, sizes)))


def keep_masks(
    target: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    kind: str,
    p: float,
    q: float,
    scope: Scope,
) -> dict[str, torch.Tensor]:
    """uint8 keep-masks (1 = keep) for the unit groups of one kind (``neuron`` or ``head``).

    The groups are the keys of ``target`` that start with ``kind/``, in their order (which is the pool
    order of scope ``global``). Empty when there is none.
    """
    keys = [k for k in target if k.startswith(kind + "/")]
    prune = select_prune(target, reference, p=p, q=q, scope=scope, keys=keys)
    return {k: (~v).to(torch.uint8) for k, v in prune.items()}
