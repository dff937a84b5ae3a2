"""The study's piece store: every score sum and every set of answers, keyed by the digest of what made it.

A piece's key is the SHA-256 of all its inputs: for a variation's scores, the model identity, the unit
settings, the target-response settings and the variation's scoring prompts (names and text); for a set of
answers, the model identity, the generation settings, the (split, variation) prompts and the digest of the
masks applied. Changing any input changes exactly the keys that depend on it, so a study run again reuses
every piece still valid and recomputes the rest (a changed scenario file recomputes that scenario's pieces
and the answers of masks learned from it; a new grid point adds only its own pieces).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from biasprune.core import artifacts
from biasprune.scoring.scorefile import read_scores_meta

__all__ = ["PieceStore", "digest", "masks_digest"]


def digest(*parts: Any) -> str:
    """SHA-256 (hex, 24 characters) of JSON-encoded ``parts``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def masks_digest(masks: Mapping[str, torch.Tensor] | None) -> str:
    """Digest of a keep-mask set (keys and values); ``unpruned`` for no masks."""
    if masks is None:
        return "unpruned"
    h = hashlib.sha256()
    for key in sorted(masks):
        h.update(key.encode())
        h.update(masks[key].to(torch.uint8).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:24]


class PieceStore:
    """``root/scores/<key>.safetensors`` (float64 sums per group) and ``root/answers/<key>.jsonl`` (records)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.computed = {"scores": 0, "answers": 0}

    def _scores(self, key: str) -> Path:
        return self.root / "scores" / f"{key}.safetensors"

    def _answers(self, key: str) -> Path:
        return self.root / "answers" / f"{key}.jsonl"

    def has_scores(self, key: str) -> bool:
        return self._scores(key).is_file()

    def read_scores(self, key: str) -> dict[str, dict[str, torch.Tensor]]:
        tensors, _ = artifacts.read_safetensors(self._scores(key))
        out: dict[str, dict[str, torch.Tensor]] = {}
        for name, t in tensors.items():
            group, unit_key = name.split("/", 1)
            out.setdefault(group, {})[unit_key] = t
        return out

    def scores_meta(self, key: str) -> dict[str, Any]:
        return read_scores_meta(self._scores(key))

    def write_scores(self, key: str, per_group: Mapping[str, Mapping[str, torch.Tensor]], meta: Mapping[str, Any]) -> None:
        tensors = {f"{g}/{k}": t.double() for g, per in per_group.items() for k, t in per.items()}
        artifacts.write_safetensors(self._scores(key), tensors, meta)
        self.computed["scores"] += 1

    def has_answers(self, key: str) -> bool:
        return self._answers(key).is_file()

    def read_answers(self, key: str) -> list[dict]:
        return artifacts.read_jsonl(self._answers(key))

    def write_answers(self, key: str, records: Iterable[Mapping[str, Any]]) -> None:
        artifacts.write_jsonl(self._answers(key), records)
        self.computed["answers"] += 1
