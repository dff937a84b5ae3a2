"""The ``atp`` objective: attribution patching done right: signed per-pair estimates, a scale-free ranking, and no
residual-stream channel.

The pairs, positions and estimate are the ``contrastive`` objective's (:mod:`biasprune.scoring.contrastive`): for a
name-swapped pair p (target prompt t, reference twin r, the target's answer y appended to both, positions aligned
from the end), est_p(u) = Σ_pos Σ_d (a_r − a_t)·∂m/∂a_t, the first-order change in m = log p(y | t) when u's
activation on the target run is patched from the reference run. Three things differ:

1. **Signed.** est_p(u) < 0 means the name's effect on u makes the target's own answer more likely: u carries the
   difference. The accumulator keeps Σ_p est_p(u), Σ_p est_p(u)² and the pair count n (keys ``<unit key>``,
   ``sq/<unit key>`` and ``count``), all sums over pairs, so distributed, resumed and pooled scoring stay exact.
2. **Scale-free.** Units are ranked by the signal-to-noise ratio of their estimates over pairs::

       z(u) = −mean_p est_p(u) / sd_p est_p(u)        (z = 0 where sd = 0; sd with n − 1)

   a unit whose patch lowers m by a little on every pair outranks one whose large activations make its estimate
   swing both ways. Raw |est| sums grow with activation size, the failure that made ``contrastive`` pick
   "massive activation" channels.
3. **No residual-stream output.** ``down_proj`` and ``o_proj`` output channels are coordinates of the residual
   stream: zeroing one removes a dimension from every later layer, and a per-module budget forces one per layer.
   They are not scored (their masks keep every channel, and the random controls then prune none there either).
   Heads (the ``o_proj`` *input*) are scored.

Only ``--pruning.rule target`` applies (z already contrasts the pair). Cost: the ``contrastive`` objective's (two
forward passes, the reference one without gradients, and one backward per batch of pairs), plus two
``[B, n_units]`` float32 results per unit group instead of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from biasprune.models.architectures import RESIDUAL_OUTPUTS, UnitLayout, writes_residual
from biasprune.scoring.capture import BatchScores, unit_sites
from biasprune.scoring.contrastive import PAIR_FIELDS, ContrastiveObjective, contrastive_batch

__all__ = ["ATP_GROUP", "RESIDUAL_OUTPUTS", "SignedAttributionObjective", "signal_to_noise"]

#: The one score group of this objective.
ATP_GROUP = "atp"
COUNT_KEY = "count"


def signal_to_noise(total: torch.Tensor, squares: torch.Tensor, n: int) -> torch.Tensor:
    """z = −mean / sd of per-pair estimates from their sum, sum of squares and count (float64; 0 where sd = 0)."""
    if n < 2:
        raise ValueError(f"the atp objective needs at least 2 scored pairs for a standard deviation; it has {n}")
    total, squares = total.double(), squares.double()
    mean = total / n
    var = ((squares - n * mean.square()) / (n - 1)).clamp(min=0.0)
    sd = var.sqrt()
    # a variance below float64 rounding of the sum of squares is 0: the unit's estimate is the same on every pair
    tiny = sd <= 1e-12 * (squares / n).sqrt().clamp(min=1e-300)
    return torch.where(tiny, torch.zeros_like(mean), -mean / sd.where(~tiny, torch.ones_like(sd)))


class SignedAttributionObjective(ContrastiveObjective):
    """``--model.objective atp``: signed attribution patching on name-swapped pairs, ranked by −mean/sd over
    pairs, residual-stream outputs excluded (module docstring). Its items and collator are the ``contrastive``
    objective's (the same pairs and aligned positions)."""

    name = "atp"
    description = ("signed attribution patching on name-swapped pairs: z(u) = -mean/sd over pairs of"
                   " sum_t sum_d (a_ref - a_tgt)*dm/da; down_proj/o_proj outputs not scored")

    def groups(self, data_groups: Sequence[str]) -> tuple[str, ...]:
        return (ATP_GROUP,)

    def unit_sizes(self, layout: UnitLayout, neurons: bool, heads: bool) -> dict[str, int]:
        sizes = layout.sizes()
        keys = [s.key for s in unit_sites(layout, neurons, heads) if not writes_residual(s.key)]
        if not keys:
            raise ValueError("the atp objective scores no unit: every neuron module is a residual-stream output"
                             f" ({list(RESIDUAL_OUTPUTS)}) and heads are off; add q/k/v/gate/up_proj or heads")
        return {**{k: sizes[k] for k in keys}, **{f"sq/{k}": sizes[k] for k in keys}, COUNT_KEY: 1}

    def score(self, model: nn.Module, layout: UnitLayout, batch: dict[str, torch.Tensor], idx: torch.Tensor,
              neurons: bool = True, heads: bool = True) -> BatchScores:
        keys = [k for k in self.unit_sizes(layout, neurons, heads) if not k.startswith("sq/") and k != COUNT_KEY]
        out = contrastive_batch(model, layout, *(batch[f][idx] for f in PAIR_FIELDS), neurons=neurons, heads=heads,
                                absolute=False)
        est = {k: out.scores[k] for k in keys}
        scores = {**est, **{f"sq/{k}": v.square() for k, v in est.items()},
                  COUNT_KEY: torch.ones(len(idx), 1, device=out.losses.device)}
        return BatchScores(scores=scores, losses=out.losses, n_tokens=out.n_tokens)

    def selection_inputs(self, scores: dict[str, dict[str, torch.Tensor]], data_groups: Sequence[str], rule: str,
                         n_examples: dict[str, int] | None = None) -> tuple[Any, Any, int | None, int | None]:
        """z(u) per unit group, against a zero reference: only ``pruning.rule=target`` applies."""
        if rule != "target":
            raise ValueError(
                f"pruning.rule={rule!r} compares two groups' scores, but the atp objective ranks pairs by one"
                " statistic (group 'atp'): use pruning.rule=target"
            )
        sums = scores[ATP_GROUP]
        n = int(round(float(sums[COUNT_KEY].sum())))
        z = {k: signal_to_noise(v, sums[f"sq/{k}"], n).float() for k, v in sums.items()
             if not k.startswith("sq/") and k != COUNT_KEY}  # fmt: skip
        return z, {k: torch.zeros_like(v) for k, v in z.items()}, None, None
