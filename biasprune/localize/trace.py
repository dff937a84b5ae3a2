"""The layer-wise causal trace: where a name's effect on the answer passes, found by patching activations.

For a name-swapped pair (:class:`biasprune.localize.pairs.NamePair`) and one answer a of it, the target run is
t + a and the reference run r + a (the same answer appended). The two differ only in the name; the tokens after
it (the rest of the prompt, the chat template's tail, a) are the same and are aligned from the end (the longest
common suffix that does not reach into the common prefix). Patching stage s of layer L replaces, in the target
run, that stage's output at every aligned position with its value in the reference run, and reads the answer's
log-probability. The stages, per decoder layer:

* ``resid``: the layer's output (the residual stream after layer L);
* ``attn``: the attention module's output (before it is added to the residual stream);
* ``mlp``: the MLP module's output.

With d = lp(a_t | t) − lp(a_r | t) (the target prompt's preference for its own answer), d' the same with the
patch, and d_r = lp(a_t | r) − lp(a_r | r), the trace reports per stage and layer the mean over pairs of

    effect = d − d'              (how far the patch moves the target towards its twin)
    answer_change = lp'(a_t | t) − lp(a_t | t)     (the change in the answer's own log-probability)

and ``total`` = mean(d − d_r), the pairs' gap (:mod:`biasprune.localize.pairs`): the effect of swapping the whole
prompt. ``effect / total`` is the share of the gap that passes through the patched activation. The name's own
tokens are never patched (they have no counterpart), so the trace shows where the name's effect is read from them
and carried, from layer to layer, at the positions after the name; the resid stage of the last layer recovers the
full gap (every aligned position of the last residual stream is the reference's).

:func:`pointed_layers` picks the layers a stage's trace points to; :func:`layer_share` is a mask's share of pruned
units in given layers (a mask that removes a bias with few units there is a downstream mitigation).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from biasprune.data.prompts import aligned_suffix_len
from biasprune.localize.pairs import NamePair, answer_logprobs
from biasprune.models.architectures import ARCHITECTURES, UnitLayout, decoder_layers

__all__ = ["STAGES", "CausalTrace", "LayerShare", "causal_trace", "layer_share", "pointed_layers", "stage_modules"]

STAGES = ("resid", "attn", "mlp")


@dataclass(frozen=True)
class CausalTrace:
    """Per stage, float64 ``[n_layers]``: the mean ``effect`` and ``answer_change`` of patching layer L
    (module docstring); ``total`` is the pairs' mean gap."""

    effect: dict[str, torch.Tensor]
    answer_change: dict[str, torch.Tensor]
    total: float
    n_pairs: int

    def share(self, stage: str) -> torch.Tensor:
        """effect / total: the share of the gap that passes through each layer's ``stage`` output."""
        return self.effect[stage] / self.total


def stage_modules(model: nn.Module) -> dict[str, list[nn.Module]]:
    """Per stage, the module of each decoder layer whose output is patched."""
    arch = ARCHITECTURES[model.config.model_type]
    layers = list(decoder_layers(model))
    return {
        "resid": layers,
        "attn": [operator.attrgetter(arch.attention)(layer) for layer in layers],
        "mlp": [operator.attrgetter(arch.mlp)(layer) for layer in layers],
    }


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, value):
    return (value, *output[1:]) if isinstance(output, tuple) else value


