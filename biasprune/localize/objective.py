"""The ``causal`` objective: the causal search's measurements as per-pair sums, so that ``fit`` and the study rank
units by ablation through the same selection and random-control machinery as every other objective.

For a name-swapped pair p with gap g_p (:mod:`biasprune.localize.pairs`: the log odds ratio of the two answers
under the two prompts), every unit u gets d_p(u), the change in g_p when u is zeroed:

* heads: **measured**, each head ablated alone (zero-ablation, the pruning intervention): d_p(h) = g_p(h) − g_p;
* neurons: the **first-order** estimate towards zero, d_p(u) ≈ −Σ_seq Σ_pos Σ_d a·∂g_p/∂a (attribution patching
  to zero; the shortlist stage of :func:`biasprune.localize.causal.causal_search`), since ablating tens of
  thousands of channels one by one is out of reach.

**No residual-stream output.** As for ``atp`` (:mod:`biasprune.scoring.signed`), ``down_proj`` and ``o_proj``
output channels are not scored (their masks keep every channel; heads, the ``o_proj`` input, are scored). A
first-order estimate towards zero favours such channels: on the ``purchase`` plant (one H100, 2026-12-06,
docs/results.md "Selection methods compared") the causal ranking at 0.5% per module pruned 90 ``down_proj``
channels, the same residual dimensions in up to 7 layers (260 in 7, 17 and 507 in 5), and the pruned arm's dev
parse rate fell to 0.40 of its answers (inlier ratio 0.04): the cut came from breaking answers.

The accumulator keeps Σ_p d_p(u) (key ``<unit key>``), Σ_p g_p (``gap``) and the pair count (``count``): sums over
pairs, exact under distributed, resumed and pooled scoring. With M = mean gap and D(u) = mean d_p(u), units are
ranked by the reduction of |M| that zeroing them alone brings::

    r(u) = |M| − |M + D(u)|

the ranking of the search's single-ablation tier. The greedy stage (re-measuring after each pick, so that two
heads on one path are not both chosen) needs every pair at once and is not a sum over pairs:
:func:`biasprune.localize.causal.causal_search` runs it (``benchmarks/analysis/compare_methods.py`` reports both).

Only ``--pruning.rule target`` applies. Cost per batch of P pairs (4P sequences, docs/method.md "Causal
localization"): heads, 1 + n_heads forward passes without gradients; neurons, one forward and one backward pass;
memory: a forward pass's activations kept for the backward (neurons only) and ``[P, n_units]`` results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from biasprune.core.hooks import HookSet
from biasprune.data.scenarios import AuditDataError, variation_key
from biasprune.localize.pairs import NamePair, ablate, answer_logprobs, pair_gaps, pair_sequences
from biasprune.models.architectures import UnitLayout, writes_residual

__all__ = ["CAUSAL_GROUP", "CausalObjective", "PairAnswerCollator", "PairScores", "pair_effects", "pair_items"]

#: The one score group of this objective.
CAUSAL_GROUP = "causal"
FIELDS = ("target", "reference", "target_answer", "reference_answer")


@dataclass
class PairScores:
    """Per-pair results of one batch, with the fields the accumulator reads of a scoring objective's result
    (``scores[key]`` ``[batch, n]``, ``losses`` ``[batch]``, ``n_tokens``)."""

    scores: dict[str, torch.Tensor]
    losses: torch.Tensor  # [batch] the pairs' gaps
    n_tokens: int


def _sites(layout: UnitLayout, neurons: bool, heads: bool) -> list[tuple[str, nn.Module]]:
    """(unit-group key, module): neuron projections then attention modules, the layout's order; residual-stream
    output projections are not units of this objective (module docstring)."""
    return ([(f"neuron/{u.path}", u.module) for u in layout.neurons if not writes_residual(u.path)] if neurons else []) + (
        [(f"head/{h.path}", h.o_proj) for h in layout.heads] if heads else [])


def _neuron_effects(model: nn.Module, layout: UnitLayout, pairs: Sequence[NamePair]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """d_p(u) ≈ −Σ a·∂g_p/∂a for every neuron (float64 ``[P, n]`` per key) and the gaps g_p, in one forward and
    one backward pass over the 4P sequences (rows do not interact: causal attention, right padding)."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError("neuron effects need gradients; inference mode is on (Lightning: inference_mode=False)")
    seqs, n_answer = pair_sequences(pairs)
    sites = _sites(layout, neurons=True, heads=False)
    P = len(pairs)
    acts: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}

    def capture(key: str, a: torch.Tensor) -> None:
        if key in acts:
            raise RuntimeError(f"{key}: the module ran twice in one forward pass; its units are ambiguous")
        acts[key] = a

        def on_grad(g: torch.Tensor) -> None:
            dot = (acts.pop(key).double() * g.double()).sum(1)  # [4P, n]
            out[key] = -dot.view(P, 4, -1).sum(1).cpu()

        a.register_hook(on_grad)

    def leaf(module, args, output):
        return output.detach().requires_grad_(True)

    def hooks_per_batch(hooks: HookSet, start, ids, attn) -> None:
        hooks.forward(model.get_input_embeddings(), leaf)
        for key, module in sites:
            hooks.forward(module, lambda mod, args, o, k=key: capture(k, o))

    with torch.enable_grad():
        lp = answer_logprobs(model, seqs, n_answer, batch_size=len(seqs), hooks_per_batch=hooks_per_batch)
        gaps = pair_gaps(lp)
        gaps.sum().backward()
    acts.clear()
    missing = [key for key, _ in sites if key not in out]
    if missing:
        raise RuntimeError(f"no gradient reached {len(missing)} unit group(s), e.g. {missing[:3]}")
    return out, gaps.detach().cpu()


