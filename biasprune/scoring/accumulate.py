"""Group sums of per-example scores: S_G(u) = sum over the examples e of group G of s_e(u).

Sums are additive over disjoint example sets, which is what makes distributed and resumed scoring (and the
study's strategy sums) exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from biasprune.scoring.capture import BatchScores

__all__ = ["ScoreAccumulator", "sum_scores", "two_group_inputs"]


class ScoreAccumulator(nn.Module):
    """Group sums S_G(u) of per-example scores, in float64, as buffers (they follow the module's device).

    ``sums[g, offset(key) + i]`` is the sum over the examples of group ``g`` of s_e(unit i of ``key``).
    Sums are additive over disjoint example sets, which is what makes distributed and resumed scoring
    (and the study's strategy sums) exact.
    """

    def __init__(self, sizes: dict[str, int], n_groups: int = 2) -> None:
        super().__init__()
        self.slots: dict[str, tuple[int, int]] = {}
        offset = 0
        for key, n in sizes.items():
            self.slots[key] = (offset, n)
            offset += n
        self.register_buffer("sums", torch.zeros(n_groups, offset, dtype=torch.float64), persistent=False)
        self.register_buffer("n_examples", torch.zeros(n_groups, dtype=torch.long), persistent=False)

    def add(self, batch: BatchScores, groups: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Add each example's scores to its group's sums (``weights`` 0 leaves an example out)."""
        w = torch.ones(groups.shape[0], dtype=torch.float64, device=groups.device) if weights is None else weights.to(torch.float64)
        for key, s in batch.scores.items():
            off, n = self.slots[key]
            self.sums[:, off : off + n].index_add_(0, groups, s.to(torch.float64) * w[:, None])
        self.n_examples.index_add_(0, groups, (w > 0).long())

    def split(self, sums: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> list[dict[str, torch.Tensor]]:
        """Per group: key -> scores (on CPU). ``sums`` defaults to this accumulator's own."""
        sums = self.sums if sums is None else sums
        return [{k: sums[g, off : off + n].to(dtype).cpu() for k, (off, n) in self.slots.items()} for g in range(sums.shape[0])]


def sum_scores(
    per_variation: dict[str, dict[str, dict[str, torch.Tensor]]], variations: list[str] | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    """S_G(u) over several variations: the sum of their per-variation sums (float64; exact for disjoint examples).

    S_G(u) is a sum over examples of s_e(u), and s_e(u) depends only on example e, so scoring the union of
    several variations' examples adds the same terms as adding the variations' sums.
    """
    keys = list(per_variation) if variations is None else list(variations)
    missing = [v for v in keys if v not in per_variation]
    if missing:
        raise KeyError(f"no scores for variation(s) {missing}; scored: {sorted(per_variation)}")
    total: dict[str, dict[str, torch.Tensor]] = {}
    for v in keys:
        for g, per_key in per_variation[v].items():
            for k, t in per_key.items():
                acc = total.setdefault(g, {})
                acc[k] = acc[k] + t.double() if k in acc else t.double().clone()
    return total


def two_group_inputs(
    scores: dict[str, dict[str, torch.Tensor]], groups: Sequence[str], n_examples: dict[str, int] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int | None, int | None]:
    """(target scores, reference scores, n_target, n_reference) of scores kept per data group (``groups`` is
    (reference, target)); a count of 0 or a missing one is None (the rules then compare sums)."""
    n = n_examples or {}
    ref, tgt = groups
    return scores[tgt], scores[ref], n.get(tgt) or None, n.get(ref) or None
