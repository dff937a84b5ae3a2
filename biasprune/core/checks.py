"""Argument checks shared by every constructor: one wording for "not a valid choice" and "not a fraction".

Each check raises :class:`~biasprune.core.errors.ConfigError` (a ``ValueError``) naming the flag (as the user
typed it, e.g. ``pruning.units``), the value given and what would be valid, so a wrong command line or YAML key
is fixed without reading the code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from biasprune.core.errors import ConfigError

__all__ = ["check_choice", "check_choices", "check_fraction", "check_positive"]


def check_choice(flag: str, value: object, choices: Sequence[object]) -> None:
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{flag}={value!r} is not valid; valid choices: {list(choices)}")


def check_choices(flag: str, values: Iterable[object], choices: Sequence[object], allow_empty: bool = False) -> None:
    """Every entry of ``values`` must be one of ``choices`` (and, unless ``allow_empty``, there must be one)."""
    values = list(values)
    bad = [v for v in values if v not in choices]
    if bad or (not values and not allow_empty):
        raise ConfigError(f"{flag} has {bad or 'nothing'}; valid choices: {list(choices)}")


def check_fraction(flag: str, value: float, low_open: bool = False, high_open: bool = False) -> None:
    """``value`` must lie in [0, 1] (open at either end when asked)."""
    ok_low = value > 0.0 if low_open else value >= 0.0
    ok_high = value < 1.0 if high_open else value <= 1.0
    if not (ok_low and ok_high):
        interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
        raise ConfigError(f"{flag}={value} must be a fraction in {interval}")


def check_positive(flag: str, value: float, minimum: float = 1, inclusive: bool = True) -> None:
    """``value`` must be ``>= minimum`` (or ``> minimum`` when not ``inclusive``)."""
    if not (value >= minimum if inclusive else value > minimum):
        raise ConfigError(f"{flag} must be {'>=' if inclusive else '>'} {minimum}, got {value}")
