"""The pruning Callback: turns scores into masks, applies them, and writes the artifacts.

In ``fit`` it acts once scoring is over (``on_train_end``): it takes the all-reduced score sums from the
module, selects the units to prune by set difference (DESIGN §2), applies the masks (reversible hooks or
zeroed weights), writes ``scores.safetensors`` and ``masks.safetensors`` in the run directory, logs
the pruned counts per layer and module to TensorBoard, and optionally exports a pruned Hugging Face
checkpoint. Given ``masks_file`` it applies that file's masks instead of selecting new ones, so a mask
learned on one context can be evaluated on another (``biasprune validate --pruning.masks_file ...``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from biasprune import artifacts
from biasprune.masks import MaskError, count_pruned, load_masks, save_masks, validate_masks
from biasprune.selection import SCOPES, keep_masks

__all__ = ["PruningCallback"]

UNITS = ("neurons", "heads", "both")
MODES = ("reversible", "hard")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; valid choices: {list(choices)}")


def _fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value} must be a fraction in [0, 1]")


class PruningCallback(Callback):
    """Select, apply and save pruning masks.

    Args:
        units: which units to prune: ``neurons``, ``heads`` or ``both``.
        p: neurons: fraction of each pool protected as most important for the reference group.
        q: neurons: fraction of each pool considered most important for the target group.
        scope: neurons: ``module`` selects within each projection, ``global`` over all neurons.
        head_p: heads: like ``p``.
        head_q: heads: like ``q``.
        head_scope: heads: ``global`` (over all heads of the model, as in the paper) or ``module``.
        mode: ``reversible`` (hooks; removing them restores the model) or ``hard`` (zeroed weights).
        masks_file: apply this ``masks.safetensors`` instead of selecting masks from this run's scores.
        export_dir: after pruning, write a pruned Hugging Face checkpoint there (``save_pretrained``).
        log_histograms: log score histograms per unit kind and group to TensorBoard.
    """

    def __init__(
        self,
        units: Literal["neurons", "heads", "both"] = "neurons",
        p: float = 0.35,
        q: float = 0.40,
        scope: Literal["module", "global"] = "module",
        head_p: float = 0.15,
        head_q: float = 0.15,
        head_scope: Literal["module", "global"] = "global",
        mode: Literal["reversible", "hard"] = "reversible",
        masks_file: str = "",
        export_dir: str = "",
        log_histograms: bool = True,
    ) -> None:
        _choice("pruning.units", units, UNITS)
        _choice("pruning.scope", scope, SCOPES)
        _choice("pruning.head_scope", head_scope, SCOPES)
        _choice("pruning.mode", mode, MODES)
        for name, v in (("pruning.p", p), ("pruning.q", q), ("pruning.head_p", head_p), ("pruning.head_q", head_q)):
            _fraction(name, v)
        self.units, self.p, self.q, self.scope = units, p, q, scope
        self.head_p, self.head_q, self.head_scope = head_p, head_q, head_scope
        self.mode = mode
        self.masks_file = masks_file
        self.export_dir = export_dir
        self.log_histograms = log_histograms
        self.loaded: tuple[dict[str, torch.Tensor], dict[str, str]] | None = None
        if masks_file:
            self.loaded = load_masks(masks_file)  # fail now, before a run starts, on an unreadable file
            if not self.loaded[0]:
                raise MaskError(f"masks file {masks_file!r} holds no masks")

    # ------------------------------------------------------------------------------------ hooks
    def _check_loaded(self, pl_module) -> None:
        if self.loaded is not None:
            validate_masks(self.loaded[0], pl_module.layout, source=self.masks_file)

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        self._check_loaded(pl_module)

    def _apply_loaded(self, pl_module) -> None:
        if self.loaded is None or pl_module.masks is not None:
            return
        self._check_loaded(pl_module)
        pl_module.set_masks(self.loaded[0], self.mode)
        hint = Path(self.masks_file).parent / "inlier_bounds.json"
        if hint.is_file():
            pl_module.bounds_hint = str(hint)

    def on_validation_start(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._apply_loaded(pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module) -> None:
        self._apply_loaded(pl_module)

    def on_predict_start(self, trainer: L.Trainer, pl_module) -> None:
        self._apply_loaded(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        with pl_module.timed("masks"):
            self._prune(trainer, pl_module)

    def _prune(self, trainer: L.Trainer, pl_module) -> None:
        scores = pl_module.final_scores()  # collective: every rank calls it
        dm = pl_module.datamodule
        ref, tgt = dm.groups
        if self.loaded is not None:
            masks, source_meta = self.loaded
            meta = dict(source_meta, source=str(self.masks_file))
        else:
            masks = self.select(scores[tgt], scores[ref])
            meta = self.metadata(ref, tgt, pl_module.scores_metadata()["scoring"])
        pl_module.set_masks(masks, self.mode)
        if trainer.global_rank == 0:
            run = pl_module.run_dir
            tensors = {f"{g}/{key}": s for g, per_key in scores.items() for key, s in per_key.items()}
            artifacts.write_safetensors(run / "scores.safetensors", tensors, pl_module.scores_metadata())
            save_masks(run / "masks.safetensors", masks, meta)
            self._log(trainer, pl_module, scores, masks)
            if self.export_dir:
                pl_module.export_pruned(self.export_dir, meta)

    # -------------------------------------------------------------------------------- selection
    def select(self, target: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keep-masks (uint8, 1 = keep) for the configured unit kinds."""
        masks: dict[str, torch.Tensor] = {}
        kinds = {"neurons": ["neuron"], "heads": ["head"], "both": ["neuron", "head"]}[self.units]
        for kind in kinds:
            p, q, scope = (self.p, self.q, self.scope) if kind == "neuron" else (self.head_p, self.head_q, self.head_scope)
            selected = keep_masks(target, reference, kind, p, q, scope)
            if not selected:
                raise RuntimeError(
                    f"pruning.units={self.units!r} needs {kind} scores, but none were computed"
                    f" (set model.score_{kind}s true)"
                )
            masks.update(selected)
        return masks

    def metadata(self, reference_group: str, target_group: str, scoring: list[str]) -> dict[str, Any]:
        return {
            "p": str(self.p),
            "q": str(self.q),
            "scope": self.scope,
            "head_p": str(self.head_p),
            "head_q": str(self.head_q),
            "head_scope": self.head_scope,
            "units": self.units,
            "reference_group": reference_group,
            "target_group": target_group,
            "scoring": ",".join(scoring),
        }

    # ---------------------------------------------------------------------------------- logging
    def _log(self, trainer: L.Trainer, pl_module, scores: dict, masks: dict[str, torch.Tensor]) -> None:
        counts = count_pruned(masks)
        total = sum(counts.values())
        units = sum(int(m.numel()) for m in masks.values())
        from lightning.pytorch.utilities import rank_zero_info

        rank_zero_info(f"pruned {total} of {units} units ({self.units}); masks in {pl_module.run_dir / 'masks.safetensors'}")
        experiment = None
        for logger in trainer.loggers:
            if hasattr(getattr(logger, "experiment", None), "add_scalar"):
                experiment = logger.experiment
        if experiment is None:
            return
        layout = pl_module.layout
        # One curve per module kind: pruned units against layer index (the paper's Fig. 4 as scalars).
        for key, n in counts.items():
            kind, path = key.split("/", 1)
            if kind == "neuron":
                u = layout.neuron(path)
                experiment.add_scalar(f"pruned/{u.kind}", n, global_step=u.layer)
            else:
                experiment.add_scalar("pruned/heads", n, global_step=layout.head(path).layer)
        experiment.add_scalar("pruned/total", total, global_step=0)
        if self.log_histograms:
            for group, per_key in scores.items():
                for kind in ("neuron", "head"):
                    vals = [s for k, s in per_key.items() if k.startswith(kind + "/")]
                    if vals:
                        experiment.add_histogram(f"scores/{kind}/{group}", torch.cat(vals).log10().clamp(min=-12), 0)
        experiment.flush()
