"""Writing run artifacts atomically: a reader never sees a half-written file.

Each writer renders into a temporary file in the target's directory and renames it into place, so an
error (or a kill) while writing leaves the previous file, or none, behind.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file

__all__ = [
    "atomic_write_bytes",
    "write_bounds",
    "read_bounds",
    "read_json",
    "read_jsonl",
    "read_safetensors",
    "read_scores",
    "read_scores_meta",
    "write_csv",
    "write_json",
    "write_jsonl",
    "write_safetensors",
    "write_scores",
]


@contextlib.contextmanager
def _atomic_target(path: str | Path) -> Iterator[str]:
    """A temporary file beside ``path`` that replaces it on success and disappears on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with _atomic_target(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Path:
    """Save tensors with string metadata (non-strings are JSON-encoded)."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    with _atomic_target(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=meta)
    return Path(path)


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as fh:
        metadata = dict(fh.metadata() or {})
    return load_file(str(path)), metadata


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    text = "".join(json.dumps(dict(r), ensure_ascii=False, default=_json_default) + "\n" for r in rows)
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _csv_cell(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return v


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _csv_cell(r.get(k, "")) for k in columns})
    return atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def write_scores(run_dir: str | Path, per_variation: Mapping[str, Mapping[str, Mapping[str, torch.Tensor]]], meta: Mapping[str, Any]) -> None:
    """``scores.safetensors`` (DESIGN §3: ``"{group}/{kind}/{module}"`` float32, summed over the scoring
    variations) and ``scores_by_variation.safetensors`` (``"{scenario}/{variation}/{group}/{kind}/{module}"``,
    float64 sums, so that any union of variations can be summed exactly later)."""
    from .scoring import sum_scores

    run_dir = Path(run_dir)
    totals = sum_scores({v: {g: dict(k) for g, k in per.items()} for v, per in per_variation.items()})
    n = meta.get("n_examples", {})
    flat_meta = dict(meta, n_examples={g: sum(int(c.get(g, 0)) for c in n.values()) for g in totals}, n_examples_by_variation=n)
    write_safetensors(run_dir / "scores.safetensors", {f"{g}/{k}": t.float() for g, per in totals.items() for k, t in per.items()}, flat_meta)
    tensors = {f"{v}/{g}/{k}": t.double() for v, per in per_variation.items() for g, keys in per.items() for k, t in keys.items()}
    write_safetensors(run_dir / "scores_by_variation.safetensors", tensors, flat_meta)


def read_scores(path: str | Path) -> tuple[dict[str, dict[str, dict[str, torch.Tensor]]], dict[str, str]]:
    """``scores_by_variation.safetensors`` back as variation -> group -> unit-group key -> tensor."""
    tensors, meta = read_safetensors(path)
    out: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for name, t in tensors.items():
        scenario, variation, group, key = name.split("/", 3)
        out.setdefault(f"{scenario}/{variation}", {}).setdefault(group, {})[key] = t
    return out, meta


def write_bounds(path: str | Path, bounds: Mapping[tuple[str, str, str], Sequence[float]], percentiles: Sequence[float]) -> Path:
    """``inlier_bounds.json``: ``bounds`` (``scenario/variation`` -> [low, high]) of the reported split (test
    when evaluated, else dev), which a later ``validate`` can reuse, and ``bounds_by_split``."""
    by_split: dict[str, dict[str, list[float]]] = {}
    for (split, scen, var), b in bounds.items():
        by_split.setdefault(split, {})[f"{scen}/{var}"] = [float(b[0]), float(b[1])]
    main = by_split.get("test") or next(iter(by_split.values()), {})
    return write_json(path, {"percentiles": list(percentiles), "bounds": main, "bounds_by_split": by_split})


def read_bounds(path: str | Path) -> dict[str, tuple[float, float]]:
    """The ``bounds`` of an ``inlier_bounds.json`` (``scenario/variation`` -> (low, high)), checked."""
    try:
        data = read_json(path)
        return {k: (float(v[0]), float(v[1])) for k, v in data["bounds"].items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise ValueError(f"inlier bounds file {str(path)!r} is not readable: {err}") from err


def read_scores_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a scores file, JSON fields decoded (e.g. ``n_examples`` per group)."""
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
    out: dict[str, Any] = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out
