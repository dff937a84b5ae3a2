"""Arms of an evaluation: the unpruned model, a pruned model, and the random-mask controls.

An arm is what the model looks like while one set of answers is sampled. Every batch of evaluation prompts
is answered once per arm, with the same keyed random streams (so arms are paired answer by answer). The
pruning callback decides which arms a batch gets (:class:`ArmSource`) and hands them to the module as an
:class:`EvaluationPlan` at the start of every validate stage; the module puts each arm on the model
(:meth:`Arm.applied`: its masks and its edit, as reversible hooks) and records which arm produced each answer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import nn

from biasprune.models.architectures import UnitLayout
from biasprune.pruning.direction import DirectionEdit
from biasprune.pruning.masks import apply_masks

__all__ = ["Arm", "ArmSource", "EvaluationPlan", "Phase", "PrunableModule", "UNPRUNED", "pruned_counts"]

Phase = Literal["baseline", "pruned", "random"]


def pruned_counts(masks: Mapping[str, torch.Tensor] | None) -> dict[str, int]:
    """Pruned units (mask value 0) per kind (``neuron``, ``head``) and their totals (``*_units``)."""
    out = {"neuron": 0, "head": 0, "neuron_units": 0, "head_units": 0}
    for key, m in (masks or {}).items():
        kind = key.split("/", 1)[0]
        out[kind] += int((m == 0).sum())
        out[f"{kind}_units"] += int(m.numel())
    return out


@dataclass(frozen=True, eq=False)
class Arm:
    """One arm for one variation.

    Attributes:
        name: unique within an evaluation (``unpruned``, ``pruned``, ``random/0``, or a study arm id).
        phase: ``baseline`` (no masks), ``pruned`` (the masks under test) or ``random`` (a control).
        masks: keep-masks (1 = keep) applied while this arm answers; None for the unpruned model.
        edit: a residual-stream edit applied while this arm answers (the direction arm and its random-direction
            controls, :class:`biasprune.pruning.direction.DirectionEdit`); None for a masks arm.
        draw: the random control's draw index (-1 for other arms).
        labels: extra columns carried into the answer records (e.g. the study's units, strategy, point).
    """

    name: str
    phase: Phase
    masks: Mapping[str, torch.Tensor] | None = None
    draw: int = -1
    labels: Mapping[str, object] = field(default_factory=dict)
    edit: DirectionEdit | None = None

    def counts(self) -> dict[str, int]:
        """Pruned units per kind and, for an edit arm, its edited layers (``edited_layers``)."""
        return pruned_counts(self.masks) | {"edited_layers": len(self.edit.layers) if self.edit is not None else 0}

    @contextlib.contextmanager
    def applied(self, model: nn.Module, layout: UnitLayout) -> Iterator[None]:
        """This arm on ``model`` inside the ``with`` block: its masks (on the units of ``layout``) and its edit, as
        hooks that are all removed on exit, even after an error."""
        with contextlib.ExitStack() as applied:
            if self.masks:
                applied.enter_context(apply_masks(model, layout, self.masks))
            if self.edit is not None:
                applied.enter_context(self.edit.apply(model))
            yield


UNPRUNED = Arm("unpruned", "baseline")


@runtime_checkable
class ArmSource(Protocol):
    """What decides the arms of each evaluation batch (the pruning callback, or a study's plan)."""

    def arms_for(self, split: str, scenario: str, variation: str) -> Sequence[Arm]:
        """The arms that answer the prompts of one (split, variation) group, in order."""
        ...


@dataclass(frozen=True)
class EvaluationPlan:
    """What one validate stage answers, and whether the module writes the run's results.

    Attributes:
        arms: the arms of every (split, variation) batch (the pruning callback, or the study's stage).
        write_results: write ``metrics.csv``, the summary and the claims at the end of the stage; False when the
            caller aggregates the answers itself (they are then written to ``answers.jsonl``).
    """

    arms: ArmSource
    write_results: bool = True


@runtime_checkable
class PrunableModule(Protocol):
    """The members of the LightningModule that the pruning callback uses (and nothing else)."""

    @property
    def layout(self):  # UnitLayout: the model's prunable units
        ...

    @property
    def run_dir(self) -> Path: ...

    @property
    def evaluation(self):  # EvaluationConfig: whether the unpruned model is evaluated, bounds, statistics
        ...

    def final_scores(self) -> dict[str, dict[str, dict[str, torch.Tensor]]] | None:
        """Score sums per scoring variation, group and unit-group key, or None when this module did not score
        in this run (collective: every rank calls it)."""
        ...

    def configure_evaluation(self, plan: EvaluationPlan | None) -> None: ...

    def export_pruned(self, out_dir: str | Path, masks: Mapping[str, torch.Tensor], metadata: Mapping[str, object]) -> Path: ...
