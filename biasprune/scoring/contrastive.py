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

Cost per batch of pairs: two forward passes (the reference run without gradients) and one backward; memory:
the target run's activations kept for the backward, plus the reference run's activations of every unit at
the aligned positions (one ``[B, T_t, width]`` tensor per unit group, in the model's dtype) until the target's
gradient for that group arrives. The hook work is :mod:`biasprune.scoring.capture`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from biasprune.data.prompts import aligned_suffix_len
from biasprune.data.scenarios import AuditDataError, variation_key
from biasprune.models.architectures import UnitLayout
from biasprune.scoring.capture import (
    BatchScores,
    UnitSite,
    capture_activations,
    capture_gradients,
    check_grad_mode,
    response_nll,
    unit_sites,
)

__all__ = ["CONTRAST_GROUP", "ContrastiveObjective", "PairCollator", "aligned_suffix_len", "build_pair_batch", "contrastive_batch"]

#: The one score group of this objective: the pairs' attribution sums.
CONTRAST_GROUP = "contrast"
PAIR_FIELDS = ("target_ids", "target_attn", "reference_ids", "reference_attn", "response_mask_target", "suffix_len")


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


def _reference_activations(model: nn.Module, sites: Sequence[UnitSite], reference_ids: torch.Tensor,
                           reference_attn: torch.Tensor, ref_pos: torch.Tensor, in_suffix: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference run's activations, moved to the target's positions (0 outside the aligned suffix)."""
    aligned: dict[str, torch.Tensor] = {}

    def store(site: UnitSite, a: torch.Tensor) -> None:
        idx = ref_pos.to(a.device)[..., None].expand(-1, -1, a.shape[-1])
        aligned[site.key] = torch.gather(a, 1, idx) * in_suffix.to(a.device, a.dtype)[..., None]

    capture_activations(model, sites, lambda: model(reference_ids, attention_mask=reference_attn, use_cache=False,
                                                     logits_to_keep=1), store)
    return aligned


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

    ``|est|`` by default (``absolute=False``: the signed estimate). The reference run (no grad) stores its
    activations at the aligned suffix positions, moved to the target's positions; the target run takes
    gradients of sum_b m_b with respect to activations only (:func:`biasprune.scoring.capture.capture_gradients`).
    ``losses`` holds the target's mean response NLL, ``n_tokens`` the target's non-padding tokens.
    """
    check_grad_mode()
    L_t, L_r, in_suffix = _check_inputs(
        target_ids, target_attn, reference_ids, reference_attn, response_mask_target, suffix_len
    )
    B, T_t = target_ids.shape
    # Target position pos aligns with reference position pos - L_t + L_r (inside the suffix).
    ref_pos = (torch.arange(T_t, device=target_ids.device)[None] - L_t[:, None] + L_r[:, None]).clamp(
        0, reference_ids.shape[1] - 1
    )
    sites = unit_sites(layout, neurons, heads)
    aligned = _reference_activations(model, sites, reference_ids, reference_attn, ref_pos, in_suffix)
    nll: list[torch.Tensor] = []

    def run() -> torch.Tensor:
        nll.append(response_nll(model, target_ids, target_attn, response_mask_target))
        n_resp = (response_mask_target[:, 1:] > 0).sum(1).to(nll[0].dtype)
        return -(nll[0] * n_resp)  # m = log p(y | t), summed over y's tokens

    def reduce(site: UnitSite, a_t: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        acc = torch.promote_types(a_t.dtype, torch.float32)
        mask = in_suffix.to(a_t.device, acc)[..., None]
        dot = ((aligned.pop(site.key).to(acc) - a_t.to(acc)) * mask * g.to(acc)).sum(1)  # [B, C]
        if site.n_heads:
            dot = dot.view(B, site.n_heads, -1).sum(-1)
        return dot.abs() if absolute else dot

    try:
        scores, _ = capture_gradients(model, sites, run, reduce)
    finally:
        aligned.clear()
    return BatchScores(scores=scores, losses=nll[0].detach(), n_tokens=int(target_attn.sum()))


def pair_items(tokenizer, kept: Sequence[dict], examples: Sequence[dict], variations: Sequence[str],
               data_groups: Sequence[str]) -> list[dict]:
    """Name-swapped pairs: each target-group example with its reference-group twin (same ``pair_id``) and the
    target's response, in bucket ``variation index``, sorted by length (scores are sums: order is free)."""
    missing = [e["name"] for e in kept if not e.get("pair_id")]
    if missing:
        raise AuditDataError(f"the contrastive objective pairs examples by pair_id, which {len(missing)} lack (e.g. {missing[0]!r})")
    ref, tgt = data_groups
    twins = {e["pair_id"]: e for e in examples if e["group"] == ref}
    targets = [e for e in kept if e["group"] == tgt and e["pair_id"] in twins]
    if not targets:
        raise AuditDataError("no target-group scoring example has a reference-group twin: nothing to contrast")
    t_ids = tokenizer([e["prompt"] for e in targets], add_special_tokens=False)["input_ids"]
    r_ids = tokenizer([twins[e["pair_id"]]["prompt"] for e in targets], add_special_tokens=False)["input_ids"]
    y_ids = tokenizer([e["response"] for e in targets], add_special_tokens=False)["input_ids"]
    order = sorted(range(len(targets)), key=lambda i: (len(t_ids[i]) + len(y_ids[i]), i))
    return [
        {"target_ids": t_ids[i], "reference_ids": r_ids[i], "response_ids": y_ids[i],
         "bucket": list(variations).index(variation_key(targets[i]["scenario"], targets[i]["variation"]))}
        for i in order
    ]  # fmt: skip


class PairCollator:
    """Name-swapped pairs as :func:`build_pair_batch` lays them out, with the bucket, index and weight of each."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        out = build_pair_batch([(r["target_ids"], r["reference_ids"], r["response_ids"]) for r in rows], self.pad_id)
        out["bucket"] = torch.tensor([r["bucket"] for r in rows], dtype=torch.long)
        out["index"] = torch.tensor([r["index"] for r in rows], dtype=torch.long)
        out["weight"] = torch.tensor([r["weight"] for r in rows], dtype=torch.float32)
        return out


class ContrastiveObjective:
    """``--model.objective contrastive``: attribution patching on name-swapped pairs, one score group
    (``contrast``), ranked as it is (``--pruning.rule target``)."""

    name = "contrastive"
    description = ("attribution patching on name-swapped pairs; s_p(u) = |sum_t sum_d (a_ref - a_tgt)*dm/da|,"
                   " m = log p(target's response | target prompt)")

    def groups(self, data_groups: Sequence[str]) -> tuple[str, ...]:
        return (CONTRAST_GROUP,)

    def unit_sizes(self, layout: UnitLayout, neurons: bool, heads: bool) -> dict[str, int]:
        return {s.key: layout.sizes()[s.key] for s in unit_sites(layout, neurons, heads)}

    def items(self, tokenizer, kept: Sequence[dict], examples: Sequence[dict], variations: Sequence[str],
              data_groups: Sequence[str]) -> list[dict]:
        return pair_items(tokenizer, kept, examples, variations, data_groups)

    def collator(self, pad_id: int) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        return PairCollator(pad_id)

    def score(self, model: nn.Module, layout: UnitLayout, batch: dict[str, torch.Tensor], idx: torch.Tensor,
              neurons: bool = True, heads: bool = True) -> BatchScores:
        return contrastive_batch(model, layout, *(batch[f][idx] for f in PAIR_FIELDS), neurons=neurons, heads=heads)

    def selection_inputs(self, scores: dict[str, dict[str, torch.Tensor]], data_groups: Sequence[str], rule: str,
                         n_examples: dict[str, int] | None = None) -> tuple[Any, Any, int | None, int | None]:
        """The pairs' sums, ranked as they are against a zero reference (they already measure what carries the
        difference between the pair): only ``pruning.rule=target`` applies."""
        if rule != "target":
            raise ValueError(
                f"pruning.rule={rule!r} compares two groups' scores, but the contrastive objective scores pairs (one"
                f" group, {CONTRAST_GROUP!r}): use pruning.rule=target"
            )
        zero = {k: torch.zeros_like(t) for k, t in scores[CONTRAST_GROUP].items()}
        return scores[CONTRAST_GROUP], zero, None, None
