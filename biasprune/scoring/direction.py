"""The ``direction`` objectives: per-layer sums of residual-stream activations per group (forward passes only).

For decoder layer l, group G and the positions P_e of example e that carry the name::

    S_G(l) = sum over e in G of sum over t in P_e of h_l[e, t]   (a vector of the hidden size)
    N_G    = sum over e in G of |P_e|                              (key ``positions``)

h_l is the output of decoder layer l (the residual stream after it). The group means are S_G(l) / N_G and the
direction of layer l is their difference (:func:`biasprune.pruning.direction.estimate_direction`). Like every
score, the sums are additive over examples, processes, resumed runs and variations, so the study's strategy sums
and a 2-process run give the same means as one process.

Which positions carry the name (docs/method.md, "Directions"):

* ``direction`` (``positions="prompt"``): every prompt token except the first. The first token of a chat
  prompt is an attention sink whose activations are orders of magnitude larger than the others' from the
  middle layers on; left in, it dominates a plain mean.
* ``direction_name`` (``positions="name"``): the tokens whose characters overlap an occurrence of the name in
  the prompt (a fast tokenizer's offsets), again never the first token.

Only the prompt is run (the target response is not needed). Cost per batch: one forward pass over B prompts
without gradients; memory beyond the model: one ``[B, hidden]`` float32 (float64 for a float64 model) sum per
layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn

from biasprune.core.checks import check_choice
from biasprune.core.hooks import HookSet
from biasprune.data.scenarios import variation_key
from biasprune.models.architectures import UnitLayout, decoder_layers
from biasprune.scoring.capture import BatchScores

__all__ = ["POSITIONS", "COUNT_KEY", "DirectionObjective", "PromptCollator", "layer_output", "name_positions",
           "residual_sums", "resid_key"]

POSITIONS = ("prompt", "name")
COUNT_KEY = "positions"


def resid_key(layer: int) -> str:
    """The unit-group key of layer ``layer``'s residual-stream sums."""
    return f"resid/{int(layer)}"


def layer_output(output) -> torch.Tensor:
    """The hidden states of a decoder layer's output (a tensor, or the first item of a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def name_positions(tokenizer, prompt: str, name: str) -> list[int]:
    """Token indices of ``prompt`` (tokenized without special tokens) whose characters overlap an occurrence of
    ``name``; the first token is never one of them."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("model.objective=direction_name needs a fast tokenizer (character offsets); use direction")
    spans, start = [], prompt.find(name)
    while start >= 0:
        spans.append((start, start + len(name)))
        start = prompt.find(name, start + 1)
    if not spans:
        raise ValueError(f"name {name!r} does not occur in its prompt; cannot find its tokens")
    offsets = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [t for t, (a, b) in enumerate(offsets) if t > 0 and any(a < e and b > s for s, e in spans)]


class PromptCollator:
    """Right-pads prompt token ids and marks the positions whose activations are summed."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        T = max(len(r["prompt_ids"]) for r in rows)
        B = len(rows)
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, T), dtype=torch.long)
        marked = torch.zeros((B, T), dtype=torch.long)
        for i, r in enumerate(rows):
            p = r["prompt_ids"]
            ids[i, : len(p)] = torch.tensor(p, dtype=torch.long)
            attn[i, : len(p)] = 1
            marked[i, r["positions"]] = 1
        return {
            "input_ids": ids,
            "attention_mask": attn,
            "position_mask": marked,
            "bucket": torch.tensor([r["bucket"] for r in rows], dtype=torch.long),
            "index": torch.tensor([r["index"] for r in rows], dtype=torch.long),
            "weight": torch.tensor([r["weight"] for r in rows], dtype=torch.float32),
        }


def residual_sums(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  position_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per example, the sum of each decoder layer's output over the marked positions (``resid/{l}``: ``[B, hidden]``)
    and the number of marked positions (``positions``: ``[B, 1]``); one forward pass without gradients, eval mode."""
    layers = decoder_layers(model)
    w = position_mask.unsqueeze(-1)
    out: dict[str, torch.Tensor] = {}

    def store(layer: int) -> Callable:
        def hook(module, args, output) -> None:
            key = resid_key(layer)
            if key in out:
                raise RuntimeError(f"decoder layer {layer} ran twice in one forward pass; its residual stream is ambiguous")
            h = layer_output(output).detach()
            h = h.to(torch.promote_types(h.dtype, torch.float32))
            out[key] = (h * w.to(h.dtype)).sum(1)
        return hook

    training = model.training
    model.eval()
    try:
        with torch.no_grad(), HookSet() as hooks:
            for i, layer in enumerate(layers):
                hooks.forward(layer, store(i))
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
    finally:
        model.train(training)
    missing = [i for i in range(len(layers)) if resid_key(i) not in out]
    if missing:
        raise RuntimeError(f"no residual stream was captured at decoder layer(s) {missing}")
    ref = out[resid_key(0)]
    out[COUNT_KEY] = position_mask.sum(1, keepdim=True).to(ref.dtype)
    return out


