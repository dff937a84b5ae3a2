"""What the pruning callback tells the log and TensorBoard about the masks it selected.

:func:`log_selection` writes one log line (units pruned of each kind, the rule, where the masks are) and, when the
trainer has a TensorBoard logger, the pruned units of every module kind against the layer index (the paper's Fig. 4
as scalars: ``pruned/<module kind>``, ``pruned/heads``, ``pruned/total``) and, when asked, a histogram of log10 of
the scores per unit kind and group (``scores/<kind>/<group>``). Rank 0 only: the callback calls it there.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from biasprune.models.architectures import UnitLayout
from biasprune.pruning.arms import pruned_counts

__all__ = ["log_selection", "tensorboard"]


def tensorboard(trainer: L.Trainer):
    """The ``SummaryWriter`` of the trainer's first logger that has one (TensorBoard), or None."""
    return next((lg.experiment for lg in trainer.loggers if hasattr(getattr(lg, "experiment", None), "add_scalar")), None)


def log_selection(trainer: L.Trainer, run_dir: str | Path, layout: UnitLayout, scores: Mapping, masks: Mapping[str, torch.Tensor],
                  rule: str, histograms: bool = True) -> None:
    """Log the masks selected by ``rule`` from ``scores`` (group -> unit-group key -> sums) and written to
    ``run_dir`` (module docstring)."""
    c = pruned_counts(masks)
    what = " and ".join(f"{c[k]} of {c[k + '_units']} {k}s" for k in ("neuron", "head") if c[k + "_units"])
    rank_zero_info(f"pruned {what} ({rule}); masks in {Path(run_dir) / 'masks.safetensors'}")
    experiment = tensorboard(trainer)
    if experiment is None:
        return
    # One curve per module kind: pruned units against layer index (the paper's Fig. 4 as scalars).
    for key, m in masks.items():
        kind, path = key.split("/", 1)
        n = int((m == 0).sum())
        if kind == "neuron":
            u = layout.neuron(path)
            experiment.add_scalar(f"pruned/{u.kind}", n, global_step=u.layer)
        else:
            experiment.add_scalar("pruned/heads", n, global_step=layout.head(path).layer)
    experiment.add_scalar("pruned/total", c["neuron"] + c["head"], global_step=0)
    if histograms:
        for group, per_key in scores.items():
            for kind in ("neuron", "head"):
                vals = [s.float() for k, s in per_key.items() if k.startswith(kind + "/")]
                if vals:
                    experiment.add_histogram(f"scores/{kind}/{group}", torch.cat(vals).clamp(min=1e-12).log10(), 0)
    experiment.flush()