def pair_effects(model: nn.Module, layout: UnitLayout, pairs: Sequence[NamePair], neurons: bool = True,
                 heads: bool = True) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per pair: d_p(u) for every unit (float64 ``[P, n_units]`` per key; heads measured, neurons first-order)
    and the gaps g_p ``[P]`` (module docstring). The model runs in eval mode (restored after)."""
    if not pairs:
        raise ValueError("pair_effects: no pairs")
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        effects: dict[str, torch.Tensor] = {}
        gaps = None
        if neurons and layout.neurons:
            effects, gaps = _neuron_effects(model, layout, pairs)
        seqs, n_answer = pair_sequences(pairs)
        with torch.no_grad():
            base = pair_gaps(answer_logprobs(model, seqs, n_answer, batch_size=len(seqs))).cpu()
            if heads:
                for h in layout.heads:
                    key, cols = f"head/{h.path}", []
                    for i in range(h.n_heads):
                        prune = torch.zeros(h.n_heads, dtype=torch.bool)
                        prune[i] = True
                        with ablate(model, layout, {key: prune}):
                            cols.append(pair_gaps(answer_logprobs(model, seqs, n_answer, batch_size=len(seqs))).cpu() - base)
                    effects[key] = torch.stack(cols, 1)
    finally:
        for m, training in modes:
            m.training = training
    return effects, base if gaps is None else gaps


def pair_items(tokenizer, kept: Sequence[dict], examples: Sequence[dict], variations: Sequence[str],
               data_groups: Sequence[str]) -> list[dict]:
    """Each kept target-group example with its reference-group twin (same ``pair_id``) in ``examples``, tokenized:
    rows with the four fields of :class:`NamePair` and the variation's bucket, shortest first."""
    missing = [e["name"] for e in kept if not e.get("pair_id")]
    if missing:
        raise AuditDataError(f"the causal objective pairs examples by pair_id, which {len(missing)} lack (e.g. {missing[0]!r})")
    ref, tgt = data_groups
    twins = {e["pair_id"]: e for e in examples if e["group"] == ref}
    found = [(e, twins[e["pair_id"]]) for e in kept if e["group"] == tgt and e["pair_id"] in twins]
    texts = [[t["prompt"], r["prompt"], t["response"], r["response"]] for t, r in found]
    ids = [tokenizer(list(col), add_special_tokens=False)["input_ids"] if col else [] for col in zip(*texts)] if texts else []
    rows = []
    for i, (t, _) in enumerate(found):
        parts = [ids[f][i] for f in range(4)]
        if all(parts):  # a pair with an empty answer has no gap to measure
            rows.append({**dict(zip(FIELDS, parts)),
                         "bucket": list(variations).index(variation_key(t["scenario"], t["variation"]))})
    if not rows:
        raise AuditDataError("no target-group scoring example has a reference-group twin with non-empty answers")
    return sorted(rows, key=lambda r: (len(r["target"]) + len(r["target_answer"]), r["bucket"]))


