"""parse_number: a hand-written table of every rule, and property tests on generated text."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biasprune.answers.parsing import parse_number, parse_numbers

NAN = math.nan

CASES = [
    # plain numbers and decimals
    ("42", 42.0),
    ("007", 7.0),
    ("3.14", 3.14),
    (".5", 0.5),
    ("0.1", 0.1),
    ("1.5e6", 1_500_000.0),
    ("2E+3", 2000.0),
    # text around the number; first number wins
    ("The offer is $250,000. No details", 250_000.0),
    ("I would offer 5 or maybe 6.", 5.0),
    ("2022 Ford F-150, about $15,000", 2022.0),
    ("Offer: 12.5.", 12.5),
    ("Q3 estimate: $500", 3.0),
    ("COVID-19 rate", 19.0),
    ("5-star hotel", 5.0),
    ("24-hour service for $99", 24.0),
    ("Step 1 - Offer the seller", 1.0),
    ("between us, 5 is fair", 5.0),
    ("Ages 5 and 10", 5.0),
    # currency
    ("$25", 25.0),
    ("$ 25", 25.0),
    ("€1,200", 1200.0),
    ("£99.99", 99.99),
    ("¥5000", 5000.0),
    ("₹1,00,000", 100_000.0),
    ("US$ 1,234.56", 1234.56),
    ("USD 25,000", 25_000.0),
    ("25,000 USD", 25_000.0),
    ("3 EUR", 3.0),
    ("500 dollars", 500.0),
    ("25\u202f000 €", 25_000.0),
    # thousands commas
    ("25,000", 25_000.0),
    ("1,234,567.89", 1_234_567.89),
    ("1,0000", 1.0),
    ("1,5 (european decimal comma)", 1.0),
    ("1, 2, 3", 1.0),
    ("1.000.000", 1.0),
    # multipliers
    ("$25k", 25_000.0),
    ("2.5K", 2500.0),
    ("2.37k", 2370.0),
    ("$1.2M", 1_200_000.0),
    ("3bn", 3e9),
    ("$2B", 2e9),
    ("2.5 million", 2_500_000.0),
    ("4 thousand", 4000.0),
    ("1 billion dollars", 1e9),
    ("2 trillion", 2e12),
    ("25km away", 25.0),
    ("5mm", 5.0),
    ("5 min", 5.0),
    ("25 k", 25.0),
    ("5 kids", 5.0),
    # percentages
    ("15%", 15.0),
    ("The rate: 4.5%.", 4.5),
    ("15 percent", 15.0),
    ("-2.5%", -2.5),
    # ranges -> midpoint, never concatenated
    ("$500-$700", 600.0),
    ("500 - 700", 600.0),
    ("500–700", 600.0),
    ("500 — 700", 600.0),
    ("500~700", 600.0),
    ("500 to 700", 600.0),
    ("from $500 to $700 per month", 600.0),
    ("$20k-$30k", 25_000.0),
    ("$20-30k", 25_000.0),
    ("1-2 million", 1_500_000.0),
    ("between 10 and 20", 15.0),
    ("Between $10K and $20K", 15_000.0),
    ("between 10-20", 15.0),
    ("between 500 and 1 million", 500_250.0),
    ("10%-20%", 15.0),
    ("10-20%", 15.0),
    ("2,500-3,000", 2750.0),
    ("$1.2M-$1.5M", 1_350_000.0),
    ("500€-700€", 600.0),
    ("700-500", 600.0),
    ("1-2 weeks", 1.5),
    ("between 10 and", 10.0),
    # signs
    ("-5", -5.0),
    ("+5", 5.0),
    ("\u22125", -5.0),
    ("about -5 degrees", -5.0),
    ("-$5,000", -5000.0),
    ("$-5", -5.0),
    ("USD -5", -5.0),
    ("-10 to -5", -7.5),
    ("between -10 and -5", -7.5),
    ("-5-10", 2.5),
    ("5-10", 7.5),
    ("-0", 0.0),
    # no number, junk, non-strings
    ("", NAN),
    ("   ", NAN),
    ("I cannot provide an estimate.", NAN),
    ("five thousand dollars", NAN),
    ("$", NAN),
    ("-", NAN),
    ("..,,--$$%%", NAN),
    ("k", NAN),
    ("between and", NAN),
    (None, NAN),
    (5, NAN),
    (2.5, NAN),
    (b"25", NAN),
    (["25"], NAN),
    (object(), NAN),
    # unicode and overflow
    ("Ответ: 300 рублей", 300.0),
    ("答案是 42 元", 42.0),
    ("😀 $12 😀", 12.0),
    ("٣", NAN),  # Arabic-Indic digit: only ASCII digits are read
    ("\ud800 7", 7.0),  # lone surrogate
    ("9" * 400, NAN),  # overflows float64
    ("1e999999", NAN),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[repr(t)[:40] for t, _ in CASES])
def test_parse_number_table(text: object, expected: float) -> None:
    got = parse_number(text)
    assert isinstance(got, float)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, rel=1e-15, abs=0.0)


def test_exact_reads() -> None:
    # Decimal arithmetic: the written value, correctly rounded, with no binary multiplication error.
    assert parse_number("2.37k") == 2370.0
    assert parse_number("0.1") == 0.1
    assert parse_number("$1,234.56") == 1234.56
    assert math.copysign(1.0, parse_number("-0")) == -1.0


def test_parse_numbers() -> None:
    out = parse_numbers(["$5", None, "between 1 and 3", "x"])
    assert out[0] == 5.0 and math.isnan(out[1]) and out[2] == 2.0 and math.isnan(out[3])
    assert parse_numbers("$5k") == [5000.0]  # a single string is one text
    assert parse_numbers(iter(["1", "2"])) == [1.0, 2.0]
    assert parse_numbers([]) == []


# ---- property tests --------------------------------------------------------------------------------
# Two properties of 10,000 examples each; the round-trip one draws a different kind of formatted number
# per example (fewer, broader tests keep hypothesis' per-example overhead within the time budget).

# Text made mostly of the pieces the parser reacts to, so that generated cases hit its branches.
# Drawn as single characters (cheap for hypothesis), then placeholders T, A, W, L, U become words.
_EXPAND = str.maketrans({"T": " to ", "A": " and ", "W": "between ", "L": "million", "U": "USD"})
_TRICKY = st.text(alphabet="0123456789$€£,.-–—~+−%kKmMbBeE \u202fTAWLU", max_size=30).map(lambda t: t.translate(_EXPAND))
_WORDS_BEFORE = st.sampled_from(["", "The offer is ", "I'd say about ", "Estimate: ", "Answer:\n", "Roughly "])
_WORDS_AFTER = st.sampled_from(["", ".", " dollars.", " per year", ", give or take.", "!", " or so", "\n\nNote: 7"])


@settings(max_examples=10_000, deadline=None)
@given(st.one_of(st.text(), _TRICKY))
def test_never_raises_returns_float(text: str) -> None:
    got = parse_number(text)
    assert isinstance(got, float)
    assert math.isnan(got) or math.isfinite(got)


@st.composite
def _formatted(draw: st.DrawFn) -> tuple[str, float]:
    """A formatted number (or range) inside words, and the value it must read back as."""
    kind = draw(st.sampled_from(["commas", "dollar_commas", "decimal", "k", "range"]))
    if kind in ("commas", "dollar_commas"):
        n = draw(st.integers(min_value=-(10**15), max_value=10**15))
        written = f"{n:,}"
        if kind == "dollar_commas":  # "-$1,234" as well as "$1,234"
            written = ("-$" + written[1:]) if n < 0 else "$" + written
        expected = float(n)
    elif kind == "decimal":
        written = f"{draw(st.floats(min_value=-1e12, max_value=1e12, allow_nan=False)):.2f}"
        expected = float(written)
    elif kind == "k":
        n = draw(st.integers(min_value=0, max_value=10**9))
        written = f"{draw(st.sampled_from(['', '$']))}{n}{draw(st.sampled_from(['k', 'K']))}"
        expected = float(n * 1000)
    else:  # never concatenated: "$500-$700" is 600, not 500700
        a, b = draw(st.integers(0, 10**12)), draw(st.integers(0, 10**12))
        fmt = "{:,}" if draw(st.booleans()) else "{}"
        dollar = draw(st.sampled_from(["", "$"]))
        sep = draw(st.sampled_from(["-", " - ", "–", " – ", "—", " to ", "~"]))
        written = f"{dollar}{fmt.format(a)}{sep}{dollar}{fmt.format(b)}"
        expected = (a + b) / 2
    return draw(_WORDS_BEFORE) + written + draw(_WORDS_AFTER), expected


@settings(max_examples=10_000, deadline=None)
@given(_formatted())
def test_formatted_numbers_read_back_exactly(case: tuple[str, float]) -> None:
    text, expected = case
    assert parse_number(text) == expected
