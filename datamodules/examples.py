"""Scoring examples as the train loader serves them: tokenized items, pairs, and the collators.

Prompt and response are tokenized separately without special tokens and concatenated, so the stored texts of
``scoring_examples.jsonl`` alone determine the computation. Scores are sums over examples, so their order is free:
items are sorted by length, which keeps padding small.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from biasprune.data.scenarios import AuditDataError, variation_key

__all__ = ["PairCollator", "TokenCollator", "collate_text", "example_items", "pair_items"]

TEXT_FIELDS = ("split", "scenario", "variation", "name", "group", "gender", "pair_id", "prompt", "key")


def example_items(tokenizer, kept: Sequence[dict], variations: Sequence[str], groups: Sequence[str]) -> list[dict]:
    """One item per example: prompt ids, response ids and the accumulator bucket
    ``variation index x n_groups + group index``."""
    prompt_ids = tokenizer([e["prompt"] for e in kept], add_special_tokens=False)["input_ids"]
    response_ids = tokenizer([e["response"] for e in kept], add_special_tokens=False)["input_ids"]
    order = sorted(range(len(kept)), key=lambda i: (len(prompt_ids[i]) + len(response_ids[i]), i))
    return [
        {"prompt_ids": prompt_ids[i], "response_ids": response_ids[i],
         "bucket": list(variations).index(variation_key(kept[i]["scenario"], kept[i]["variation"])) * len(groups)
         + list(groups).index(kept[i]["group"])}
        for i in order
    ]


def pair_items(tokenizer, kept: Sequence[dict], examples: Sequence[dict], variations: Sequence[str], groups: Sequence[str]) -> list[dict]:
    """Name-swapped pairs (the contrastive objective): each target-group example with its reference-group twin
    (same ``pair_id``) and the target's response, in bucket ``variation index``."""
    missing = [e["name"] for e in kept if not e.get("pair_id")]
    if missing:
        raise AuditDataError(f"the contrastive objective pairs examples by pair_id, which {len(missing)} lack (e.g. {missing[0]!r})")
    ref, tgt = groups
    twins = {e["pair_id"]: e for e in examples if e["group"] == ref}
    targets = [e for e in kept if e["group"] == tgt and e["pair_id"] in twins]
    if not targets:
        raise AuditDataError("no target-group scoring example has a reference-group twin: nothing to contrast")
    t_ids = tokenizer([e["prompt"] for e in targets], add_special_tokens=False)["input_ids"]
    r_ids = tokenizer([twins[e["pair_id"]]["prompt"] for e in targets], add_special_tokens=False)["input_ids"]
    y_ids = tokenizer([e["response"] for e in targets], add_special_tokens=False)["input_ids"]
    order = sorted(range(len(targets)), key=lambda i: (len(t_ids[i]) + len(y_ids[i]), i))
    return [
        {"target_ids": t_ids[i], "reference_ids": r_ids[i], "response_ids": y_ids[i],
         "bucket": list(variations).index(variation_key(targets[i]["scenario"], targets[i]["variation"]))}
        for i in order
    ]


def collate_text(rows: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {k: [r[k] for r in rows] for k in TEXT_FIELDS}
    out["index"] = torch.tensor([r["index"] for r in rows], dtype=torch.long)
    out["weight"] = torch.tensor([r["weight"] for r in rows], dtype=torch.float32)
    out["group_index"] = torch.tensor([r["group_index"] for r in rows], dtype=torch.long)
    return out


class TokenCollator:
    """Right-pads prompt+response token ids; marks response tokens for the loss."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        T = max(len(r["prompt_ids"]) + len(r["response_ids"]) for r in rows)
        B = len(rows)
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, T), dtype=torch.long)
        resp = torch.zeros((B, T), dtype=torch.long)
        for i, r in enumerate(rows):
            p, s = r["prompt_ids"], r["response_ids"]
            ids[i, : len(p) + len(s)] = torch.tensor(p + s, dtype=torch.long)
            attn[i, : len(p) + len(s)] = 1
            resp[i, len(p) : len(p) + len(s)] = 1
        return {
            "input_ids": ids,
            "attention_mask": attn,
            "response_mask": resp,
            "bucket": torch.tensor([r["bucket"] for r in rows], dtype=torch.long),
            "index": torch.tensor([r["index"] for r in rows], dtype=torch.long),
            "weight": torch.tensor([r["weight"] for r in rows], dtype=torch.float32),
        }


class PairCollator:
    """Name-swapped pairs for the contrastive objective (:func:`biasprune.scoring.contrastive.build_pair_batch`)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        from biasprune.scoring.contrastive import build_pair_batch

        out = build_pair_batch([(r["target_ids"], r["reference_ids"], r["response_ids"]) for r in rows], self.pad_id)
        out["bucket"] = torch.tensor([r["bucket"] for r in rows], dtype=torch.long)
        out["index"] = torch.tensor([r["index"] for r in rows], dtype=torch.long)
        out["weight"] = torch.tensor([r["weight"] for r in rows], dtype=torch.float32)
        return out