class PairAnswerCollator:
    """Pairs with both answers: each field right-padded into ``<field>`` ``[B, T]`` with ``<field>_len`` ``[B]``."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for f in FIELDS:
            T = max(len(r[f]) for r in rows)
            out[f] = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
            for b, r in enumerate(rows):
                out[f][b, : len(r[f])] = torch.tensor(r[f], dtype=torch.long)
            out[f"{f}_len"] = torch.tensor([len(r[f]) for r in rows], dtype=torch.long)
        for f in ("bucket", "index"):
            out[f] = torch.tensor([r[f] for r in rows], dtype=torch.long)
        out["weight"] = torch.tensor([r["weight"] for r in rows], dtype=torch.float32)
        return out


def batch_pairs(batch: dict[str, torch.Tensor], idx: torch.Tensor) -> list[NamePair]:
    """The :class:`NamePair` of rows ``idx`` of a :class:`PairAnswerCollator` batch."""
    def row(f: str, b: int) -> list[int]:
        return batch[f][b, : int(batch[f"{f}_len"][b])].tolist()

    return [NamePair(*(row(f, b) for f in FIELDS)) for b in idx.tolist()]


class CausalObjective:
    """``--model.objective causal``: per-pair ablation effects on the contrastive gap (module docstring)."""

    name = "causal"
    description = ("causal: d_p(u) = change in the pair's log odds gap when u is zeroed (heads ablated alone,"
                   " neurons first-order); ranked by |M| - |M + mean d|")

    def groups(self, data_groups: Sequence[str]) -> tuple[str, ...]:
        return (CAUSAL_GROUP,)

    def unit_sizes(self, layout: UnitLayout, neurons: bool, heads: bool) -> dict[str, int]:
        sizes = layout.sizes()
        return {**{key: sizes[key] for key, _ in _sites(layout, neurons, heads)}, "gap": 1, "count": 1}

    def items(self, tokenizer, kept: Sequence[dict], examples: Sequence[dict], variations: Sequence[str],
              data_groups: Sequence[str]) -> list[dict]:
        return pair_items(tokenizer, kept, examples, variations, data_groups)

    def collator(self, pad_id: int) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        return PairAnswerCollator(pad_id)

    def score(self, model: nn.Module, layout: UnitLayout, batch: dict[str, torch.Tensor], idx: torch.Tensor,
              neurons: bool = True, heads: bool = True) -> PairScores:
        pairs = batch_pairs(batch, idx)
        effects, gaps = pair_effects(model, layout, pairs, neurons=neurons, heads=heads)
        device = batch["bucket"].device
        scores = {k: v.float().to(device) for k, v in effects.items()}
        scores["gap"] = gaps.float().to(device)[:, None]
        scores["count"] = torch.ones(len(pairs), 1, device=device)
        n_tokens = sum(len(p.target) + len(p.reference) for p in pairs)
        return PairScores(scores=scores, losses=gaps.float(), n_tokens=n_tokens)

    def selection_inputs(self, scores: dict[str, dict[str, torch.Tensor]], data_groups: Sequence[str], rule: str,
                         n_examples: dict[str, int] | None = None) -> tuple[Any, Any, int | None, int | None]:
        """r(u) = |M| − |M + D(u)| per unit group, against a zero reference: only ``pruning.rule=target`` applies."""
        if rule != "target":
            raise ValueError(
                f"pruning.rule={rule!r} compares two groups' scores, but the causal objective ranks units by one"
                " measured effect (group 'causal'): use pruning.rule=target"
            )
        sums = scores[CAUSAL_GROUP]
        n = float(sums["count"].sum())
        if n < 1:
            raise ValueError("the causal objective scored no pair")
        M = float(sums["gap"].sum()) / n
        r = {k: (abs(M) - (M + v.double() / n).abs()).float() for k, v in sums.items() if k not in ("gap", "count")}
        return r, {k: torch.zeros_like(v) for k, v in r.items()}, None, None

