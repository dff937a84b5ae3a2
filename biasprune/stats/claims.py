"""Claims as pure functions of paired name-bootstrap intervals: "holds", "does not hold" or "inconclusive".

Each claim compares arms through intervals of a *difference* of mean |SMD|, oriented so that a positive
difference supports the claim (e.g. ``unpruned - arm`` for "the arm lowers bias"); see
:func:`biasprune.stats.intervals.difference_interval`. An interval *supports* its comparison when it lies
entirely above 0 and *contradicts* it when it lies entirely below 0; otherwise the comparison is open.

**Pruning lowers bias** (docs/method.md, "Statistics", claim rule), for one pruned arm, from ``unpruned - arm`` and ``random - arm``
(``random`` = its random-mask control: the same number of units per module / in total, averaged over
its draws):

* *holds* iff both intervals support it: the arm beats the unpruned model AND its random control;
* *does not hold* iff either interval contradicts it: pruning raised mean |SMD|, or random pruning of as
  many units lowered it more than the arm did;
* *inconclusive* otherwise, and always when the arm is kept out of the claims (pruned nothing or fewer
  units than the minimum; no random control; undefined SMDs). The sentence then says "cannot tell: this
  design detects |SMD| ≥ X" with the minimum detectable SMD.

The mixed case (the arm beats the unpruned model, but its interval against the random control contains
0) is *inconclusive*, not *does not hold*, even when random pruning clearly beats the unpruned model
too. "Does not hold" is kept for data that contradict the claim, so each verdict has a bounded error
rate: with the percentile intervals, two arms with equal mean |SMD| give an interval entirely above 0 in
at most 1.8% of runs and entirely below 0 in at most 3.4% at the design's sizes (docs/method.md,
"Statistics"), so each comparison's wrong "holds" or "does not hold" is about as rare as a two-sided
95% interval promises (2.5% a side). Calling the mixed case "does not hold"
would turn a lack of power into a negative finding; instead its ``detail`` says that the random control
lowers mean |SMD| as well and the drop may come from pruning as such.

**Ordering claims** ("neurons beat heads"; "prompt-specific > within-context > cross-context" as a chain
of two paired differences): *holds* iff every step supports it, *does not hold* iff any step contradicts
it, *inconclusive* otherwise.

A :class:`ClaimResult` reports the *deciding* comparison in ``estimate``/``low``/``high``: the first
contradicting one for "does not hold", otherwise the one with the lowest ``low`` (the weakest link).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from biasprune.stats.intervals import Interval

__all__ = ["CLAIM_COLUMNS", "ClaimResult", "Verdict", "lowers_bias", "ordering"]

Verdict = Literal["holds", "does not hold", "inconclusive"]
CLAIM_COLUMNS = ("claim", "verdict", "estimate", "ci_low", "ci_high", "method", "sentence", "detail")


@dataclass(frozen=True)
class ClaimResult:
    """A claim's verdict with its deciding difference and interval, and one plain-language sentence."""

    claim: str
    verdict: Verdict
    estimate: float
    low: float
    high: float
    method: str
    sentence: str
    detail: str = ""

    def as_row(self) -> dict[str, object]:
        """The claims.csv row (columns :data:`CLAIM_COLUMNS`)."""
        return {
            "claim": self.claim,
            "verdict": self.verdict,
            "estimate": self.estimate,
            "ci_low": self.low,
            "ci_high": self.high,
            "method": self.method,
            "sentence": self.sentence,
            "detail": self.detail,
        }


def _num(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.3f}"


def _iv(iv: Interval) -> str:
    return f"{_num(iv.estimate)} [{_num(iv.low)}, {_num(iv.high)}]"


def _method(iv: Interval) -> str:
    return f"paired name bootstrap, {iv.method}, {iv.n_boot} draws, {iv.level:.0%}"


def _cannot_tell(mde: float | None) -> str:
    if mde is None or math.isnan(mde):
        return "cannot tell"
    return f"cannot tell: this design detects |SMD| ≥ {mde:.3f}"


def _deciding(steps: Sequence[tuple[str, Interval]]) -> tuple[str, Interval]:
    """The first contradicting step, else the defined step with the lowest ``low``, else the first step."""
    for step in steps:
        if step[1].below_zero:
            return step
    defined = [s for s in steps if s[1].defined]
    return min(defined, key=lambda s: s[1].low) if defined else steps[0]


def _verdict(steps: Sequence[tuple[str, Interval]]) -> Verdict:
    if any(iv.below_zero for _, iv in steps):
        return "does not hold"
    if all(iv.above_zero for _, iv in steps):
        return "holds"
    return "inconclusive"


def _result(claim: str, verdict: Verdict, deciding: Interval | None, sentence: str, detail: str) -> ClaimResult:
    if deciding is None:
        return ClaimResult(claim, verdict, math.nan, math.nan, math.nan, "", sentence, detail)
    return ClaimResult(
        claim, verdict, deciding.estimate, deciding.low, deciding.high, _method(deciding), sentence, detail
    )


