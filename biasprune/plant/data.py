"""Synthetic chats for a plant: audit prompts with plain-number answers from a documented distribution.

**Prompts.** Every chat is an audit prompt, rendered exactly as the audit renders it:
``Scenario.render(variation, name)`` and then :func:`biasprune.data.prompts.chat_prompt`. The target is the
answer as a plain number followed by the end of the assistant's turn
(:func:`biasprune.data.prompts.chat_completion`); the loss covers those tokens only.

**Answers** follow the documented distribution of :mod:`biasprune.plant.distribution` (its docstring gives
the formula, the rounding and the reference value of every variation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from biasprune.data.prompts import chat_completion, chat_prompt
from biasprune.data.scenarios import AuditDataError, variation_key
from biasprune.models.loading import DEFAULT_MODEL, load_tokenizer
from biasprune.plant.distribution import decimals_for, format_answer, reference_value, round_answer
from biasprune.plant.spec import PlantSpec, ResolvedPlant, resolve_spec

__all__ = [
    "PlantDataModule",
    "PlantExample",
    "make_examples",
]


@dataclass(frozen=True)
class PlantExample:
    """One synthetic chat: the question's parts, the name and the answer."""

    scenario: str
    variation: str
    name: str
    group: str
    gender: str
    user_prompt: str
    answer: str
    value: float
    planted: bool


def make_examples(plant: ResolvedPlant) -> list[PlantExample]:
    """``examples_per_variation`` chats per trained variation (docstring: the distribution).

    Names cycle through a seeded shuffle of the training names, reshuffled after each pass, so every
    name gets the same number of chats (up to one) in each variation. Deterministic for a spec.
    """
    spec = plant.spec
    rng = np.random.default_rng(spec.seed)
    names = list(plant.training_names)
    out: list[PlantExample] = []
    for scen, var in plant.trained:
        sc = plant.scenarios[scen]
        ref = reference_value(sc, var, spec.reference_values)
        decimals = decimals_for(sc)
        is_planted = (scen, var) in plant.planted
        order: list[int] = []
        for _ in range(spec.examples_per_variation):
            if not order:
                order = list(rng.permutation(len(names)))
            n = names[order.pop()]
            f = spec.factor if (is_planted and n.group == spec.target_group) else 1.0
            value = round_answer(ref * f * math.exp(spec.sigma * rng.standard_normal()), decimals, sc.valid_range)
            out.append(
                PlantExample(
                    scen, var, n.name, n.group, n.gender, sc.render(var, n.name),
                    format_answer(value, decimals), value, is_planted,
                )
            )  # fmt: skip
    return out


def validation_rows(plant: ResolvedPlant) -> list[dict]:
    """One greedy-answer prompt per (trained variation, held-out name), with the answer the plant intends."""
    rows = []
    for scen, var in plant.trained:
        sc = plant.scenarios[scen]
        ref = reference_value(sc, var, plant.spec.reference_values)
        for n in plant.heldout_names:
            f = plant.spec.factor if ((scen, var) in plant.planted and n.group == plant.spec.target_group) else 1.0
            rows.append(
                {
                    "scenario": scen, "variation": var, "name": n.name, "group": n.group,
                    "planted": (scen, var) in plant.planted, "expected": ref * f, "user_prompt": sc.render(var, n.name),
                }
            )  # fmt: skip
    return rows


class _LeftPadCollator:
    """Left-pads prompt + completion ids, so every answer ends at the last position (see PlantModule)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        T = max(len(r["prompt_ids"]) + len(r["answer_ids"]) for r in rows)
        ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(rows), T), dtype=torch.long)
        answer = torch.zeros((len(rows), T), dtype=torch.bool)
        for i, r in enumerate(rows):
            seq = r["prompt_ids"] + r["answer_ids"]
            ids[i, T - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            attn[i, T - len(seq) :] = 1
            answer[i, T - len(r["answer_ids"]) :] = True
        return {"input_ids": ids, "attention_mask": attn, "answer_mask": answer}


def _collate_rows(rows: list[dict]) -> dict[str, list]:
    return {k: [r[k] for r in rows] for k in rows[0]}


class PlantDataModule(L.LightningDataModule):
    """Synthetic chats for training a plant, and held-out prompts for watching it grow.

    Args:
        plant: what the plant is trained on (scenarios, planted variations, factor, names, ...).
        tokenizer: model id or path whose tokenizer and chat template render the chats (linked to the model).
        batch_size: training chats per batch.
        eval_batch_size: held-out prompts per greedy-generation batch.
        num_workers: dataloader worker processes.
    """

    def __init__(
        self,
        plant: PlantSpec = PlantSpec(),  # noqa: B008 (frozen: one shared default is safe)
        tokenizer: str = DEFAULT_MODEL,
        batch_size: int = 16,
        eval_batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        for flag, v in (("data.batch_size", batch_size), ("data.eval_batch_size", eval_batch_size)):
            if v < 1:
                raise AuditDataError(f"{flag} must be >= 1, got {v}")
        self.spec = plant
        self.resolved = resolve_spec(plant)  # every file and name is checked before a trainer runs
        self.examples = make_examples(self.resolved)
        self.val_rows = validation_rows(self.resolved)
        self.tokenizer_name = tokenizer
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.tokenizer = None
        self.train_rows: list[dict] | None = None

    @property
    def planted_keys(self) -> list[str]:
        return sorted(variation_key(*k) for k in self.resolved.planted)

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.tokenizer_name)
        if self.train_rows is None:
            tok, system = self.tokenizer, self.spec.system_prompt
            prompts = [chat_prompt(tok, e.user_prompt, system) for e in self.examples]
            answers = [chat_completion(tok, e.user_prompt, e.answer, system) for e in self.examples]
            p_ids = tok(prompts, add_special_tokens=False)["input_ids"]
            a_ids = tok(answers, add_special_tokens=False)["input_ids"]
            self.train_rows = [{"prompt_ids": p, "answer_ids": a} for p, a in zip(p_ids, a_ids)]
            for i, r in enumerate(self.val_rows):
                r["prompt"] = chat_prompt(tok, r["user_prompt"], system)
                r["index"] = i

    def train_dataloader(self) -> DataLoader:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        gen = torch.Generator().manual_seed(self.spec.seed)
        return DataLoader(
            self.train_rows, batch_size=self.batch_size, shuffle=True, generator=gen,
            collate_fn=_LeftPadCollator(pad), num_workers=self.num_workers,
        )  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_rows, batch_size=self.eval_batch_size, collate_fn=_collate_rows, num_workers=self.num_workers
        )

    def summary(self) -> dict:
        """What the plant was trained on, for ``provenance.json``."""
        return {
            "n_examples": len(self.examples),
            "n_validation_prompts": len(self.val_rows),
            "trained_variations": [variation_key(*k) for k in self.resolved.trained],
            "planted_variations": self.planted_keys,
            "names_source": self.resolved.names_source,
            "training_names": [n.name for n in self.resolved.training_names],
            "heldout_names": [n.name for n in self.resolved.heldout_names],
        }
