"""What every scoring objective shares: the one capture helper, per-example results, the activation x gradient
reduction and the response likelihood.

The capture helper follows captum's ``compute_layer_gradients_and_eval``: every objective (:mod:`.gradxact`,
:mod:`.contrastive`, and whatever comes next) says *what* to run and how to reduce a unit's activation and
gradient; :func:`capture_gradients` does the hook work once for all of them:

* one forward hook per unit site (a neuron module's output, an ``o_proj``'s input for heads), registered in a
  :class:`~biasprune.core.hooks.HookSet` and removed on exit, also after an exception;
* the input embedding's output replaced by a detached leaf that requires grad, so every unit downstream gets
  gradients while the weights stay frozen, and ``torch.autograd.grad`` (never ``backward``) is taken with
  respect to that leaf only: no parameter ``.grad`` is ever allocated;
* a tensor hook per activation that reduces ``(a, g)`` the moment g exists, so no activation gradient
  outlives its use;
* the checks: inference mode refused (Lightning: ``inference_mode=False``), a unit module that runs twice in
  one pass, an activation that no gradient can reach, an embedding that runs more or less than once, a unit
  that no gradient reached. The model runs in eval mode (every module's own mode comes back afterwards) and
  gradients are enabled locally, so the helper also works under ``torch.no_grad()``.

:func:`capture_activations` is the forward-only half (e.g. the reference run of a name-swapped pair).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from biasprune.core.hooks import HookSet
from biasprune.models.architectures import UnitLayout

__all__ = [
    "BatchScores",
    "UnitSite",
    "capture_activations",
    "capture_gradients",
    "check_capture",
    "check_grad_mode",
    "response_nll",
    "token_dot",
    "unit_sites",
]


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


@dataclass(frozen=True)
class UnitSite:
    """Where one unit group's activation is captured.

    Attributes:
        key: the unit-group key of the scores (``neuron/<module path>``, ``head/<attention module path>``).
        module: the hooked module: a neuron projection (its output is the activation) or a head group's
            ``o_proj`` (its input, ``[..., n_heads * head_dim]``, is the activation).
        n_heads: 0 for neurons; the number of query heads for a head group.
    """

    key: str
    module: nn.Module
    n_heads: int = 0


def unit_sites(layout: UnitLayout, neurons: bool = True, heads: bool = True) -> list[UnitSite]:
    """The capture sites of a model's units: neuron projections, then head groups (the layout's order)."""
    sites = [UnitSite(f"neuron/{u.path}", u.module) for u in layout.neurons] if neurons else []
    return sites + ([UnitSite(f"head/{h.path}", h.o_proj, h.n_heads) for h in layout.heads] if heads else [])


def _hook_sites(hooks: HookSet, sites: Sequence[UnitSite], fn: Callable[[UnitSite, torch.Tensor], None]) -> None:
    for site in sites:
        if site.n_heads:
            hooks.forward_pre(site.module, lambda module, args, s=site: fn(s, args[0]))
        else:
            hooks.forward(site.module, lambda module, args, output, s=site: fn(s, output))


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = [(mod, mod.training) for mod in model.modules()]  # restored one by one: modes may be mixed
    model.eval()
    try:
        yield
    finally:
        for mod, training in modes:
            mod.training = training


def capture_activations(
    model: nn.Module, sites: Sequence[UnitSite], run: Callable[[], object], store: Callable[[UnitSite, torch.Tensor], None]
) -> None:
    """Run ``run()`` without gradients, in eval mode, calling ``store(site, activation)`` as each site fires
    (a site that fires twice, or never, is refused by its key)."""
    seen: set[str] = set()

    def capture(site: UnitSite, a: torch.Tensor) -> None:
        if site.key in seen:
            raise RuntimeError(f"{site.key}: the module ran twice in one forward pass; its units are ambiguous")
        seen.add(site.key)
        store(site, a.detach())

    with _eval_mode(model), torch.no_grad(), HookSet() as hooks:
        _hook_sites(hooks, sites, capture)
        run()
    missing = [s.key for s in sites if s.key not in seen]
    if missing:
        raise RuntimeError(f"no activation was captured for {len(missing)} unit group(s), e.g. {missing[:3]}")


def capture_gradients(
    model: nn.Module,
    sites: Sequence[UnitSite],
    run: Callable[[], torch.Tensor],
    reduce: Callable[[UnitSite, torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-site reductions of (activation, gradient of the objective) and the objective (see the module docstring).

    Args:
        model: the causal LM (frozen weights).
        sites: where activations are captured (:func:`unit_sites`).
        run: runs the model once and returns the per-example objective ``[B]``; its sum is differentiated.
        reduce: ``reduce(site, a, g)`` -> the site's result (e.g. ``[B, n_units]``), called once per site the
            moment its gradient g = d(sum objective)/da exists.

    Returns:
        (results by site key, the objective detached).
    """
    check_grad_mode()
    pending: dict[str, torch.Tensor] = {}
    results: dict[str, torch.Tensor] = {}
    leaves: list[torch.Tensor] = []

    def on_grad(site: UnitSite) -> Callable[[torch.Tensor], None]:
        def hook(g: torch.Tensor) -> None:
            results[site.key] = reduce(site, pending.pop(site.key), g)

        return hook

    def capture(site: UnitSite, a: torch.Tensor) -> None:
        check_capture(site.key, a, site.key in pending or site.key in results)
        pending[site.key] = a
        a.register_hook(on_grad(site))

    def make_leaf(module, args, output):
        leaf = output.detach().requires_grad_(True)
        leaves.append(leaf)
        return leaf

    try:
        with _eval_mode(model), HookSet() as hooks:
            _hook_sites(hooks, sites, capture)
            # A hook, not inputs_embeds, so that sharded (FSDP) embeddings are used inside the model's forward.
            hooks.forward(model.get_input_embeddings(), make_leaf)
            with torch.enable_grad():
                objective = run()
                if len(leaves) != 1:
                    raise RuntimeError(f"the input embedding ran {len(leaves)} times in one forward pass")
                torch.autograd.grad(objective.sum(), leaves[0])
    finally:
        pending.clear()  # drop references to activations if the pass failed part-way
    missing = [s.key for s in sites if s.key not in results]
    if missing:
        raise RuntimeError(f"no gradient reached {len(missing)} unit group(s), e.g. {missing[:3]}")
    return results, objective.detach()


def check_grad_mode() -> None:
    """Refuse inference mode, under which no gradient can be taken (not even inside ``torch.enable_grad()``)."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError("scoring needs gradients; inference mode is on (Lightning: inference_mode=False)")


def check_capture(key: str, tensor: torch.Tensor, seen: bool) -> None:
    """Refuse a unit's activation whose scores would be ambiguous (``seen``: the module already ran in this
    forward pass) or that no gradient reaches."""
    if seen:
        raise RuntimeError(f"{key}: the module ran twice in one forward pass; its units are ambiguous")
    if not tensor.requires_grad:
        raise RuntimeError(f"{key}: the activation does not require grad; it is not downstream of the inputs")
