"""A run's state in its ``manifest.json`` through its life: started, each stage, interrupted, failed, finished.

:class:`RunState` is a Lightning callback that the CLI adds to the trainer. It writes the manifest when the run
starts (before the model loads), at every stage boundary (:data:`biasprune.pipeline.manifest.STAGES`) and at the
end, always atomically. A run killed without warning therefore stays at ``running`` with its last stage, its pid
and its host, which ``biasprune report`` reads (docs/failures.md).

Ctrl-C (SIGINT) and SIGTERM, in a run of one process:

* during scoring, the signal is held until the batch being scored is added to the sums (SIGTERM: by Lightning's
  own handler, which stops at a batch's end), then the run stops and a checkpoint of the sums is saved
  (``checkpoints/interrupted-step=N.ckpt``), so a resume is exact (an example is never counted twice or skipped);
* in any other stage a SIGINT stops the run at once and a SIGTERM at the end of the batch (target responses and
  answers are not resumable mid-way: a resume redoes them).

Either way the manifest ends at ``interrupted`` with the stage reached and a ``resume`` entry: the command, the
checkpoint, and what a resume keeps and redoes; the command is printed in one line. The resume continues in the
same run directory (its logger version is pinned). Runs over several processes keep Lightning's own signal
handling; their resume uses the newest checkpoint of the run, if any.
"""

from __future__ import annotations

import json
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from biasprune.pipeline.manifest import MANIFEST, STAGES, start_manifest, update_manifest

__all__ = ["Describe", "RunState", "resume_command"]

SIGNAL_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
VERSION_FLAG = "--trainer.logger.init_args.version"


def _without(argv: Sequence[str], flag: str) -> list[str]:
    """``argv`` without ``flag VALUE`` and ``flag=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def resume_command(argv: Sequence[str], checkpoint: str | Path | None, version: int | str | None) -> str:
    """The command line that resumes a run: its own arguments, ``--ckpt_path`` (when there is a checkpoint) and
    the run's logger version (so the resume writes into the same run directory)."""
    args = _without(_without(argv, "--ckpt_path"), VERSION_FLAG)
    if checkpoint is not None:
        args += ["--ckpt_path", str(checkpoint)]
    if version is not None:
        args += [VERSION_FLAG, str(version)]
    return shlex.join(["biasprune", *args])


class Describe:
    """``(trainer, module) -> dict``: what a run asks of which model on which data, for its manifest (picklable, so
    that a strategy that spawns processes can carry it)."""

    def __init__(self, kind: str, study: Any = None) -> None:
        self.kind, self.study = kind, study

    def __call__(self, trainer, module, datamodule=None) -> dict[str, Any]:
        from biasprune.callbacks.pruning import PruningCallback
        from biasprune.pipeline.manifest import build_manifest

        cb = next((c for c in trainer.callbacks if isinstance(c, PruningCallback)), None)
        dm = datamodule if datamodule is not None else trainer.datamodule
        out = build_manifest(self.kind, trainer, module, dm, cb.settings() if cb else None, self.study)
        if cb is not None:
            out["pruning"] |= cb.run_notes()
        return out


