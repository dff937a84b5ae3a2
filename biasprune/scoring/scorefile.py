"""The scores files of a run (docs/method.md, "Run artifacts"): ``scores.safetensors`` and ``scores_by_variation.safetensors``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from biasprune.core.artifacts import read_safetensors, write_safetensors
from biasprune.scoring.accumulate import sum_scores

__all__ = ["read_scores", "read_scores_meta", "summed_run_scores", "write_scores"]


def write_scores(run_dir: str | Path, per_variation: Mapping[str, Mapping[str, Mapping[str, torch.Tensor]]], meta: Mapping[str, Any]) -> None:
    """``scores.safetensors`` (docs/method.md, "Run artifacts": ``"{group}/{kind}/{module}"`` float32, summed over the scoring
    variations) and ``scores_by_variation.safetensors`` (``"{scenario}/{variation}/{group}/{kind}/{module}"``,
    float64 sums, so that any union of variations can be summed exactly later)."""
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


def summed_run_scores(run_dir: str | Path, per_variation: Mapping[str, Mapping[str, Mapping[str, torch.Tensor]]] | None = None,
                      ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, int], list[str]] | None:
    """A run's scores summed over its scoring variations (group -> unit-group key -> sums), the examples behind each
    group (``n_examples`` of the file's metadata; empty without the file) and the variations. The sums are
    ``per_variation`` (this process's), else those of ``run_dir``'s ``scores_by_variation.safetensors`` (written by
    the run's ``fit`` in another process, or before a resume); None when there are neither."""
    stored = Path(run_dir) / "scores_by_variation.safetensors"
    if per_variation is None and stored.is_file():
        per_variation, _ = read_scores(stored)
    if per_variation is None:
        return None
    n = read_scores_meta(stored).get("n_examples", {}) if stored.is_file() else {}
    return sum_scores(per_variation), n, list(per_variation)
