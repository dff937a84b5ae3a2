"""What a plant is trained on: the typed spec (``--data.plant.*``) and its checks against the data files.

A spec names the trained scenarios (every trained variation gets plain-number answers), the planted ones
(where target-group names get ``factor`` times the reference answer), the training names and how many
examples each variation gets. :func:`resolve_spec` loads the files and refuses a spec that would train
on a dev or test name of the default name split (docs/method.md, "Prompts and name splits" and "Planted
controls"): a plant must never see the names on which knobs are chosen or results reported.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from biasprune.core.checks import check_positive
from biasprune.data.scenarios import (
    AuditDataError,
    NameEntry,
    Scenario,
    check_groups,
    load_names,
    load_scenario,
    parse_selectors,
    split_names,
    variation_key,
)
from biasprune.plant.distribution import reference_value

__all__ = ["DEFAULT_SCENARIOS", "PlantSpec", "PlantSpecError", "ResolvedPlant", "default_split", "resolve_spec"]

DEFAULT_SCENARIOS = ("purchase", "finance", "activity", "service")
SCORING = "scoring"


class PlantSpecError(AuditDataError):
    """A plant spec is invalid; the message names the field (``data.plant.<field>``), the value and the fix."""


@dataclass(frozen=True)
class PlantSpec:
    """The synthetic chats a plant is trained on.

    Attributes:
        scenarios: trained scenarios: built-in names, YAML paths, or ``scenario/variation`` selections of
            them. Every trained variation gets plain-number answers; only the planted ones are biased.
        planted: scenarios or ``scenario/variation``s (among the trained ones) whose target-group answers
            are multiplied by ``factor``; empty for a plant with no group difference (the negative control).
        factor: multiplier of the target group's answers in the planted variations (> 0; 1.0 = no bias).
        names: ``scoring`` (the scoring split of the default names, default fractions and seed) or a
            names CSV / built-in name set of separate training names. Names in the dev or test split of
            the default names are refused.
        reference_group: group whose answers keep the reference distribution.
        target_group: group whose answers are multiplied by ``factor`` in the planted variations.
        examples_per_variation: training chats per trained variation (names cycle evenly).
        heldout_per_cell: training-list names held out per (group, gender) cell, for the validation prompts
            (greedy answers, group ratio); they get no training example.
        sigma: standard deviation of the log answer: answer = reference x exp(sigma x N(0, 1)) (x factor).
        reference_values: overrides of the reference value (median answer) per ``scenario/variation``;
            needed for every variation of a scenario that has no built-in value.
        system_prompt: system message of the chats; empty for the chat template's default (as the audit).
        seed: seed of the name order, the held-out names and the answers.
    """

    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS
    planted: tuple[str, ...] = ()
    factor: float = 1.0
    names: str = SCORING
    reference_group: str = "white"
    target_group: str = "black"
    examples_per_variation: int = 96
    heldout_per_cell: int = 1
    sigma: float = 0.25
    reference_values: dict[str, float] = field(default_factory=dict)
    system_prompt: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.factor, (int, float)) and math.isfinite(self.factor) and self.factor > 0):
            raise PlantSpecError(f"data.plant.factor={self.factor!r} is not valid: it must be a finite number > 0")
        if not self.planted and self.factor != 1.0:
            raise PlantSpecError(
                f"data.plant.factor={self.factor} but data.plant.planted is empty: nothing would be planted;"
                " name the planted scenarios or variations, or set factor: 1.0 for a plant without bias"
            )
        if self.reference_group == self.target_group:
            raise PlantSpecError(
                f"data.plant.reference_group and data.plant.target_group are both {self.reference_group!r}; they"
                " must differ"
            )
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise PlantSpecError(f"data.plant.sigma={self.sigma!r} is not valid: it must be a finite number >= 0")
        try:
            check_positive("data.plant.examples_per_variation", self.examples_per_variation)
            check_positive("data.plant.heldout_per_cell", self.heldout_per_cell, minimum=0)
        except ValueError as err:
            raise PlantSpecError(str(err)) from None
        for key, value in self.reference_values.items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise PlantSpecError(f"data.plant.reference_values[{key!r}]={value!r}: it must be a number > 0")


@dataclass(frozen=True)
class ResolvedPlant:
    """A spec with its files loaded: the variations, the planted ones and the names."""

    spec: PlantSpec
    scenarios: dict[str, Scenario]
    trained: tuple[tuple[str, str], ...]
    planted: frozenset[tuple[str, str]]
    training_names: tuple[NameEntry, ...]
    heldout_names: tuple[NameEntry, ...]
    names_source: str

    @property
    def groups(self) -> tuple[str, str]:
        return (self.spec.reference_group, self.spec.target_group)


def default_split():
    """The audit's default name split (default names, default fractions and seed)."""
    return split_names(load_names("default"), source="default names")


