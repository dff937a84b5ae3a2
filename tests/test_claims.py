"""Claim rules as pure functions: every verdict on constructed intervals, and end to end on constructed draws."""

from __future__ import annotations

import math

import numpy as np
import pytest

from biasprune.stats.bootstrap import PairedBootstrap
from biasprune.stats.claims import CLAIM_COLUMNS, ClaimResult, lowers_bias, ordering
from biasprune.stats.intervals import Interval, arm_interval, difference_interval


def iv(estimate: float, low: float, high: float, note: str = "") -> Interval:
    return Interval(estimate, low, high, "percentile", 2000, note=note)


ABOVE, ABOVE_WEAK, STRADDLE, BELOW = iv(0.78, 0.6, 0.9), iv(0.2, 0.05, 0.35), iv(0.03, -0.1, 0.15), iv(-0.3, -0.5, -0.1)
UNDEFINED = iv(math.nan, math.nan, math.nan, note="undefined: the estimate is undefined (every variation's SMD is)")


# ---- pruning lowers bias -----------------------------------------------------------------------------------


def test_holds_when_the_arm_beats_both() -> None:
    r = lowers_bias(
        "neurons",
        ABOVE,
        ABOVE_WEAK,
        0.25,
        arm=iv(0.12, 0.05, 0.2),
        unpruned=iv(0.9, 0.7, 1.0),
        random=iv(0.32, 0.2, 0.5),
    )
    assert r.verdict == "holds"
    assert (r.estimate, r.low, r.high) == (0.2, 0.05, 0.35)  # the weaker of the two comparisons decides
    assert r.sentence == (
        "Pruning lowers bias (neurons): holds — neurons 0.120 [0.050, 0.200] vs unpruned 0.900 and random 0.320; "
        "unpruned − arm 0.780 [0.600, 0.900], random − arm 0.200 [0.050, 0.350]."
    )
    assert r.method == "paired name bootstrap, percentile, 2000 draws, 95%"
    assert r.claim == "pruning lowers bias (neurons)"


@pytest.mark.parametrize(
    ("vs_unpruned", "vs_random", "detail"),
    [
        (BELOW, ABOVE, "pruning raised mean |SMD| above the unpruned model's"),
        (ABOVE, BELOW, "random pruning of as many units lowered mean |SMD| more than this arm"),
        (BELOW, BELOW, "pruning raised mean |SMD| above the unpruned model's"),
        (BELOW, UNDEFINED, "pruning raised mean |SMD| above the unpruned model's"),  # a contradiction is enough
        (STRADDLE, BELOW, "random pruning of as many units lowered mean |SMD| more than this arm"),
    ],
)
def test_does_not_hold_when_either_interval_lies_below_zero(vs_unpruned, vs_random, detail) -> None:
    r = lowers_bias("heads", vs_unpruned, vs_random, 0.25)
    assert r.verdict == "does not hold"
    assert r.detail == detail
    assert r.sentence.startswith(f"Pruning lowers bias (heads): does not hold — {detail}; unpruned − arm")
    deciding = vs_unpruned if vs_unpruned.below_zero else vs_random
    assert (r.estimate, r.low, r.high) == (deciding.estimate, deciding.low, deciding.high)


def test_mixed_case_is_inconclusive_and_names_the_random_control() -> None:
    r = lowers_bias("neurons", ABOVE, STRADDLE, 0.25, random_vs_unpruned=iv(0.75, 0.55, 0.9))
    assert r.verdict == "inconclusive"
    assert (r.estimate, r.low, r.high) == (STRADDLE.estimate, STRADDLE.low, STRADDLE.high)
    assert "cannot tell: this design detects |SMD| ≥ 0.250" in r.sentence
    assert r.detail.startswith("beats the unpruned model but cannot be told apart from its random control")
    assert "random pruning lowers mean |SMD| too (unpruned − random 0.750 [0.550, 0.900])" in r.detail
    plain = lowers_bias("neurons", ABOVE, STRADDLE, 0.25)
    assert plain.detail == "beats the unpruned model but cannot be told apart from its random control"


@pytest.mark.parametrize(
    ("vs_unpruned", "vs_random", "detail"),
    [
        (STRADDLE, ABOVE, "beats its random control but cannot be told apart from the unpruned model"),
        (STRADDLE, STRADDLE, "cannot be told apart from the unpruned model nor from its random control"),
    ],
)
def test_inconclusive_otherwise(vs_unpruned, vs_random, detail) -> None:
    r = lowers_bias("neurons", vs_unpruned, vs_random, 0.4)
    assert r.verdict == "inconclusive" and r.detail == detail
    assert r.sentence.startswith(
        "Pruning lowers bias (neurons): inconclusive — cannot tell: this design detects |SMD| ≥ 0.400; "
    )
    no_mde = lowers_bias("neurons", vs_unpruned, vs_random, None)
    assert "inconclusive — cannot tell; " in no_mde.sentence
    assert "inconclusive — cannot tell; " in lowers_bias("neurons", vs_unpruned, vs_random, math.nan).sentence


