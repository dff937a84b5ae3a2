"""Scoring objectives: which per-example score a train batch gives (``nll`` or ``contrastive``)."""

from __future__ import annotations

import torch
from torch import nn

from biasprune.models.architectures import UnitLayout
from biasprune.scoring.capture import BatchScores
from biasprune.scoring.contrastive import contrastive_batch
from biasprune.scoring.gradxact import score_batch

__all__ = ["score_rows"]


def score_rows(model: nn.Module, layout: UnitLayout, batch: dict[str, torch.Tensor], idx: torch.Tensor, objective: str,
               neurons: bool = True, heads: bool = True) -> BatchScores:
    """Per-example scores of rows ``idx`` of a train batch under ``objective`` (``nll`` or ``contrastive``)."""
    if objective == "contrastive":
        fields = ("target_ids", "target_attn", "reference_ids", "reference_attn", "response_mask_target", "suffix_len")
        return contrastive_batch(model, layout, *(batch[f][idx] for f in fields), neurons=neurons, heads=heads)
    attn = batch["attention_mask"][idx]
    T = int(attn.sum(1).max())  # drop padding columns that only other rows needed
    return score_batch(model, layout, batch["input_ids"][idx, :T], attn[:, :T], batch["response_mask"][idx, :T], neurons=neurons, heads=heads)
