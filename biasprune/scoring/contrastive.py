"""Paired, contrastive attribution: which units carry the *difference* between a name-swapped pair.

Attribution patching (Nanda 2023; Syed et al. 2023; Kramár et al. 2024). A pair is a target-group prompt
t and a reference-group prompt r of the same scenario, variation and gender that differ only in the name;
y is the model's answer to t (the target's stored response text), appended to both. With
m = log p(y | t) (summed over y's tokens), the pair's score of unit u is the first-order estimate of the
change in m when u's activation on the target run is replaced by its value on the reference run::

    est(u) = sum_pos sum_d (a_r − a_t)[pos, d](u) · ∂m/∂a_t[pos, d](u)        score(u) = sum_pairs |est(u)|

a is a neuron's output channel (d: one coordinate) or a query head's slice of the ``o_proj`` input
(d: its head_dim coordinates), the same units as :mod:`biasprune.scoring.gradxact`. It is the derivative
d/dε m(a_t + ε(a_r − a_t)) at ε = 0.

Positions. The two token sequences differ only in the name, whose token counts may differ. Tokens before
the name are identical, and in a causal model so are their activations: they contribute exactly 0. Tokens
after the name (the rest of the prompt, the chat template's tail and y) are the same tokens in both runs
and are aligned from the END: position L_t − k of the target with position L_r − k of the reference,
k = 1..suffix_len. Only these suffix positions are used.

Blind spots. (1) The name tokens themselves are never patched (they have no counterpart); what the name
does is seen only through the later positions it influences. (2) A first-order estimate: it misses
effects through saturated attention (a softmax at 0 or 1 has ~0 gradient although patching would move
it) and other strong nonlinearities; AtP* (Kramár et al. 2024) fixes the attention part with a QK
re-computation, not done here. (3) Scores are |est| per pair, so units that push the answer in opposite
directions for different pairs both score.

Inputs (a collator builds them with :func:`build_pair_batch`): right-padded ``target_ids``/``target_attn``
``[B, T_t]`` and ``reference_ids``/``reference_attn`` ``[B, T_r]``; ``response_mask_target`` ``[B, T_t]``
marks y in the target; ``suffix_len`` ``[B]`` is the number of aligned trailing tokens (see
:func:`aligned_suffix_len`), which must cover y and be the same tokens in both rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from biasprune.core.hooks import HookSet
from biasprune.models.architectures import UnitLayout
from biasprune.scoring.capture import BatchScores, check_capture, response_nll

__all__ = ["aligned_suffix_len", "build_pair_batch", "contrastive_batch"]


def aligned_suffix_len(target: Sequence[int], reference: Sequence[int]) -> int:
    """Length of the longest common suffix of two token sequences, capped so that it never reaches into
    their common prefix (the aligned positions are then exactly those after the part that differs)."""
    n = min(len(target), len(reference))
    prefix = 0
    while prefix < n and target[prefix] == reference[prefix]:
        prefix += 1
    suffix = 0
    while suffix < n - prefix and target[-1 - suffix] == reference[-1 - suffix]:
        suffix += 1
    return suffix


def build_pair_batch(
    pairs: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]], pad_id: int = 0
) -> dict[str, torch.Tensor]:
    """The keyword arguments of :func:`contrastive_batch` from (target prompt ids, reference prompt ids,
    response ids) triples, tokenized separately as in scoring (y follows each prompt); right padding."""
    if not pairs:
        raise ValueError("build_pair_batch: no pairs")
    rows_t, rows_r, n_resp, suffix = [], [], [], []
    for i, (tp, rp, y) in enumerate(pairs):
        if not y:
            raise ValueError(f"pair {i}: the response has no tokens; skip the pair (and count it as skipped)")
        t, r = list(tp) + list(y), list(rp) + list(y)
        rows_t.append(t)
        rows_r.append(r)
        n_resp.append(len(y))
        suffix.append(aligned_suffix_len(t, r))
    B, T_t, T_r = len(pairs), max(map(len, rows_t)), max(map(len, rows_r))
    out = {
        "target_ids": torch.full((B, T_t), pad_id, dtype=torch.long),
        "target_attn": torch.zeros(B, T_t, dtype=torch.long),
        "reference_ids": torch.full((B, T_r), pad_id, dtype=torch.long),
        "reference_attn": torch.zeros(B, T_r, dtype=torch.long),
        "response_mask_target": torch.zeros(B, T_t, dtype=torch.long),
        "suffix_len": torch.tensor(suffix, dtype=torch.long),
    }
    for b, (t, r, k) in enumerate(zip(rows_t, rows_r, n_resp)):
        out["target_ids"][b, : len(t)] = torch.tensor(t)
        out["target_attn"][b, : len(t)] = 1
        out["reference_ids"][b, : len(r)] = torch.tensor(r)
        out["reference_attn"][b, : len(r)] = 1
        out["response_mask_target"][b, len(t) - k : len(t)] = 1
    return out


def _check_inputs(target_ids, target_attn, reference_ids, reference_attn, response_mask_target, suffix_len):
    B = target_ids.shape[0]
    if target_attn.shape != target_ids.shape or response_mask_target.shape != target_ids.shape:
        raise ValueError("target_ids, target_attn and response_mask_target must have the same shape [B, T_t]")
    if reference_attn.shape != reference_ids.shape or reference_ids.shape[0] != B or suffix_len.shape != (B,):
        raise ValueError("reference_ids/reference_attn must be [B, T_r] and suffix_len [B] for the same B")
    for name, attn in (("target_attn", target_attn), ("reference_attn", reference_attn)):
        if bool((attn[:, 1:] > attn[:, :-1]).any()):
            raise ValueError(f"{name} is not right-padded (a 0 before a 1 in some row)")
    L_t, L_r = target_attn.sum(1), reference_attn.sum(1)
    if bool((suffix_len < 0).any() | (suffix_len > torch.minimum(L_t, L_r)).any()):
        raise ValueError(f"suffix_len {suffix_len.tolist()} must lie in [0, min(target length, reference length)]")
    pos = torch.arange(target_ids.shape[1], device=target_ids.device)[None]
    in_suffix = (pos >= (L_t - suffix_len)[:, None]) & (pos < L_t[:, None])
    if bool(((response_mask_target > 0) & ~in_suffix).any()):
        raise ValueError(
            "response_mask_target marks tokens outside the aligned suffix: y must be appended to both prompts"
        )
    for b in range(B):
        k, lt, lr = int(suffix_len[b]), int(L_t[b]), int(L_r[b])
        if not torch.equal(target_ids[b, lt - k : lt], reference_ids[b, lr - k : lr]):
            raise ValueError(
                f"pair {b}: the last {k} tokens differ between target and reference; not a name-swapped pair"
            )
    return L_t, L_r, in_suffix


def contrastive_batch(
    model: nn.Module,
    layout: UnitLayout,
    target_ids: torch.Tensor,
    target_attn: torch.Tensor,
    reference_ids: torch.Tensor,
    reference_attn: torch.Tensor,
    response_mask_target: torch.Tensor,
    suffix_len: torch.Tensor,
    neurons: bool = True,
    heads: bool = True,
    absolute: bool = True,
) -> BatchScores:
    """Per-pair attribution-patching estimates ``[B, n_units]`` per unit-group key (see the module docstring).

    ``|est|`` by default (``absolute=False``: the signed estimate). Two forward passes and one backward: the
    reference run (no grad) stores its activations at the aligned suffix positions, moved to the target's
    positions; the target run takes gradients of sum_b m_b with respect to activations only (a detached
    leaf at the embedding output; weights are never differentiated, no parameter ``.grad`` is made). Runs in
    eval mode (restored afterwards) and enables grad locally, so it also works under ``torch.no_grad()``.
    ``losses`` holds the target's mean response NLL, ``n_tokens`` the target's non-padding tokens.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "contrastive attribution needs gradients; inference mode is on (Lightning: inference_mode=False)"
        )
    L_t, L_r, in_suffix = _check_inputs(
        target_ids, target_attn, reference_ids, reference_attn, response_mask_target, suffix_len
    )
    B, T_t = target_ids.shape
    # Target position pos aligns with reference position pos - L_t + L_r (inside the suffix).
    ref_pos = (torch.arange(T_t, device=target_ids.device)[None] - L_t[:, None] + L_r[:, None]).clamp(
        0, reference_ids.shape[1] - 1
    )
    units: list[tuple[str, nn.Module, int]] = []  # (key, module, n_heads or 0 for neurons)
    if neurons:
        units += [(f"neuron/{u.path}", u.module, 0) for u in layout.neurons]
    if heads:
        units += [(f"head/{h.path}", h.o_proj, h.n_heads) for h in layout.heads]
    aligned: dict[str, torch.Tensor] = {}
    pending: dict[str, torch.Tensor] = {}
    results: dict[str, torch.Tensor] = {}

    def store(key: str, a: torch.Tensor) -> None:
        if key in aligned:
            raise RuntimeError(f"{key}: the module ran twice in one forward pass; its units are ambiguous")
        idx = ref_pos.to(a.device)[..., None].expand(-1, -1, a.shape[-1])
        aligned[key] = torch.gather(a, 1, idx) * in_suffix.to(a.device, a.dtype)[..., None]

    def on_grad(key: str, n_heads: int):
        def hook(g: torch.Tensor) -> None:
            a_t = pending.pop(key)
            acc = torch.promote_types(a_t.dtype, torch.float32)
            mask = in_suffix.to(a_t.device, acc)[..., None]
            dot = ((aligned.pop(key).to(acc) - a_t.to(acc)) * mask * g.to(acc)).sum(1)  # [B, C]
            if n_heads:
                dot = dot.view(B, n_heads, -1).sum(-1)
            results[key] = dot.abs() if absolute else dot

        return hook

    def capture(key: str, a: torch.Tensor, n_heads: int) -> None:
        check_capture(key, a, key in pending or key in results)
        pending[key] = a
        a.register_hook(on_grad(key, n_heads))

    def hook_all(hooks: HookSet, fn) -> None:
        for key, module, n_heads in units:
            if n_heads:
                hooks.forward_pre(module, lambda mod, args, k=key, h=n_heads: fn(k, args[0], h))
            else:
                hooks.forward(module, lambda mod, args, out, k=key: fn(k, out, 0))

    modes = [(mod, mod.training) for mod in model.modules()]  # restored one by one: modes may be mixed
    model.eval()
    try:
        with torch.no_grad(), HookSet() as hooks:
            hook_all(hooks, lambda k, a, h: store(k, a.detach()))
            model(reference_ids, attention_mask=reference_attn, use_cache=False, logits_to_keep=1)
        leaves: list[torch.Tensor] = []

        def make_leaf(module, args, output):
            leaf = output.detach().requires_grad_(True)
            leaves.append(leaf)
            return leaf

        with HookSet() as hooks:
            hook_all(hooks, capture)
            hooks.forward(model.get_input_embeddings(), make_leaf)
            with torch.enable_grad():
                nll = response_nll(model, target_ids, target_attn, response_mask_target)
                n_resp = (response_mask_target[:, 1:] > 0).sum(1).to(nll.dtype)
                if len(leaves) != 1:
                    raise RuntimeError(f"the input embedding ran {len(leaves)} times in one forward pass")
                m = -(nll * n_resp)  # log p(y | t), summed over y's tokens
                torch.autograd.grad(m.sum(), leaves[0])
    finally:
        pending.clear()
        aligned.clear()
        for mod, training in modes:
            mod.training = training
    missing = [k for k, _, _ in units if k not in results]
    if missing:
        raise RuntimeError(f"no gradient reached {len(missing)} unit group(s), e.g. {missing[:3]}")
    return BatchScores(scores=results, losses=nll.detach(), n_tokens=int(target_attn.sum()))