def test_excluded_arm_and_missing_control_are_inconclusive() -> None:
    r = lowers_bias("heads within-context", ABOVE, ABOVE, 0.25, excluded_reason="pruned 0 units (minimum 10)")
    assert r.verdict == "inconclusive"
    assert (
        r.sentence == "Pruning lowers bias (heads within-context): inconclusive — kept out of the claims: "
        "pruned 0 units (minimum 10)."
    )
    assert r.detail == "pruned 0 units (minimum 10)"
    r = lowers_bias("neurons", ABOVE, None, 0.25)
    assert r.verdict == "inconclusive" and r.detail == "no random control"
    assert r.sentence == "Pruning lowers bias (neurons): inconclusive — no random control to compare with."
    r = lowers_bias("neurons", None, None, 0.25, excluded_reason="no answers")
    assert r.verdict == "inconclusive" and math.isnan(r.estimate)


def test_undefined_difference_is_inconclusive() -> None:
    r = lowers_bias("neurons", ABOVE, UNDEFINED, 0.25)
    assert r.verdict == "inconclusive"
    assert r.detail.startswith("undefined difference (random − arm): undefined: the estimate is undefined")


def test_as_row_has_the_claims_csv_columns() -> None:
    r = lowers_bias("neurons", ABOVE, ABOVE, 0.25)
    row = r.as_row()
    assert tuple(row) == CLAIM_COLUMNS
    assert row["ci_low"] == r.low and row["verdict"] == "holds"
    assert isinstance(r, ClaimResult)


# ---- ordering claims ---------------------------------------------------------------------------------------


CHAIN = "prompt-specific > within-context > cross-context"


@pytest.mark.parametrize(
    ("first", "second", "verdict"),
    [
        (ABOVE, ABOVE_WEAK, "holds"),
        (ABOVE, BELOW, "does not hold"),
        (BELOW, STRADDLE, "does not hold"),
        (STRADDLE, BELOW, "does not hold"),
        (ABOVE, STRADDLE, "inconclusive"),
        (STRADDLE, STRADDLE, "inconclusive"),
        (UNDEFINED, ABOVE, "inconclusive"),
        (UNDEFINED, BELOW, "does not hold"),
    ],
)
def test_chain_holds_iff_both_hold(first, second, verdict) -> None:
    r = ordering(CHAIN, [("within − prompt-specific", first), ("cross − within", second)], mde=0.3)
    assert r.verdict == verdict
    assert r.sentence.startswith(f"Prompt-specific > within-context > cross-context: {verdict} — ")
    assert "cross − within" in r.sentence
    if verdict == "inconclusive":
        assert "cannot tell: this design detects |SMD| ≥ 0.300" in r.sentence


def test_ordering_deciding_step_and_details() -> None:
    r = ordering(CHAIN, [("within − prompt-specific", ABOVE), ("cross − within", BELOW)])
    assert (r.estimate, r.low, r.high) == (-0.3, -0.5, -0.1)
    assert r.detail == "cross − within lies below 0: the order is reversed there"
    r = ordering("neurons beat heads", [("heads − neurons", STRADDLE)], mde=0.3)
    assert (
        r.sentence == "Neurons beat heads: inconclusive — cannot tell: this design detects |SMD| ≥ 0.300; "
        "heads − neurons 0.030 [-0.100, 0.150]."
    )
    assert r.detail == "heads − neurons contains 0"
    r = ordering("neurons beat heads", [("heads − neurons", ABOVE)])
    assert r.verdict == "holds" and r.detail == "every step's interval lies above 0"
    r = ordering("neurons beat heads", [("heads − neurons", ABOVE)], excluded_reason="heads pruned nothing")
    assert r.verdict == "inconclusive" and "kept out of the claims: heads pruned nothing" in r.sentence


def test_ordering_needs_steps() -> None:
    with pytest.raises(ValueError, match="ordering claim 'neurons beat heads' has no steps"):
        ordering("neurons beat heads", [])


# ---- end to end on constructed draws ------------------------------------------------------------------------


def constructed(
    unpruned: float, pruned: float, random: float, spread: float = 0.05, n_boot: int = 1000
) -> PairedBootstrap:
    """Draws around given centres (one variation); the random draws share the pruned arm's noise half-way (paired)."""
    rng = np.random.default_rng(0)
    noise = rng.normal(0, spread, (3, n_boot))
    draws = np.array([unpruned, pruned, random])[:, None] + noise
    draws[2] = random + 0.5 * noise[1] + 0.5 * noise[2]
    jack = np.array([unpruned, pruned, random])[:, None] + rng.normal(0, spread / 5, (3, 20))
    return PairedBootstrap(
        labels=("unpruned", "pruned", "random"),
        smd=np.array([[unpruned], [pruned], [random]]),
        abs_draws=draws[:, :, None],
        abs_jackknife=jack[:, :, None],
        name_groups=np.repeat([0, 1], 10),
        seed=0,
    )


@pytest.mark.parametrize(
    ("centres", "verdict"),
    [
        ((0.9, 0.12, 0.85), "holds"),
        ((0.9, 0.5, 0.45), "inconclusive"),
        ((0.3, 0.6, 0.3), "does not hold"),
        ((0.9, 0.6, 0.3), "does not hold"),
    ],
)
def test_verdicts_from_constructed_draws(centres, verdict) -> None:
    boot = constructed(*centres)
    r = lowers_bias(
        "pruned",
        difference_interval(boot, "unpruned", "pruned"),
        difference_interval(boot, "random", "pruned"),
        0.3,
        arm=arm_interval(boot, "pruned"),
        unpruned=arm_interval(boot, "unpruned"),
        random=arm_interval(boot, "random"),
        random_vs_unpruned=difference_interval(boot, "unpruned", "random"),
    )
    assert r.verdict == verdict
    assert r.sentence.startswith(f"Pruning lowers bias (pruned): {verdict} — ")
