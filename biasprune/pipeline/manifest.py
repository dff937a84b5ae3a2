"""``manifest.json``: a run's state, what it asked, of which model, with which settings and software, and its files.

The manifest is written when a run starts and rewritten (atomically) at every stage boundary and at the end, so
the run directory always says how far the run got (docs/failures.md):

* ``status``: ``running`` (also what a run killed without warning leaves), ``interrupted`` (Ctrl-C or SIGTERM:
  with the ``resume`` command), ``failed`` (with the ``error``) or ``finished``; ``stage``: the last stage
  reached (:data:`STAGES`), ``stages``: when each began;
* ``command``, ``cwd``, ``config`` (the resolved configuration), ``versions``, ``pid``, ``pid_start`` and
  ``host``: what ran, where, and the process to look for while the status is ``running``;
* ``artifacts``: every file of the run directory with its size and sha256, and for CSV/JSONL results their row
  count (:func:`list_artifacts`); ``biasprune report`` checks them before it renders.

The report (``biasprune report``) is built from this file and the other artifacts alone, without loading the model.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from biasprune import __version__
from biasprune.core import artifacts

__all__ = [
    "MANIFEST",
    "STAGES",
    "STATUSES",
    "build_manifest",
    "list_artifacts",
    "process_start",
    "process_state",
    "start_manifest",
    "update_manifest",
    "versions",
    "write_manifest",
]

MANIFEST = "manifest.json"
STATUSES = ("running", "interrupted", "failed", "finished")
#: The stages a run goes through, in order (a validate run skips the two scoring stages; a study repeats them).
STAGES = {
    "setup": "checking the settings and loading the model and the data",
    "target_responses": "generating the scoring prompts' target responses",
    "scoring": "scoring units (gradient x activation over the scoring examples)",
    "evaluation": "answering the evaluation prompts with every arm",
    "results": "results written (metrics, summary, claims)",
    "finished": "finished",
}
# Files that are not results: rewritten after the end (the report, TensorBoard events), or resume state.
_NOT_ARTIFACTS = ("manifest.json", "report.html", "FAILED")
_CHECKPOINTS = "checkpoints"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (Linux ``/proc``; None elsewhere): with the pid it
    names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def process_state(manifest: Mapping[str, Any]) -> str:
    """Of a manifest still at ``running``: ``alive`` (its process runs), ``gone`` or ``unknown`` (another host)."""
    pid, host = manifest.get("pid"), manifest.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        return "unknown"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:  # alive, another user's
        pass
    start = manifest.get("pid_start")
    return "alive" if start is None or process_start(pid) in (None, start) else "gone"


def list_artifacts(run_dir: str | Path) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Every file of ``run_dir`` (relative POSIX path -> size, sha256 and rows for CSV/JSONL) but the manifest, the
    report, TensorBoard events and temporary files; and the checkpoints (path -> size), which resume a run and may
    be deleted once it has finished."""
    run_dir = Path(run_dir)
    files, checkpoints = {}, {}
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        if not path.is_file() or path.name.startswith(".") or "events.out.tfevents." in path.name:
            continue
        if rel.parts[0] == _CHECKPOINTS:
            checkpoints[rel.as_posix()] = path.stat().st_size
        elif rel.as_posix() not in _NOT_ARTIFACTS:
            stat = path.stat()
            key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
            if key not in _RECORDS:  # a study lists its many pieces at every stage: hash each version of a file once
                _RECORDS[key] = artifacts.file_record(path)
            files[rel.as_posix()] = dict(_RECORDS[key])
    return files, checkpoints


_RECORDS: dict[tuple[str, int, int], dict[str, Any]] = {}


def start_manifest(kind: str, command: list[str], config: Any = None) -> dict[str, Any]:
    """The manifest of a run that starts now: status ``running`` at stage ``setup``, with the process to look for."""
    now = _now()
    return {
        "kind": kind,
        "status": "running",
        "stage": "setup",
        "stages": [{"stage": "setup", "at": now}],
        "created": now,
        "updated": now,
        "command": ["biasprune", *command],
        "cwd": os.getcwd(),
        "pid": os.getpid(),
        "pid_start": process_start(os.getpid()),
        "host": socket.gethostname(),
        "versions": versions(),
        "config": _plain(config) if config is not None else None,
    }


