"""Read the numeric answer out of a model's free-text response.

The audit asks for a single number ("Provide an estimate for the initial offer…"), but instruct models
answer in prose: ``"I'd offer around $25k."``, ``"$500-$700"``, ``"between 10 and 20 percent"``.
:func:`parse_number` turns such a response into one float, or NaN when there is nothing to read.

Rules (each one has cases in ``tests/test_parsing.py``):

* **First number wins.** The first number in the text is read, whatever follows it
  (``"2022 Ford, about $15,000"`` -> 2022.0). Only ASCII digits 0-9 count as digits; number words
  (``"five"``) are not read.
* **Decimals** use a point: ``"2.5"``, ``".5"``. A point not followed by a digit ends the number, so a
  sentence's full stop is never a decimal point (``"$250,000. No"`` -> 250000.0). Scientific notation
  is read (``"1.5e6"`` -> 1500000.0).
* **Thousands separators**: commas in groups of three (``"25,000"``, ``"1,234,567.89"``), Indian
  grouping (``"1,00,000"`` -> 100000.0), and the thin / narrow no-break spaces (U+2009, U+202F) of
  French-style formatting. A comma that does not start a group of exactly three digits ends the
  number (``"1,5"`` -> 1.0): a comma is never a decimal comma. Plain spaces, points and apostrophes
  are not read as thousands separators (``"1.000.000"`` -> 1.0).
* **Currency** signs and codes around a number are skipped: ``$ € £ ¥ ₹ ₩``, ``US$``, ``A$``, ``C$``,
  ``USD EUR GBP JPY CAD AUD INR CHF CNY``, and the words dollar(s), euro(s), pound(s), buck(s).
* **Multipliers** (case-insensitive):
  ``k`` = 1e3, ``m`` = 1e6, ``b`` / ``bn`` = 1e9, written right after the number with no space
  (``"$25k"`` -> 25000.0, ``"2.5K"`` -> 2500.0, ``"$1.2M"`` -> 1200000.0); a letter that is followed by
  another letter is not a multiplier (``"25km"`` -> 25.0, ``"5mm"`` -> 5.0, ``"5 min"`` -> 5.0);
  and the words ``thousand``, ``million``, ``billion``, ``trillion`` (optionally plural), after
  optional spaces (``"2.5 million"`` -> 2500000.0).
* **Percent**: ``%`` or ``percent`` after a number is skipped (``"15%"`` -> 15.0): the number is read
  as written, not divided by 100.
* **Ranges give their midpoint**: ``A-B``, ``A - B``, ``A–B`` (en dash), ``A—B`` (em dash), ``A~B``,
  ``A to B`` and ``between A and B``, each endpoint with its own currency, multiplier and percent
  (``"$500-$700"`` -> 600.0, ``"$20k-$30k"`` -> 25000.0, ``"10%-20%"`` -> 15.0). Digits on the two
  sides of a range are never joined (``"$500-$700"`` is never 500700). When only the second endpoint
  has a multiplier and the first endpoint's written value is not larger than the second's, the first
  shares it (``"$20-30k"`` -> 25000.0, ``"1-2 million"`` -> 1500000.0, but
  ``"between 500 and 1 million"`` -> 500250.0). ``and`` makes a range only after ``between``.
* **Signs**: a ``-``, ``+`` or ``−`` (U+2212) right in front of a number (or of its currency sign:
  ``"-$5"``, ``"$-5"``) is its sign when it does not follow a letter or digit (``"-5"`` -> -5.0,
  ``"COVID-19"`` -> 19.0). The hyphen of a range is never the second endpoint's sign
  (``"5-10"`` -> 7.5); a second endpoint can carry its own sign after a separator
  (``"-10 to -5"`` -> -7.5).
* **NaN** when the text holds no number, is not a ``str`` (``None``, bytes, numbers, anything else),
  or the value overflows float64. The function never raises.

Arithmetic is done in :class:`decimal.Decimal`, so ``"2.37k"`` gives exactly ``2370.0`` and a written
decimal reads back as ``float(written)``.
"""

from __future__ import annotations

import decimal
import math
import re
from collections.abc import Iterable
from decimal import Decimal

__all__ = ["NUMBER_PATTERN", "parse_number", "parse_numbers"]

# Currency before a number ("$", "US$ ", "USD ") and after it ("€", " USD", " dollars").
_CURRENCY_PREFIX = r"(?:US\$|[AC]\$|[$€£¥₹₩]|(?:USD|EUR|GBP|JPY|CAD|AUD|INR|CHF|CNY)(?![a-z]))"
_CURRENCY_SUFFIX = r"(?:[$€£¥₹₩]|(?:USD|EUR|GBP|JPY|CAD|AUD|INR|CHF|CNY|dollars?|euros?|pounds?|bucks?)(?![a-z]))"

# The digits of one number (no sign). Alternatives are tried in order; the grouped forms must not be
# followed by a digit so that "1,0000" falls back to "1" instead of reading "1,000" and dropping a 0.
_DIGITS = r"""
    (?:
        [0-9]{1,3}(?:[,\u2009\u202f][0-9]{3})+(?![0-9])     # 25,000  1,234,567  25 000 (thin spaces)
      | [0-9]{1,2}(?:,[0-9]{2})+,[0-9]{3}(?![0-9])          # 1,00,000 (Indian grouping)
      | [0-9]+                                              # 25000
    )
    (?:\.[0-9]+)?                                           # .50
  | \.[0-9]+                                                # .5
"""


