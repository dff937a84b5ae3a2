"""Gradient x activation importance of neurons and attention heads.

For a unit u and an example e with activations a and gradients g = dL_e/da over token positions t
(and, for a head, its head_dim coordinates d)::

    s_e(u) = | sum_t sum_d a[t, d](u) * g[t, d](u) |        S_G(u) = sum over e in group G of s_e(u)

L_e is the mean token negative log-likelihood of example e's response tokens given its prompt. s_e(u)
is the first-order (Taylor) estimate of how much L_e changes when u is zeroed.

Examples in a batch do not interact (eval mode, causal attention, right padding), so one backward pass
of sum_e L_e gives every example's own gradients. Gradients flow to activations only: the input
embedding output is replaced by a detached leaf that requires grad, parameters stay frozen and ``torch.autograd.grad``
(never ``backward``) is used, so no parameter ``.grad`` is ever allocated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .architectures import UnitLayout
from .hooks import HookSet

__all__ = ["BatchScores", "ScoreAccumulator", "response_nll", "score_batch", "score_rows", "selection_inputs", "sum_scores"]


@dataclass
class BatchScores:
    """Per-example scores of one batch: ``scores[key]`` is float32 ``[batch, n_units]``."""

    scores: dict[str, torch.Tensor]
    losses: torch.Tensor  # [batch] mean response NLL, detached
    n_tokens: int  # non-padding tokens in the batch


def _token_dot_eager(a: torch.Tensor, g: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    return (a.float() * g.float() * token_mask).sum(1)


_compiled_token_dot = None


def _token_dot(a: torch.Tensor, g: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """sum_t a[b, t, c] * g[b, t, c] over non-padding tokens, in float32: ``[B, C]``.

    Memory-bound: an elementwise product and a sum over tokens. On CPU the plain expression is used (it
    is several times faster than the equivalent einsum, which PyTorch lowers to copies and a batch of
    1 x T by T x 1 products). On GPU it is compiled (once per shape family) into one fused kernel that
    reads each bf16 input once and accumulates in float32, instead of materialising float32 copies.
    """
    global _compiled_token_dot
    if a.is_cuda:
        if _compiled_token_dot is None:
            try:
                _compiled_token_dot = torch.compile(_token_dot_eager)
            except Exception:  # no compiler toolchain: stay correct, just slower
                _compiled_token_dot = _token_dot_eager
        return _compiled_token_dot(a, g, token_mask)
    return _token_dot_eager(a, g, token_mask)


def response_nll(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    inputs_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean negative log-likelihood of each example's response tokens: ``[B]`` (float32).

    ``response_mask[b, t] = 1`` where token t belongs to the response; the logit at position t - 1
    predicts it. Only those positions reach the output projection: a pre-hook on it keeps the hidden
    states of the M predicting positions ([B, T, H] -> [M, H]), so the LM head and the loss cost M rows
    whatever the padding, and the model's own post-processing of logits (e.g. Gemma 2's soft-capping)
    still applies.
    """
    B, T = input_ids.shape
    b_idx, t_idx = (response_mask[:, 1:] > 0).nonzero(as_tuple=True)  # position t predicts token t + 1
    targets = input_ids[b_idx, t_idx + 1]

    def gather(module, args):
        return (args[0][b_idx, t_idx], *args[1:])

    kwargs = dict(attention_mask=attention_mask, use_cache=False, logits_to_keep=0)
    with HookSet() as hooks:
        hooks.forward_pre(model.get_output_embeddings(), gather)
        out = model(inputs_embeds=inputs_embeds, **kwargs) if inputs_embeds is not None else model(input_ids, **kwargs)
    logits = out.logits if out.logits.dtype == torch.float64 else out.logits.float()  # never below float32
    nll = F.cross_entropy(logits, targets, reduction="none")  # [M]
    total = torch.zeros(B, dtype=nll.dtype, device=nll.device).index_add_(0, b_idx, nll)
    count = torch.zeros(B, dtype=nll.dtype, device=nll.device).index_add_(0, b_idx, torch.ones_like(nll))
    return total / count.clamp(min=1.0)


def check_capture(key: str, tensor: torch.Tensor, seen: bool) -> None:
    """Refuse a unit's activation whose scores would be ambiguous (``seen``: the module already ran in this
    forward pass) or that no gradient reaches."""
    if seen:
        raise RuntimeError(f"{key}: the module ran twice in one forward pass; its units are ambiguous")
    if not tensor.requires_grad:
        raise RuntimeError(f"{key}: the activation does not require grad; it is not downstream of the inputs")


