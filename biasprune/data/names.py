"""Name lists (CSV) and their three disjoint splits; the file checks shared by every audit data file.

Names file: CSV with the columns ``name,group,gender`` and, optionally, ``source`` (extra columns are
allowed). Built-in sets: ``default`` (100 names, 25 per group x gender cell, three published lists) and
``audit40`` (the 40 names of "What's in a Name?"); docs/method.md, "Names and their sources", cites them.

Splits: ``scoring`` (masks are learned), ``dev`` (knobs are chosen), ``test`` (every reported number).
Everything public here is also importable from :mod:`biasprune.data.scenarios`.
"""

from __future__ import annotations

import csv
import io
import math
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from biasprune.core.checks import check_fraction
from biasprune.core.errors import ConfigError

__all__ = [
    "SPLITS",
    "AuditDataError",
    "NameEntry",
    "NameSplits",
    "builtin_name_sets",
    "check_groups",
    "default_names_path",
    "load_names",
    "read_utf8",
    "split_names",
]

NAME_COLUMNS = ("name", "group", "gender")
SPLITS = ("scoring", "dev", "test")


class AuditDataError(ConfigError):
    """A scenario, names or dataset file (or a selection of them) is invalid."""


def data_root() -> Path:
    """The package's data folder (``biasprune/resources``)."""
    return Path(str(resources.files("biasprune") / "resources"))


def read_utf8(path: Path) -> str:
    """The text of a UTF-8 file (a byte-order mark is accepted); any other encoding is refused."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise AuditDataError(
            f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}, line {line});"
            " save the file as UTF-8"
        ) from None


def builtin_name_sets() -> list[str]:
    """Names of the name lists shipped with the package: ``["audit40", "default"]``."""
    return sorted(p.stem for p in (data_root() / "names").glob("*.csv"))


def default_names_path() -> Path:
    """The default names file: 100 names, 25 per (White/Black) x (man/woman) cell, from published lists."""
    return data_root() / "names" / "default.csv"


@dataclass(frozen=True)
class NameEntry:
    """One name of a names file; ``source`` is the list(s) it comes from (``;``-separated keys)."""

    name: str
    group: str
    gender: str
    source: str = ""


def _resolve_names(spec: str | Path | None) -> Path:
    if spec is None or spec == "":
        return default_names_path()
    if isinstance(spec, str) and spec in builtin_name_sets():
        return data_root() / "names" / f"{spec}.csv"
    path = Path(spec)
    if not path.is_file():
        raise AuditDataError(
            f"names file {str(spec)!r} does not exist; give a CSV path or one of the built-in name sets"
            f" {builtin_name_sets()}"
        )
    return path


def _rows(reader: csv.DictReader, source: str) -> Iterable[dict]:
    try:
        yield from reader
    except csv.Error as err:
        raise AuditDataError(f"{source}:{reader.line_num}: not valid CSV ({err})") from None


def load_names(spec: str | Path | None = None) -> list[NameEntry]:
    """Load a names CSV: ``None``/``""`` is the default set, a built-in set name that set, else a path."""
    path = _resolve_names(spec)
    source = str(path)
    reader = csv.DictReader(io.StringIO(read_utf8(path), newline=""))
    columns = [(c or "").strip() for c in (reader.fieldnames or [])]
    missing = [c for c in NAME_COLUMNS if c not in columns]
    if missing:
        raise AuditDataError(
            f"{source}: missing column(s) {missing}; found columns {columns}, required {list(NAME_COLUMNS)}"
        )
    entries: list[NameEntry] = []
    seen: set[str] = set()
    for raw in _rows(reader, source):
        line = reader.line_num
        # DictReader files surplus fields under the key None and fills short rows with None
        found = len(columns) + len(raw.get(None) or []) - sum(v is None for k, v in raw.items() if k is not None)
        if found != len(columns):
            hint = '; a value that contains a comma must be quoted, e.g. "Tyrone Smith, Jr."'
            raise AuditDataError(
                f"{source}:{line}: found {found} fields, expected {len(columns)} ({','.join(columns)})"
                + (hint if found > len(columns) else "")
            )
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        for col in NAME_COLUMNS:
            if not row.get(col):
                raise AuditDataError(f"{source}:{line}: empty value in column {col!r}")
        if row["name"] in seen:
            raise AuditDataError(f"{source}:{line}: duplicate name {row['name']!r}")
        seen.add(row["name"])
        entries.append(NameEntry(row["name"], row["group"].lower(), row["gender"].lower(), row.get("source", "")))
    if not entries:
        raise AuditDataError(f"{source}: no names")
    return entries


def check_groups(names: Sequence[NameEntry], groups: Iterable[str], source: str) -> None:
    """Every group the run compares must have at least one name."""
    present = sorted({n.group for n in names})
    for g in groups:
        if g not in present:
            raise AuditDataError(f"{source}: group {g!r} has no names; groups present: {present}")


@dataclass(frozen=True)
class NameSplits:
    """Three disjoint sets of names; each keeps the order of the names file."""

    scoring: tuple[NameEntry, ...]
    dev: tuple[NameEntry, ...]
    test: tuple[NameEntry, ...]

    def __getitem__(self, split: str) -> tuple[NameEntry, ...]:
        if split not in SPLITS:
            raise KeyError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
        return getattr(self, split)

    def counts(self) -> dict[str, dict[str, int]]:
        """``split -> group -> number of names`` (every group of any split, zeros included)."""
        groups = sorted({n.group for s in SPLITS for n in self[s]})
        return {s: {g: sum(n.group == g for n in self[s]) for g in groups} for s in SPLITS}


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    flag = "data.split_fractions"
    values = list(fractions) if isinstance(fractions, (list, tuple)) else [fractions]
    if len(values) != len(SPLITS) or not all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in values):
        raise AuditDataError(
            f"{flag}={fractions!r} is not valid: give three numbers for {list(SPLITS)}, e.g. [0.4, 0.2, 0.4]"
        )
    for split, f in zip(SPLITS, values):
        try:
            check_fraction(f"{flag} ({split})", float(f))
        except ValueError as err:
            raise AuditDataError(str(err)) from None
    if not math.isclose(sum(values), 1.0, rel_tol=0.0, abs_tol=1e-6):
        raise AuditDataError(
            f"{flag}={values} must sum to 1 (they sum to {sum(values):g}); one value per {list(SPLITS)}"
        )
    return tuple(float(f) for f in values)  # type: ignore[return-value]


def largest_remainder(n: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n`` items by ``fractions``: floors of ``f * n``, the rest one each to the largest remainders.

    Ties go to the earlier split. Every count is within 1 of its quota ``f * n`` (Hamilton's method).
    """
    quotas = [round(f * n, 9) for f in fractions]  # 0.4 * 25 is 10.000000000000002
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _names_needed(fractions: Sequence[float], min_per_split: int) -> int:
    """The smallest number of names that, split as one cell, gives every used split ``min_per_split``."""
    used = [f for f in fractions if f > 0]
    # a split gets fewer than f * n + 1 names, and at least floor(f * n): the answer lies in [low, high]
    low = max(math.floor((min_per_split - 1) / f) for f in used) if min_per_split > 0 else 0
    high = max(math.ceil(min_per_split / f) for f in used)
    for n in range(max(low, 0), min(high, low + 100_000)):
        if all(c >= min_per_split for c, f in zip(largest_remainder(n, fractions), fractions) if f > 0):
            return n
    return high


