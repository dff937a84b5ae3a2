"""The pruning Callback: turns scores into masks, and gives every evaluation batch its arms.

At the start of a ``validate`` stage it resolves the masks under test: those of ``masks_file``, or, after
``fit`` in the same run, masks selected from the run's scores (docs/method.md, "Selection rules"; ``rule``,
``p``/``q`` or ``budget``), written to ``masks.safetensors`` (and exported as a Hugging Face checkpoint when
asked). It then hands the module its evaluation plan (:class:`biasprune.pruning.arms.EvaluationPlan`): the arms of
each batch, i.e. the unpruned model, the pruned model, and ``random_draws`` random masks that prune the same
number of units per module (neurons) and in total (heads), drawn for each name split separately (seeds by (split,
arm, draw): :meth:`biasprune.pruning.factory.MaskFactory.control_seed`; docs/method.md, "Answers, arms and
metrics"), or the plan given to :meth:`PruningCallback.configure_evaluation` (the study's). It needs only the
:class:`biasprune.pruning.arms.PrunableModule` members of the module, and for the mechanism artifact
(``name_attention.csv``, :mod:`biasprune.callbacks.mechanism`) its ``model`` and ``tokenizer``.

A masks file is copied into the run directory as ``masks.safetensors`` (so the run directory alone shows what was
evaluated), its path and sha256 go to the manifest (:meth:`PruningCallback.run_notes`), and its arm is named after
it (``pruned[quickstart/version_0]``) in every table. A budget that selects no unit is refused: ``0`` when the
callback is built, a fraction under one unit of every pool once the model is loaded (before scoring); a budget
rounded up to one unit in a pool is said in the log and the manifest.

``budget: auto`` (or ``head_budget: auto``) leaves the budget, and the rule among ``auto_rules``, to a choice on dev
names made before the reported stage, by the study's rule (:mod:`biasprune.study.choose`, with the utility guard):
:class:`biasprune.study.trainer.BiasPruneTrainer` makes it (:mod:`biasprune.study.auto`) and hands it over with
:meth:`PruningCallback.configure_choice`.

With ``method="direction"`` the arm under test is not a mask but an affine edit of the residual stream at
``direction_layers``, estimated from the run's ``direction`` sums (docs/method.md, "Directions"): it is written to
``direction.safetensors`` and evaluated beside ``random_draws`` random-direction controls of the same size.

The callback is its settings (:class:`biasprune.callbacks.settings.PruningSettings`: the ``--pruning.*`` arguments,
their checks, the masks of a point, random controls, budget notes) plus what happens in a run: the hooks, the arms
of every batch, and the arm under test resolved and written at the start of ``validate``. Beside it: the masks file
it is given (:class:`biasprune.pruning.masks.MasksSource`), its log and TensorBoard output
(:mod:`biasprune.callbacks.monitor`) and the mechanism artifact (:func:`biasprune.callbacks.mechanism.record_name_attention`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from biasprune.callbacks.mechanism import record_name_attention
from biasprune.callbacks.monitor import log_selection
from biasprune.callbacks.settings import METHODS, PruningSettings, metadata_strings
from biasprune.pipeline.resume import check_fingerprint
from biasprune.pruning.arms import UNPRUNED, Arm, EvaluationPlan, PrunableModule
from biasprune.pruning.direction import DirectionEdit, estimate_direction, parse_layers
from biasprune.pruning.factory import AUTO, UNITS
from biasprune.pruning.masks import masks_arm_name, save_masks
from biasprune.scoring.scorefile import summed_run_scores

__all__ = ["AUTO", "METHODS", "UNITS", "PruningCallback", "masks_arm_name"]


class PruningCallback(PruningSettings, Callback):
    """Select and save pruning masks, and serve the evaluation arms.

    Its arguments (``--pruning.*``) and everything decided from them without a trainer are
    :class:`~biasprune.callbacks.settings.PruningSettings`'; this class adds the run: the masks (or direction edit)
    under test, resolved at the start of every ``validate`` stage, and the arms of every evaluation batch.
    """

    masks: dict[str, torch.Tensor] | None = None  # the masks under test, once resolved
    _arms: dict[str, list[Arm]] | None = None  # per split, made on first use
    _baseline = True
    _plan: EvaluationPlan | None = None

    def configure_evaluation(self, plan: EvaluationPlan | None) -> None:
        """Hand ``plan`` (the study's arms) to the module in the next validate stages instead of this run's masks;
        None goes back to this run's masks."""
        self._plan = plan

    @property
    def plan(self) -> EvaluationPlan | None:
        """The plan given to :meth:`configure_evaluation` (None: this run's masks)."""
        return self._plan

    def arms_from(self, masks: Mapping[str, torch.Tensor] | None, split: str, baseline: bool = True) -> list[Arm]:
        """The arms of one split: the unpruned model, the pruned model and its random controls on that split."""
        arms = [UNPRUNED] if baseline else []
        if masks is not None:
            arms.append(Arm(self.arm_name, "pruned", masks))
            arms += [Arm(f"random/{d}", "random", m, draw=d) for d, m in enumerate(self.random_controls(masks, split))]
        return arms

    def direction_arms(self, edit: DirectionEdit, split: str, baseline: bool = True) -> list[Arm]:
        """The arms of one split: the unpruned model, the direction edit and ``random_draws`` random-direction
        controls of the same size, seeded like the random masks by (split, arm, draw)."""
        arms = [UNPRUNED] if baseline else []
        arms.append(Arm("pruned", "pruned", edit=edit))
        controls = self.factory.random_edits(edit, split, "pruned", range(self.random_draws))
        return arms + [Arm(f"random/{d}", "random", edit=e, draw=d) for d, e in enumerate(controls)]

    def arms_for(self, split: str, scenario: str, variation: str) -> Sequence[Arm]:
        if self._arms is None:
            self._arms = {}
        if split not in self._arms:
            if self.method == "direction":
                self._arms[split] = self.direction_arms(self.direction, split, self._baseline) if self.direction is not None \
                    else [UNPRUNED]
            else:
                self._arms[split] = self.arms_from(self.masks, split, self._baseline)
        return self._arms[split]

    # ---------------------------------------------------------------------------------------- hooks
    def _fingerprint(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.settings().items() if k != "chosen"}  # the choice comes after scoring

    def state_dict(self) -> dict[str, Any]:
        return {"settings": self._fingerprint()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "settings" in state_dict:
            check_fingerprint(state_dict["settings"], self._fingerprint(), "the checkpoint (pruning settings)")

    def on_fit_start(self, trainer: L.Trainer, pl_module: PrunableModule) -> None:
        objective = getattr(getattr(pl_module, "objective", None), "name", "")
        if self.method == "direction" and not self.direction_file and not objective.startswith("direction"):
            raise ValueError(f"pruning.method=direction needs model.objective=direction or direction_name (got {objective!r})")
        if self.masks_input is not None:
            self.masks_input.check(pl_module.layout)
        elif self._plan is None and self.method == "masks":
            self.check_budgets(pl_module.layout.sizes())  # before scoring: the budget must select something

    def on_validation_start(self, trainer: L.Trainer, pl_module: PrunableModule) -> None:
        if trainer.sanity_checking:
            return
        if self._plan is not None:
            pl_module.configure_evaluation(self._plan)
            return
        if self.method == "direction":
            self._resolve_direction(trainer, pl_module)  # sets self.direction (None when nothing was scored)
        else:
            self.masks = self._resolve(trainer, pl_module)
        self._arms, self._baseline = {}, pl_module.evaluation.baseline
        pl_module.configure_evaluation(EvaluationPlan(self))

    def run_scores(self, pl_module: PrunableModule) -> tuple[dict, dict[str, int], list[str]] | None:
        """This run's scores summed over its scoring variations, the examples behind each group and the
        variations; None when nothing was scored in this run (collective: every rank calls it)."""
        per_variation = pl_module.final_scores()
        return summed_run_scores(pl_module.run_dir, per_variation)

    def _resolve_direction(self, trainer: L.Trainer, pl_module: PrunableModule) -> DirectionEdit | None:
        """The direction under test: ``direction_file``'s, or estimated from this run's sums and written to
        ``direction.safetensors`` (and beside the exported model); None when nothing was scored."""
        n_layers = len(pl_module.layout.heads)
        if self.direction is not None:
            parse_layers(list(self.direction.layers), n_layers, flag=f"pruning.direction_file={self.direction_file!r}")
            return self.direction
        found = self.run_scores(pl_module)
        if found is None:
            return None
        scores, _, variations = found
        ref, tgt = trainer.datamodule.groups
        layers = parse_layers(self.direction_layers, n_layers)
        meta = metadata_strings(self.settings()) | {
            "scoring": ",".join(variations), "model": str(getattr(pl_module, "hparams", {}).get("model_name_or_path", ""))}
        self.direction = edit = estimate_direction(scores, (ref, tgt), layers, meta)
        if trainer.global_rank == 0:
            edit.save(Path(pl_module.run_dir) / "direction.safetensors")
            if self.export_dir:
                pl_module.export_pruned(self.export_dir, {}, meta)
                edit.save(Path(self.export_dir) / "direction.safetensors")
            rank_zero_info(f"direction edit at layer(s) {list(layers)}; in {Path(pl_module.run_dir) / 'direction.safetensors'}")
        return edit

    def _resolve(self, trainer: L.Trainer, pl_module: PrunableModule) -> dict[str, torch.Tensor] | None:
        if self.masks_input is not None:
            return self.masks_input.use(pl_module.layout, pl_module.run_dir, write=trainer.global_rank == 0)
        found = self.run_scores(pl_module)
        if found is None:
            return None  # nothing was scored in this run: evaluate the unpruned model
        scores, n, variations = found
        ref, tgt = trainer.datamodule.groups
        masks = self.select_point(scores, (ref, tgt), n)
        if trainer.global_rank == 0:
            meta = metadata_strings(self.settings()) | {"reference_group": ref, "target_group": tgt, "scoring": ",".join(variations)}
            save_masks(Path(pl_module.run_dir) / "masks.safetensors", masks, meta)
            if self.export_dir:
                pl_module.export_pruned(self.export_dir, masks, meta)
            rule = (self.chosen or {}).get("rule", self.factory.rule_name)
            log_selection(trainer, pl_module.run_dir, pl_module.layout, scores, masks, rule, self.log_histograms)
        record_name_attention(trainer, pl_module, masks, self.mechanism_pairs)
        return masks