def score_batch(
    model: nn.Module,
    layout: UnitLayout,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    neurons: bool = True,
    heads: bool = True,
) -> BatchScores:
    """Per-example gradient x activation scores of every unit in ``layout``.

    Hooks capture each unit module's activation in the forward pass; a tensor hook on the activation
    reduces ``a * g`` as soon as its gradient is computed, so no activation gradient outlives its use.
    """
    token_mask = attention_mask.unsqueeze(-1).float()
    B, T = input_ids.shape
    pending: dict[str, torch.Tensor] = {}
    results: dict[str, torch.Tensor] = {}

    def grad_hook(key: str, n_heads: int = 0):
        def on_grad(g: torch.Tensor) -> None:
            a = pending.pop(key)
            if n_heads:  # [B, T, H*D] -> per head: sum over tokens and head_dim
                dot = _token_dot(a, g, token_mask).view(B, n_heads, -1).sum(-1)
            else:
                dot = _token_dot(a, g, token_mask)
            results[key] = dot.abs()

        return on_grad

    def capture(key: str, tensor: torch.Tensor, n_heads: int = 0) -> None:
        check_capture(key, tensor, key in pending or key in results)
        pending[key] = tensor
        tensor.register_hook(grad_hook(key, n_heads))

    def neuron_fwd(key: str):
        return lambda module, args, output: capture(key, output)

    def head_pre(key: str, n_heads: int):
        return lambda module, args: capture(key, args[0], n_heads)

    expected = []
    try:
        with HookSet() as hooks:
            if neurons:
                for u in layout.neurons:
                    key = f"neuron/{u.path}"
                    hooks.forward(u.module, neuron_fwd(key))
                    expected.append(key)
            if heads:
                for h in layout.heads:
                    key = f"head/{h.path}"
                    hooks.forward_pre(h.o_proj, head_pre(key, h.n_heads))
                    expected.append(key)
            # The embedding output becomes a leaf that requires grad: everything downstream (all units)
            # then gets gradients, and autograd.grad w.r.t. this leaf never touches parameters. A hook,
            # not inputs_embeds, so that sharded (FSDP) embeddings are used inside the model's forward.
            leaves: list[torch.Tensor] = []

            def make_leaf(module, args, output):
                leaf = output.detach().requires_grad_(True)
                leaves.append(leaf)
                return leaf

            hooks.forward(model.get_input_embeddings(), make_leaf)
            with torch.enable_grad():
                losses = response_nll(model, input_ids, attention_mask, response_mask)
                if len(leaves) != 1:
                    raise RuntimeError(f"the input embedding ran {len(leaves)} times in one forward pass")
                torch.autograd.grad(losses.sum(), leaves[0])
    finally:
        pending.clear()  # drop references to activations if the pass failed part-way
    missing = [k for k in expected if k not in results]
    if missing:
        raise RuntimeError(f"no gradient reached {len(missing)} unit group(s), e.g. {missing[:3]}")
    return BatchScores(scores=results, losses=losses.detach(), n_tokens=int(attention_mask.sum()))


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


def selection_inputs(
    scores: dict[str, dict[str, torch.Tensor]], groups: tuple[str, str], rule: str, n_examples: dict[str, int] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int | None, int | None]:
    """(target scores, reference scores, n_target, n_reference) for a selection rule.

    Scores of the contrastive objective hold one group, ``contrast``, which already measures what carries the
    difference between the pair; they are ranked as they are (``rule="target"``, reference zero).
    """
    n = n_examples or {}
    if "contrast" in scores:
        if rule != "target":
            raise ValueError(
                f"pruning.rule={rule!r} compares two groups' scores, but the contrastive objective scores pairs (one"
                " group, 'contrast'): use pruning.rule=target"
            )
        zero = {k: torch.zeros_like(t) for k, t in scores["contrast"].items()}
        return scores["contrast"], zero, None, None
    ref, tgt = groups
    return scores[tgt], scores[ref], n.get(tgt) or None, n.get(ref) or None


def score_rows(model: nn.Module, layout: UnitLayout, batch: dict[str, torch.Tensor], idx: torch.Tensor, objective: str,
               neurons: bool = True, heads: bool = True) -> BatchScores:
    """Per-example scores of rows ``idx`` of a train batch under ``objective`` (``nll`` or ``contrastive``)."""
    if objective == "contrastive":
        from .attribution import contrastive_batch

        fields = ("target_ids", "target_attn", "reference_ids", "reference_attn", "response_mask_target", "suffix_len")
        return contrastive_batch(model, layout, *(batch[f][idx] for f in fields), neurons=neurons, heads=heads)
    attn = batch["attention_mask"][idx]
    T = int(attn.sum(1).max())  # drop padding columns that only other rows needed
    return score_batch(model, layout, batch["input_ids"][idx, :T], attn[:, :T], batch["response_mask"][idx, :T], neurons=neurons, heads=heads)
