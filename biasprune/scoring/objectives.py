"""Scoring objectives: what a scoring batch is and which per-unit sums it adds, chosen by ``--model.objective``.

An objective is one implementation of :class:`Objective` over the one capture helper
(:mod:`biasprune.scoring.capture`), registered by name in :data:`OBJECTIVES`:

* ``nll`` (:class:`~biasprune.scoring.gradxact.NLLObjective`): |a · ∂L_e/∂a| of each group's own prompts, the
  paper's gradient x activation (docs/method.md, "Scores");
* ``contrastive`` (:class:`~biasprune.scoring.contrastive.ContrastiveObjective`): attribution patching on
  name-swapped pairs (docs/method.md, "Contrastive attribution");
* ``direction`` and ``direction_name`` (:class:`~biasprune.scoring.direction.DirectionObjective`): per-layer
  residual-stream sums per group over the prompt's tokens but the first, or the name's tokens (forward only;
  docs/method.md, "Directions").

The module, the data module and the pruning callback use only this protocol, never an objective's name. A scorer
consumes a batch and returns, per unit-group key, one row per example; the accumulator adds the rows into
per-variation, per-group sums (additive over examples, processes and variations), so any statistic kept as
sums fits: a Wanda-style |W|·‖X‖ keeps Σ X² per group (a forward-only scorer), a signed attribution keeps its
signed sums, a direction estimator keeps per-layer residual-stream sums under its own keys
(:meth:`Objective.unit_sizes`). Adding one is its file plus one line in :data:`OBJECTIVES`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from biasprune.core.checks import check_choice
from biasprune.models.architectures import UnitLayout
from biasprune.scoring.capture import BatchScores
from biasprune.scoring.contrastive import ContrastiveObjective
from biasprune.scoring.direction import DirectionObjective
from biasprune.scoring.gradxact import NLLObjective

__all__ = ["DEFAULT_OBJECTIVE", "OBJECTIVES", "Objective", "SelectionInputs", "get_objective", "selection_inputs"]

#: (target scores, reference scores, n_target, n_reference): what a selection rule ranks.
SelectionInputs = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int | None, int | None]


@runtime_checkable
class Objective(Protocol):
    """What scoring needs of an objective: its groups, its batches (collate) and its per-example scores.

    Attributes:
        name: the ``--model.objective`` value.
        description: the ``objective`` metadata of ``scores.safetensors``.
    """

    name: str
    description: str

    def groups(self, data_groups: Sequence[str]) -> tuple[str, ...]:
        """The score groups, given the data's (reference, target): the accumulator keeps one sum per group and
        scoring variation."""
        ...

    def unit_sizes(self, layout: UnitLayout, neurons: bool, heads: bool) -> dict[str, int]:
        """Unit-group key -> number of units, in the order the sums are kept."""
        ...

    def items(self, tokenizer, kept: Sequence[dict], examples: Sequence[dict], variations: Sequence[str],
              data_groups: Sequence[str]) -> list[dict]:
        """Tokenized scoring items from the kept examples (``examples``: all of them, e.g. to find twins), each
        with its accumulator ``bucket`` (variation index x len(groups) + group index)."""
        ...

    def collator(self, pad_id: int) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        """A picklable collate function of items into a batch (with ``bucket``, ``index`` and ``weight``)."""
        ...

    def score(self, model: nn.Module, layout: UnitLayout, batch: dict[str, torch.Tensor], idx: torch.Tensor,
              neurons: bool = True, heads: bool = True) -> BatchScores:
        """Per-example scores of rows ``idx`` of a batch: ``[len(idx), n_units]`` per unit-group key."""
        ...

    def selection_inputs(self, scores: dict[str, dict[str, torch.Tensor]], data_groups: Sequence[str], rule: str,
                         n_examples: dict[str, int] | None = None) -> SelectionInputs:
        """What a selection rule ranks, from summed scores per group (refuses a rule that does not apply)."""
        ...


#: The registered objectives; the first is the default.
OBJECTIVES: dict[str, Objective] = {
    o.name: o for o in (NLLObjective(), ContrastiveObjective(), DirectionObjective("prompt"), DirectionObjective("name"))
}
DEFAULT_OBJECTIVE = next(iter(OBJECTIVES))


def get_objective(objective: str | Objective | None = None, flag: str = "model.objective") -> Objective:
    """The registered objective of a name (None: the default); an :class:`Objective` is returned as it is."""
    if objective is None:
        return OBJECTIVES[DEFAULT_OBJECTIVE]
    if not isinstance(objective, str):
        if not isinstance(objective, Objective):
            raise TypeError(f"{flag}: {type(objective).__name__} does not implement the Objective protocol")
        return objective
    check_choice(flag, objective, list(OBJECTIVES))
    return OBJECTIVES[objective]


def selection_inputs(scores: Mapping[str, dict[str, torch.Tensor]], data_groups: Sequence[str], rule: str,
                     n_examples: dict[str, int] | None = None) -> SelectionInputs:
    """What a rule ranks, from summed scores whose objective is known by its groups only (a scores file, a study
    piece): the first registered objective whose groups are the scores' groups decides."""
    for objective in OBJECTIVES.values():
        if set(objective.groups(data_groups)) == set(scores):
            return objective.selection_inputs(dict(scores), data_groups, rule, n_examples)
    known = {name: list(o.groups(data_groups)) for name, o in OBJECTIVES.items()}
    raise ValueError(f"scores of groups {sorted(scores)} fit no objective; the objectives' groups: {known}")
