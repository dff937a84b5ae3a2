"""The causal ablation search: the units whose zeroing removes a name's effect on the answers, found by ablating them.

Metric: M(S) = the mean over name-swapped pairs of the gap (:mod:`biasprune.localize.pairs`) with the units of S
zeroed; M(∅) is the model's own gap. The search, for one unit kind:

1. **Candidates.** Every unit is ablated alone and M({u}) measured (``shortlist=None``: heads, by default); or
   (``shortlist=n``: neurons, by default) a first-order estimate of every unit's effect,

       est(u) = −Σ_seq Σ_pos Σ_d a[pos, d](u) · ∂M/∂a[pos, d](u)     (≈ M({u}) − M(∅) for zeroing u)

   (attribution patching towards zero, one forward and one backward pass over the pairs), ranks them by the
   reduction it predicts, −sign(M(∅))·est(u), and the top n are then ablated for real (the AtP* pattern,
   Kramár et al. 2024: a cheap first-order shortlist, checked by real ablation).
2. **Greedy.** The ``pool`` candidates whose single ablation lowers |M| most are the pool. From S = ∅, each
   step measures M(S ∪ {c}) for every c of the pool not in S (re-measured after each pick, so units that carry
   the same path are not picked twice for one effect) and adds the c with the smallest |M(S ∪ {c})| (ties: the
   earlier in the pool). It stops when |M(S)| ≤ (1 − ``target_fraction``)·|M(∅)| (the effect is reached), when
   |S| = ``budget``, or when no candidate lowers |M| (no gain).

Zero-ablation, not mean-ablation: the search looks for the units whose *pruning* removes the gap, and pruning
zeroes them (docs/method.md, "Masks"), so it measures exactly the intervention a mask applies. A mean over the
reference group's prompts would keep the model closer to its usual activations (the choice for a mechanistic
account), but would score a different intervention than the one the tool then makes.

The result (:class:`CausalSearch`) gives scores in the selection machinery's format: per unit-group key, a float
tensor whose order over all units of the kind is the search's ranking (greedy picks first, in pick order; then the
other ablated units by their measured reduction of |M|; then the first-order estimates; then the rest), so the
rule ``target`` with scope ``global`` and a budget k ≤ the picks selects the first k picks. Costs:
docs/method.md, "Causal localization".
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from biasprune.core.hooks import HookSet
from biasprune.localize.pairs import SIGNS, NamePair, ablate, answer_logprobs, pair_gaps, pair_sequences
from biasprune.models.architectures import UnitLayout

__all__ = ["CausalSearch", "SearchStep", "causal_search", "first_order_effects", "greedy_picks", "shortlist_candidates",
           "unit_groups"]

Units = Literal["heads", "neurons"]
STOPS = ("effect reached", "budget", "no gain", "no gap")


@dataclass(frozen=True)
class SearchStep:
    """One greedy pick: the unit, and M with every unit picked so far zeroed."""

    key: str
    index: int
    metric: float

    @property
    def unit(self) -> tuple[str, int]:
        return (self.key, self.index)


@dataclass
class CausalSearch:
    """What the search measured and chose.

    Attributes:
        kind: ``head`` or ``neuron``.
        sizes: unit-group key -> number of units (every group of the kind, in layout order).
        baseline: M(∅), the mean gap of the unablated model.
        steps: the greedy picks, in order, each with the measured M after it.
        single: key -> float64 ``[n]``: M({u}) − M(∅) measured by ablating u alone (NaN where not ablated).
        first_order: key -> float64 ``[n]``: the first-order estimate of M({u}) − M(∅) (None without a shortlist).
        stopped: why the greedy search ended (``effect reached``, ``budget``, ``no gain``, ``no gap``).
        n_pairs: pairs the metric averages over.
        evaluations: M evaluations made (each: one forward pass over the 4·n_pairs sequences).
        gradient_passes: forward-and-backward passes over the 4·n_pairs sequences (the first-order shortlist).
    """

    kind: str
    sizes: dict[str, int]
    baseline: float
    steps: list[SearchStep] = field(default_factory=list)
    single: dict[str, torch.Tensor] = field(default_factory=dict)
    first_order: dict[str, torch.Tensor] | None = None
    stopped: str = "budget"
    n_pairs: int = 0
    evaluations: int = 0
    gradient_passes: int = 0

    def selected(self, k: int | None = None) -> list[tuple[str, int]]:
        """The first k greedy picks (all of them by default)."""
        return [s.unit for s in self.steps[: len(self.steps) if k is None else k]]

    def remaining(self) -> list[float]:
        """|M(S)| / |M(∅)| after each pick: the share of the gap left."""
        return [abs(s.metric) / abs(self.baseline) if self.baseline else math.nan for s in self.steps]

    def ranking(self) -> list[tuple[str, int]]:
        """Every unit of the kind, best first (module docstring)."""
        picked = self.selected()
        seen = set(picked)
        sign = 1.0 if self.baseline >= 0 else -1.0

        def tier(values: dict[str, torch.Tensor] | None, gain) -> list[tuple[str, int]]:
            if values is None:
                return []
            found = [(float(gain(float(v[i]))), key, i) for key, v in values.items() for i in range(v.numel())
                     if not math.isnan(float(v[i])) and (key, i) not in seen]  # fmt: skip
            order = [(key, i) for _, key, i in sorted(found, key=lambda t: (-t[0], self._position(t[1], t[2])))]
            seen.update(order)
            return order

        measured = tier(self.single, lambda d: abs(self.baseline) - abs(self.baseline + d))
        estimated = tier(self.first_order, lambda d: -sign * d)
        rest = [(key, i) for key, n in self.sizes.items() for i in range(n) if (key, i) not in seen]
        return picked + measured + estimated + rest

    def _position(self, key: str, index: int) -> int:
        offset = 0
        for k, n in self.sizes.items():
            if k == key:
                return offset + index
            offset += n
        raise KeyError(key)

    def scores(self) -> dict[str, torch.Tensor]:
        """Per unit-group key, float32 ``[n]``: N − rank (N units of the kind; the first-ranked unit scores N)."""
        order = self.ranking()
        out = {key: torch.zeros(n, dtype=torch.float32) for key, n in self.sizes.items()}
        for rank, (key, i) in enumerate(order):
            out[key][i] = float(len(order) - rank)
        return out

    def prune_masks(self, k: int | None = None) -> dict[str, torch.Tensor]:
        """bool masks (True = prune) of the first k picks, for every unit group of the kind."""
        out = {key: torch.zeros(n, dtype=torch.bool) for key, n in self.sizes.items()}
        for key, i in self.selected(k):
            out[key][i] = True
        return out

    def keep_masks(self, k: int | None = None) -> dict[str, torch.Tensor]:
        """uint8 keep-masks (1 = keep, 0 = pruned) of the first k picks, the masks file's format."""
        return {key: (~m).to(torch.uint8) for key, m in self.prune_masks(k).items()}


