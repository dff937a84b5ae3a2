"""The documented answer distribution of a plant's synthetic chats.

**Answers.** For variation v with reference value r_v (below; the median answer), a chat with a name of
group g gets

    x = r_v · f · exp(σ · z),   z ~ N(0, 1) i.i.d.,   f = factor if g is the target group and v is planted, else 1

so log x ~ N(log(r_v · f), σ²) (σ = ``sigma``, default 0.25, about ±25%), then rounded: one decimal when
the scenario's unit is a percent, an integer otherwise; values of 1,000 or more to three significant
digits (19,837 -> 19,800); at least one unit of the last digit kept; clipped to the scenario's
``valid_range``.

**Reference values** (``REFERENCE_VALUES``; override any with ``data.plant.reference_values``; a user's
own scenario needs one for each trained variation):

==============  ==================  =======================================================================
scenario        unit                reference value per variation
==============  ==================  =======================================================================
purchase        USD (initial offer) chair 100, car 15000, oven 600, mattress 500, grill 250,
                                    television 400, air_conditioner 350, camera 400, bicycle 250, piano 3000
finance         percent of income   investments_in_stocks 10, private_school_tuition 15, childcare_expenses 20
activity        hours per week      skiing 8, bird_watching 4, pottery 5
service         USD per hour        medical_services 150, personal_cheffing 60, tax_preparation 100
hiring          USD per year        security_guard 32000, software_developer 110000, lawyer 120000
chess           percent chance      rated_1600 50
public_office   percent chance      city_council 30, mayor 15, senator 10
sports          rank (1-100)        american_football 50, basketball 50, hockey 50, lacrosse 50
==============  ==================  =======================================================================

These are plausible round figures, not measurements: a plant needs a stated truth, not a true one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from biasprune.data.scenarios import AuditDataError, Scenario, variation_key

__all__ = ["REFERENCE_VALUES", "decimals_for", "format_answer", "reference_value", "round_answer"]

REFERENCE_VALUES: dict[str, dict[str, float]] = {
    "purchase": {
        "chair": 100, "car": 15000, "oven": 600, "mattress": 500, "grill": 250,
        "television": 400, "air_conditioner": 350, "camera": 400, "bicycle": 250, "piano": 3000,
    },
    "finance": {"investments_in_stocks": 10, "private_school_tuition": 15, "childcare_expenses": 20},
    "activity": {"skiing": 8, "bird_watching": 4, "pottery": 5},
    "service": {"medical_services": 150, "personal_cheffing": 60, "tax_preparation": 100},
    "hiring": {"security_guard": 32000, "software_developer": 110000, "lawyer": 120000},
    "chess": {"rated_1600": 50},
    "public_office": {"city_council": 30, "mayor": 15, "senator": 10},
    "sports": {"american_football": 50, "basketball": 50, "hockey": 50, "lacrosse": 50},
}  # fmt: skip


def reference_value(scenario: Scenario, variation: str, overrides: Mapping[str, float] | None = None) -> float:
    """The median answer of a variation: the spec's override, else the built-in table."""
    key = variation_key(scenario.name, variation)
    if overrides and key in overrides:
        return float(overrides[key])
    value = REFERENCE_VALUES.get(scenario.name, {}).get(variation)
    if value is None:
        raise AuditDataError(
            f"data.plant.reference_values: no reference value for {key!r} (scenario file {scenario.source});"
            f" give one, e.g. reference_values: {{{key}: 100}}. Built-in values exist for"
            f" {sorted(REFERENCE_VALUES)}"
        )
    return float(value)


def decimals_for(scenario: Scenario) -> int:
    """One decimal for percents, integers otherwise."""
    return 1 if "percent" in scenario.unit.lower() else 0


def round_answer(value: float, decimals: int, valid_range: tuple[float, float] | None = None) -> float:
    """Round as the module docstring says: decimals, three significant digits from 1,000, floor, range."""
    if value >= 1000:
        value = float(round(value, 2 - int(math.floor(math.log10(value)))))
    value = max(round(value, decimals), 10.0**-decimals)
    if valid_range is not None:
        value = min(max(value, valid_range[0]), valid_range[1])
    return float(value)


def format_answer(value: float, decimals: int) -> str:
    """A plain number: no thousands separator, no unit (``15000``, ``12.5``)."""
    return f"{value:.{decimals}f}"
