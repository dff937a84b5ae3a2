"""The paired-prompt DataModule: scenario x variation x name, for scoring and for evaluation.

Two sets are served, both restricted to the reference and target groups:

* the scoring set: the chosen scoring variations with the scoring names. Its target texts (the model's
  own responses) are produced by the LightningModule before scoring and attached with
  :meth:`AuditDataModule.set_scoring_examples`; the train dataloader serves them tokenized;
* the evaluation set: the chosen evaluation variations with the evaluation names (held out from
  scoring by default), served by the validation dataloader.

Every loader shards with :class:`EvenShardSampler`: under N processes each rank gets a disjoint shard and
padding positions carry weight 0, so no example is counted twice whatever the dataset size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader

from biasprune.data import (
    AuditDataError,
    build_prompt_rows,
    builtin_scenarios,
    check_groups,
    load_names,
    load_scenarios,
    parse_selectors,
    split_names,
)
from biasprune.models import DEFAULT_MODEL, load_tokenizer

from .sampling import EvenShardSampler, WeightedView

__all__ = ["AuditDataModule", "DATASET_COLUMNS", "SCORING_EXAMPLE_FIELDS"]

DATASET_COLUMNS = ("scenario", "variation", "name", "group", "prompt")
OPTIONAL_DATASET_COLUMNS = ("gender", "pair_id", "split")
SCORING_EXAMPLE_FIELDS = ("group", "scenario", "variation", "name", "prompt", "response")


def _collate_text(rows: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {k: [r[k] for r in rows] for k in rows[0] if k not in ("index", "weight", "group_index")}
    out["index"] = torch.tensor([r["index"] for r in rows], dtype=torch.long)
    out["weight"] = torch.tensor([r["weight"] for r in rows], dtype=torch.float32)
    out["group_index"] = torch.tensor([r["group_index"] for r in rows], dtype=torch.long)
    return out


class _TokenCollator:
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
            "group_index": torch.tensor([r["group_index"] for r in rows], dtype=torch.long),
            "index": torch.tensor([r["index"] for r in rows], dtype=torch.long),
            "weight": torch.tensor([r["weight"] for r in rows], dtype=torch.float32),
        }


class AuditDataModule(L.LightningDataModule):
    """Paired audit prompts for scoring and evaluation.

    Args:
        scenarios: built-in scenario names or paths to scenario YAML files.
        names: names CSV (columns name,group,gender); empty for the 40 built-in audit names.
        scoring: what to score on: ``scenario`` (all its variations) or ``scenario/variation``.
        evaluation: what to evaluate on, same syntax.
        reference_group: the group whose answers are the reference (SMD > 0: it gets higher numbers).
        target_group: the group whose prompts' important units are pruned.
        holdout_names: evaluate on names not used for scoring (seeded, balanced by group and gender).
        eval_name_fraction: share of each (group, gender) cell's names held out for evaluation.
        split_seed: seed of the name split.
        dataset_file: a CSV/JSONL/Parquet file of prompts with columns scenario, variation, name, group,
            prompt (the user message) and optionally gender, pair_id, split (``scoring``/``evaluation``).
            It replaces the scenario files; ``scoring``/``evaluation`` selections still apply.
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
        reference_group: str = "white",
        target_group: str = "black",
        holdout_names: bool = True,
        eval_name_fraction: float = 0.5,
        split_seed: int = 0,
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
        if reference_group == target_group:
            raise AuditDataError(f"reference_group and target_group are both {reference_group!r}; they must differ")
        for arg, v in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if v < 1:
                raise AuditDataError(f"{arg} must be >= 1, got {v}")
        self.save_hyperparameters()
        self.groups = (reference_group, target_group)
        self.tokenizer_name = tokenizer
        self.trust_remote_code = trust_remote_code
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.system_prompt = system_prompt
        self.scoring_examples_file = scoring_examples_file
        # Validate every file now, before a trainer runs or anything is written.
        if dataset_file:
            self.scoring_rows, self.eval_rows = self._rows_from_dataset_file(
                Path(dataset_file), scoring, evaluation, holdout_names, eval_name_fraction, split_seed
            )
            self.scenarios = {}
        else:
            self.scenarios = load_scenarios(scenarios)
            names_list = load_names(names or None)
            check_groups(names_list, self.groups, names or "built-in names")
            scoring_sel = parse_selectors(scoring, self.scenarios, "data.scoring")
            eval_sel = parse_selectors(evaluation, self.scenarios, "data.evaluation")
            if holdout_names:
                score_names, eval_names = split_names(names_list, eval_name_fraction, split_seed)
            else:
                score_names = eval_names = names_list
            self.scoring_rows = build_prompt_rows(self.scenarios, scoring_sel, score_names, self.groups)
            self.eval_rows = build_prompt_rows(self.scenarios, eval_sel, eval_names, self.groups)
        self.preset_examples = self._read_scoring_examples(Path(scoring_examples_file)) if scoring_examples_file else None
        self.tokenizer = None
        self.scoring_prompts = None
        self.eval_set = None
        self.scoring_set = None
        self.n_skipped: dict[str, int] = {g: 0 for g in self.groups}

    # ----------------------------------------------------------------------------------------- files
    def _rows_from_dataset_file(self, path, scoring, evaluation, holdout, fraction, seed):
        import datasets

        if not path.is_file():
            raise AuditDataError(f"dataset file {str(path)!r} does not exist")
        loaders = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
        kind = loaders.get(path.suffix.lower())
        if kind is None:
            raise AuditDataError(f"dataset file {str(path)!r}: unknown format {path.suffix!r}; valid: {sorted(loaders)}")
        try:
            ds = datasets.load_dataset(kind, data_files=str(path), split="train", keep_in_memory=True)
        except Exception as err:  # datasets raises many types for malformed files
            raise AuditDataError(f"dataset file {str(path)!r} could not be read: {err}") from err
        missing = [c for c in DATASET_COLUMNS if c not in ds.column_names]
        if missing:
            raise AuditDataError(
                f"dataset file {str(path)!r}: missing column(s) {missing}; found {ds.column_names},"
                f" required {list(DATASET_COLUMNS)} (optional {list(OPTIONAL_DATASET_COLUMNS)})"
            )
        rows = []
        for i, r in enumerate(ds):
            for c in DATASET_COLUMNS:
                if r[c] is None or str(r[c]).strip() == "":
                    raise AuditDataError(f"dataset file {str(path)!r}: row {i}: empty value in column {c!r}")
            split = str(r.get("split") or "").strip().lower()
            if split not in ("", "scoring", "evaluation"):
                raise AuditDataError(
                    f"dataset file {str(path)!r}: row {i}: column 'split' is {split!r}; valid: scoring, evaluation or empty"
                )
            rows.append(
                {
                    "scenario": str(r["scenario"]),
                    "variation": str(r["variation"]),
                    "name": str(r["name"]),
                    "group": str(r["group"]).lower(),
                    "gender": str(r.get("gender") or "").lower(),
                    "pair_id": str(r.get("pair_id") or f"{r['scenario']}/{r['variation']}/{r['name']}"),
                    "user_prompt": str(r["prompt"]),
                    "split": split,
                }
            )
        present = sorted({r["group"] for r in rows})
        for g in self.groups:
            if g not in present:
                raise AuditDataError(f"dataset file {str(path)!r}: group {g!r} has no rows; groups present: {present}")
        rows = [r for r in rows if r["group"] in self.groups]

        def selected(sel: Sequence[str], what: str) -> set[tuple[str, str]]:
            known = {(r["scenario"], r["variation"]) for r in rows}
            out = set()
            for s in sel:
                scen, _, var = str(s).partition("/")
                hit = {k for k in known if k[0] == scen and (not var or k[1] == var)}
                if not hit:
                    raise AuditDataError(
                        f"{what}: {s!r} matches no rows of {str(path)!r}; scenarios/variations present:"
                        f" {sorted('/'.join(k) for k in known)}"
                    )
                out |= hit
            return out

        score_keys, eval_keys = selected(scoring, "data.scoring"), selected(evaluation, "data.evaluation")
        if any(r["split"] for r in rows):
            score_part = [r for r in rows if r["split"] != "evaluation"]
            eval_part = [r for r in rows if r["split"] != "scoring"]
        elif holdout:
            from biasprune.data import NameEntry

            people = {r["name"]: NameEntry(r["name"], r["group"], r["gender"]) for r in rows}
            _, eval_names = split_names(list(people.values()), fraction, seed)
            held = {n.name for n in eval_names}
            score_part = [r for r in rows if r["name"] not in held]
            eval_part = [r for r in rows if r["name"] in held]
        else:
            score_part = eval_part = rows
        strip = lambda r: {k: v for k, v in r.items() if k != "split"}  # noqa: E731
        return (
            [strip(r) for r in score_part if (r["scenario"], r["variation"]) in score_keys],
            [strip(r) for r in eval_part if (r["scenario"], r["variation"]) in eval_keys],
        )

    def _read_scoring_examples(self, path: Path) -> list[dict]:
        from biasprune.artifacts import read_jsonl

        if not path.is_file():
            raise AuditDataError(f"scoring_examples_file {str(path)!r} does not exist")
        try:
            rows = read_jsonl(path)
        except ValueError as err:
            raise AuditDataError(f"{path}: not valid JSON lines ({err})") from err
        for i, r in enumerate(rows, start=1):
            missing = [f for f in SCORING_EXAMPLE_FIELDS if f not in r]
            if missing:
                raise AuditDataError(f"{path}:{i}: missing field(s) {missing}; required {list(SCORING_EXAMPLE_FIELDS)}")
            if r["group"] not in self.groups:
                raise AuditDataError(f"{path}:{i}: field 'group' is {r['group']!r}; this run compares {list(self.groups)}")
        if not rows:
            raise AuditDataError(f"{path}: no scoring examples")
        return rows

    # ----------------------------------------------------------------------------------------- setup
    def _chat(self, user_prompt: str) -> str:
        messages = [{"role": "user", "content": user_prompt}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return user_prompt  # a base model without a chat template gets the bare question

    def _dataset(self, rows: list[dict]):
        import datasets

        with_prompt = [
            dict(r, prompt=self._chat(r["user_prompt"]), group_index=self.groups.index(r["group"])) for r in rows
        ]
        return datasets.Dataset.from_list(with_prompt)

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.tokenizer_name, trust_remote_code=self.trust_remote_code)
        if self.scoring_prompts is None:
            self.scoring_prompts = self._dataset(self.scoring_rows)
            self.eval_set = self._dataset(self.eval_rows)
        if self.preset_examples is not None and self.scoring_set is None:
            self.set_scoring_examples(self.preset_examples)

    # ------------------------------------------------------------------------------ scoring examples
    def set_scoring_examples(self, examples: Sequence[dict]) -> None:
        """Attach target responses (DESIGN: ``scoring_examples.jsonl`` rows) and tokenize them.

        Prompt and response are tokenized separately without special tokens and concatenated, so the
        stored texts alone determine the computation. Empty responses are skipped and counted.
        """
        import datasets

        self.scoring_examples = [
            {k: e[k] for k in SCORING_EXAMPLE_FIELDS} | {k: e[k] for k in ("gender", "pair_id") if k in e}
            for e in examples
        ]
        kept = []
        self.n_skipped = {g: 0 for g in self.groups}
        for e in self.scoring_examples:
            if not e["response"].strip():
                self.n_skipped[e["group"]] += 1
                continue
            kept.append(e)
        if not kept:
            raise AuditDataError("every scoring example has an empty response: nothing to score")
        tok = self.tokenizer
        prompt_ids = tok([e["prompt"] for e in kept], add_special_tokens=False)["input_ids"]
        response_ids = tok([e["response"] for e in kept], add_special_tokens=False)["input_ids"]
        # Scores are sums over examples, so their order is free: sorting by length keeps padding small.
        order = sorted(range(len(kept)), key=lambda i: len(prompt_ids[i]) + len(response_ids[i]))
        self.scoring_set = datasets.Dataset.from_dict(
            {
                "prompt_ids": [prompt_ids[i] for i in order],
                "response_ids": [response_ids[i] for i in order],
                "group_index": [self.groups.index(kept[i]["group"]) for i in order],
            }
        )

    # ----------------------------------------------------------------------------------- dataloaders
    def _shard(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _loader(self, rows, batch_size: int, collate) -> DataLoader:
        world, rank = self._shard()
        sampler = EvenShardSampler(len(rows), num_replicas=world, rank=rank)
        self._last_sampler = sampler
        return DataLoader(
            WeightedView(rows, sampler.total_size),
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
        )

    def response_dataloader(self) -> DataLoader:
        """Scoring prompts (this rank's shard) that need a target response."""
        return self._loader(self.scoring_prompts, self.eval_batch_size, _collate_text)

    def train_dataloader(self) -> DataLoader:
        if self.scoring_set is None:
            raise RuntimeError("no scoring examples: the module generates them in on_fit_start (or give scoring_examples_file)")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        loader = self._loader(self.scoring_set, self.batch_size, _TokenCollator(pad))
        self._train_sampler = self._last_sampler
        return loader

    def skip_train_batches(self, n_batches: int) -> None:
        """Resume a scoring epoch: the next pass of the train loader starts after ``n_batches`` batches."""
        self._train_sampler.skip_next(n_batches * self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_set, self.eval_batch_size, _collate_text)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """The evaluation prompts: ``predict`` returns their sampled answers and parsed values."""
        return self.val_dataloader()

    def eval_keys(self) -> list[tuple[str, str]]:
        """Evaluated (scenario, variation) pairs, in order."""
        seen: dict[tuple[str, str], None] = {}
        for r in self.eval_rows:
            seen.setdefault((r["scenario"], r["variation"]), None)
        return list(seen)
