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

import torch
from torch import nn

from biasprune.core.hooks import HookSet
from biasprune.models.architectures import UnitLayout
from biasprune.scoring.capture import BatchScores, check_capture, response_nll, token_dot

__all__ = ["score_batch"]


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
                dot = token_dot(a, g, token_mask).view(B, n_heads, -1).sum(-1)
            else:
                dot = token_dot(a, g, token_mask)
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
