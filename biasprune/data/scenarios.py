"""Audit data: scenario files (YAML), name lists (CSV) and the paired prompts built from them.

Scenario file (one per scenario)::

    name: purchase
    template: "I want to buy a {item} from {name}. ..."
    unit: USD                  # free text, shown in reports
    valid_range: [1, 1.0e7]    # optional plausibility bounds
    wording: verbatim          # optional: verbatim | paraphrase (of ``source``)
    source: "authors' code"    # optional: where the wording comes from
    variations:
      - {id: bicycle, item: bicycle}

A variation's values (and ``unit``) are text or numbers; a number is rendered as Python's ``str`` of the
value YAML parsed (``5`` -> ``"5"``, ``1.5e+3`` -> ``"1500.0"``), so quote a value to keep it as written.
Files are UTF-8 (a byte-order mark is accepted).

Names file: CSV with the columns ``name,group,gender`` (``source`` and extra columns are allowed); names
and their splits live in :mod:`biasprune.data.names` and are re-exported here.

Every problem is reported as an :class:`AuditDataError` that names the file, the field and the
offending value, so a user can fix their own data without reading this module.
"""

from __future__ import annotations

import math
import re
import string
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from biasprune.data.names import (
    SPLITS,
    AuditDataError,
    NameEntry,
    NameSplits,
    builtin_name_sets,
    check_groups,
    data_root,
    default_names_path,
    load_names,
    read_utf8,
    split_names,
)

__all__ = [
    "SPLITS",
    "WORDINGS",
    "AuditDataError",
    "NameEntry",
    "NameSplits",
    "Scenario",
    "Variation",
    "build_prompt_rows",
    "builtin_name_sets",
    "builtin_scenarios",
    "check_groups",
    "default_names_path",
    "load_names",
    "load_scenario",
    "load_scenarios",
    "parse_selectors",
    "split_names",
    "variation_key",
]

_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
WORDINGS = ("verbatim", "paraphrase")
_KNOWN_FIELDS = ("name", "template", "variations", "unit", "valid_range", "description", "wording", "source")


def builtin_scenarios() -> list[str]:
    """Names of the scenarios shipped with the package, e.g. ``purchase``."""
    return sorted(p.stem for p in (data_root() / "scenarios").glob("*.yaml"))


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
    """The file the scenario was loaded from."""
    wording: str = "unspecified"
    """``verbatim`` or ``paraphrase`` of :attr:`provenance` (``unspecified`` when the file does not say)."""
    provenance: str = ""
    """Where the wording comes from (the file's ``source`` field)."""

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
    builtin = data_root() / "scenarios" / f"{spec}.yaml"
    if builtin.is_file():
        return builtin
    raise AuditDataError(
        f"unknown scenario {str(spec)!r}: give a path to a YAML file or one of the built-in scenarios"
        f" {builtin_scenarios()}"
    )


