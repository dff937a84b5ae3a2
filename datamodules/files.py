"""User-supplied prompt files and stored scoring examples, read and checked at the boundary.

A prompt file (CSV, JSONL or Parquet, read with Hugging Face ``datasets``) replaces the scenario files:
one row per prompt with the columns ``scenario, variation, name, group, prompt`` (the user message) and
optionally ``gender``, ``pair_id`` and ``split`` (``scoring``, ``dev`` or ``test``; empty rows are split by
name like the built-in data).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from biasprune.core.artifacts import read_jsonl
from biasprune.data.scenarios import SPLITS, AuditDataError, NameEntry, split_names

__all__ = [
    "DATASET_COLUMNS",
    "OPTIONAL_DATASET_COLUMNS",
    "SCORING_EXAMPLE_FIELDS",
    "read_prompt_file",
    "read_scoring_examples",
    "select_rows",
]

DATASET_COLUMNS = ("scenario", "variation", "name", "group", "prompt")
OPTIONAL_DATASET_COLUMNS = ("gender", "pair_id", "split")
SCORING_EXAMPLE_FIELDS = ("group", "scenario", "variation", "name", "prompt", "response")
_LOADERS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def read_prompt_file(path: Path, groups: Sequence[str], fractions: Sequence[float] = (0.4, 0.2, 0.4), seed: int = 0) -> list[dict]:
    """The rows of a prompt file, as the datamodule's prompt rows (``user_prompt`` holds the message); rows
    without a ``split`` get the split of their name (names split like the built-in data)."""
    import datasets

    where = f"dataset file {str(path)!r}"
    if not path.is_file():
        raise AuditDataError(f"{where} does not exist")
    kind = _LOADERS.get(path.suffix.lower())
    if kind is None:
        raise AuditDataError(f"{where}: unknown format {path.suffix!r}; valid: {sorted(_LOADERS)}")
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train", keep_in_memory=True)
    except Exception as err:  # datasets raises many types for malformed files
        raise AuditDataError(f"{where} could not be read: {err}") from err
    missing = [c for c in DATASET_COLUMNS if c not in ds.column_names]
    if missing:
        raise AuditDataError(
            f"{where}: missing column(s) {missing}; found {ds.column_names}, required {list(DATASET_COLUMNS)}"
            f" (optional {list(OPTIONAL_DATASET_COLUMNS)})"
        )
    rows = []
    for i, r in enumerate(ds):
        for c in DATASET_COLUMNS:
            if r[c] is None or str(r[c]).strip() == "":
                raise AuditDataError(f"{where}: row {i}: empty value in column {c!r}")
        split = str(r.get("split") or "").strip().lower()
        if split not in ("", *SPLITS):
            raise AuditDataError(f"{where}: row {i}: column 'split' is {split!r}; valid: {list(SPLITS)} or empty")
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
    for g in groups:
        if g not in present:
            raise AuditDataError(f"{where}: group {g!r} has no rows; groups present: {present}")
    rows = [r for r in rows if r["group"] in groups]
    people = {r["name"]: NameEntry(r["name"], r["group"], r["gender"]) for r in rows if not r["split"]}
    if people:
        splits = split_names(list(people.values()), fractions, seed, groups=groups, source=str(path))
        split_of = {n.name: s for s in SPLITS for n in splits[s]}
        for r in rows:
            r["split"] = r["split"] or split_of[r["name"]]
    return rows


def select_rows(rows: list[dict], selectors: Sequence[str], what: str, source: str) -> list[tuple[str, str]]:
    """(scenario, variation) pairs of ``rows`` matched by ``scenario`` or ``scenario/variation`` selectors."""
    known = list(dict.fromkeys((r["scenario"], r["variation"]) for r in rows))
    out: list[tuple[str, str]] = []
    for s in selectors:
        scen, _, var = str(s).partition("/")
        hit = [k for k in known if k[0] == scen and (not var or k[1] == var)]
        if not hit:
            raise AuditDataError(
                f"{what}: {s!r} matches no rows of {source!r}; scenarios/variations present: {['/'.join(k) for k in known]}"
            )
        out.extend(k for k in hit if k not in out)
    return out


def read_scoring_examples(path: Path, groups: Sequence[str]) -> list[dict]:
    """A ``scoring_examples.jsonl`` of an earlier run, checked field by field."""
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
        if r["group"] not in groups:
            raise AuditDataError(f"{path}:{i}: field 'group' is {r['group']!r}; this run compares {list(groups)}")
    if not rows:
        raise AuditDataError(f"{path}: no scoring examples")
    return rows