class RunState(Callback):
    """Keep ``run_dir/manifest.json`` current from the start of a run to its end (rank 0 writes).

    Args:
        run_dir: the run directory (the logger's version directory, or a study's output).
        kind: ``fit``, ``validate`` or ``study``.
        argv: the command's arguments after ``biasprune`` (for the manifest and the resume command).
        config: the resolved configuration.
        version: the logger's version (pinned in the resume command), or None.
        describe: ``(trainer, module) -> dict``: what the run asks of which model on which data, merged into the
            manifest once the model and the data are set up.
    """

    def __init__(self, run_dir: str | Path, kind: str, argv: Sequence[str], config: Any = None,
                 version: int | str | None = None, describe: Callable[[Any, Any], Mapping[str, Any]] | None = None) -> None:
        self.run_dir, self.kind, self.argv, self.version = Path(run_dir), kind, list(argv), version
        self.describe = describe
        self.manifest = start_manifest(kind, self.argv, config)
        self.signal: int | None = None
        self.exception: BaseException | None = None
        self.checkpoint: Path | None = None
        self._deferring = False
        self._stopped_at_batch_end = False
        self._handlers: dict[int, Any] = {}
        self._described = False

    def __getstate__(self) -> dict[str, Any]:  # signal handlers and exceptions stay in their process
        return {**self.__dict__, "_handlers": {}, "exception": None}

    # ------------------------------------------------------------------------------------- the manifest
    def start(self, ckpt_path: str | None = None) -> None:
        """Write the manifest of a run that starts now (a resumed run notes the attempt it continues)."""
        previous = self.run_dir / MANIFEST
        if previous.is_file():
            try:
                old = json.loads(previous.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = {}
            if isinstance(old, dict) and old.get("status"):
                attempt = {k: old.get(k) for k in ("created", "status", "stage", "pid", "host", "updated")}
                self.manifest["attempts"] = [*old.get("attempts", []), attempt]
        if ckpt_path:
            self.manifest["resumed_from"] = str(ckpt_path)
        update_manifest(self.run_dir, self.manifest)

    def reload(self) -> None:
        """Continue from the file when another process of this run (a spawned rank 0) wrote later stages."""
        try:
            disk = json.loads((self.run_dir / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(disk, dict) and disk.get("created") == self.manifest.get("created") \
                and len(disk.get("stages", [])) > len(self.manifest.get("stages", [])):
            self.manifest = disk

    def enter(self, stage: str, trainer=None) -> None:
        """Enter ``stage`` (rank 0 writes the manifest)."""
        if trainer is not None and trainer.global_rank != 0:
            return
        update_manifest(self.run_dir, self.manifest, stage=stage)

    def finish(self, description: Mapping[str, Any]) -> None:
        """The run's full description, status ``finished`` and every artifact (before its report is written)."""
        self.reload()
        self.manifest.update({k: v for k, v in description.items() if k != "kind"})
        update_manifest(self.run_dir, self.manifest, stage="finished", status="finished")

    def fail(self, err: BaseException) -> None:
        self.reload()
        update_manifest(self.run_dir, self.manifest, status="failed", error=f"{type(err).__name__}: {err}")

    def interrupted(self, trainer, module, err: BaseException) -> str:
        """Record the interruption with its resume entry; return the lines to print."""
        self.reload()
        stage = str(self.manifest.get("stage"))
        name = SIGNAL_NAMES.get(self.signal or signal.SIGINT, "SIGINT")
        checkpoint, keeps, redoes = self._resume_plan(trainer, module, stage)
        version = self.version if self.kind != "study" else None
        command = resume_command(self.argv, checkpoint, version)
        where = "in the same run directory" if version is not None or self.kind == "study" else "in a new run directory"
        resume = {"command": command, "cwd": self.manifest.get("cwd"), "checkpoint": str(checkpoint) if checkpoint else None,
                  "keeps": keeps, "redoes": redoes}
        update_manifest(self.run_dir, self.manifest, status="interrupted", signal=name, resume=resume)
        return (f"biasprune: interrupted ({name}) during {stage} ({STAGES.get(stage, stage)}); the state is in"
                f" {self.run_dir / MANIFEST}\nresume: {command}\n(the resume keeps {keeps}; it {redoes}, {where})")

    def _resume_plan(self, trainer, module, stage: str) -> tuple[Path | None, str, str]:
        if self.kind == "study":
            return None, "every piece the study finished (under its pieces store)", "computes the other pieces"
        if self.kind == "validate" or stage in ("setup", "target_responses"):
            return None, "nothing", "starts the run again"
        if stage == "scoring":
            ckpt = self.checkpoint or self._newest_checkpoint()
            if ckpt is None:
                return None, "nothing (no checkpoint was saved)", "starts the run again"
            progress = getattr(module, "progress", None)
            if ckpt == self.checkpoint and progress is not None:
                done, total = int(progress.done.sum()), int(progress.done.numel())
                return ckpt, f"the target responses and the scores of {done} of {total} scoring examples", \
                    f"scores the other {total - done}, then evaluates every arm"
            return ckpt, "the target responses and the scores of the newest checkpoint", "scores the other examples, then evaluates every arm"
        cb = getattr(trainer, "checkpoint_callback", None)
        ckpt = Path(cb.last_model_path or cb.best_model_path) if cb is not None and (cb.last_model_path or cb.best_model_path) else self._newest_checkpoint()
        if ckpt is None or not ckpt.is_file():
            return None, "nothing (the run has no checkpoint)", "starts the run again"
        return ckpt, "the scores (the masks are selected from them again, identically)", "evaluates every arm again"

    def _newest_checkpoint(self) -> Path | None:
        found = sorted((self.run_dir / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        return found[-1] if found else None

    # --------------------------------------------------------------------------------------- signals
    def _on_signal(self, signum: int, frame) -> None:
        first = self.signal is None
        self.signal = signum
        if not self._deferring:
            raise KeyboardInterrupt
        if first:
            print(f"\nbiasprune: {SIGNAL_NAMES.get(signum, signum)} received; stopping once the batch being scored is counted"
                  " (press Ctrl-\\ to abort without a checkpoint)", file=sys.stderr, flush=True)

    def install_signals(self) -> None:
        if self._handlers or threading.current_thread() is not threading.main_thread():
            return
        for sig in SIGNAL_NAMES:
            self._handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def restore_signals(self) -> None:
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._handlers = {}

    # ----------------------------------------------------------------------------------------- hooks
    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.global_rank == 0:
            self.reload()
        if trainer.world_size == 1:
            self.install_signals()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.restore_signals()

    def _describe(self, trainer, pl_module) -> None:
        if not self._described and self.describe is not None and trainer.global_rank == 0:
            self.manifest.update({k: v for k, v in self.describe(trainer, pl_module).items() if k != "kind"})
            self._described = True

    def on_fit_start(self, trainer, pl_module) -> None:
        self._describe(trainer, pl_module)
        self.enter("target_responses", trainer)

    def on_train_start(self, trainer, pl_module) -> None:
        self.enter("scoring", trainer)
        self._deferring = trainer.world_size == 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.signal is not None and self._deferring:
            self._stopped_at_batch_end = True
            raise KeyboardInterrupt

    def on_train_end(self, trainer, pl_module) -> None:
        self._deferring = False

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self._describe(trainer, pl_module)
        self.enter("evaluation", trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.enter("results", trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.exception = exception
        self._deferring = False
        sigterm = type(exception).__name__ == "SIGTERMException"  # Lightning's, raised at a batch's end
        if sigterm:
            self.signal = signal.SIGTERM
        # A checkpoint of the sums, only at a batch boundary (the batch is in the sums and marked scored).
        at_boundary = self._stopped_at_batch_end or sigterm
        if at_boundary and trainer.world_size == 1 and self.manifest.get("stage") == "scoring":
            path = self.run_dir / "checkpoints" / f"interrupted-step={trainer.global_step}.ckpt"
            trainer.save_checkpoint(path)
            self.checkpoint = path

    def was_interrupted(self, err: BaseException) -> bool:
        """Whether ``err`` (what the subcommand raised) ends an interruption rather than a failure."""
        if isinstance(err, KeyboardInterrupt) or type(err).__name__ == "SIGTERMException":
            return True
        # Lightning turns a KeyboardInterrupt inside a stage into SystemExit(1) after its graceful shutdown.
        return isinstance(err, SystemExit) and (isinstance(self.exception, KeyboardInterrupt)
                                                or type(self.exception).__name__ == "SIGTERMException")
