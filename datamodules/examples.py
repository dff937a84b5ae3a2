"""Evaluation prompts as the validation loader serves them: text fields and the shard's index and weight.

The scoring items and their collators belong to the scoring objective (:mod:`biasprune.scoring.objectives`):
the data module asks the objective to tokenize and collate them, and never names one.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["TEXT_FIELDS", "collate_text"]

TEXT_FIELDS = ("split", "scenario", "variation", "name", "group", "gender", "pair_id", "prompt", "key")


def collate_text(rows: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {k: [r[k] for r in rows] for k in TEXT_FIELDS}
    out["index"] = torch.tensor([r["index"] for r in rows], dtype=torch.long)
    out["weight"] = torch.tensor([r["weight"] for r in rows], dtype=torch.float32)
    out["group_index"] = torch.tensor([r["group_index"] for r in rows], dtype=torch.long)
    return out
