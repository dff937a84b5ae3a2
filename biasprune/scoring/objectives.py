"""Scoring objectives: what a scoring batch is and which per-unit sums it adds, chosen by ``--model.objective``.

An objective is one implementation of :class:`Objective` over the one capture helper
(:mod:`biasprune.scoring.capture`), registered by name in :data:`OBJECTIVES`:

* ``nll`` (:class:`~biasprune.scoring.gradxact.NLLObjective`): |a · ∂L_e/∂a| of each group's own prompts, the
  paper's gradient x activation (docs/method.md, "Scores");
* ``contrastive`` (:class:`~biasprune.scoring.contrastive.ContrastiveObjective`): attribution patching on
  name-swapped pairs, |est| summed (docs/method.md, "Contrastive attribution");
* ``wanda`` (:class:`~biasprune.scoring.wanda.WandaObjective`): the paper authors' |W|·‖X‖ per group, forward only;
* ``atp`` (:class:`~biasprune.scoring.signed.SignedAttributionObjective`): attribution patching done right: signed
  per-pair estimates ranked by −mean/sd, residual-stream outputs not scored;
* ``direction`` and ``direction_name`` (:class:`~biasprune.scoring.direction.DirectionObjective`): per-layer
  residual-stream sums per group over the prompt's tokens but the first, or the name's tokens (forward only;
  docs/method.md, "Directions");
* ``causal`` (:class:`biasprune.localize.objective.CausalObjective`): per-pair ablation effects on the pairs'
  contrastive gap (heads ablated alone, neurons first-order), the causal search's single-unit stage.

``causal`` lives in :mod:`biasprune.localize` (the same layer as this package), so it is registered by its dotted
path in :data:`PLUGINS` and imported on first use; a user's objective is given the same way, as
``--model.objective mypkg.module.MyObjective`` (a class implementing :class:`Objective`, built without arguments).
The methods, their costs and how they compare: docs/method.md, "Selection methods".

The module, the data module and the pruning callback use only this protocol, never an objective's name. A scorer
consumes a batch and returns, per unit-group key, one row per example; the accumulator adds the rows into
per-variation, per-group sums (additive over examples, processes and variations), so any statistic kept as
sums fits: a Wanda-style |W|·‖X‖ keeps Σ X² per group (a forward-only scorer), a signed attribution keeps its
signed sums, a direction estimator keeps per-layer residual-stream sums under its own keys
(:meth:`Objective.unit_sizes`). Adding one is its file plus one line in :data:`OBJECTIVES`.
"""

from __future__ import annotations

import importlib
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
from biasprune.scoring.signed import SignedAttributionObjective
from biasprune.scoring.wanda import WandaObjective

__all__ = [
    "DEFAULT_OBJECTIVE", "OBJECTIVES", "PLUGINS", "Objective", "SelectionInputs", "get_objective", "objective_names",
    "selection_inputs",
]  # fmt: skip

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
    o.name: o for o in (
        NLLObjective(), ContrastiveObjective(), WandaObjective(), SignedAttributionObjective(), DirectionObjective("prompt"),
        DirectionObjective("name"),
    )
}
DEFAULT_OBJECTIVE = next(iter(OBJECTIVES))
#: Objectives registered by dotted path (imported on first use): name -> ``module.Class``.
PLUGINS: dict[str, str] = {"causal": "biasprune.localize.objective.CausalObjective"}
_loaded: dict[str, Objective] = {}


def objective_names() -> list[str]:
    """Every registered objective name, built-in first."""
    return [*OBJECTIVES, *PLUGINS]


def _load(path: str, flag: str) -> Objective:
    if path not in _loaded:
        module, _, cls = path.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module), cls)()
        except (ImportError, AttributeError, ValueError) as err:
            raise ValueError(f"{flag}={path!r}: cannot import the objective class ({err}); valid names:"
                             f" {objective_names()}, or a dotted path module.Class") from err
        if not isinstance(obj, Objective):
            raise TypeError(f"{flag}={path!r}: {type(obj).__name__} does not implement the Objective protocol")
        _loaded[path] = obj
    return _loaded[path]


def get_objective(objective: str | Objective | None = None, flag: str = "model.objective") -> Objective:
    """The registered objective of a name (None: the default); an :class:`Objective` is returned as it is."""
    if objective is None:
        return OBJECTIVES[DEFAULT_OBJECTIVE]
    if not isinstance(objective, str):
        if not isinstance(objective, Objective):
            raise TypeError(f"{flag}: {type(objective).__name__} does not implement the Objective protocol")
        return objective
    if objective in OBJECTIVES:
        return OBJECTIVES[objective]
    if objective in PLUGINS:
        return _load(PLUGINS[objective], flag)
    if "." in objective:
        return _load(objective, flag)
    check_choice(flag, objective, objective_names())
    raise AssertionError("unreachable: check_choice refuses an unknown name")


def selection_inputs(scores: Mapping[str, dict[str, torch.Tensor]], data_groups: Sequence[str], rule: str,
                     n_examples: dict[str, int] | None = None) -> SelectionInputs:
    """What a rule ranks, from summed scores whose objective is known by its groups only (a scores file, a study
    piece): the first registered objective whose groups are the scores' groups decides."""
    registered = [get_objective(name) for name in objective_names()]
    for objective in registered:
        if set(objective.groups(data_groups)) == set(scores):
            return objective.selection_inputs(dict(scores), data_groups, rule, n_examples)
    known = {o.name: list(o.groups(data_groups)) for o in registered}
    raise ValueError(f"scores of groups {sorted(scores)} fit no objective; the objectives' groups: {known}")
