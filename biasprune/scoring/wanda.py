"""The ``wanda`` objective: the paper authors' weight x input-norm scorer, per output channel and per head.

The authors' code (a Wanda scorer, Sun et al. 2024, run per group of prompts) scores every *weight* W_ij of a
linear layer y = W x by |W_ij| · ‖X_j‖₂, with ‖X_j‖₂² the mean over the group's prompts of Σ_t x_{e,t,j}² (every
token of the chat-rendered prompt and its response). This tool prunes units, not single weights, so a unit's
score is the sum of the authors' weight scores over exactly the weights its pruning removes:

* a neuron, output channel i of a projection with input x (zeroing the channel removes row i of W)::

      s_e(i) = Σ_j |W_ij| · ‖x_{e,·,j}‖₂

* a head h, its slice of the ``o_proj`` input z (zeroing the head removes the head's columns j ∈ h of W_o)::

      s_e(h) = Σ_{j ∈ h} (Σ_i |W_o,ij|) · ‖z_{e,·,j}‖₂

with ‖x_{e,·,j}‖₂ = (Σ_t x_{e,t,j}²)^½ over the non-padding tokens t of example e, and S_G(u) = Σ_{e ∈ G} s_e(u)
summed like every other objective (exact under distributed and resumed scoring); the rules compare group means
S_G / n_G. One deliberate difference from the authors' code: they take the norm over all of a group's prompts
at once, ‖X_j‖ = (mean_e Σ_t x²)^½, a root mean square over prompts; here it is the mean over prompts of each
prompt's norm, which is a sum over examples and so fits the accumulator (the two agree when every prompt has
the same norm; the root mean square is the larger otherwise). The groups, items and batches are the ``nll``
objective's: each group's own prompts with their responses.

Cost per batch: one forward pass without gradients (no backward), stopped before the LM head's full logits
(one position kept); memory: one ``[B, d_in]`` norm per hooked projection at a time and one ``[B, n_units]``
result per unit group. |W| is taken once per batch and group (a weight-sized float32 temporary).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from biasprune.core.hooks import HookSet
from biasprune.models.architectures import UnitLayout
from biasprune.scoring.accumulate import two_group_inputs
from biasprune.scoring.capture import BatchScores, UnitSite, unit_sites
from biasprune.scoring.gradxact import NLLObjective, TokenCollator

__all__ = ["WandaObjective", "wanda_batch"]


def _input_norms(x: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """‖x_{e,·,j}‖₂ over the non-padding tokens: ``[B, d]`` from ``[B, T, d]``, never below float32."""
    acc = torch.promote_types(x.dtype, torch.float32)
    return (x.to(acc).square() * token_mask.to(acc)).sum(1).sqrt()


def wanda_batch(
    model: nn.Module,
    layout: UnitLayout,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    neurons: bool = True,
    heads: bool = True,
) -> BatchScores:
    """Per-example Wanda scores of every unit in ``layout`` (``[B, n_units]`` per key; module docstring)."""
    sites = unit_sites(layout, neurons, heads)
    token_mask = attention_mask.unsqueeze(-1).float()
    B = input_ids.shape[0]
    scores: dict[str, torch.Tensor] = {}

    def record(site: UnitSite, x: torch.Tensor) -> None:
        if site.key in scores:
            raise RuntimeError(f"{site.key}: the module ran twice in one forward pass; its units are ambiguous")
        norms = _input_norms(x, token_mask.to(x.device))  # [B, d_in]
        weight = site.module.weight.detach().to(norms.dtype).abs()  # [d_out, d_in]
        if site.n_heads:  # columns of o_proj, summed over its rows, then over each head's columns
            scores[site.key] = (norms * weight.sum(0)).view(B, site.n_heads, -1).sum(-1)
        else:
            scores[site.key] = norms @ weight.T

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), HookSet() as hooks:
            for site in sites:  # both kinds read the module's input: a projection's x, o_proj's z
                hooks.forward_pre(site.module, lambda module, args, s=site: record(s, args[0]))
            model(input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
    finally:
        for m, training in modes:
            m.training = training
    missing = [s.key for s in sites if s.key not in scores]
    if missing:
        raise RuntimeError(f"no input was captured for {len(missing)} unit group(s), e.g. {missing[:3]}")
    return BatchScores(scores=scores, losses=torch.zeros(B), n_tokens=int(attention_mask.sum()))


class WandaObjective(NLLObjective):
    """``--model.objective wanda``: the authors' |W|·‖X‖ per group, summed over each unit's weights (forward only)."""

    name = "wanda"
    description = "Wanda per group: s_e(u) = sum over the unit's weights of |W_ij| * ||x_j||_2 over example e's tokens"

    def collator(self, pad_id: int) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        return TokenCollator(pad_id)

    def score(self, model: nn.Module, layout: UnitLayout, batch: dict[str, torch.Tensor], idx: torch.Tensor,
              neurons: bool = True, heads: bool = True) -> BatchScores:
        attn = batch["attention_mask"][idx]
        T = int(attn.sum(1).max())
        return wanda_batch(model, layout, batch["input_ids"][idx, :T], attn[:, :T], neurons=neurons, heads=heads)

    def selection_inputs(self, scores: dict[str, dict[str, torch.Tensor]], data_groups: Sequence[str], rule: str,
                         n_examples: dict[str, int] | None = None) -> tuple[Any, Any, int | None, int | None]:
        return two_group_inputs(scores, data_groups, n_examples)
