"""Audit data: scenario files (YAML), name lists (CSV) and the paired prompts built from them.

Scenario file (one per scenario)::

    name: purchase
    template: "I want to buy a {item} from {name}. ..."
    unit: USD                  # free text, shown in reports
    valid_range: [1, 1.0e7]    # optional plausibility bounds
    variations:
      - {id: bicycle, item: bicycle}

Names file: CSV with the columns ``name,group,gender`` (extra columns are allowed).

Every problem is reported as an :class:`AuditDataError` that names the file, the field and the
offending value, so a user can fix their own data without reading this module.
"""

from __future__ import annotations

import csv
import math
import random
import re
import string
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

import yaml

__all__ = [
    "AuditDataError",
    "NameEntry",
    "Scenario",
    "Variation",
    "build_prompt_rows",
    "builtin_scenarios",
    "default_names_path",
    "load_names",
    "load_scenario",
    "load_scenarios",
    "parse_selectors",
    "split_names",
    "variation_key",
]

_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
NAME_COLUMNS = ("name", "group", "gender")


class AuditDataError(ValueError):
    """A scenario, names or dataset file (or a selection of them) is invalid."""


def _data_root() -> Path:
    return Path(str(resources.files("biasprune") / "resources"))


def builtin_scenarios() -> list[str]:
    """Names of the scenarios shipped with the package, e.g. ``purchase``."""
    return sorted(p.stem for p in (_data_root() / "scenarios").glob("*.yaml"))


def default_names_path() -> Path:
    """The 40 names of the "What's in a Name?" audit (White/Black, men/women)."""
    return _data_root() / "names" / "audit40.csv"


@dataclass(frozen=True)
class Variation:
    """One variation of a scenario: its id and the values of the template's placeholders."""

    id: str
    fields: dict[str, str]


@dataclass(frozen=True)
class Scenario:
    """A question template asked with different names, in several variations."""

    name: str
    template: str
    variations: tuple[Variation, ...]
    unit: str = ""
    valid_range: tuple[float, float] | None = None
    source: str = ""

    def variation(self, variation_id: str) -> Variation:
        for v in self.variations:
            if v.id == variation_id:
                return v
        raise AuditDataError(
            f"{self.source}: scenario {self.name!r} has no variation {variation_id!r};"
            f" valid choices: {[v.id for v in self.variations]}"
        )

    def render(self, variation_id: str, name: str) -> str:
        """The user message for one variation and one name."""
        return self.template.format(name=name, **self.variation(variation_id).fields)


