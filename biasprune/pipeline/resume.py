"""Scoring progress: which examples are scored, exact resume, and refusing a checkpoint of another run.

``fit`` only scores (:func:`scoring_only`): trainer settings that would stop it before every scoring example is
scored are refused, and validation is off during it (the arms are evaluated by the ``validate`` stage that follows,
with the settings put back by :func:`restore_validation`).

A checkpoint holds the score sums, which examples they cover and the run's fingerprint (digests of the
model, the data and the settings; :meth:`BiasPruneModule.fingerprint`, :meth:`AuditDataModule.fingerprint`).
Resuming continues the sums from there; a checkpoint whose fingerprint differs from the current run is
refused, naming the fields that differ, so scores and masks can never come from other inputs than the
ones ``config.yaml`` states.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from biasprune.core.distributed import all_reduce
from biasprune.core.errors import BiasPruneError, ConfigError
from biasprune.scoring.accumulate import ScoreAccumulator

__all__ = ["FingerprintMismatch", "ScoringProgress", "accumulate_time", "check_fingerprint", "check_scoring_limits", "checkpoint_state",
           "model_fingerprint", "restore_validation", "restored_state", "scoring_only"]


class FingerprintMismatch(BiasPruneError, RuntimeError):
    """Stored results were made from other inputs than this run's."""


def check_fingerprint(stored: Mapping[str, str], current: Mapping[str, str], what: str) -> None:
    """Raise when ``stored`` and ``current`` differ, naming every differing field."""
    diff = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
    if diff:
        detail = "; ".join(f"{k}: {stored.get(k, '<absent>')!r} -> {current.get(k, '<absent>')!r}" for k in diff[:6])
        raise FingerprintMismatch(
            f"{what} was made with other inputs than this run ({len(diff)} field(s) differ: {detail}). Resume it"
            " with the configuration it was made with (its config.yaml), or start a new run without it."
        )


def check_scoring_limits(trainer, n_batches: int) -> None:
    """Refuse trainer settings that would leave scoring examples unscored (before any work is done)."""
    problems = []
    if getattr(trainer, "fast_dev_run", False):
        problems.append(f"--trainer.fast_dev_run={trainer.fast_dev_run}")
    limit = trainer.limit_train_batches
    if limit is not None and not (isinstance(limit, float) and limit == 1.0) and not (isinstance(limit, int) and limit >= n_batches):
        problems.append(f"--trainer.limit_train_batches={limit}")
    if trainer.max_steps not in (-1, None) and 0 <= trainer.max_steps < n_batches:
        problems.append(f"--trainer.max_steps={trainer.max_steps}")
    if trainer.max_epochs is not None and trainer.max_epochs == 0:
        problems.append("--trainer.max_epochs=0")
    if getattr(trainer, "overfit_batches", 0):
        problems.append(f"--trainer.overfit_batches={trainer.overfit_batches}")
    if problems:
        raise ConfigError(
            f"{', '.join(problems)} would stop scoring before its {n_batches} batch(es) are done, and scores over part"
            " of the scoring examples would pass for the run's scores. Remove the setting; choose fewer scoring"
            " prompts with --data.scoring or a smaller name split instead."
        )


