"""The mechanism of pruned heads: how much attention the answer positions pay to the name tokens, head by head.

For a name-swapped pair (:class:`biasprune.localize.pairs.NamePair`) each prompt is run with its own answer
appended (t + a_t and r + a_r; the answer tokenized separately, as in scoring). In one such sequence:

* the **name tokens** N are the prompt positions that differ from the twin prompt: after their common prefix and
  before their aligned common suffix (:func:`biasprune.data.prompts.aligned_suffix_len`), ``[prefix, len − suffix)``;
* the **answer positions** Q are the positions that predict an answer token: the last prompt position and every
  answer position but the last, ``[len(prompt) − 1, len(prompt) + len(answer) − 1)``.

With A_h[q, k] the attention weight of head h from query q to key k (softmax over k ≤ q, as the model computes
it), a sequence's **name attention** of head h is the mean over answer positions of the weight on the name::

    n_h = (1 / |Q|) Σ_{q ∈ Q} Σ_{k ∈ N} A_h[q, k]          ∈ [0, 1]

and :func:`name_attention` returns n_h for every head of every attention layer and every sequence (two per pair).
A head that carries the name to the answer should have a large n_h next to the model's other heads; a pruned head
with n_h no larger than the rest's points to a path other than direct attention to the name.

The weights come from the attention modules' own outputs (a forward hook on each attention module, which returns
``(output, weights)``) with the model switched to eager attention while inside (fused kernels return no
weights); the switch is undone on exit. Cost: one forward pass over 2P sequences without gradients, memory one
layer's ``[batch, heads, T, T]`` weights at a time (reduced to ``[batch, heads]`` inside the hook).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from biasprune.core.hooks import HookSet
from biasprune.data.prompts import aligned_suffix_len
from biasprune.localize.pairs import NamePair
from biasprune.models.architectures import UnitLayout

__all__ = ["eager_attention", "name_attention", "name_span", "sequences_and_positions"]


def name_span(prompt: Sequence[int], twin: Sequence[int]) -> tuple[int, int]:
    """``[start, end)`` of the tokens of ``prompt`` that differ from ``twin`` (the name), aligned from both ends."""
    n = min(len(prompt), len(twin))
    prefix = 0
    while prefix < n and prompt[prefix] == twin[prefix]:
        prefix += 1
    end = len(prompt) - aligned_suffix_len(prompt, twin)
    if end <= prefix:
        raise ValueError(f"the prompt and its twin differ in no token (prefix {prefix}, suffix from {end}): no name to attend to")
    return prefix, end


def sequences_and_positions(pairs: Sequence[NamePair]) -> list[tuple[tuple[int, ...], tuple[int, int], tuple[int, int]]]:
    """Per pair, t + a_t then r + a_r: (token ids, name span ``[s, e)``, answer positions ``[s, e)``)."""
    out = []
    for p in pairs:
        for prompt, twin, answer in ((p.target, p.reference, p.target_answer), (p.reference, p.target, p.reference_answer)):
            out.append((prompt + answer, name_span(prompt, twin), (len(prompt) - 1, len(prompt) + len(answer) - 1)))
    return out


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run ``model`` with eager attention while inside (the attention modules then return their weights)."""
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    if before in (None, "eager"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def name_attention(model: nn.Module, layout: UnitLayout, pairs: Sequence[NamePair], batch_size: int = 16) -> dict[str, torch.Tensor]:
    """n_h (module docstring) per head-group key ``head/<attention path>``: float64 ``[2 × len(pairs), n_heads]``,
    rows t + a_t, r + a_r of each pair in order. Gradients off, eval mode (restored after)."""
    if not pairs:
        raise ValueError("name_attention: no pairs")
    if not layout.heads:
        raise ValueError("name_attention: the model has no attention heads in its unit layout")
    rows = sequences_and_positions(pairs)
    device = next(model.parameters()).device
    modules = {h.path: h for h in layout.heads}
    named = dict(model.named_modules())
    out: dict[str, list[torch.Tensor]] = {f"head/{p}": [] for p in modules}
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad(), eager_attention(model):
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                T = max(len(s) for s, _, _ in chunk)
                ids = torch.zeros(len(chunk), T, dtype=torch.long)
                attn = torch.zeros(len(chunk), T, dtype=torch.long)
                keys = torch.zeros(len(chunk), T, dtype=torch.float64)
                queries = torch.zeros(len(chunk), T, dtype=torch.float64)
                for i, (s, (n0, n1), (q0, q1)) in enumerate(chunk):
                    ids[i, : len(s)] = torch.tensor(s)
                    attn[i, : len(s)] = 1
                    keys[i, n0:n1] = 1.0
                    queries[i, q0:q1] = 1.0 / (q1 - q0)
                keys, queries = keys.to(device), queries.to(device)

                def reduce(module, args, output, key: str, queries=queries, keys=keys) -> None:
                    weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                    if weights is None:
                        raise RuntimeError(f"{key}: the attention module returned no weights (eager attention is needed)")
                    out[key].append(torch.einsum("bhqk,bq,bk->bh", weights.double(), queries, keys).cpu())

                with HookSet() as hooks:
                    for path in modules:
                        hooks.forward(named[path], lambda m, a, o, k=f"head/{path}": reduce(m, a, o, k))
                    model(input_ids=ids.to(device), attention_mask=attn.to(device), use_cache=False)
    finally:
        for m, training in modes:
            m.training = training
    result = {k: torch.cat(v) for k, v in out.items()}
    for key, v in result.items():
        if v.shape != (len(rows), modules[key.removeprefix("head/")].n_heads):
            raise RuntimeError(f"{key}: name attention of shape {tuple(v.shape)}, expected ({len(rows)}, n_heads)")
    return result
