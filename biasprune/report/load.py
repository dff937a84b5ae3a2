"""Reading a run directory for the report: the manifest, the result tables, the masks and the answers.

Columns are read by name and every optional column may be missing (older or newer runs); numbers are parsed
on use (:func:`num`), so a table with extra columns or an empty cell never stops the report.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ReportError", "RunArtifacts", "iter_answers", "layer_and_kind", "load_run", "num", "read_masks", "read_table", "text"]

KINDS = ("fit", "validate", "study")
REQUIRED = {"fit": ("manifest.json", "metrics.csv"), "validate": ("manifest.json", "metrics.csv"),
            "study": ("manifest.json", "metrics.csv", "results.csv")}


class ReportError(ValueError):
    """A directory that is not a finished run, or a run file that cannot be read."""


def num(row: Mapping[str, object] | None, key: str) -> float:
    """``row[key]`` as a float; NaN when missing, empty or not a number (``True``/``False`` give 1/0)."""
    if row is None:
        return math.nan
    v = row.get(key)
    if isinstance(v, (int, float)):
        return float(v)
    if not isinstance(v, str) or not v.strip():
        return math.nan
    if v in ("True", "False"):
        return float(v == "True")
    try:
        return float(v)
    except ValueError:
        return math.nan


def text(row: Mapping[str, object] | None, key: str) -> str:
    """``row[key]`` as a string ('' when missing)."""
    v = (row or {}).get(key)
    return "" if v is None else str(v)


def _csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return [dict(r) for r in csv.DictReader(fh)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ReportError(f"{path}: cannot read the table ({err})") from err


def read_table(path: Path) -> list[dict[str, str]]:
    """A CSV file of a run as rows of strings (:class:`ReportError` when unreadable)."""
    return _csv(path)


def _json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ReportError(f"{path}: not readable as JSON ({err})") from err


@dataclass
class RunArtifacts:
    """What the report shows, read from one run directory (nothing else is consulted but plant provenance)."""

    run_dir: Path
    kind: str
    manifest: dict
    metrics: list[dict]
    summary: list[dict]
    claims: list[dict]
    grid: list[dict] = field(default_factory=list)
    bounds: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    config_text: str = ""

    def file(self, name: str) -> Path:
        return self.run_dir / name

    @property
    def splits(self) -> list[str]:
        """Evaluated splits, test first."""
        return sorted(dict.fromkeys(text(r, "split") for r in self.metrics), key=lambda s: (s != "test", s))

    @property
    def headline_split(self) -> str:
        return self.splits[0] if self.splits else "test"

    @property
    def groups(self) -> tuple[str, str]:
        g = list(self.manifest.get("data", {}).get("groups") or ["reference", "target"])
        return (str(g[0]), str(g[1] if len(g) > 1 else "target"))


def load_run(run_dir: str | Path) -> RunArtifacts:
    """Read a finished ``fit``, ``validate`` or ``study`` directory; :class:`ReportError` names what is wrong."""
    d = Path(run_dir)
    expected = ("expected a biasprune run directory: a fit/validate run's version directory (e.g. runs/NAME/version_0)"
                " or a study's --study.output, holding manifest.json and metrics.csv")
    if not d.exists():
        raise ReportError(f"run directory {str(d)!r} does not exist; {expected}")
    if not d.is_dir():
        raise ReportError(f"{str(d)!r} is not a directory; {expected}")
    failed = d / "FAILED"
    if failed.is_file():
        reason = failed.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        raise ReportError(f"run directory {str(d)!r} is marked FAILED ({reason[0] if reason else 'no reason given'});"
                          " a failed run gets no report: its results are incomplete. Rerun it, or remove FAILED"
                          " only if you know the run finished")
    if not (d / "manifest.json").is_file():
        present = sorted(p.name for p in d.iterdir())[:10]
        raise ReportError(f"run directory {str(d)!r} has no manifest.json; {expected}; found {present}")
    manifest = _json(d / "manifest.json")
    if not isinstance(manifest, dict):
        raise ReportError(f"{d / 'manifest.json'}: expected a JSON object, got {type(manifest).__name__}")
    kind = str(manifest.get("kind", ""))
    if kind not in KINDS:
        raise ReportError(f"{d / 'manifest.json'}: field 'kind' is {kind!r}; valid choices: {list(KINDS)}")
    required = REQUIRED[kind]
    if kind == "study" and any(not p.name.endswith("_layers.csv") for p in d.glob("transfer_*.csv")):
        required = ("manifest.json",)  # a transfer study (--study.transfer) writes its matrices, no results table
    missing = [f for f in required if not (d / f).is_file()]
    if missing:
        raise ReportError(f"run directory {str(d)!r} (a {kind} run) lacks {missing}; the run did not finish writing its results")
    summary_file = d / ("results.csv" if kind == "study" else "summary.csv")
    bounds = _json(d / "inlier_bounds.json") if (d / "inlier_bounds.json").is_file() else {}
    timings = _json(d / "timings.json") if (d / "timings.json").is_file() else {}
    return RunArtifacts(
        run_dir=d, kind=kind, manifest=manifest,
        metrics=_csv(d / "metrics.csv") if (d / "metrics.csv").is_file() else [],
        summary=_csv(summary_file) if summary_file.is_file() else [],
        claims=_csv(d / "claims.csv") if (d / "claims.csv").is_file() else [],
        grid=_csv(d / "grid.csv") if (d / "grid.csv").is_file() else [],
        bounds=bounds if isinstance(bounds, dict) else {},
        timings=timings if isinstance(timings, dict) else {},
        config_text=(d / "config.yaml").read_text(encoding="utf-8", errors="replace") if (d / "config.yaml").is_file() else "",
    )  # fmt: skip


def iter_answers(path: Path, split: str, scenario: str, variation: str, arms: Sequence[str]) -> Iterator[dict]:
    """The answer records of one split and variation for the given arms, streamed from ``answers.jsonl``."""
    wanted = set(arms)
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            r = json.loads(line)
            if r.get("split") == split and r.get("scenario") == scenario and r.get("variation") == variation and r.get("arm") in wanted:
                yield r


def layer_and_kind(key: str) -> tuple[int, str]:
    """``"neuron/model.layers.3.mlp.up_proj"`` -> ``(3, "up_proj")``; ``"head/model.layers.3.self_attn"`` -> ``(3, "heads")``."""
    unit, _, module = key.partition("/")
    m = re.search(r"\.(\d+)(\.|$)", module)
    layer = int(m.group(1)) if m else 0
    return layer, ("heads" if unit == "head" else module.rsplit(".", 1)[-1])


def read_masks(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``masks.safetensors`` as numpy uint8 keep-masks (1 = kept, 0 = pruned) and its metadata."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as fh:
            meta = dict(fh.metadata() or {})
            masks = {k: np.asarray(fh.get_tensor(k)) for k in sorted(fh.keys())}
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise ReportError(f"{path}: not a readable safetensors file ({err})") from err
    return masks, meta