class DirectionObjective:
    """``--model.objective direction`` / ``direction_name``: per-layer residual-stream sums per data group.

    Args:
        positions: ``prompt`` (every prompt token but the first) or ``name`` (the name's tokens, never the first).
    """

    def __init__(self, positions: Literal["prompt", "name"] = "prompt") -> None:
        check_choice("positions", positions, POSITIONS)
        self.positions = positions
        self.name = "direction" if positions == "prompt" else "direction_name"
        self.description = (f"per-layer sums of decoder-layer outputs over the {'prompt tokens but the first' if positions == 'prompt' else 'name tokens'}"
                            "; forward only")

    def groups(self, data_groups: Sequence[str]) -> tuple[str, ...]:
        return tuple(data_groups)

    def unit_sizes(self, layout: UnitLayout, neurons: bool, heads: bool) -> dict[str, int]:
        hidden = layout.heads[0].o_proj.out_features
        return {**{resid_key(h.layer): hidden for h in layout.heads}, COUNT_KEY: 1}

    def items(self, tokenizer, kept: Sequence[dict], examples: Sequence[dict], variations: Sequence[str],
              data_groups: Sequence[str]) -> list[dict]:
        """One item per example: its prompt ids, the positions to sum, and its accumulator bucket."""
        prompt_ids = tokenizer([e["prompt"] for e in kept], add_special_tokens=False)["input_ids"]
        out = []
        for e, ids in zip(kept, prompt_ids):
            positions = (list(range(1, len(ids))) if self.positions == "prompt"
                         else name_positions(tokenizer, e["prompt"], e["name"]))
            if not positions:
                raise ValueError(f"example {e['scenario']}/{e['variation']}/{e['name']}: no position to average over")
            bucket = list(variations).index(variation_key(e["scenario"], e["variation"])) * len(data_groups) \
                + list(data_groups).index(e["group"])
            out.append({"prompt_ids": ids, "positions": positions, "bucket": bucket})
        order = sorted(range(len(out)), key=lambda i: (len(out[i]["prompt_ids"]), i))
        return [out[i] for i in order]

    def collator(self, pad_id: int) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        return PromptCollator(pad_id)

    def score(self, model: nn.Module, layout: UnitLayout, batch: dict[str, torch.Tensor], idx: torch.Tensor,
              neurons: bool = True, heads: bool = True) -> BatchScores:
        attn = batch["attention_mask"][idx]
        T = int(attn.sum(1).max())
        sums = residual_sums(model, batch["input_ids"][idx, :T], attn[:, :T], batch["position_mask"][idx, :T])
        return BatchScores(scores=sums, losses=torch.zeros(len(idx), device=attn.device), n_tokens=int(attn.sum()))

    def selection_inputs(self, scores, data_groups, rule, n_examples=None):
        raise ValueError(f"model.objective={self.name!r} estimates a direction, not unit scores: it has no selection"
                         f" rule (pruning.rule={rule!r}); use pruning.method=direction")
