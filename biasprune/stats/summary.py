"""Per-arm results of one evaluation: mean |SMD| with its interval, the noise floor, the random control, claims.

For every split, all arms were asked about the same names in the same variations, so one name bootstrap
(:func:`biasprune.stats.bootstrap.paired_bootstrap`: names redrawn once per draw and applied to every variation and
every arm) gives every interval and every paired difference. Beside each arm's mean |SMD|:

* ``null_mean_abs_smd`` / ``null_p95``: the noise floor, group labels permuted across names with one
  permutation shared by all variations (:func:`biasprune.stats.bootstrap.null_mean_abs_smd`);
* ``random_mean_abs_smd``: for a pruned arm, its random-mask controls (same number of units per module /
  in total), averaged over draws, with their spread;
* ``mde``: the minimum |SMD| per variation this design detects at 80% power
  (:func:`biasprune.stats.power.minimum_detectable_smd`, with the observed within-name correlation).

Undefined SMDs are counted (``n_undefined``), never dropped silently; an arm that prunes fewer units than
``min_pruned`` is flagged (``excluded``) and kept out of the claims.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from biasprune.stats.bootstrap import PairedBootstrap, null_mean_abs_smd, paired_bootstrap
from biasprune.stats.claims import CLAIM_COLUMNS, ClaimResult, lowers_bias
from biasprune.stats.intervals import arm_interval, difference_interval
from biasprune.stats.power import minimum_detectable_smd, within_name_icc
from biasprune.stats.rows import EvaluationConfig, group_records, inlier_answers, record_arrays

__all__ = ["CLAIM_COLUMNS", "SUMMARY_COLUMNS", "SplitSummary", "arm_answers", "format_summary", "summarize", "summarize_split"]

SUMMARY_COLUMNS = (
    "split", "arm", "phase", "n_variations", "n_undefined", "mean_abs_smd", "ci_low", "ci_high", "ci_method", "ci_note",
    "null_mean_abs_smd", "null_p95", "null_p_value", "random_mean_abs_smd", "random_sd", "random_draws", "inlier_ratio",
    "parse_rate", "degenerate_bounds", "pruned_neurons", "pruned_heads", "share_neurons", "share_heads", "names_ref", "names_target",
    "answers_per_prompt", "icc", "mde", "excluded",
)


@dataclass(frozen=True)
class SplitSummary:
    """One split's per-arm rows, claims, the shared bootstrap (for further contrasts) and the design's MDE."""

    split: str
    rows: list[dict]
    claims: list[ClaimResult]
    boot: PairedBootstrap | None
    mde: float


def arm_answers(per_var: Mapping[tuple[str, str], Sequence[Mapping]], bounds: Mapping, split: str, variations: Sequence[tuple[str, str]]):
    """An arm's inlier answers per variation (``ArmAnswers``), in ``variations`` order."""
    out = []
    for scen, var in variations:
        values, groups, names = record_arrays(per_var.get((scen, var), []))
        out.append(inlier_answers(values, groups, names, bounds[(split, scen, var)]))
    return out


