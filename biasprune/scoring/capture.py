"""What every scoring objective shares: per-example results, the activation x gradient reduction, the response
likelihood and the capture checks.

The objectives (:mod:`.gradxact`, :mod:`.contrastive`) capture unit activations with forward hooks and reduce
``a * g`` over tokens the moment the gradient exists; this module holds the pieces they have in common.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from biasprune.core.hooks import HookSet

__all__ = ["BatchScores", "check_capture", "response_nll", "token_dot"]


@dataclass
class BatchScores:
    """Per-example scores of one batch: ``scores[key]`` is float32 ``[batch, n_units]``."""

    scores: dict[str, torch.Tensor]
    losses: torch.Tensor  # [batch] mean response NLL, detached
    n_tokens: int  # non-padding tokens in the batch


def _token_dot_eager(a: torch.Tensor, g: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    return (a.float() * g.float() * token_mask).sum(1)


_compiled_token_dot = None


def token_dot(a: torch.Tensor, g: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
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
