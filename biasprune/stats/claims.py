"""Claims as pure functions of paired name-bootstrap intervals: "holds", "does not hold", "inconclusive" or
"breaks answers".

Each claim compares arms through intervals of a *difference* of mean |SMD|, oriented so that a positive
difference supports the claim (e.g. ``unpruned - arm`` for "the arm lowers bias"); see
:func:`biasprune.stats.intervals.difference_interval`. An interval *supports* its comparison when it lies
entirely above 0 and *contradicts* it when it lies entirely below 0; otherwise the comparison is open. The
bias intervals are of the scale-free measure (:data:`biasprune.metrics.spec.DECIDING`); the paper's
inlier-window SMD is quoted beside it.

**Pruning lowers bias** (docs/method.md, "Statistics", claim rule), for one pruned arm, from ``unpruned - arm`` and
``random - arm`` (``random`` = its random-mask controls, pruning the same number of units per module / in total,
judged as one new random mask, a prediction interval: :class:`biasprune.stats.intervals.RandomDraws`), and from the **utility guard**:
for the inlier ratio and the parse rate, the paired interval of ``arm - unpruned`` must have its lower end at or
above ``-margin`` (:class:`UtilityCheck`; non-inferiority):

* *holds* iff both bias intervals support it and the utility is non-inferior;
* *breaks answers* ("lowers bias only by breaking answers") iff the utility is not shown non-inferior and no
  bias interval contradicts the claim: whatever happened to the bias, the arm broke answers;
* *does not hold* iff either bias interval contradicts it: pruning raised mean |SMD|, or random pruning of as
  many units lowered it more than the arm did;
* *inconclusive* otherwise, and always when the arm is kept out of the claims (pruned nothing or fewer
  units than the minimum; no random control; undefined in more variations than allowed). The sentence then
  says "cannot tell: this design detects |SMD| ≥ X" with the minimum detectable SMD.

The mixed case (the arm beats the unpruned model, but its interval against the random control contains
0) is *inconclusive*, not *does not hold*, even when random pruning clearly beats the unpruned model
too. "Does not hold" is kept for data that contradict the claim, so each verdict has a bounded error rate
(``python -m benchmarks.validation.calibration``; docs/method.md, "Statistics"). Calling the mixed case "does not hold"
would turn a lack of power into a negative finding; instead its ``detail`` says that the random control
lowers mean |SMD| as well and the drop may come from pruning as such.

**Ordering claims** ("neurons beat heads"; "prompt-specific > within-context > cross-context" as a chain
of two paired differences): *holds* iff every step supports it, *does not hold* iff any step contradicts
it, *inconclusive* otherwise.

**Families.** The claims of one study come in families (the per-arm claims; the ordering claims).
:func:`holm` adjusts a family's "holds" by Holm's step-down procedure on one-sided bootstrap p-values (the
largest of a claim's steps: an intersection-union test), at the 2.5% per side that a 95% interval spends; a
"holds" that does not survive becomes "inconclusive" and says so. Every claim row carries its family and the
family's size.

A :class:`ClaimResult` reports the *deciding* comparison in ``estimate``/``low``/``high``: the first
contradicting one for "does not hold", otherwise the one with the lowest ``low`` (the weakest link).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from biasprune.stats.intervals import Interval

__all__ = ["CLAIM_COLUMNS", "HOLM_ALPHA", "NO_PARSE", "ClaimResult", "UtilityCheck", "Verdict", "holm", "lowers_bias", "ordering"]

Verdict = Literal["holds", "does not hold", "inconclusive", "breaks answers"]
CLAIM_COLUMNS = ("claim", "verdict", "estimate", "ci_low", "ci_high", "method", "sentence", "detail", "utility",
                 "paper_estimate", "paper_ci_low", "paper_ci_high", "dropped", "family", "family_size", "p_value", "holm")
#: One-sided level of a claim: what a two-sided 95% interval spends on each side.
HOLM_ALPHA = 0.025
#: The reason given for an arm none of whose answers parse (shared with the report's wording).
NO_PARSE = "no parseable answers (parse 0.00): this arm broke the model"


@dataclass(frozen=True)
class UtilityCheck:
    """Non-inferiority of one utility metric: the paired interval of ``arm - unpruned`` against ``-margin``."""

    metric: str
    interval: Interval
    margin: float

    @property
    def passes(self) -> bool:
        """The interval is defined and its lower end is at or above ``-margin``."""
        return self.interval.defined and self.interval.low >= -self.margin

    def __str__(self) -> str:
        return f"{self.metric.replace('_', ' ')} arm − unpruned {_iv(self.interval)}"


def utility_text(checks: Sequence[UtilityCheck]) -> str:
    """"non-inferior: ..." or "below the unpruned model's: ..." with every interval and the margin ("" for none)."""
    if not checks:
        return ""
    ok = all(c.passes for c in checks)
    shown = checks if ok else [c for c in checks if not c.passes]
    margin = f"lower ends ≥ −{checks[0].margin:g}" if ok else f"lower end below −{checks[0].margin:g}"
    return ("non-inferior: " if ok else "below the unpruned model's: ") + ", ".join(map(str, shown)) + f" ({margin})"


@dataclass(frozen=True)
class ClaimResult:
    """A claim's verdict with its deciding difference and interval, and one plain-language sentence.

    ``utility`` is the utility guard's text, ``paper`` the deciding comparison on the paper's measure (quoted
    beside the scale-free one), ``dropped`` the variations left out because undefined in a compared arm,
    ``p_value`` the one-sided bootstrap p-value of the claim (largest over its steps), ``family``/``family_size``
    and ``holm`` what :func:`holm` did.
    """

    claim: str
    verdict: Verdict
    estimate: float
    low: float
    high: float
    method: str
    sentence: str
    detail: str = ""
    utility: str = ""
    paper: Interval | None = None
    dropped: int = 0
    p_value: float = math.nan
    family: str = ""
    family_size: int = 1
    holm: str = ""

    def as_row(self) -> dict[str, object]:
        """The claims.csv row (columns :data:`CLAIM_COLUMNS`)."""
        paper = self.paper or Interval(math.nan, math.nan, math.nan, "", 0)
        return {
            "claim": self.claim, "verdict": self.verdict, "estimate": self.estimate, "ci_low": self.low, "ci_high": self.high,
            "method": self.method, "sentence": self.sentence, "detail": self.detail, "utility": self.utility,
            "paper_estimate": paper.estimate, "paper_ci_low": paper.low, "paper_ci_high": paper.high, "dropped": self.dropped,
            "family": self.family, "family_size": self.family_size, "p_value": self.p_value, "holm": self.holm,
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


def _p_value(steps: Sequence[tuple[str, Interval]]) -> float:
    ps = [iv.p_nonpositive for _, iv in steps]
    return max(ps) if ps and not any(math.isnan(p) for p in ps) else math.nan


def _dropped(n: int) -> str:
    return f"; {n} variation(s) left out of a comparison (undefined in an arm compared)" if n else ""


def _result(claim: str, verdict: Verdict, deciding: Interval | None, sentence: str, detail: str, **extra) -> ClaimResult:
    if deciding is None:
        return ClaimResult(claim, verdict, math.nan, math.nan, math.nan, "", sentence, detail, **extra)
    return ClaimResult(
        claim, verdict, deciding.estimate, deciding.low, deciding.high, _method(deciding), sentence, detail, **extra
    )


def _bias_part(arm_name, vs_unpruned, vs_random, mde, arm, unpruned, random, random_vs_unpruned):
    """(verdict, deciding interval, sentence after the verdict, detail) of the bias comparison alone."""
    steps = [("unpruned − arm", vs_unpruned), ("random − arm", vs_random)]
    quoted = ""
    if arm is not None:
        others = [f"{label} {_num(iv.estimate)}" for label, iv in (("unpruned", unpruned), ("random", random)) if iv is not None]
        quoted = f"{arm_name} {_iv(arm)}" + (f" vs {' and '.join(others)}" if others else "") + "; "
    diffs = f"unpruned − arm {_iv(vs_unpruned)}, random − arm {_iv(vs_random)}"
    undefined = [label for label, iv in steps if not iv.defined]
    verdict = _verdict(steps)
    if undefined and verdict != "does not hold":
        notes = "; ".join(iv.note for _, iv in steps if iv.note)
        detail = f"undefined difference ({', '.join(undefined)})" + (f": {notes}" if notes else "")
        return "inconclusive", vs_unpruned, detail, detail
    _, deciding = _deciding(steps)
    if verdict == "holds":
        return verdict, deciding, f"{quoted}{diffs}", "beats both the unpruned model and its random control"
    if verdict == "does not hold":
        detail = ("pruning raised mean |SMD| above the unpruned model's" if vs_unpruned.below_zero
                  else "random pruning of as many units lowered mean |SMD| more than this arm")
        return verdict, deciding, f"{detail}; {quoted}{diffs}", detail
    if vs_unpruned.above_zero:
        detail = "beats the unpruned model but cannot be told apart from its random control"
        if random_vs_unpruned is not None and random_vs_unpruned.above_zero:
            detail += (f"; random pruning lowers mean |SMD| too (unpruned − random {_iv(random_vs_unpruned)}), "
                       "so the drop may come from pruning as such")
    elif vs_random.above_zero:
        detail = "beats its random control but cannot be told apart from the unpruned model"
    else:
        detail = "cannot be told apart from the unpruned model nor from its random control"
    return verdict, deciding, f"{_cannot_tell(mde)}; {detail}; {quoted}{diffs}", detail


def lowers_bias(
    arm_name: str,
    vs_unpruned: Interval | None,
    vs_random: Interval | None,
    mde: float | None,
    excluded_reason: str = "",
    *,
    utility: Sequence[UtilityCheck] = (),
    arm: Interval | None = None,
    unpruned: Interval | None = None,
    random: Interval | None = None,
    random_vs_unpruned: Interval | None = None,
    paper: Interval | None = None,
) -> ClaimResult:
    """Decide "pruning lowers bias" for one arm (rule in the module docstring).

    Args:
        arm_name: the arm, as the report names it.
        vs_unpruned: interval of ``mean|SMD|(unpruned) - mean|SMD|(arm)`` (the deciding measure).
        vs_random: interval of ``mean|SMD|(random control) - mean|SMD|(arm)``; None when there is none.
        mde: the design's minimum detectable SMD (:func:`biasprune.stats.power.minimum_detectable_smd`), for the
            "cannot tell" sentence; None or NaN when unknown.
        excluded_reason: non-empty when the arm is kept out of the claims (e.g. "pruned 0 units").
        utility: the utility guard's checks (empty: not checked).
        arm, unpruned, random: the arms' own mean |SMD| intervals, quoted in the sentence when given.
        random_vs_unpruned: interval of ``mean|SMD|(unpruned) - mean|SMD|(random)``, quoted in the detail
            of the mixed case when given.
        paper: ``unpruned - arm`` on the paper's inlier-window SMD, quoted beside the deciding one.
    """
    claim, head = f"pruning lowers bias ({arm_name})", f"Pruning lowers bias ({arm_name})"
    util = utility_text(utility)
    broken = any(not c.passes for c in utility)
    extra = {"utility": util, "paper": paper,
             "dropped": max((iv.dropped for iv in (vs_unpruned, vs_random) if iv is not None), default=0)}
    tail = (f"; utility {util}" if util else "") + (f"; paper's |SMD|: unpruned − arm {_iv(paper)}" if paper is not None else "")
    tail += _dropped(extra["dropped"])
    if excluded_reason or vs_unpruned is None or vs_random is None:
        why = excluded_reason or ("no random control" if vs_random is None else "no comparison with the unpruned model")
        if broken or excluded_reason == NO_PARSE:
            return _result(claim, "breaks answers", vs_unpruned, f"{head}: breaks answers — {why}{tail}.", why, **extra)
        text = f"kept out of the claims: {why}" if excluded_reason else f"{why} to compare with"
        return _result(claim, "inconclusive", vs_unpruned, f"{head}: inconclusive — {text}.", why, **extra)
    verdict, deciding, body, detail = _bias_part(arm_name, vs_unpruned, vs_random, mde, arm, unpruned, random, random_vs_unpruned)
    extra["p_value"] = _p_value([("", vs_unpruned), ("", vs_random)])
    if broken and verdict != "does not hold":
        lead = "lowers bias only by breaking answers" if verdict == "holds" else f"breaks answers; the bias comparison is {verdict}"
        return _result(claim, "breaks answers", deciding, f"{head}: {lead} — {body}{tail}.", f"utility {util}", **extra)
    return _result(claim, verdict, deciding, f"{head}: {verdict} — {body}{tail}.", detail, **extra)


def holm(claims: Sequence[ClaimResult], family: str, alpha: float = HOLM_ALPHA) -> list[ClaimResult]:
    """The claims of one family with Holm's step-down adjustment of their "holds" (module docstring).

    The m claims' p-values (NaN or a verdict other than "holds": 1) are sorted; the i-th smallest (i from 0)
    passes while every smaller one passed and ``p <= alpha / (m - i)``. A "holds" that does not pass becomes
    "inconclusive"; every claim gets ``family``, ``family_size = m`` and a ``holm`` note.
    """
    m = len(claims)
    p = [c.p_value if c.verdict == "holds" and not math.isnan(c.p_value) else 1.0 for c in claims]
    order = sorted(range(m), key=lambda i: p[i])
    passed, going = set(), True
    for rank, i in enumerate(order):
        going = going and p[i] <= alpha / (m - rank)
        if going:
            passed.add(i)
    out = []
    for rank, i in enumerate(order):
        c = claims[i]
        level = alpha / (m - rank)
        note = f"p = {c.p_value:.4f} vs Holm's {level:.4f} (rank {rank + 1} of {m})" if not math.isnan(c.p_value) else ""
        if c.verdict == "holds" and i not in passed:
            why = f"holds alone but not after Holm's adjustment for {m} claims ({note})"
            c = replace(c, verdict="inconclusive", detail=why,
                        sentence=c.sentence.replace(": holds — ", f": inconclusive — {why}; ", 1))
        out.append((i, replace(c, family=family, family_size=m, holm=note)))
    return [c for _, c in sorted(out, key=lambda t: t[0])]


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
    extra = {"p_value": _p_value(steps), "dropped": max(iv.dropped for _, iv in steps)}
    diffs = "; ".join(f"{lab} {_iv(iv)}" for lab, iv in steps) + _dropped(max(iv.dropped for _, iv in steps))
    undefined = [lab for lab, iv in steps if not iv.defined]
    if verdict == "holds":
        return _result(claim, verdict, deciding, f"{head}: holds — {diffs}.", "every step's interval lies above 0", **extra)
    if verdict == "does not hold":
        detail = f"{label} lies below 0: the order is reversed there"
        return _result(claim, verdict, deciding, f"{head}: does not hold — {diffs}.", detail, **extra)
    detail = f"undefined step ({', '.join(undefined)})" if undefined else f"{label} contains 0"
    return _result(claim, verdict, deciding, f"{head}: inconclusive — {_cannot_tell(mde)}; {diffs}.", detail, **extra)