def causal_trace(
    model: nn.Module, pairs: Sequence[NamePair], stages: Sequence[str] = STAGES, batch_size: int = 32
) -> CausalTrace:
    """Patch each stage's output, layer by layer, from the reference run into the target run (module docstring).

    Cost: per batch of pairs, one reference forward pass that stores every stage output of every layer at the
    aligned positions, one unpatched target pass, and one target pass per (stage, layer): 2 + len(stages)·n_layers
    forward passes over 2 sequences per pair (t + a_t and t + a_r).
    """
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        raise ValueError(f"stages={list(stages)} is not valid; valid choices: {list(STAGES)}")
    if not pairs:
        raise ValueError("causal_trace: no pairs")
    modules = stage_modules(model)
    n_layers = len(modules["resid"])
    effect = {s: torch.zeros(n_layers, dtype=torch.float64) for s in stages}
    change = {s: torch.zeros(n_layers, dtype=torch.float64) for s in stages}
    total = 0.0
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            # rows: per pair, (t + a_t), (t + a_r); their twins (r + a_t), (r + a_r)
            tgt = [p.target + a for p in chunk for a in (p.target_answer, p.reference_answer)]
            ref = [p.reference + a for p in chunk for a in (p.target_answer, p.reference_answer)]
            n_ans = [len(a) for p in chunk for a in (p.target_answer, p.reference_answer)]
            k = [aligned_suffix_len(t, r) for t, r in zip(tgt, ref)]
            stored: dict[tuple[str, int], torch.Tensor] = {}

            def store(hooks, _start, ids, attn, stored=stored):
                for s in stages:
                    for L, mod in enumerate(modules[s]):
                        hooks.forward(mod, lambda m, a, out, key=(s, L), st=stored: st.__setitem__(key, _first(out).detach()))

            with torch.no_grad():
                lp_ref = answer_logprobs(model, ref, n_ans, batch_size=len(ref), hooks_per_batch=store).view(-1, 2)
                lp_tgt = answer_logprobs(model, tgt, n_ans, batch_size=len(tgt)).view(-1, 2)
            d = lp_tgt[:, 0] - lp_tgt[:, 1]
            total += float((d - (lp_ref[:, 0] - lp_ref[:, 1])).sum())
            device = lp_ref.device
            rows = torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(k)]).to(device)
            t_pos = torch.cat([torch.arange(len(t) - n, len(t)) for t, n in zip(tgt, k)]).to(device)
            r_pos = torch.cat([torch.arange(len(r) - n, len(r)) for r, n in zip(ref, k)]).to(device)
            for s in stages:
                for L, mod in enumerate(modules[s]):
                    source = stored[(s, L)][rows, r_pos]

                    def patch(m, a, out, source=source, rows=rows, t_pos=t_pos):
                        x = _first(out).clone()
                        x[rows, t_pos] = source.to(x.dtype)
                        return _replace_first(out, x)

                    with torch.no_grad():
                        lp = answer_logprobs(
                            model, tgt, n_ans, batch_size=len(tgt),
                            hooks_per_batch=lambda hooks, _s, _i, _a, mod=mod, patch=patch: hooks.forward(mod, patch),
                        ).view(-1, 2)  # fmt: skip
                    effect[s][L] += float((d - (lp[:, 0] - lp[:, 1])).sum())
                    change[s][L] += float((lp[:, 0] - lp_tgt[:, 0]).sum())
            stored.clear()
    finally:
        for m, training in modes:
            m.training = training
    n = len(pairs)
    return CausalTrace({s: v / n for s, v in effect.items()}, {s: v / n for s, v in change.items()}, total / n, n)


def pointed_layers(trace: CausalTrace, stages: Sequence[str] = ("attn", "mlp"), share: float = 0.8) -> list[int]:
    """The layers a trace points to: per stage, the fewest layers whose positive effects sum to at least ``share``
    of that stage's total positive effect (largest first); the union over ``stages``, sorted.

    The ``attn`` and ``mlp`` stages measure each layer's own contribution; ``resid`` accumulates over layers and is
    not used here.
    """
    if not 0 < share <= 1:
        raise ValueError(f"share={share} must lie in (0, 1]")
    out: set[int] = set()
    for s in stages:
        if s not in trace.effect:
            raise KeyError(f"stage {s!r} is not in the trace; traced: {list(trace.effect)}")
        signed = trace.effect[s] * (1.0 if trace.total >= 0 else -1.0)  # effects towards removing the gap
        pos = signed.clamp(min=0)
        if float(pos.sum()) <= 0:
            continue
        order = torch.argsort(-pos, stable=True)
        cum = torch.cumsum(pos[order], 0)
        n = int((cum < share * float(pos.sum()) - 1e-12).sum()) + 1
        out.update(int(i) for i in order[:n])
    return sorted(out)


@dataclass(frozen=True)
class LayerShare:
    """A mask's pruned units in given layers: ``share`` = n_in / n_pruned; ``downstream`` when under ``threshold``."""

    layers: tuple[int, ...]
    n_in: int
    n_pruned: int
    share: float
    downstream: bool


def layer_share(
    masks: Mapping[str, torch.Tensor], layout: UnitLayout, layers: Sequence[int], threshold: float = 0.5
) -> LayerShare:
    """The share of a mask's pruned units (bool True = prune, or uint8 keep-masks 0 = pruned) that lie in ``layers``.

    A mask that lowers a bias with less than ``threshold`` of its units in the layers the trace points to acts
    downstream of where the name's effect passes: reported as a downstream mitigation, not a localization.
    """
    layer_of = {f"neuron/{u.path}": u.layer for u in layout.neurons} | {f"head/{h.path}": h.layer for h in layout.heads}
    wanted = set(int(v) for v in layers)
    n_in = n_all = 0
    for key, m in masks.items():
        if key not in layer_of:
            raise KeyError(f"{key!r} names no unit group of this model; keys look like {next(iter(layer_of), '')!r}")
        pruned = int(m.sum()) if m.dtype == torch.bool else int((m == 0).sum())
        n_all += pruned
        n_in += pruned if layer_of[key] in wanted else 0
    share = n_in / n_all if n_all else float("nan")
    return LayerShare(tuple(sorted(wanted)), n_in, n_all, share, bool(n_all and share < threshold))