def scoring_only(trainer, n_rows: int, batch_size: int) -> tuple[Any, Any]:
    """Prepare ``trainer`` for a ``fit`` that only scores ``n_rows`` rows in global batches of ``batch_size``: refuse
    settings that would leave some unscored (:func:`check_scoring_limits`, on one rank's share of the batches) and
    switch validation off. Returns the validation settings, for :func:`restore_validation` after ``fit``."""
    n_batches = -(-n_rows // batch_size)  # global batches; each rank runs its share
    check_scoring_limits(trainer, -(-n_batches // trainer.world_size))
    saved = (trainer.limit_val_batches, trainer.num_sanity_val_steps)
    trainer.limit_val_batches, trainer.num_sanity_val_steps = 0, 0
    return saved


def restore_validation(trainer, saved: tuple[Any, Any]) -> None:
    """Put back the validation settings that :func:`scoring_only` returned, so that ``validate`` runs as configured."""
    trainer.limit_val_batches, trainer.num_sanity_val_steps = saved


class ScoringProgress:
    """A boolean per scoring example (scored or not) and the resume bookkeeping around the accumulator."""

    def __init__(self, n_examples: int, device: torch.device) -> None:
        self.done = torch.zeros(n_examples, dtype=torch.bool, device=device)

    def mark(self, indices: torch.Tensor) -> None:
        self.done[indices] = True

    def complete(self) -> bool:
        return bool(all_reduce(self.done.to(torch.uint8), op="max").all())

    @staticmethod
    def count_step(trainer) -> None:
        """Count a scored batch as a training step.

        Scoring has no optimizer, so Lightning's step counter would stay at 0; counting scored batches makes
        ``global_step`` and ``ModelCheckpoint(every_n_train_steps=...)`` work.
        """
        progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        progress.increment_ready()
        progress.increment_completed()

    def state(self, acc: ScoreAccumulator) -> dict[str, Any]:
        """The totals over all ranks (collective: every rank calls it)."""
        return {
            "score_sums": all_reduce(acc.sums).cpu(),
            "n_examples": all_reduce(acc.n_examples).cpu(),
            "done": all_reduce(self.done.to(torch.uint8), op="max").bool().cpu(),
        }

    def restore(self, state: Mapping[str, Any], acc: ScoreAccumulator, rank: int) -> None:
        if tuple(state["score_sums"].shape) != tuple(acc.sums.shape) or state["done"].numel() != self.done.numel():
            raise RuntimeError("the checkpoint's score sums do not fit this model, neuron_modules and scoring examples")
        self.done.copy_(state["done"].to(self.done.device))
        if rank == 0:  # totals live on one rank so that the final all-reduce counts them once
            acc.sums.copy_(state["score_sums"].to(acc.sums.device))
            acc.n_examples.copy_(state["n_examples"].to(acc.sums.device))

    def finalize(self, acc: ScoreAccumulator, variations: Sequence[str], groups: Sequence[str]) -> dict[str, Any]:
        """All-reduce once; ``{"scores": variation -> group -> key -> float64 tensor, "n_examples": ...}``."""
        done = all_reduce(self.done.to(torch.uint8), op="max")
        if not bool(done.all()):
            raise RuntimeError(
                f"scoring ended with {int((done == 0).sum())} of {done.numel()} examples not scored; the scores would"
                " cover part of the scoring set"
            )
        per_bucket = acc.split(all_reduce(acc.sums), dtype=torch.float64)
        counts = all_reduce(acc.n_examples).tolist()
        n_groups = len(groups)
        scores = {v: {g: per_bucket[i * n_groups + j] for j, g in enumerate(groups)} for i, v in enumerate(variations)}
        n_examples = {v: {g: int(counts[i * n_groups + j]) for j, g in enumerate(groups)} for i, v in enumerate(variations)}
        return {"scores": scores, "n_examples": n_examples}


def checkpoint_state(fingerprint: Mapping[str, str], examples: Sequence[dict] | None, progress: ScoringProgress | None,
                     acc: ScoreAccumulator | None) -> dict[str, Any]:
    """What a checkpoint holds: the run's fingerprint and, once scoring has started, the scoring examples, the
    score sums and which examples they cover (collective: every rank calls it)."""
    state: dict[str, Any] = {"fingerprint": dict(fingerprint)}
    if examples is not None and progress is not None:
        state["scoring_examples"] = list(examples)
        state.update(progress.state(acc))
    return state


def restored_state(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The scoring state a checkpoint holds (:func:`checkpoint_state`); refuses one written by no scoring run."""
    state = checkpoint.get("biasprune")
    if not state or "scoring_examples" not in state:
        raise RuntimeError(
            "this checkpoint holds no biasprune scoring state (it was not written during scoring by this"
            " version); start the run again without --ckpt_path"
        )
    return dict(state)


@contextlib.contextmanager
def accumulate_time(timings: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of the block to ``timings[name]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def model_fingerprint(hparams: Mapping[str, Any], identity: Mapping[str, Any], targets: Mapping[str, Any]) -> dict[str, str]:
    """The module's part of a run's fingerprint: model identity (id, weights and adapter digests), dtype, units,
    objective and target-response settings."""
    return {
        "model": str(hparams["model_name_or_path"]),
        "model.weights_sha256": str(identity.get("base_sha256") or ""),
        "model.adapter_sha256": str(identity.get("adapter_sha256") or ""),
        "model.dtype": str(hparams["dtype"]),
        "model.neuron_modules": ",".join(hparams["neuron_modules"]),
        "model.score_kinds": f"{hparams['score_neurons']},{hparams['score_heads']}",
        "model.objective": str(hparams["objective"]),
        "model.targets": str(dict(targets)),
    }