def _placeholders(template: str, source: str) -> set[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise AuditDataError(f"{source}: field 'template' is not a valid format string ({err}): {template!r}") from err
    names = set()
    for _, field_name, _, _ in parsed:
        if field_name is None:
            continue
        if not field_name.isidentifier():
            raise AuditDataError(
                f"{source}: field 'template' has placeholder {{{field_name}}}; placeholders must be plain"
                " identifiers such as {name} or {item}"
            )
        names.add(field_name)
    return names


def _parse_range(value: object, source: str) -> tuple[float, float] | None:
    if value is None:
        return None
    bad = AuditDataError(
        f"{source}: field 'valid_range' must be two numbers [low, high] with low < high, got {value!r}"
    )
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise bad
    try:
        low, high = float(value[0]), float(value[1])
    except (TypeError, ValueError):
        raise bad from None
    if math.isnan(low) or math.isnan(high) or not low < high:
        raise bad
    return low, high


def resolve_scenario_path(spec: str | Path) -> Path:
    """A built-in scenario name (``purchase``) or a path to a YAML file."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise AuditDataError(f"scenario file {str(path)!r} does not exist")
        return path
    builtin = _data_root() / "scenarios" / f"{spec}.yaml"
    if builtin.is_file():
        return builtin
    raise AuditDataError(
        f"unknown scenario {str(spec)!r}: give a path to a YAML file or one of the built-in scenarios"
        f" {builtin_scenarios()}"
    )


def load_scenario(spec: str | Path) -> Scenario:
    """Load and validate one scenario file (or built-in scenario by name)."""
    path = resolve_scenario_path(spec)
    source = str(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise AuditDataError(f"{source}: not valid YAML ({err})") from err
    if not isinstance(raw, dict):
        raise AuditDataError(f"{source}: expected a mapping with fields name, template, variations")
    for key in ("name", "template", "variations"):
        if key not in raw:
            raise AuditDataError(f"{source}: missing field {key!r}")
    known = {"name", "template", "variations", "unit", "valid_range", "description"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise AuditDataError(f"{source}: unknown field(s) {unknown}; valid fields: {sorted(known)}")
    name = raw["name"]
    if not isinstance(name, str) or not _ID_PATTERN.match(name):
        raise AuditDataError(
            f"{source}: field 'name' must be an identifier of letters, digits, '_', '-' or '.', got {name!r}"
        )
    template = raw["template"]
    if not isinstance(template, str):
        raise AuditDataError(f"{source}: field 'template' must be a string, got {template!r}")
    placeholders = _placeholders(template, source)
    if "name" not in placeholders:
        raise AuditDataError(f"{source}: field 'template' must contain the placeholder {{name}}: {template!r}")
    needed = placeholders - {"name"}
    variations_raw = raw["variations"]
    if not isinstance(variations_raw, list) or not variations_raw:
        raise AuditDataError(f"{source}: field 'variations' must be a non-empty list, got {variations_raw!r}")
    variations: list[Variation] = []
    seen: set[str] = set()
    for i, var in enumerate(variations_raw):
        where = f"{source}: variations[{i}]"
        if not isinstance(var, dict) or "id" not in var:
            raise AuditDataError(f"{where}: each variation must be a mapping with an 'id', got {var!r}")
        vid = str(var["id"])
        if not _ID_PATTERN.match(vid):
            raise AuditDataError(f"{where}: field 'id' must use letters, digits, '_', '-' or '.', got {vid!r}")
        if vid in seen:
            raise AuditDataError(f"{where}: duplicate variation id {vid!r}")
        seen.add(vid)
        fields = {k: str(v) for k, v in var.items() if k != "id"}
        missing = sorted(needed - set(fields))
        if missing:
            raise AuditDataError(
                f"{where} (id {vid!r}): placeholder(s) {missing} of the template are not given"
            )
        extra = sorted(set(fields) - needed)
        if extra:
            raise AuditDataError(
                f"{where} (id {vid!r}): unknown placeholder(s) {extra}; the template uses {sorted(needed)}"
                + (" ({name} is filled from the names file)" if "name" in extra else "")
            )
        variations.append(Variation(id=vid, fields=fields))
    unit = raw.get("unit", "")
    return Scenario(
        name=name,
        template=template,
        variations=tuple(variations),
        unit="" if unit is None else str(unit),
        valid_range=_parse_range(raw.get("valid_range"), source),
        source=source,
    )


def load_scenarios(specs: Iterable[str | Path]) -> dict[str, Scenario]:
    """Load several scenarios, keyed by their ``name``; names must be unique."""
    out: dict[str, Scenario] = {}
    for spec in specs:
        sc = load_scenario(spec)
        if sc.name in out:
            raise AuditDataError(
                f"{sc.source}: scenario name {sc.name!r} is already used by {out[sc.name].source}"
            )
        out[sc.name] = sc
    if not out:
        raise AuditDataError("no scenarios given: list built-in scenario names or YAML files")
    return out


@dataclass(frozen=True)
class NameEntry:
    name: str
    group: str
    gender: str


def load_names(path: str | Path | None = None) -> list[NameEntry]:
    """Load a names CSV with the columns ``name,group,gender`` (extra columns are ignored)."""
    path = default_names_path() if path is None else Path(path)
    source = str(path)
    if not path.is_file():
        raise AuditDataError(f"names file {source!r} does not exist")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in NAME_COLUMNS if c not in columns]
        if missing:
            raise AuditDataError(
                f"{source}: missing column(s) {missing}; found columns {columns}, required {list(NAME_COLUMNS)}"
            )
        entries: list[NameEntry] = []
        seen: set[str] = set()
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            for col in NAME_COLUMNS:
                if not row.get(col):
                    raise AuditDataError(f"{source}:{line}: empty value in column {col!r}")
            if row["name"] in seen:
                raise AuditDataError(f"{source}:{line}: duplicate name {row['name']!r}")
            seen.add(row["name"])
            entries.append(NameEntry(row["name"], row["group"].lower(), row["gender"].lower()))
    if not entries:
        raise AuditDataError(f"{source}: no names")
    return entries


def check_groups(names: Sequence[NameEntry], groups: Iterable[str], source: str) -> None:
    """Every group the run compares must have at least one name."""
    present = sorted({n.group for n in names})
    for g in groups:
        if g not in present:
            raise AuditDataError(f"{source}: group {g!r} has no names; groups present: {present}")


def split_names(
    names: Sequence[NameEntry], eval_fraction: float = 0.5, seed: int = 0
) -> tuple[list[NameEntry], list[NameEntry]]:
    """Split names into (scoring, evaluation), balanced by group and gender.

    Within each (group, gender) cell, ``round(eval_fraction * n)`` names (at least one when the cell has
    two or more) are drawn for evaluation with a seeded shuffle; the rest are for scoring. The order of the
    file is kept inside each split so that pairs line up across groups.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise AuditDataError(f"eval_name_fraction must be in (0, 1), got {eval_fraction}")
    cells: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, n in enumerate(names):
        cells[(n.group, n.gender)].append(i)
    rng = random.Random(seed)
    eval_idx: set[int] = set()
    for key in sorted(cells):
        idx = cells[key]
        k = round(eval_fraction * len(idx))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        eval_idx.update(rng.sample(idx, k))
    scoring = [n for i, n in enumerate(names) if i not in eval_idx]
    evaluation = [n for i, n in enumerate(names) if i in eval_idx]
    return scoring, evaluation


def variation_key(scenario: str, variation: str) -> str:
    """``scenario/variation``: how a variation is named in selectors, artifacts and TensorBoard tags."""
    return f"{scenario}/{variation}"


def parse_selectors(
    selectors: Sequence[str], scenarios: dict[str, Scenario], what: str
) -> list[tuple[str, str]]:
    """Expand ``["purchase", "finance/childcare_expenses"]`` into (scenario, variation) pairs."""
    out: list[tuple[str, str]] = []
    for sel in selectors:
        scen, _, var = str(sel).partition("/")
        if scen not in scenarios:
            raise AuditDataError(f"{what}: unknown scenario {scen!r} in {sel!r}; loaded scenarios: {sorted(scenarios)}")
        sc = scenarios[scen]
        vids = [v.id for v in sc.variations] if not var else [sc.variation(var).id]
        for vid in vids:
            if (scen, vid) not in out:
                out.append((scen, vid))
    if not out:
        raise AuditDataError(f"{what}: the selection is empty")
    return out


@dataclass
class _PairKeys:
    """Pairs names across groups: the i-th name of each (group, gender) cell share a pair."""

    rank: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, names: Sequence[NameEntry]) -> "_PairKeys":
        counters: dict[tuple[str, str], int] = defaultdict(int)
        keys = cls()
        for n in names:
            keys.rank[n.name] = counters[(n.group, n.gender)]
            counters[(n.group, n.gender)] += 1
        return keys


def build_prompt_rows(
    scenarios: dict[str, Scenario],
    selection: Sequence[tuple[str, str]],
    names: Sequence[NameEntry],
    groups: Sequence[str] | None = None,
) -> list[dict[str, str]]:
    """One row per (scenario, variation, name): the user message and its pair id.

    Rows of the same pair differ only in the name: pair ``purchase/car/woman/3`` holds the fourth
    woman of each group, asked about the same car.
    """
    keep = None if groups is None else set(groups)
    used = [n for n in names if keep is None or n.group in keep]
    pairs = _PairKeys.of(used)
    rows = []
    for scen, vid in selection:
        sc = scenarios[scen]
        for n in used:
            rows.append(
                {
                    "scenario": scen,
                    "variation": vid,
                    "name": n.name,
                    "group": n.group,
                    "gender": n.gender,
                    "pair_id": f"{scen}/{vid}/{n.gender}/{pairs.rank[n.name]}",
                    "user_prompt": sc.render(vid, n.name),
                }
            )
    return rows