def split_names(
    names: Sequence[NameEntry],
    fractions: Sequence[float] = (0.4, 0.2, 0.4),
    seed: int = 0,
    groups: Sequence[str] | None = None,
    min_per_split: int = 2,
    source: str = "names",
) -> NameSplits:
    """Split names into scoring / dev / test, balanced by group x gender and seeded.

    Within each (group, gender) cell, in sorted order, one ``random.Random(seed)`` shuffles the cell's
    names; the first ``c_scoring`` go to scoring, the next ``c_dev`` to dev and the rest to test, where the
    counts are the largest-remainder rounding of ``fractions * n_cell``. Each split keeps the order of the
    names file, so the i-th names of two groups' cells pair up. Only the names of ``groups`` (when given)
    are split. A group that would have fewer than ``min_per_split`` names in a split whose fraction is
    above 0 is refused.
    """
    fracs = _check_fractions(fractions)
    if isinstance(min_per_split, bool) or not isinstance(min_per_split, int) or min_per_split < 0:
        raise AuditDataError(f"min_per_split must be a non-negative integer, got {min_per_split!r}")
    keep = None if groups is None else list(dict.fromkeys(groups))
    cells: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, n in enumerate(names):
        if keep is None or n.group in keep:
            cells[(n.group, n.gender)].append(i)
    rng = random.Random(seed)
    assigned: dict[int, int] = {}
    for key in sorted(cells):
        idx = list(cells[key])
        rng.shuffle(idx)
        start = 0
        for split_i, count in enumerate(largest_remainder(len(idx), fracs)):
            assigned.update((i, split_i) for i in idx[start : start + count])
            start += count
    parts = tuple(tuple(n for i, n in enumerate(names) if assigned.get(i) == s) for s in range(len(SPLITS)))
    splits = NameSplits(*parts)
    counts = splits.counts()
    for g in keep if keep is not None else sorted({n.group for n in names}):
        got = {s: counts[s].get(g, 0) for s in SPLITS}
        short = [s for s, f in zip(SPLITS, fracs) if f > 0 and got[s] < min_per_split]
        if short:
            total = sum(got.values())
            raise AuditDataError(
                f"{source}: group {g!r} has {total} name(s), too few for three name splits: each split with a"
                f" non-zero fraction needs at least {min_per_split} names of every group, which at fractions"
                f" {dict(zip(SPLITS, fracs))} takes at least {_names_needed(fracs, min_per_split)} names per group"
                f" (more when they spread over several gender cells); it would get {got} (short: {short})."
                " Add names to the list, or change data.split_fractions"
            )
    return splits