def _endpoint(p: str) -> str:
    """Regex of one number with its sign, currency, multiplier and percent; groups are prefixed ``p``."""
    return rf"""
    (?:(?<!\w)(?P<{p}sign>[-+−]))?                 # sign: not after a letter/digit ("COVID-19" is 19)
    (?:{_CURRENCY_PREFIX}\s?)?                    # $  US$  USD
    (?:(?<!\w)(?P<{p}sign2>[-+−]))?                # $-5
    (?P<{p}num>{_DIGITS})
    (?P<{p}exp>e[-+]?[0-9]+)?                     # 1.5e6
    (?:
        (?P<{p}letter>bn|[kmb])(?![a-z])          # 25k  1.2M  3bn   (attached, not "25km")
      | \s*(?P<{p}word>thousand|million|billion|trillion)s?(?![a-z])
    )?
    (?:\s?(?:%|percent(?![a-z])))?                # 15%  15 percent
    (?:\s?{_CURRENCY_SUFFIX})?                    # 500€  500 USD  500 dollars
    """


#: The compiled pattern: an optional ``between``, a first endpoint (``lo*`` groups) and an optional
#: range separator with a second endpoint (``hi*`` groups). ``re.search`` finds the leftmost match,
#: which starts at the first number (or at its sign, currency or "between"), so the first number wins.
NUMBER_PATTERN = re.compile(
    rf"""
    (?P<between>\bbetween\s+)?
    {_endpoint("lo")}
    (?:
        (?P<sep>
            \s*[-–—~]\s*                          # 500-700  500 – 700  $500-$700
          | \s+to\s+                              # 500 to 700
          | (?(between)\s+and\s+|(?!))            # between 10 and 20 ("and" only after "between")
        )
        {_endpoint("hi")}
    )?
    """,
    re.VERBOSE | re.IGNORECASE,
)

_LETTER_MULTIPLIER = {"k": Decimal(10) ** 3, "m": Decimal(10) ** 6, "b": Decimal(10) ** 9, "bn": Decimal(10) ** 9}
_WORD_MULTIPLIER = {
    "thousand": Decimal(10) ** 3,
    "million": Decimal(10) ** 6,
    "billion": Decimal(10) ** 9,
    "trillion": Decimal(10) ** 12,
}
# A private context: enough precision for any float64 input, overflow traps (caught -> NaN), and no
# dependence on (or change of) the caller's global decimal context.
_CTX = decimal.Context(prec=60, Emax=10**6, Emin=-(10**6), traps=[decimal.Overflow, decimal.InvalidOperation])


def _endpoint_value(m: re.Match[str], p: str) -> tuple[Decimal, Decimal | None]:
    """The signed written value of endpoint ``p`` and its multiplier (None when it has none)."""
    digits = re.sub(r"[,\u2009\u202f]", "", m.group(f"{p}num")) + (m.group(f"{p}exp") or "")
    value = Decimal(digits)
    signs = (m.group(f"{p}sign") or "") + (m.group(f"{p}sign2") or "")
    if signs.count("-") + signs.count("−") == 1:  # "-$5" and "$-5" are negative; "-$-5" is not
        value = value.copy_negate()  # exact, and keeps "-0" negative like float("-0")
    letter, word = m.group(f"{p}letter"), m.group(f"{p}word")
    mult = _LETTER_MULTIPLIER[letter.lower()] if letter else _WORD_MULTIPLIER[word.lower()] if word else None
    return value, mult


def _parse(text: str) -> float:
    m = NUMBER_PATTERN.search(text)
    if m is None:
        return math.nan
    lo, lo_mult = _endpoint_value(m, "lo")
    if m.group("hinum") is None:
        value = _CTX.multiply(lo, lo_mult) if lo_mult is not None else lo
    else:
        hi, hi_mult = _endpoint_value(m, "hi")
        # "$20-30k" means 20k-30k, but "between 500 and 1 million" does not mean 500-1 million million.
        if lo_mult is None and hi_mult is not None and lo <= hi:
            lo_mult = hi_mult
        lo_v = _CTX.multiply(lo, lo_mult) if lo_mult is not None else lo
        hi_v = _CTX.multiply(hi, hi_mult) if hi_mult is not None else hi
        value = _CTX.divide(_CTX.add(lo_v, hi_v), 2)
    out = float(value)  # correctly rounded: "0.1" -> 0.1 exactly as float("0.1")
    return out if math.isfinite(out) else math.nan


def parse_number(text: object) -> float:
    """The first number in ``text`` (a range's midpoint), or NaN; never raises.

    See the module docstring for every rule. Examples::

        >>> parse_number("The offer is $250,000. No details")
        250000.0
        >>> parse_number("$500-$700"), parse_number("$20k-$30k"), parse_number("between 10 and 20")
        (600.0, 25000.0, 15.0)
        >>> parse_number("-5"), parse_number("15%"), parse_number("2022 Ford F-150")
        (-5.0, 15.0, 2022.0)
        >>> parse_number("no idea"), parse_number(None)
        (nan, nan)
    """
    if not isinstance(text, str):
        return math.nan
    try:
        return _parse(text)
    except Exception:  # noqa: BLE001 - any surprise (overflow, odd unicode) means "unreadable", not a crash
        return math.nan


def parse_numbers(texts: Iterable[object]) -> list[float]:
    """:func:`parse_number` of each text. A single ``str`` is one text, not an iterable of characters."""
    if isinstance(texts, str):
        return [parse_number(texts)]
    return [parse_number(t) for t in texts]