def lowers_bias(
    arm_name: str,
    vs_unpruned: Interval | None,
    vs_random: Interval | None,
    mde: float | None,
    excluded_reason: str = "",
    *,
    arm: Interval | None = None,
    unpruned: Interval | None = None,
    random: Interval | None = None,
    random_vs_unpruned: Interval | None = None,
) -> ClaimResult:
    """Decide "pruning lowers bias" for one arm (rule in the module docstring).

    Args:
        arm_name: the arm, as the report names it.
        vs_unpruned: interval of ``mean|SMD|(unpruned) - mean|SMD|(arm)``.
        vs_random: interval of ``mean|SMD|(random control) - mean|SMD|(arm)``; None when there is none.
        mde: the design's minimum detectable SMD (:func:`biasprune.stats.power.minimum_detectable_smd`), for the
            "cannot tell" sentence; None or NaN when unknown.
        excluded_reason: non-empty when the arm is kept out of the claims (e.g. "pruned 0 units").
        arm, unpruned, random: the arms' own mean |SMD| intervals, quoted in the sentence when given.
        random_vs_unpruned: interval of ``mean|SMD|(unpruned) - mean|SMD|(random)``, quoted in the detail
            of the mixed case when given.
    """
    claim = f"pruning lowers bias ({arm_name})"
    head = f"Pruning lowers bias ({arm_name})"
    if excluded_reason:
        return _result(
            claim,
            "inconclusive",
            vs_unpruned,
            f"{head}: inconclusive — kept out of the claims: {excluded_reason}.",
            excluded_reason,
        )
    if vs_unpruned is None or vs_random is None:
        missing = "no random control" if vs_random is None else "no comparison with the unpruned model"
        return _result(
            claim, "inconclusive", vs_unpruned, f"{head}: inconclusive — {missing} to compare with.", missing
        )
    steps = [("unpruned − arm", vs_unpruned), ("random − arm", vs_random)]
    quoted = ""
    if arm is not None:
        others = [
            f"{label} {_num(iv.estimate)}"
            for label, iv in (("unpruned", unpruned), ("random", random))
            if iv is not None
        ]
        quoted = f"{arm_name} {_iv(arm)}" + (f" vs {' and '.join(others)}" if others else "") + "; "
    diffs = f"unpruned − arm {_iv(vs_unpruned)}, random − arm {_iv(vs_random)}"
    undefined = [label for label, iv in steps if not iv.defined]
    verdict = _verdict(steps)
    if undefined and verdict != "does not hold":
        notes = "; ".join(iv.note for _, iv in steps if iv.note)
        detail = f"undefined difference ({', '.join(undefined)})" + (f": {notes}" if notes else "")
        return _result(claim, "inconclusive", vs_unpruned, f"{head}: inconclusive — {detail}.", detail)
    _, deciding = _deciding(steps)
    if verdict == "holds":
        return _result(
            claim,
            verdict,
            deciding,
            f"{head}: holds — {quoted}{diffs}.",
            "beats both the unpruned model and its random control",
        )
    if verdict == "does not hold":
        detail = (
            "pruning raised mean |SMD| above the unpruned model's"
            if vs_unpruned.below_zero
            else "random pruning of as many units lowered mean |SMD| more than this arm"
        )
        return _result(claim, verdict, deciding, f"{head}: does not hold — {detail}; {quoted}{diffs}.", detail)
    if vs_unpruned.above_zero:
        detail = "beats the unpruned model but cannot be told apart from its random control"
        if random_vs_unpruned is not None and random_vs_unpruned.above_zero:
            detail += (
                f"; random pruning lowers mean |SMD| too (unpruned − random {_iv(random_vs_unpruned)}), "
                "so the drop may come from pruning as such"
            )
    elif vs_random.above_zero:
        detail = "beats its random control but cannot be told apart from the unpruned model"
    else:
        detail = "cannot be told apart from the unpruned model nor from its random control"
    return _result(
        claim, verdict, deciding, f"{head}: inconclusive — {_cannot_tell(mde)}; {detail}; {quoted}{diffs}.", detail
    )


def ordering(
    claim: str,
    steps: Sequence[tuple[str, Interval]],
    mde: float | None = None,
    excluded_reason: str = "",
) -> ClaimResult:
    """Decide an ordering claim from paired differences (rule in the module docstring).

    Args:
        claim: e.g. ``"neurons beat heads"`` or ``"prompt-specific > within-context > cross-context"``.
        steps: ``(label, interval)`` per link of the chain, each interval of ``worse - better`` in mean
            |SMD| (positive supports the link), e.g. ``[("within − prompt-specific", iv1),
            ("cross − within", iv2)]``.
        mde: as in :func:`lowers_bias`.
        excluded_reason: non-empty when an arm of the chain is kept out of the claims.

    Raises:
        ValueError: ``steps`` is empty.
    """
    if not steps:
        raise ValueError(f"ordering claim {claim!r} has no steps: give (label, interval) per link of the chain")
    head = claim[:1].upper() + claim[1:]
    if excluded_reason:
        return _result(
            claim,
            "inconclusive",
            steps[0][1],
            f"{head}: inconclusive — kept out of the claims: {excluded_reason}.",
            excluded_reason,
        )
    verdict = _verdict(steps)
    label, deciding = _deciding(steps)
    diffs = "; ".join(f"{lab} {_iv(iv)}" for lab, iv in steps)
    undefined = [lab for lab, iv in steps if not iv.defined]
    if verdict == "holds":
        return _result(claim, verdict, deciding, f"{head}: holds — {diffs}.", "every step's interval lies above 0")
    if verdict == "does not hold":
        detail = f"{label} lies below 0: the order is reversed there"
        return _result(claim, verdict, deciding, f"{head}: does not hold — {diffs}.", detail)
    detail = f"undefined step ({', '.join(undefined)})" if undefined else f"{label} contains 0"
    return _result(claim, verdict, deciding, f"{head}: inconclusive — {_cannot_tell(mde)}; {diffs}.", detail)