def unit_groups(layout: UnitLayout, units: Units) -> dict[str, int]:
    """Unit-group key -> size, for ``heads`` (``head/<attention path>``) or ``neurons`` (``neuron/<path>``)."""
    if units == "heads":
        return {f"head/{h.path}": h.n_heads for h in layout.heads}
    if units == "neurons":
        return {f"neuron/{u.path}": u.size for u in layout.neurons}
    raise ValueError(f"units={units!r} is not valid; valid choices: ['heads', 'neurons']")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside the block; every module's own mode is put back after it."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _modules(layout: UnitLayout, keys: Sequence[str]) -> list[tuple[str, nn.Module, int]]:
    """(key, module, n_heads or 0): a neuron group's activation is its module's output, a head group's is the
    input of its ``o_proj``."""
    neurons = {f"neuron/{u.path}": u.module for u in layout.neurons}
    heads = {f"head/{h.path}": h for h in layout.heads}
    return [(k, neurons[k], 0) if k in neurons else (k, heads[k].o_proj, heads[k].n_heads) for k in keys]


def first_order_effects(
    model: nn.Module, layout: UnitLayout, pairs: Sequence[NamePair], keys: Sequence[str], batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """est(u) = −Σ a·∂M/∂a per unit of ``keys`` (module docstring): float64 ``[n]`` per key.

    One forward and one backward pass per batch of sequences; gradients flow to activations only (a detached leaf
    at the embedding output), no parameter gradient is made. Padding is on the right, after every answer, so it
    never influences M and its gradient is exactly 0.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("first-order effects need gradients; inference mode is on (Lightning: inference_mode=False)")
    seqs, n_answer = pair_sequences(pairs)
    weights = torch.tensor(SIGNS * len(pairs), dtype=torch.float64) / len(pairs)
    units = _modules(layout, keys)
    totals: dict[str, torch.Tensor] = {}

    def capture(key: str, a: torch.Tensor, n_heads: int) -> None:
        def on_grad(g: torch.Tensor) -> None:
            dot = (a.detach().double() * g.double()).sum(dim=tuple(range(a.ndim - 1)))
            if n_heads:
                dot = dot.view(n_heads, -1).sum(-1)
            totals[key] = totals.get(key, 0) - dot.cpu()

        if a.requires_grad:
            a.register_hook(on_grad)

    def leaf(module, args, output):
        return output.detach().requires_grad_(True)

    with _eval_mode(model):
        for start in range(0, len(seqs), batch_size):
            chunk = slice(start, start + batch_size)
            with HookSet() as hooks, torch.enable_grad():
                hooks.forward(model.get_input_embeddings(), leaf)
                for key, module, n_heads in units:
                    if n_heads:
                        hooks.forward_pre(module, lambda mod, args, k=key, h=n_heads: capture(k, args[0], h))
                    else:
                        hooks.forward(module, lambda mod, args, out, k=key: capture(k, out, 0))
                lp = answer_logprobs(model, seqs[chunk], n_answer[chunk], batch_size=batch_size)
                (lp * weights[chunk].to(lp.device)).sum().backward()
    missing = [k for k in keys if k not in totals]
    if missing:
        raise RuntimeError(f"no gradient reached {len(missing)} unit group(s), e.g. {missing[:3]}")
    return totals


class _Ablation:
    """M(S) = the pairs' mean gap with the units of S zeroed, for sets S of units of one kind; counts its calls."""

    def __init__(self, model: nn.Module, layout: UnitLayout, sizes: dict[str, int], pairs: Sequence[NamePair], batch_size: int):
        self.model, self.layout, self.sizes, self.batch_size = model, layout, sizes, batch_size
        self.seqs, self.n_answer = pair_sequences(pairs)
        self.evaluations = 0

    def __call__(self, chosen: Sequence[tuple[str, int]]) -> float:
        prune = {}
        for key, i in chosen:
            prune.setdefault(key, torch.zeros(self.sizes[key], dtype=torch.bool))[i] = True
        with torch.no_grad(), ablate(self.model, self.layout, prune):
            lp = answer_logprobs(self.model, self.seqs, self.n_answer, batch_size=self.batch_size)
        self.evaluations += 1
        return float(pair_gaps(lp).mean())


def _check_search(pairs: Sequence[NamePair], budget: int, target_fraction: float, shortlist: int | None, pool: int | None) -> None:
    if not pairs:
        raise ValueError("causal_search: no pairs")
    if budget < 1:
        raise ValueError(f"budget={budget} must be >= 1")
    if not 0 < target_fraction <= 1:
        raise ValueError(f"target_fraction={target_fraction} must lie in (0, 1]")
    for name, value in (("shortlist", shortlist), ("pool", pool)):
        if value is not None and value < 1:
            raise ValueError(f"{name}={value} must be >= 1 or None")


def shortlist_candidates(model: nn.Module, layout: UnitLayout, pairs: Sequence[NamePair], result: CausalSearch,
                         shortlist: int | None, batch_size: int = 64) -> list[tuple[str, int]]:
    """Step 1's candidates (module docstring): every unit of ``result.sizes`` (``shortlist=None``), or the
    ``shortlist`` units whose first-order estimate predicts the largest reduction of |M|, −sign(M(∅))·est(u), best
    first (ties keep layout order); the estimates go to ``result.first_order``."""
    if shortlist is None:
        return [(k, i) for k, n in result.sizes.items() for i in range(n)]
    result.first_order = first_order_effects(model, layout, pairs, list(result.sizes), batch_size)
    result.gradient_passes = 1
    sign = 1.0 if result.baseline > 0 else -1.0
    flat = [(-sign * float(v[i]), k, i) for k, v in result.first_order.items() for i in range(v.numel())]
    flat.sort(key=lambda t: -t[0])  # stable: ties keep layout order
    return [(k, i) for _, k, i in flat[:shortlist]]


def greedy_picks(metric: Callable[[Sequence[tuple[str, int]]], float], single: Mapping[tuple[str, int], float],
                 pool: Sequence[tuple[str, int]], baseline: float, budget: int,
                 target_fraction: float) -> tuple[list[SearchStep], str]:
    """Step 2 (module docstring): the greedy picks from ``pool`` and why the search stopped. ``single``: M({c}) of
    every candidate (the first step's trial values); ``baseline``: M(∅)."""
    steps: list[SearchStep] = []
    picked: list[tuple[str, int]] = []
    current = baseline
    while True:
        if abs(current) <= (1 - target_fraction) * abs(baseline):
            return steps, "effect reached"
        if len(picked) >= budget:
            return steps, "budget"
        left = [c for c in pool if c not in picked]
        if not left:
            return steps, "no gain"
        trial = {c: (single[c] if not picked else metric([*picked, c])) for c in left}
        best = min(left, key=lambda c: abs(trial[c]))  # min keeps the first of equal values
        if abs(trial[best]) >= abs(current):
            return steps, "no gain"
        picked.append(best)
        current = trial[best]
        steps.append(SearchStep(best[0], best[1], current))


def causal_search(
    model: nn.Module,
    layout: UnitLayout,
    pairs: Sequence[NamePair],
    units: Units = "heads",
    budget: int = 8,
    target_fraction: float = 0.9,
    shortlist: int | None = None,
    pool: int | None = 64,
    batch_size: int = 64,
) -> CausalSearch:
    """Search the units of one kind whose zeroing removes the pairs' gap (module docstring).

    Args:
        model: a causal LM (eval mode is set for the search and restored).
        layout: its units (:func:`biasprune.models.architectures.resolve_units`).
        pairs: name-swapped pairs with their two answers (dev names: the search chooses units).
        units: ``heads`` or ``neurons``.
        budget: at most this many units are picked.
        target_fraction: stop once |M(S)| ≤ (1 − target_fraction)·|M(∅)|.
        shortlist: None: ablate every unit alone; n: ablate the n units the first-order estimate ranks highest.
        pool: greedy candidates: the ``pool`` ablated units with the largest single reduction of |M| (None: all).
        batch_size: sequences per forward pass.
    """
    _check_search(pairs, budget, target_fraction, shortlist, pool)
    sizes = unit_groups(layout, units)
    metric = _Ablation(model, layout, sizes, pairs, batch_size)
    result = CausalSearch("head" if units == "heads" else "neuron", sizes, baseline=0.0, n_pairs=len(pairs))
    with _eval_mode(model):
        result.baseline = m0 = metric([])
        if m0 == 0:
            result.stopped = "no gap"
        else:
            candidates = shortlist_candidates(model, layout, pairs, result, shortlist, batch_size)
            single = {c: metric([c]) for c in candidates}
            result.single = {k: torch.full((n,), math.nan, dtype=torch.float64) for k, n in sizes.items()}
            for (k, i), m in single.items():
                result.single[k][i] = m - m0
            ranked = sorted(candidates, key=lambda c: abs(single[c]))  # stable: ties keep candidate order
            chosen_pool = ranked if pool is None else ranked[:pool]
            result.steps, result.stopped = greedy_picks(metric, single, chosen_pool, m0, budget, target_fraction)
    result.evaluations = metric.evaluations
    return result