def _text(value: object, where: str) -> str:
    """A scenario value as text: a non-empty string, or a number rendered with ``str``."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)
    kind = "empty" if isinstance(value, str) else f"a {type(value).__name__}" if value is not None else "null"
    raise AuditDataError(f"{where} must be text or a number, got {value!r} ({kind}); quote it to keep it as text")


def _parse_variations(variations_raw: object, needed: set[str], source: str) -> tuple[Variation, ...]:
    if not isinstance(variations_raw, list) or not variations_raw:
        raise AuditDataError(f"{source}: field 'variations' must be a non-empty list, got {variations_raw!r}")
    variations: list[Variation] = []
    seen: set[str] = set()
    for i, var in enumerate(variations_raw):
        where = f"{source}: variations[{i}]"
        if not isinstance(var, dict) or "id" not in var:
            raise AuditDataError(f"{where}: each variation must be a mapping with an 'id', got {var!r}")
        vid = var["id"]
        if isinstance(vid, bool) or not isinstance(vid, (str, int)) or not _ID_PATTERN.match(str(vid)):
            raise AuditDataError(f"{where}: field 'id' must use letters, digits, '_', '-' or '.', got {vid!r}")
        vid = str(vid)
        if vid in seen:
            raise AuditDataError(f"{where}: duplicate variation id {vid!r}")
        seen.add(vid)
        fields = {str(k): _text(v, f"{where} (id {vid!r}): field {str(k)!r}") for k, v in var.items() if k != "id"}
        missing = sorted(needed - set(fields))
        if missing:
            raise AuditDataError(f"{where} (id {vid!r}): placeholder(s) {missing} of the template are not given")
        extra = sorted(set(fields) - needed)
        if extra:
            raise AuditDataError(
                f"{where} (id {vid!r}): unknown placeholder(s) {extra}; the template uses {sorted(needed)}"
                + (" ({name} is filled from the names file)" if "name" in extra else "")
            )
        variations.append(Variation(id=vid, fields=fields))
    return tuple(variations)


def _parse_provenance(raw: dict, source: str) -> tuple[str, str]:
    """The optional ``wording`` (verbatim | paraphrase) and ``source`` (free text) fields."""
    wording = raw.get("wording", "unspecified")
    if "wording" in raw and wording not in WORDINGS:
        raise AuditDataError(f"{source}: field 'wording' is {wording!r}; valid choices: {list(WORDINGS)}")
    provenance = raw.get("source", "")
    if "source" in raw and not (isinstance(provenance, str) and provenance.strip()):
        raise AuditDataError(
            f"{source}: field 'source' must be text saying where the wording comes from, got {provenance!r}"
        )
    return wording, provenance.strip()


def load_scenario(spec: str | Path) -> Scenario:
    """Load and validate one scenario file (or built-in scenario by name)."""
    path = resolve_scenario_path(spec)
    source = str(path)
    try:
        raw = yaml.safe_load(read_utf8(path))
    except yaml.YAMLError as err:
        raise AuditDataError(f"{source}: not valid YAML ({err})") from err
    if not isinstance(raw, dict):
        raise AuditDataError(f"{source}: expected a mapping with fields name, template, variations")
    for key in ("name", "template", "variations"):
        if key not in raw:
            raise AuditDataError(f"{source}: missing field {key!r}")
    unknown = sorted(str(k) for k in set(raw) - set(_KNOWN_FIELDS))
    if unknown:
        raise AuditDataError(f"{source}: unknown field(s) {unknown}; valid fields: {sorted(_KNOWN_FIELDS)}")
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
    variations = _parse_variations(raw["variations"], placeholders - {"name"}, source)
    wording, provenance = _parse_provenance(raw, source)
    return Scenario(
        name=name,
        template=template,
        variations=variations,
        unit=_text(raw["unit"], f"{source}: field 'unit'") if "unit" in raw else "",
        valid_range=_parse_range(raw.get("valid_range"), source),
        source=source,
        wording=wording,
        provenance=provenance,
    )


def load_scenarios(specs: Iterable[str | Path]) -> dict[str, Scenario]:
    """Load several scenarios, keyed by their ``name``; names must be unique."""
    out: dict[str, Scenario] = {}
    for spec in specs:
        sc = load_scenario(spec)
        if sc.name in out:
            raise AuditDataError(f"{sc.source}: scenario name {sc.name!r} is already used by {out[sc.name].source}")
        out[sc.name] = sc
    if not out:
        raise AuditDataError("no scenarios given: list built-in scenario names or YAML files")
    return out


def variation_key(scenario: str, variation: str) -> str:
    """``scenario/variation``: how a variation is named in selectors, artifacts and TensorBoard tags."""
    return f"{scenario}/{variation}"


def parse_selectors(selectors: Sequence[str], scenarios: dict[str, Scenario], what: str) -> list[tuple[str, str]]:
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
    def of(cls, names: Sequence[NameEntry]) -> _PairKeys:
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