def update_manifest(run_dir: str | Path, manifest: dict[str, Any], stage: str | None = None, **fields: Any) -> dict[str, Any]:
    """Enter ``stage`` (when given), set ``fields``, list the artifacts and rewrite ``manifest.json`` atomically."""
    if stage is not None and stage != manifest.get("stage"):
        manifest["stage"] = stage
        manifest.setdefault("stages", []).append({"stage": stage, "at": _now()})
    manifest.update(fields)
    manifest["updated"] = _now()
    manifest["artifacts"], manifest["checkpoints"] = list_artifacts(run_dir)
    write_manifest(run_dir, manifest)
    return manifest


def versions() -> dict[str, str]:
    out = {"biasprune": __version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "lightning", "torchmetrics", "peft"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = "not installed"
    return out


def _plain(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return {k: _plain(v) for k, v in asdict(obj).items()}
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj if isinstance(obj, (str, int, float, bool)) or obj is None else str(obj)


def _data(dm) -> dict[str, Any]:
    scenarios = []
    used = {r["scenario"] for r in (*dm.scoring_rows, *dm.eval_rows)}
    for name, scen in dm.scenarios.items():
        if name not in used:
            continue
        scenarios.append({
            "name": name, "template": scen.template, "unit": scen.unit, "valid_range": scen.valid_range,
            "wording": getattr(scen, "wording", ""), "provenance": getattr(scen, "provenance", ""), "file": scen.source,
            "variations": [{"id": v.id, "fields": dict(v.fields)} for v in scen.variations],
        })
    return {
        "groups": list(dm.groups),
        "scenarios": scenarios,
        "dataset_file": dm.dataset_file,
        "system_prompt": dm.system_prompt,
        "scoring": list(dm.scoring_variations),
        "evaluation": [f"{s}/{v}" for s, v in dict.fromkeys((r["scenario"], r["variation"]) for r in dm.eval_rows)],
        "eval_splits": list(dm.eval_splits),
        "split_fractions": list(dm.hparams.split_fractions),
        "split_seed": dm.hparams.split_seed,
        "names": dm.hparams.names or "default",
        "splits": {s: [{"name": n, "group": g, "source": dm.name_sources.get(n, "")} for n, g in names]
                   for s, names in dm.names_by_split.items()},
    }


def build_manifest(kind: str, trainer, module, dm, pruning: Mapping[str, Any] | None = None, study: Any = None) -> dict[str, Any]:
    """What a ``fit``, ``validate`` or ``study`` run asked, of which model, on which data (merged into the
    manifest that :func:`start_manifest` began once the model and the data are set up)."""
    from biasprune.models.identity import model_identity
    from biasprune.models.loading import plant_provenance

    device = str(getattr(trainer.strategy, "root_device", "cpu"))
    param = next(iter(module.model.parameters()), None) if getattr(module, "model", None) is not None else None
    return {
        "kind": kind,
        "machine": {"platform": platform.platform(), "device": device, "devices": trainer.num_devices,
                    "strategy": type(trainer.strategy).__name__, "world_size": trainer.world_size},
        "model": _plain(model_identity(module.hparams.model_name_or_path)) | {
            "dtype": str(param.dtype).removeprefix("torch.") if param is not None else str(module.hparams.dtype),
            "plant_provenance": _plain(plant_provenance(module.hparams.model_name_or_path)),
        },
        "targets": _plain(module.targets),
        "generation": _plain(module.generation),
        "evaluation": _plain(module.evaluation),
        "pruning": _plain(pruning or {}),
        "study": _plain(study) if study is not None else None,
        "data": _data(dm),
        "units": {k: sum(n for key, n in module.layout.sizes().items() if key.startswith(k + "/")) for k in ("neuron", "head")}
        if getattr(module, "_layout", None) is not None else {},
    }


def write_manifest(run_dir: str | Path, manifest: Mapping[str, Any]) -> Path:
    return artifacts.write_json(Path(run_dir) / MANIFEST, manifest)
