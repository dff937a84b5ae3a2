"""``manifest.json``: what a run asked, of which model, with which settings and software (for the report).

Written beside a run's results by the CLI once a stage has finished. The report (``biasprune report``) is
built from this file and the other artifacts alone, without loading the model.
"""

from __future__ import annotations

import datetime as _dt
import platform
import sys
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from biasprune import __version__
from biasprune.core import artifacts

__all__ = ["build_manifest", "versions", "write_manifest"]


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
    """The manifest of a ``fit``, ``validate`` or ``study`` run."""
    from biasprune.models.identity import model_identity
    from biasprune.models.loading import plant_provenance

    device = str(getattr(trainer.strategy, "root_device", "cpu"))
    param = next(iter(module.model.parameters()), None) if getattr(module, "model", None) is not None else None
    return {
        "kind": kind,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": ["biasprune", *sys.argv[1:]],
        "versions": versions(),
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
    return artifacts.write_json(Path(run_dir) / "manifest.json", manifest)