def _mean(vals: Sequence[float]) -> float:
    vals = [v for v in vals if not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else math.nan


def summarize_split(records: Sequence[Mapping], bounds: Mapping, rows: Sequence[Mapping], config: EvaluationConfig, split: str,
                    units_total: Mapping[str, int], controls: Mapping[str, Sequence[str]] | None = None, min_pruned: int = 1) -> SplitSummary:
    """Per-arm rows and "pruning lowers bias" claims of one split.

    ``controls`` maps an arm to its random-control arms; by default every ``pruned`` arm is controlled by all
    ``random`` arms.
    """
    grouped = {arm: pv for (s, arm), pv in group_records(records).items() if s == split}
    split_rows = [r for r in rows if r["split"] == split]
    arms = list(grouped)
    variations = list(dict.fromkeys((r["scenario"], r["variation"]) for r in split_rows))
    phase = {r["arm"]: r["phase"] for r in split_rows}
    if controls is None:
        randoms = [a for a in arms if phase[a] == "random"]
        controls = {a: randoms for a in arms if phase[a] == "pruned"}
    answers = [arm_answers(grouped[a], bounds, split, variations) for a in arms]
    n_boot, seed = config.bootstrap_samples, config.seed
    boot = paired_bootstrap(answers, n_boot=n_boot, seed=seed, labels=arms) if n_boot and arms else None
    base = "unpruned" if "unpruned" in arms else None
    icc = within_name_icc(answers[arms.index(base)]) if base else math.nan
    names = {g: len({n for r in records if r["split"] == split and r["group_index"] == g for n in [r["name"]]}) for g in (0, 1)}
    k = np.mean([len(r["values"]) for r in records if r["split"] == split]) if records else 0
    # An ICC that cannot be estimated (e.g. one answer per name) is taken as 1, the most conservative value.
    mde = minimum_detectable_smd(names[0], names[1], float(k), 1.0 if math.isnan(icc) else icc, len(variations)) if min(names.values()) > 2 else math.nan
    out, claims = [], []
    for a, ans in zip(arms, answers):
        ar = [r for r in split_rows if r["arm"] == a]
        # a direction arm changes its edited layers instead of pruning units (docs/method.md, "Directions")
        n_pruned = min((r["pruned_neurons"] + r["pruned_heads"] + r.get("edited_layers", 0) for r in ar), default=0)
        row = {c: math.nan for c in SUMMARY_COLUMNS} | {"ci_method": "", "ci_note": ""}
        row |= {
            "split": split, "arm": a, "phase": phase[a], "n_variations": len(ar), "n_undefined": sum(math.isnan(r["smd"]) for r in ar),
            "mean_abs_smd": _mean([r["abs_smd"] for r in ar]), "inlier_ratio": _mean([r["inlier_ratio"] for r in ar]),
            "parse_rate": _mean([r["parse_rate"] for r in ar]), "degenerate_bounds": sum(bool(r["bounds_degenerate"]) for r in ar),
            "pruned_neurons": _mean([r["pruned_neurons"] for r in ar]), "pruned_heads": _mean([r["pruned_heads"] for r in ar]),
            "share_neurons": _mean([r["pruned_neurons"] / max(1, units_total.get("neuron", 0)) for r in ar]),
            "share_heads": _mean([r["pruned_heads"] / max(1, units_total.get("head", 0)) for r in ar]),
            "names_ref": names[0], "names_target": names[1], "answers_per_prompt": float(k), "icc": icc, "mde": mde,
            "excluded": "", "random_draws": len(controls.get(a, ())),
        }
        if boot is not None:
            iv = arm_interval(boot, a)
            row.update(ci_low=iv.low, ci_high=iv.high, ci_method=iv.method, ci_note=iv.note)
        if config.permutation_samples:
            null = null_mean_abs_smd(ans, n_perm=config.permutation_samples, seed=seed)
            row.update(null_mean_abs_smd=null.mean, null_p95=null.p95, null_p_value=null.p_value)
        ctrl = list(controls.get(a, ()))
        if ctrl:
            draws = [_mean([r["abs_smd"] for r in split_rows if r["arm"] == c]) for c in ctrl]
            row.update(random_mean_abs_smd=_mean(draws), random_sd=float(np.nanstd(draws, ddof=1)) if len(draws) > 1 else math.nan)
        if phase[a] == "pruned":
            if n_pruned < max(min_pruned, 1):
                row["excluded"] = "prunes nothing" if n_pruned == 0 else f"prunes {n_pruned} units, fewer than the minimum {min_pruned}"
            elif not ctrl:
                row["excluded"] = "no random control"
            if boot is not None and base is not None:
                claims.append(lowers_bias(
                    a, difference_interval(boot, base, a), difference_interval(boot, ctrl, a) if ctrl else None, mde,
                    excluded_reason=row["excluded"], arm=arm_interval(boot, a), unpruned=arm_interval(boot, base),
                    random=arm_interval(boot, ctrl) if ctrl else None,
                    random_vs_unpruned=difference_interval(boot, base, ctrl) if ctrl else None,
                ))
        out.append(row)
    return SplitSummary(split, out, claims, boot, mde)


def summarize(records: Sequence[Mapping], bounds: Mapping, rows: Sequence[Mapping], config: EvaluationConfig,
              units_total: Mapping[str, int], min_pruned: int = 1) -> tuple[list[dict], list[ClaimResult]]:
    """``summary.csv`` rows and claims of every evaluated split (test first)."""
    splits = sorted({r["split"] for r in rows}, key=lambda s: (s != "test", s))
    summary, claims = [], []
    for split in splits:
        s = summarize_split(records, bounds, rows, config, split, units_total, min_pruned=min_pruned)
        summary += s.rows
        claims += s.claims
    return summary, claims


def _f(x: float, fmt: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def format_summary(summary: Sequence[Mapping], claims: Sequence[ClaimResult], dm=None) -> str:
    """The terminal table: per arm mean |SMD| [95% CI], noise floor, random control, inlier and parse rates."""
    lines = []
    for split in dict.fromkeys(r["split"] for r in summary):
        rows = [r for r in summary if r["split"] == split]
        first = rows[0]
        lines.append(
            f"bias on the {split} names: {first['names_ref']} + {first['names_target']} names (reference + target),"
            f" {first['answers_per_prompt']:.0f} answers per prompt, {first['n_variations']} variation(s)"
        )
        w = max([14] + [len(str(r["arm"])) + 2 for r in rows])
        lines.append(f"{'arm':<{w}}{'mean |SMD|':>11}  {'95% CI':<17}{'noise floor (p95)':>18}{'random ctrl':>13}{'inlier':>8}{'parse':>7}  pruned")
        for r in rows:
            if r["phase"] == "random":
                continue
            if "n_undefined" not in r:  # a study family with no qualifying point: nothing was evaluated for it
                lines.append(f"{r['arm']:<{w}}  [{r['excluded']}]")
                continue
            ci = f"[{_f(r.get('ci_low'))}, {_f(r.get('ci_high'))}]" if "ci_low" in r else "-"
            floor = f"{_f(r.get('null_mean_abs_smd', math.nan))} ({_f(r.get('null_p95', math.nan))})"
            rnd = "-"
            if r.get("random_draws"):
                rnd = f"{_f(r.get('random_mean_abs_smd', math.nan))}±{_f(r.get('random_sd', math.nan), '.2f')}"
            parts = [f"{r['pruned_neurons']:.0f} neurons ({100 * r['share_neurons']:.2f}%)" if r["pruned_neurons"] else "",
                     f"{r['pruned_heads']:.0f} heads ({100 * r['share_heads']:.1f}%)" if r["pruned_heads"] else ""]
            pruned = "-" if r["phase"] == "baseline" else (", ".join(p for p in parts if p) or "nothing")
            und = f"  [{r['n_undefined']} of {r['n_variations']} variations undefined]" if r["n_undefined"] else ""
            deg = f"  [{r['degenerate_bounds']} degenerate inlier bounds]" if r["degenerate_bounds"] else ""
            exc = f"  [excluded from claims: {r['excluded']}]" if r["excluded"] else ""
            lines.append(f"{r['arm']:<{w}}{_f(r['mean_abs_smd']):>11}  {ci:<17}{floor:>18}{rnd:>13}{_f(r['inlier_ratio']):>8}{_f(r['parse_rate'], '.2f'):>7}  {pruned}{und}{deg}{exc}")
        lines.append(f"minimum detectable |SMD| per variation at 80% power: {_f(first['mde'], '.2f')} (within-name correlation {_f(first['icc'], '.2f')})")
        lines.append("")
    for c in claims:
        lines.append(f"claim: {c.sentence}")
    return "\n".join(lines).rstrip()