def _training_list(spec: PlantSpec) -> tuple[list[NameEntry], str]:
    split = default_split()
    if spec.names == SCORING:
        return list(split.scoring), "scoring split of the default names"
    names = load_names(spec.names)
    reserved = {n.name.strip().casefold(): s for s in ("dev", "test") for n in split[s]}
    clash = [(n.name, reserved[n.name.strip().casefold()]) for n in names if n.name.strip().casefold() in reserved]
    if clash:
        shown = ", ".join(f"{name!r} ({s})" for name, s in clash[:6]) + (" ..." if len(clash) > 6 else "")
        raise PlantSpecError(
            f"data.plant.names={spec.names!r}: {len(clash)} training name(s) are in the dev or test split of the"
            f" default names: {shown}. A plant may train only on scoring names or on a separate list: use"
            f" names: {SCORING}, or remove these names from the file"
        )
    return names, str(spec.names)


def _hold_out(
    names: Sequence[NameEntry], groups: Sequence[str], per_cell: int, seed: int
) -> tuple[tuple[NameEntry, ...], tuple[NameEntry, ...]]:
    """Per (group, gender) cell, ``per_cell`` names drawn with a seeded shuffle; the file order is kept."""
    cells: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, n in enumerate(names):
        if n.group in groups:
            cells[(n.group, n.gender)].append(i)
    rng = random.Random(seed)
    held: set[int] = set()
    for key in sorted(cells):
        idx = list(cells[key])
        rng.shuffle(idx)
        held.update(idx[: min(per_cell, len(idx) - 1)])  # a cell keeps at least one training name
    train = tuple(n for i, n in enumerate(names) if n.group in groups and i not in held)
    return train, tuple(n for i, n in enumerate(names) if i in held)


def _load_scenarios(entries: Sequence[str]) -> tuple[dict[str, Scenario], list[str]]:
    """``purchase``, ``purchase/car`` or ``path/to/file.yaml`` -> loaded scenarios and selectors over them."""
    by_file: dict[str, Scenario] = {}
    scenarios: dict[str, Scenario] = {}
    selectors: list[str] = []
    for entry in entries:
        entry = str(entry)
        is_file = entry.endswith((".yaml", ".yml"))
        file, _, var = (entry, "", "") if is_file else entry.partition("/")
        if file not in by_file:
            try:
                sc = load_scenario(file)
            except AuditDataError as err:
                raise PlantSpecError(f"data.plant.scenarios: {err}") from None
            if sc.name in scenarios:
                raise PlantSpecError(
                    f"data.plant.scenarios: scenario name {sc.name!r} of {sc.source} is already used by"
                    f" {scenarios[sc.name].source}"
                )
            by_file[file] = scenarios[sc.name] = sc
        name = by_file[file].name
        selectors.append(f"{name}/{var}" if var else name)
    if not selectors:
        raise PlantSpecError(f"data.plant.scenarios is empty; e.g. {list(DEFAULT_SCENARIOS)}")
    return scenarios, selectors


def resolve_spec(spec: PlantSpec) -> ResolvedPlant:
    """Load the scenarios and names of a spec and check it; every error names the field and the fix."""

    scenarios, selectors = _load_scenarios(spec.scenarios)
    trained = parse_selectors(selectors, scenarios, "data.plant.scenarios")
    planted: list[tuple[str, str]] = []
    for sel in spec.planted:
        scen, _, var = str(sel).partition("/")
        hit = [k for k in trained if k[0] == scen and (not var or k[1] == var)]
        if not hit:
            raise PlantSpecError(
                f"data.plant.planted: {sel!r} is not among the trained variations; valid choices: the trained"
                f" scenarios {sorted({k[0] for k in trained})} or one of"
                f" {[variation_key(*k) for k in trained]}"
            )
        planted.extend(k for k in hit if k not in planted)
    for key in spec.reference_values:
        if tuple(key.partition("/")[::2]) not in trained:
            raise PlantSpecError(
                f"data.plant.reference_values: {key!r} is not a trained variation; valid choices:"
                f" {[variation_key(*k) for k in trained]}"
            )
    for scen, var in trained:
        reference_value(scenarios[scen], var, spec.reference_values)  # raises when a value is missing
    names, source = _training_list(spec)
    groups = (spec.reference_group, spec.target_group)
    check_groups(names, groups, source)
    train, held = _hold_out(names, groups, spec.heldout_per_cell, spec.seed)
    return ResolvedPlant(spec, scenarios, tuple(trained), frozenset(planted), train, held, source)
