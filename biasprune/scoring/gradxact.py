"""The ``nll`` objective: gradient x activation importance of neurons and attention heads.

For a unit u and an example e with activations a and gradients g = dL_e/da over token positions t
(and, for a head, its head_dim coordinates d)::

    s_e(u) = | sum_t sum_d a[t, d](u) * g[t, d](u) |        S_G(u) = sum over e in group G of s_e(u)

L_e is the mean token negative log-likelihood of example e's response tokens given its prompt. s_e(u)
is the first-order (Taylor) estimate of how much L_e changes when u is zeroed.

Examples in a batch do not interact (eval mode, causal attention, right padding), so one backward pass
of sum_e L_e gives every example's own gradients. The hook work (leaf at the embedding output, gradients
to activations only, the checks) is :func:`biasprune.scoring.capture.capture_gradients`.

Cost per batch: one forward and one backward pass (activation gradients only, no weight gradients); memory:
the forward's activations kept for the backward, as in training without weight gradients, plus one ``[B, n_units]``
float32 result per unit group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from biasprune.data.scenarios import variation_key
from biasprune.models.architectures import UnitLayout
from biasprune.scoring.accumulate import two_group_inputs
from biasprune.scoring.capture import BatchScores, UnitSite, capture_gradients, response_nll, token_dot, unit_sites

__all__ = ["NLLObjective", "TokenCollator", "score_batch"]


def score_batch(
    model: nn.Module,
    layout: UnitLayout,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    neurons: bool = True,
    heads: bool = True,
) -> BatchScores:
    """Per-example gradient x activation scores of every unit in ``layout`` (``[B, n_units]`` per key)."""
    token_mask = attention_mask.unsqueeze(-1).float()
    B = input_ids.shape[0]

    def reduce(site: UnitSite, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        dot = token_dot(a, g, token_mask)
        if site.n_heads:  # [B, H*D] -> per head: sum over head_dim
            dot = dot.view(B, site.n_heads, -1).sum(-1)
        return dot.abs()

    def run() -> torch.Tensor:
        return response_nll(model, input_ids, attention_mask, response_mask)

    scores, losses = capture_gradients(model, unit_sites(layout, neurons, heads), run, reduce)
    return BatchScores(scores=scores, losses=losses, n_tokens=int(attention_mask.sum()))


class TokenCollator:
    """Right-pads prompt+response token ids; marks response tokens for the loss."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        T = max(len(r["prompt_ids"]) + len(r["response_ids"]) for r in rows)
        B = len(rows)
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, T), dtype=torch.long)
        resp = torch.zeros((B, T), dtype=torch.long)
        for i, r in enumerate(rows):
            p, s = r["prompt_ids"], r["response_ids"]
            ids[i, : len(p) + len(s)] = torch.tensor(p + s, dtype=torch.long)
            attn[i, : len(p) + len(s)] = 1
            resp[i, len(p) : len(p) + len(s)] = 1
        return {
            "input_ids": ids,
            "attention_mask": attn,
            "response_mask": resp,
            "bucket": torch.tensor([r["bucket"] for r in rows], dtype=torch.long),
            "index": torch.tensor([r["index"] for r in rows], dtype=torch.long),
            "weight": torch.tensor([r["weight"] for r in rows], dtype=torch.float32),
        }


class NLLObjective:
    """``--model.objective nll``: S_G(u) from the response likelihood of each group's own prompts (the paper's)."""

    name = "nll"
    description = "mean NLL of the model's own response tokens; s_e(u) = |sum_t sum_d a*g|"

    def groups(self, data_groups: Sequence[str]) -> tuple[str, ...]:
        return tuple(data_groups)

    def unit_sizes(self, layout: UnitLayout, neurons: bool, heads: bool) -> dict[str, int]:
        return {s.key: layout.sizes()[s.key] for s in unit_sites(layout, neurons, heads)}

    def items(self, tokenizer, kept: Sequence[dict], examples: Sequence[dict], variations: Sequence[str],
              data_groups: Sequence[str]) -> list[dict]:
        """One item per example: prompt ids, response ids and the accumulator bucket
        ``variation index x n_groups + group index``, sorted by length (scores are sums: order is free)."""
        prompt_ids = tokenizer([e["prompt"] for e in kept], add_special_tokens=False)["input_ids"]
        response_ids = tokenizer([e["response"] for e in kept], add_special_tokens=False)["input_ids"]
        order = sorted(range(len(kept)), key=lambda i: (len(prompt_ids[i]) + len(response_ids[i]), i))
        return [
            {"prompt_ids": prompt_ids[i], "response_ids": response_ids[i],
             "bucket": list(variations).index(variation_key(kept[i]["scenario"], kept[i]["variation"])) * len(data_groups)
             + list(data_groups).index(kept[i]["group"])}
            for i in order
        ]  # fmt: skip

    def collator(self, pad_id: int) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        return TokenCollator(pad_id)

    def score(self, model: nn.Module, layout: UnitLayout, batch: dict[str, torch.Tensor], idx: torch.Tensor,
              neurons: bool = True, heads: bool = True) -> BatchScores:
        attn = batch["attention_mask"][idx]
        T = int(attn.sum(1).max())  # drop padding columns that only other rows needed
        return score_batch(model, layout, batch["input_ids"][idx, :T], attn[:, :T], batch["response_mask"][idx, :T],
                           neurons=neurons, heads=heads)

    def selection_inputs(self, scores: dict[str, dict[str, torch.Tensor]], data_groups: Sequence[str], rule: str,
                         n_examples: dict[str, int] | None = None) -> tuple[Any, Any, int | None, int | None]:
        return two_group_inputs(scores, data_groups, n_examples)
