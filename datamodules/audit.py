"""The paired-prompt DataModule: scenario x variation x name, over three name splits.

Names are split three ways, disjoint and balanced by group x gender (docs/method.md, "Prompts and name splits"): ``scoring`` names build
the prompts whose important units are scored (the masks are learned from them), ``dev`` names choose p/q
and every other knob, ``test`` names give every reported number. Two sets are served, both restricted to
the reference and target groups:

* the scoring set: the scoring variations with the scoring names. Its target texts (the model's own
  responses) are produced by the LightningModule before scoring and attached with
  :meth:`AuditDataModule.set_scoring_examples`; the train dataloader serves them as the scoring objective
  tokenizes and collates them (:mod:`biasprune.scoring.objectives`);
* the evaluation set: the evaluation variations with the names of each evaluation split, served by the
  validation dataloader; no batch mixes two (split, variation) groups.

Batches are cut before they are dealt to processes (:mod:`.batches`), so one and N processes compute the
same batches. What is served can change between Trainer calls only through :meth:`AuditDataModule.configure_prompts`
(a :class:`PromptSelection`: the variations scored and the name splits evaluated).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
from torch.utils.data import DataLoader

from biasprune.core.checks import check_choices
from biasprune.data.prompts import chat_prompt
from biasprune.data.scenarios import (
    SPLITS,
    AuditDataError,
    build_prompt_rows,
    builtin_scenarios,
    check_groups,
    load_names,
    load_scenarios,
    parse_selectors,
    split_names,
    variation_key,
)
from biasprune.datamodules.batches import ShardedBatches, ShardSampler, fixed_batches
from biasprune.datamodules.examples import collate_text
from biasprune.datamodules.files import SCORING_EXAMPLE_FIELDS, read_prompt_file, read_scoring_examples, select_rows
from biasprune.models.loading import DEFAULT_MODEL, load_tokenizer, plant_training_names
from biasprune.scoring.objectives import Objective, get_objective

__all__ = ["AuditDataModule", "PromptSelection", "SCORING_EXAMPLE_FIELDS"]

EvalSplit = Literal["dev", "test"]


@dataclass(frozen=True)
class PromptSelection:
    """Which prompts a stage serves: the scoring variations and the evaluated name splits.

    Attributes:
        scoring: ``scenario`` or ``scenario/variation`` selectors of the variations scored (``fit``).
        eval_splits: the name splits answered (``validate``), ``dev`` and/or ``test``; the evaluated variations
            are always ``--data.evaluation``.
    """

    scoring: tuple[str, ...]
    eval_splits: tuple[str, ...] = ("test",)

    def __post_init__(self) -> None:
        check_choices("data.eval_splits", self.eval_splits, ("dev", "test"))
        object.__setattr__(self, "scoring", tuple(self.scoring))
        object.__setattr__(self, "eval_splits", tuple(dict.fromkeys(self.eval_splits)))


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_arguments(reference_group: str, target_group: str, batch_size: int, eval_batch_size: int, num_workers: int,
                     eval_splits: Sequence[str]) -> None:
    if reference_group == target_group:
        raise AuditDataError(f"reference_group and target_group are both {reference_group!r}; they must differ")
    for name, v in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if v < 1:
            raise ValueError(f"data.{name} must be >= 1, got {v}")
    if num_workers < 0:
        raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
    check_choices("data.eval_splits", eval_splits, ("dev", "test"))


def _kept_examples(examples: Sequence[dict], variations: Sequence[str], groups: Sequence[str]) -> tuple[list[dict], list[dict], dict[str, int]]:
    """(the examples' stored fields, those with a non-empty response, skipped examples per group)."""
    stored = [{k: e[k] for k in SCORING_EXAMPLE_FIELDS} | {k: e[k] for k in ("gender", "pair_id") if k in e} for e in examples]
    unknown = sorted({variation_key(e["scenario"], e["variation"]) for e in stored} - set(variations))
    if unknown:
        raise AuditDataError(f"scoring examples of {unknown[:3]} are not among the scoring variations {list(variations)}")
    skipped = {g: 0 for g in groups}
    kept = []
    for e in stored:
        if not e["response"].strip():
            skipped[e["group"]] += 1
            continue
        kept.append(e)
    if not kept:
        raise AuditDataError("every scoring example has an empty response: nothing to score")
    return stored, kept, skipped


class AuditDataModule(L.LightningDataModule):
    """Paired audit prompts for scoring and evaluation, over scoring / dev / test name splits.

    Args:
        scenarios: built-in scenario names or paths to scenario YAML files.
        names: a built-in name set (``default``: ≥ 50 names per group from published lists; ``audit40``:
            the 40 names of "What's in a Name?") or a names CSV (columns name,group,gender); empty for ``default``.
        scoring: variations whose prompts are scored (masks are learned from them): ``scenario`` (all its
            variations) or ``scenario/variation``.
        evaluation: variations whose sampled answers are evaluated, same syntax.
        eval_splits: name splits whose answers are evaluated: ``test`` reports, ``dev`` tunes.
        split_fractions: shares of each (group, gender) cell's names in the scoring, dev and test splits.
        split_seed: seed of the name split.
        reference_group: the group whose answers are the reference (SMD > 0: it gets higher numbers).
        target_group: the group whose prompts' important units are pruned.
        dataset_file: a CSV/JSONL/Parquet file of prompts with columns scenario, variation, name, group,
            prompt (the user message) and optionally gender, pair_id, split (scoring/dev/test). It replaces
            the scenario files; ``scoring``/``evaluation`` selections still apply.
        system_prompt: a system message put before each prompt; empty for the chat template's default.
        tokenizer: model id or path whose tokenizer and chat template are used (linked to the model).
        trust_remote_code: allow custom tokenizer code from the model repository.
        scoring_examples_file: a ``scoring_examples.jsonl`` from an earlier run, reused instead of
            generating the target responses again.
        batch_size: scoring examples per batch.
        eval_batch_size: prompts per generation batch (each is sampled k times).
        num_workers: dataloader worker processes.
    """

    def __init__(
        self,
        scenarios: Sequence[str] = tuple(builtin_scenarios()),
        names: str = "",
        scoring: Sequence[str] = ("purchase",),
        evaluation: Sequence[str] = ("purchase",),
        eval_splits: Sequence[EvalSplit] = ("test",),
        split_fractions: tuple[float, float, float] = (0.4, 0.2, 0.4),
        split_seed: int = 0,
        reference_group: str = "white",
        target_group: str = "black",
        dataset_file: str = "",
        system_prompt: str = "",
        tokenizer: str = DEFAULT_MODEL,
        trust_remote_code: bool = False,
        scoring_examples_file: str = "",
        batch_size: int = 8,
        eval_batch_size: int = 16,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        _check_arguments(reference_group, target_group, batch_size, eval_batch_size, num_workers, eval_splits)
        self.save_hyperparameters()
        self.groups = (reference_group.lower(), target_group.lower())
        self.eval_splits = tuple(dict.fromkeys(eval_splits))
        self.system_prompt = system_prompt
        self.tokenizer_name = tokenizer
        self.trust_remote_code = trust_remote_code
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.dataset_file = dataset_file
        # Validate every file now, before a trainer runs or anything is written.
        if dataset_file:
            self.scenarios = {}
            self._file_rows = read_prompt_file(Path(dataset_file), self.groups, split_fractions, split_seed)
            self.names_by_split = {s: sorted({(r["name"], r["group"]) for r in self._file_rows if r["split"] == s}) for s in SPLITS}
            self.name_sources = {}
        else:
            self.scenarios = load_scenarios(scenarios)
            names_list = load_names(names or None)
            check_groups(names_list, self.groups, names or "built-in names")
            self._splits = split_names(names_list, split_fractions, split_seed, groups=self.groups, source=names or "default names")
            self.names_by_split = {s: [(n.name, n.group) for n in self._splits[s] if n.group in self.groups] for s in SPLITS}
            self.name_sources = {n.name: n.source for n in names_list}
        self._check_plant_names()
        self.scoring_selection, self.evaluation_selection = tuple(scoring), tuple(evaluation)
        self.scoring_objective: Objective = get_objective()
        self._build_rows()
        self.preset_examples = (
            read_scoring_examples(Path(scoring_examples_file), self.groups) if scoring_examples_file else None
        )
        self.tokenizer = None
        self.n_skipped: dict[str, int] = {g: 0 for g in self.groups}
        self._train_sampler: ShardSampler | None = None

    def _check_plant_names(self) -> None:
        """A planted model must never be evaluated on names it was trained on (docs/method.md, "Planted controls")."""
        trained = plant_training_names(self.tokenizer_name)
        leaked = sorted({n for s in ("dev", "test") for n, _ in self.names_by_split[s]} & trained)
        if leaked:
            raise AuditDataError(
                f"the planted model {self.tokenizer_name!r} was trained on {len(leaked)} name(s) of the dev/test splits"
                f" (e.g. {leaked[:3]}); use the split it was trained against (its provenance.json) or other names"
            )

    # ------------------------------------------------------------------------------------- selection
    def _rows(self, selectors: Sequence[str], split: str, what: str) -> list[dict]:
        """Prompt rows of one name split for ``scenario`` / ``scenario/variation`` selectors."""
        if self.dataset_file:
            keys = select_rows(self._file_rows, selectors, what, self.dataset_file)
            return [dict(r) for k in keys for r in self._file_rows if r["split"] == split and (r["scenario"], r["variation"]) == k]
        sel = parse_selectors(selectors, self.scenarios, what)
        return [dict(r, split=split) for r in build_prompt_rows(self.scenarios, sel, self._splits[split], self.groups)]

    @property
    def selection(self) -> PromptSelection:
        """What this data module serves now."""
        return PromptSelection(self.scoring_selection, self.eval_splits)

    def rows(self, selection: PromptSelection) -> tuple[list[dict], list[dict]]:
        """(scoring rows, evaluation rows) that ``selection`` would serve; changes nothing."""
        scoring = self._rows(selection.scoring, "scoring", "data.scoring")
        evaluation = [r for split in selection.eval_splits for r in self._rows(self.evaluation_selection, split, "data.evaluation")]
        return scoring, evaluation

    def _build_rows(self) -> None:
        self.scoring_rows, self.eval_rows = self.rows(self.selection)
        self.scoring_variations = list(dict.fromkeys(variation_key(r["scenario"], r["variation"]) for r in self.scoring_rows))
        self.scoring_prompts = self.eval_set = self.scoring_set = None
        self.scoring_examples = []

    def configure_prompts(self, selection: PromptSelection) -> None:
        """Serve ``selection`` from the next Trainer call on (the study scores only what it lacks, and answers
        only the splits that have work). The name splits and the evaluated variations stay as configured;
        scoring examples attached earlier are dropped, and prompts are rebuilt (now if set up, else in ``setup``)."""
        self.scoring_selection, self.eval_splits = selection.scoring, selection.eval_splits
        self._build_rows()
        if self.tokenizer is not None:
            self.setup()

    # ----------------------------------------------------------------------------------------- setup
    def _with_prompts(self, rows: list[dict]) -> list[dict]:
        return [
            dict(
                r,
                prompt=chat_prompt(self.tokenizer, r["user_prompt"], self.system_prompt),
                group_index=self.groups.index(r["group"]),
                key=f"{r['scenario']}/{r['variation']}/{r['name']}",
                split=r.get("split", "scoring"),
            )
            for r in rows
        ]

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.tokenizer_name, trust_remote_code=self.trust_remote_code)
        if self.scoring_prompts is None:
            self.scoring_prompts = self._with_prompts(self.scoring_rows)
            self.eval_set = self._with_prompts(self.eval_rows)
        if self.preset_examples is not None and self.scoring_set is None:
            wanted = {(r["scenario"], r["variation"], r["name"]) for r in self.scoring_rows}
            given = [e for e in self.preset_examples if (e["scenario"], e["variation"], e["name"]) in wanted]
            missing = sorted(wanted - {(e["scenario"], e["variation"], e["name"]) for e in given})
            if missing:
                raise AuditDataError(
                    f"data.scoring_examples_file has no example for {len(missing)} scoring prompt(s), e.g."
                    f" {['/'.join(m) for m in missing[:3]]}; generate them (leave the file out) or score fewer variations"
                )
            self.set_scoring_examples(given, self.scoring_objective)

    def fingerprint(self) -> dict[str, str]:
        """Digests of everything in the data that changes a result (prompts, names, splits, groups, template)."""
        fields = ("split", "scenario", "variation", "name", "group", "user_prompt")
        return {
            "data.scoring": _digest([[r.get(f, "") for f in fields] for r in self.scoring_rows]),
            "data.evaluation": _digest([[r.get(f, "") for f in fields] for r in self.eval_rows]),
            "data.groups": "/".join(self.groups),
            "data.system_prompt": _digest(self.system_prompt),
            "data.tokenizer": self.tokenizer_name,
            "data.scoring_examples_file": _digest(self.preset_examples) if self.preset_examples else "",
        }

    # ------------------------------------------------------------------------------ scoring examples
    @property
    def has_scoring_examples(self) -> bool:
        return self.scoring_set is not None

    def set_scoring_examples(self, examples: Sequence[dict], objective: Objective | str | None = None) -> None:
        """Attach target responses (``scoring_examples.jsonl`` rows) and tokenize them as ``objective`` (the
        default objective when None; :mod:`biasprune.scoring.objectives`) makes its scoring items.

        Prompt and response are tokenized separately without special tokens and concatenated, so the stored
        texts alone determine the computation. Empty responses are skipped and counted. Each item carries its
        accumulator bucket (variation index x number of score groups + group index).
        """
        self.scoring_objective = get_objective(objective)
        self.scoring_examples, kept, self.n_skipped = _kept_examples(examples, self.scoring_variations, self.groups)
        self.scoring_set = self.scoring_objective.items(self.tokenizer, kept, self.scoring_examples, self.scoring_variations, self.groups)

    # ----------------------------------------------------------------------------------- dataloaders
    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (1, 0) if trainer is None else (trainer.world_size, trainer.global_rank)

    def _loader(self, rows: list[dict], groups: list[list[int]], batch_size: int, collate) -> tuple[DataLoader, ShardSampler]:
        world, rank = self._world()
        shard = ShardedBatches(rows, fixed_batches(groups, batch_size), batch_size, world, rank)
        sampler = ShardSampler(len(shard))
        loader = DataLoader(shard, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=self.num_workers)
        return loader, sampler

    def _grouped(self, rows: list[dict], fields: tuple[str, ...]) -> list[list[int]]:
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(tuple(r[f] for f in fields), []).append(i)
        return list(groups.values())

    def response_dataloader(self) -> DataLoader:
        """Scoring prompts that need a target response, batched within each variation."""
        return self._loader(self.scoring_prompts, self._grouped(self.scoring_prompts, ("scenario", "variation")),
                            self.eval_batch_size, collate_text)[0]

    def train_dataloader(self) -> DataLoader:
        if self.scoring_set is None:
            raise RuntimeError("no scoring examples: the module generates them in on_fit_start (or give scoring_examples_file)")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        collate = self.scoring_objective.collator(pad)
        loader, self._train_sampler = self._loader(self.scoring_set, [list(range(len(self.scoring_set)))], self.batch_size, collate)
        return loader

    def skip_train_batches(self, n_batches: int) -> None:
        """Resume a scoring epoch: the next pass of the train loader starts after ``n_batches`` batches."""
        if self._train_sampler is None:
            raise RuntimeError("skip_train_batches needs the train dataloader to exist")
        self._train_sampler.skip_next(n_batches * self.batch_size)

    def val_dataloader(self) -> DataLoader:
        """Evaluation prompts, batched within each (split, scenario, variation)."""
        return self._loader(self.eval_set, self._grouped(self.eval_set, ("split", "scenario", "variation")),
                            self.eval_batch_size, collate_text)[0]

    def eval_keys(self) -> list[tuple[str, str, str]]:
        """Evaluated (split, scenario, variation) triples, in order."""
        return list(dict.fromkeys((r["split"], r["scenario"], r["variation"]) for r in self.eval_rows))

    def valid_range(self, scenario: str) -> tuple[float, float] | None:
        """The scenario file's plausibility bounds (None for prompt files and scenarios without them)."""
        scen = self.scenarios.get(scenario)
        return None if scen is None else scen.valid_range

    def split_counts(self) -> dict[str, dict[str, int]]:
        """Names per split and group (the reference and target groups only)."""
        return {s: {g: sum(grp == g for _, grp in names) for g in self.groups} for s, names in self.names_by_split.items()}
