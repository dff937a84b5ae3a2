"""Answers to a batch of evaluation prompts: generation, parsing, and the records that carry them.

A record is one (split, arm, prompt): the prompt's labels, the arm that answered, the k sampled responses and
their parsed values. Records are plain dicts so they gather across processes and write as JSON lines.
Sampling streams are keyed by (seed, scenario/variation/name, answer index) (see
:func:`biasprune.answers.generation.generate`), so a prompt gets the same random numbers in every arm, batch size
and process count.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from biasprune.answers.generation import GenerationConfig, generate
from biasprune.answers.parsing import parse_number
from biasprune.core.checks import check_positive
from biasprune.pruning.arms import Arm

__all__ = ["RECORD_FIELDS", "TargetConfig", "answer_batch", "sort_records", "target_responses"]

RECORD_FIELDS = ("split", "scenario", "variation", "name", "group", "gender", "pair_id")


@dataclass(frozen=True)
class TargetConfig:
    """How each scoring prompt's target response (the text whose likelihood is scored) is generated, once.

    Attributes:
        max_new_tokens: longest target response.
        temperature: 0 decodes greedily (the default); > 0 samples.
        seed: seed of the sampled target responses (unused when greedy).
    """

    max_new_tokens: int = 24
    temperature: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive("model.targets.max_new_tokens", self.max_new_tokens)
        check_positive("model.targets.temperature", self.temperature, minimum=0)


def _rows_to_run(batch: dict[str, Any], lockstep: bool) -> list[int]:
    """Rows of weight > 0 (in lockstep, every row: sharded models need the same calls on every rank)."""
    weights = batch["weight"].tolist()
    return list(range(len(weights))) if lockstep else [i for i, w in enumerate(weights) if w > 0]


def target_responses(model: nn.Module, tokenizer, loader, cfg: TargetConfig, lockstep: bool = False) -> list[dict]:
    """The ``scoring_examples.jsonl`` rows: one target response per scoring prompt of every process's batches,
    gathered and in row order (collective: every rank calls it)."""
    from biasprune.core.distributed import gather_objects

    local = [r for batch in loader for r in _batch_targets(model, tokenizer, batch, cfg, lockstep)]
    merged = sorted((r for part in gather_objects(local) for r in part), key=lambda r: r["index"])
    return [{k: v for k, v in r.items() if k != "index"} for r in merged]


def _batch_targets(model: nn.Module, tokenizer, batch: dict[str, Any], cfg: TargetConfig, lockstep: bool) -> list[dict]:
    run = _rows_to_run(batch, lockstep)
    if not run:
        return []
    answers = generate(
        model, tokenizer, [batch["prompt"][i] for i in run], num_samples=1, temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens, batch_size=len(run), seed=cfg.seed, lockstep=lockstep,
        keys=[batch["key"][i] for i in run],
    )
    return [
        {"index": int(batch["index"][i])}
        | {f: batch[f][i] for f in ("group", "scenario", "variation", "name", "gender", "pair_id", "prompt")}
        | {"response": resp[0]}
        for i, resp in zip(run, answers)
        if float(batch["weight"][i]) > 0
    ]


def answer_batch(
    model: nn.Module, tokenizer, batch: dict[str, Any], arm: Arm, cfg: GenerationConfig, lockstep: bool = False
) -> list[dict]:
    """The records of one arm's answers to a text batch (real rows only)."""
    run = _rows_to_run(batch, lockstep)
    if not run:
        return []
    answers = generate(
        model, tokenizer, [batch["prompt"][i] for i in run], num_samples=cfg.samples, temperature=cfg.temperature,
        top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, batch_size=len(run), seed=cfg.seed, lockstep=lockstep,
        keys=[batch["key"][i] for i in run], decoder=cfg.decoder, share_prefix=cfg.share_prefix,
    )
    counts = arm.counts()
    out = []
    for i, resp in zip(run, answers):
        if float(batch["weight"][i]) <= 0:
            continue
        rec = {f: batch[f][i] for f in RECORD_FIELDS}
        rec.update(
            index=int(batch["index"][i]), group_index=int(batch["group_index"][i]), arm=arm.name, phase=arm.phase,
            draw=arm.draw, pruned_neurons=counts["neuron"], pruned_heads=counts["head"],
            edited_layers=counts["edited_layers"],
            responses=list(resp), values=[parse_number(r) for r in resp], **dict(arm.labels),
        )
        out.append(rec)
    return out


PHASE_ORDER = {"baseline": 0, "pruned": 1, "random": 2}


def sort_records(records: Iterable[dict]) -> list[dict]:
    """A canonical order (split, phase, arm, row index): the same on every rank and for any batch layout."""
    return sorted(records, key=lambda r: (r["split"], PHASE_ORDER.get(r["phase"], 3), r["arm"], r["index"]))

