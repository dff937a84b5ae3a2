"""Per-arm results of one evaluation: mean |SMD| with its interval, the noise floor, the random control, the
utility guard and the claims.

For every split, all arms were asked about the same names in the same variations, so one name bootstrap
(:func:`biasprune.stats.bootstrap.paired_bootstrap`: names redrawn once per draw and applied to every variation,
every arm and every metric) gives every interval and every paired difference. Per arm and bias metric
(:data:`biasprune.metrics.spec.BIAS_METRICS`: the scale-free SMD that decides, the paper's beside it):

* ``mean_abs_<metric>`` with its interval, and ``<prefix>n_undefined``, the variations where it is undefined;
* ``null_mean_abs_<metric>`` / ``..._p95``: the noise floor, group labels permuted across names with one
  permutation shared by all variations (:func:`biasprune.stats.bootstrap.null_mean_abs_smd`);
* ``random_mean_abs_<metric>`` / ``..._sd``: for a pruned arm, its random-mask controls (same number of units per
  module / in total), averaged over draws, and their spread from draw to draw.

Per arm and utility metric (inlier ratio, parse rate): the mean over variations and, for every arm but the
unpruned one, the paired interval of ``arm - unpruned``; ``utility`` says whether a pruned arm is non-inferior
(:class:`biasprune.stats.claims.UtilityCheck`). Beside them, ``mde``: the minimum |SMD| per variation this design
detects at 80% power (:func:`biasprune.stats.power.minimum_detectable_smd`).

Nothing is dropped silently: undefined SMDs are counted; comparisons use the variations defined in every arm
compared and say how many they left out (:mod:`biasprune.stats.intervals`); an arm that prunes fewer units than
``min_pruned``, has no random control, parses nothing or is undefined in more than
``EvaluationConfig.max_undefined_share`` of the variations is flagged (``excluded``) and kept out of the claims.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from biasprune.metrics.spec import BIAS_METRICS, DECIDING, PAPER, UTILITY_METRICS, Window, summary_columns
from biasprune.stats.bootstrap import (
    NameMoments,
    PairedBootstrap,
    UtilityBootstrap,
    null_mean_abs_smd,
    paired_bootstrap,
    utility_bootstrap,
)
from biasprune.stats.claims import CLAIM_COLUMNS, NO_PARSE, ClaimResult, UtilityCheck, lowers_bias
from biasprune.stats.intervals import RandomDraws, arm_interval, difference_interval, utility_difference
from biasprune.stats.power import minimum_detectable_smd, within_name_icc
from biasprune.stats.rows import CHANGE_COLUMNS, EvaluationConfig, group_records, metric_answers, record_arrays

__all__ = ["CLAIM_COLUMNS", "SUMMARY_COLUMNS", "SplitData", "SplitSummary", "bootstraps", "format_summary", "name_moments",
           "split_data", "summarize", "summarize_split", "utility_draws"]

SUMMARY_COLUMNS = (
    "split", "arm", "phase", "n_variations", *summary_columns(BIAS_METRICS), "ci_method", *summary_columns(UTILITY_METRICS),
    "utility", "random_draws", "degenerate_bounds", "pruned_neurons", "pruned_heads", "edited_layers", "share_neurons",
    "share_heads", "names_ref", "names_target", "answers_per_prompt", "icc", "mde", "excluded",
)


@dataclass(frozen=True)
class SplitData:
    """One split's answers, arranged for the summary: arms and variations in order, each arm's answer arrays
    ``(values [n_prompts, k], groups, names)`` and rows per variation (None where it was not evaluated), the
    inlier window per variation and every name asked with its group."""

    split: str
    arms: list[str]
    phase: dict[str, str]
    variations: list[tuple[str, str]]
    arrays: dict[str, list[tuple[np.ndarray, np.ndarray, list[str]]]]
    rows: dict[str, list[Mapping | None]]
    windows: list[Window]
    names: dict[str, int]


@dataclass(frozen=True)
class SplitSummary:
    """One split's per-arm rows, claims, the shared bootstraps (for further contrasts) and the design's MDE."""

    split: str
    rows: list[dict]
    claims: list[ClaimResult]
    boot: PairedBootstrap | None  # of the deciding metric
    mde: float
    boots: dict[str, PairedBootstrap] | None = None
    utility: UtilityBootstrap | None = None


def split_data(records: Sequence[Mapping], bounds: Mapping, rows: Sequence[Mapping], split: str) -> SplitData:
    """Arrange one split's records and rows (arms and variations in order of first appearance)."""
    grouped = {arm: pv for (s, arm), pv in group_records(records).items() if s == split}
    split_rows = [r for r in rows if r["split"] == split]
    variations = list(dict.fromkeys((r["scenario"], r["variation"]) for r in split_rows))
    by_key = {(r["arm"], r["scenario"], r["variation"]): r for r in split_rows}
    arms = list(grouped)
    arrays = {a: [record_arrays(grouped[a].get(v, [])) for v in variations] for a in arms}
    names = {r["name"]: int(r["group_index"]) for r in records if r["split"] == split and r["group_index"] in (0, 1)}
    return SplitData(
        split, arms, {r["arm"]: r["phase"] for r in split_rows}, variations, arrays,
        {a: [by_key.get((a, *v)) for v in variations] for a in arms},
        [Window(tuple(float(x) for x in bounds[(split, *v)])) for v in variations], names,
    )


def _observed(data: SplitData, column: str) -> np.ndarray:
    return np.array([[math.nan if r is None else float(r[column]) for r in data.rows[a]] for a in data.arms])


def name_moments(data: SplitData) -> dict[str, NameMoments]:
    """Per bias metric, the per-name moments of every arm's selected answers (every name asked is included)."""
    out = {}
    for m in BIAS_METRICS:
        answers = [[metric_answers(m, *arr, w) for arr, w in zip(data.arrays[a], data.windows)] for a in data.arms]
        out[m.name] = NameMoments.from_answers(answers, names=data.names)
    return out


def utility_draws(data: SplitData, config: EvaluationConfig) -> UtilityBootstrap:
    """The utility rates' name bootstrap, on the same name draws as :func:`bootstraps` (same names, same seed)."""
    empty = (np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object))
    order = NameMoments.from_answers([[empty] * len(data.variations)], names=data.names)
    index = {n: i for i, n in enumerate(order.names.tolist())}
    shape = (len(data.arms), len(data.variations), order.names.size)
    total, hits = np.zeros(shape), {u.name: np.zeros(shape) for u in UTILITY_METRICS}
    for a, arm in enumerate(data.arms):
        for v, ((values, groups, names), w) in enumerate(zip(data.arrays[arm], data.windows)):
            mine = np.isin(groups, (0, 1))  # the reference and target groups only
            if not mine.any():
                continue
            cols = np.array([index[n] for n, keep in zip(names, mine) if keep], dtype=np.int64)
            np.add.at(total[a, v], cols, values.shape[1])
            for u in UTILITY_METRICS:
                np.add.at(hits[u.name][a, v], cols, u.hits(values[mine], w).sum(axis=1))
    return utility_bootstrap(order.names, order.groups, total, hits, config.bootstrap_samples, config.seed, data.arms)


def bootstraps(data: SplitData, config: EvaluationConfig, moments: Mapping[str, NameMoments]) -> dict[str, PairedBootstrap]:
    """One paired bootstrap per bias metric, all on the same name draws; the observed SMDs are the rows'."""
    return {name: paired_bootstrap(mo, config.bootstrap_samples, config.seed, data.arms, observed=_observed(data, name))
            for name, mo in moments.items()}


def _mean(vals: Sequence[float]) -> float:
    vals = [v for v in vals if not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else math.nan


def _design(data: SplitData, records: Sequence[Mapping], moments: Mapping) -> dict:
    """Names per group, answers per prompt, the within-name correlation and the MDE of the split."""
    base = "unpruned" if "unpruned" in data.arms else None
    dec = moments.get(DECIDING.name)
    icc = within_name_icc(NameMoments(dec.names, dec.groups, *(x[[data.arms.index(base)]] for x in (dec.count, dec.mean, dec.m2)))) \
        if base and dec is not None and dec.names.size else math.nan
    names = {g: sum(1 for gi in data.names.values() if gi == g) for g in (0, 1)}
    k = float(np.mean([len(r["values"]) for r in records if r["split"] == data.split])) if records else 0.0
    # An ICC that cannot be estimated (e.g. one answer per name) is taken as 1, the most conservative value.
    mde = minimum_detectable_smd(names[0], names[1], k, 1.0 if math.isnan(icc) else icc, len(data.variations)) \
        if min(names.values()) > 2 and k >= 1 else math.nan
    return {"names_ref": names[0], "names_target": names[1], "answers_per_prompt": k, "icc": icc, "mde": mde}


def _base_row(data: SplitData, arm: str, units_total: Mapping[str, int], design: Mapping) -> dict:
    rows = [r for r in data.rows[arm] if r is not None]
    row = {c: math.nan for c in SUMMARY_COLUMNS} | {"ci_method": "", "utility": "", "excluded": ""}
    row |= {
        "split": data.split, "arm": arm, "phase": data.phase.get(arm, ""), "n_variations": len(rows),
        "degenerate_bounds": sum(bool(r["bounds_degenerate"]) for r in rows),
        **{c: _mean([r.get(c, 0) for r in rows]) for c in CHANGE_COLUMNS},
        "share_neurons": _mean([r["pruned_neurons"] / max(1, units_total.get("neuron", 0)) for r in rows]),
        "share_heads": _mean([r["pruned_heads"] / max(1, units_total.get("head", 0)) for r in rows]), **design,
    }
    for m in BIAS_METRICS:
        row[m.mean] = _mean([r[m.abs] for r in rows])
        row[f"{m.prefix}n_undefined"] = sum(math.isnan(r[m.name]) for r in rows)
    for u in UTILITY_METRICS:
        row[u.name] = _mean([r[u.name] for r in rows])
    return row


def _bias_columns(row: dict, arm: str, boots: Mapping[str, PairedBootstrap] | None, moments: Mapping, data: SplitData,
                  ctrl: Sequence[str], config: EvaluationConfig) -> None:
    for m in BIAS_METRICS:
        if boots is not None:
            iv = arm_interval(boots[m.name], arm)
            row.update({f"{m.mean}_ci_low": iv.low, f"{m.mean}_ci_high": iv.high, f"{m.mean}_ci_note": iv.note, "ci_method": iv.method})
        if config.permutation_samples and moments:
            mo = moments[m.name]
            a = data.arms.index(arm)
            one = NameMoments(mo.names, mo.groups, mo.count[[a]], mo.mean[[a]], mo.m2[[a]])
            null = null_mean_abs_smd(one, n_perm=config.permutation_samples, seed=config.seed)
            row.update({f"null_{m.mean}": null.mean, f"null_{m.mean}_p95": null.p95, f"null_{m.mean}_p_value": null.p_value})
        if ctrl:
            draws = [_mean([r[m.abs] for r in data.rows[c] if r is not None]) for c in ctrl]
            sd = float(np.nanstd(draws, ddof=1)) if len(draws) > 1 else math.nan
            row.update({f"random_{m.mean}": _mean(draws), f"random_{m.mean}_sd": sd})


def _utility_checks(ub: UtilityBootstrap | None, row: dict, arm: str, base: str | None, margin: float) -> list[UtilityCheck]:
    if ub is None or base is None or arm == base:
        return []
    checks = []
    for u in UTILITY_METRICS:
        iv = utility_difference(ub, u.name, arm, base)
        d = f"{u.name}_vs_unpruned"
        row.update({d: iv.estimate, f"{d}_ci_low": iv.low, f"{d}_ci_high": iv.high})
        checks.append(UtilityCheck(u.name, iv, margin))
    return checks


def _excluded(row: Mapping, base_row: Mapping | None, ctrl: Sequence[str], config: EvaluationConfig, min_pruned: int) -> str:
    """Why a pruned arm is kept out of the claims ("" when it is not)."""
    n_var = max(int(row["n_variations"]), 1)
    undefined = f"{DECIDING.prefix}n_undefined"
    if row["parse_rate"] == 0.0:
        return NO_PARSE
    # a direction arm changes its edited layers instead of pruning units (docs/method.md, "Directions")
    n_pruned = sum(row[c] for c in CHANGE_COLUMNS)
    if not n_pruned > 0:
        return "prunes nothing"
    if n_pruned < min_pruned:
        return f"prunes {n_pruned:g} units, fewer than the minimum {min_pruned}"
    if not ctrl:
        return "no random control"
    for who, r in (("its", row), ("the unpruned model's", base_row)):
        if r is not None and r[undefined] / n_var > config.max_undefined_share:
            return (f"{who} {DECIDING.label} SMD is undefined in {r[undefined]} of {n_var} variations"
                    f" (allowed: {config.max_undefined_share:.0%} of them)")
    return ""


def _claim(arm: str, row: Mapping, boots: Mapping[str, PairedBootstrap], base: str, ctrl: Sequence[str],
           checks: Sequence[UtilityCheck], mde: float) -> ClaimResult:
    b, rnd = boots[DECIDING.name], RandomDraws(tuple(ctrl)) if ctrl else None
    return lowers_bias(
        arm, difference_interval(b, base, arm), difference_interval(b, rnd, arm) if rnd else None, mde,
        excluded_reason=row["excluded"], utility=checks, arm=arm_interval(b, arm), unpruned=arm_interval(b, base),
        random=arm_interval(b, rnd) if rnd else None, random_vs_unpruned=difference_interval(b, base, rnd) if rnd else None,
        paper=difference_interval(boots[PAPER.name], base, arm),
    )


def summarize_split(records: Sequence[Mapping], bounds: Mapping, rows: Sequence[Mapping], config: EvaluationConfig, split: str,
                    units_total: Mapping[str, int], controls: Mapping[str, Sequence[str]] | None = None, min_pruned: int = 1) -> SplitSummary:
    """Per-arm rows, the utility guard and "pruning lowers bias" claims of one split.

    ``controls`` maps an arm to its random-control arms; by default every ``pruned`` arm is controlled by all
    ``random`` arms.
    """
    data = split_data(records, bounds, rows, split)
    if controls is None:
        randoms = [a for a in data.arms if data.phase.get(a) == "random"]
        controls = {a: randoms for a in data.arms if data.phase.get(a) == "pruned"}
    moments = name_moments(data) if data.arms else {}
    boots = bootstraps(data, config, moments) if config.bootstrap_samples and data.arms else None
    ub = utility_draws(data, config) if boots is not None else None
    design = _design(data, records, moments)
    base = "unpruned" if "unpruned" in data.arms else None
    out, checks = {}, {}
    for a in data.arms:
        out[a] = row = _base_row(data, a, units_total, design) | {"random_draws": len(controls.get(a, ()))}
        _bias_columns(row, a, boots, moments, data, list(controls.get(a, ())), config)
        checks[a] = _utility_checks(ub, row, a, base, config.utility_margin)
    claims = []
    for a in (a for a in data.arms if out[a]["phase"] == "pruned"):
        row, ctrl = out[a], list(controls.get(a, ()))
        row["excluded"] = _excluded(row, out.get(base), ctrl, config, min_pruned)
        if checks[a]:
            row["utility"] = "non-inferior" if all(c.passes for c in checks[a]) else "lost"
        if boots is not None and base is not None:
            claims.append(_claim(a, row, boots, base, ctrl, checks[a], design["mde"]))
    return SplitSummary(split, list(out.values()), claims, boots[DECIDING.name] if boots else None, design["mde"], boots, ub)


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


def _arm_line(r: Mapping, w: int) -> str:
    cells = []
    for m in BIAS_METRICS:
        ci = f"[{_f(r.get(f'{m.mean}_ci_low', math.nan))}, {_f(r.get(f'{m.mean}_ci_high', math.nan))}]"
        rnd = "-"
        if r.get("random_draws"):
            rnd = f"{_f(r.get(f'random_{m.mean}', math.nan))}±{_f(r.get(f'random_{m.mean}_sd', math.nan), '.2f')}"
        cells.append(f"{_f(r[m.mean]):>7} {ci:<16}{rnd:>11}")
    floor = f"{_f(r.get(f'null_{DECIDING.mean}', math.nan))} ({_f(r.get(f'null_{DECIDING.mean}_p95', math.nan))})"
    parts = [f"{r['pruned_neurons']:.0f} neurons ({100 * r['share_neurons']:.2f}%)" if r["pruned_neurons"] else "",
             f"{r['pruned_heads']:.0f} heads ({100 * r['share_heads']:.1f}%)" if r["pruned_heads"] else ""]
    pruned = "-" if r["phase"] == "baseline" else (", ".join(p for p in parts if p) or "nothing")
    notes = [f"{r[f'{m.prefix}n_undefined']} of {r['n_variations']} variations undefined ({m.label})"
             for m in BIAS_METRICS if r.get(f"{m.prefix}n_undefined")]
    notes += [f"{r['degenerate_bounds']} degenerate inlier bounds"] if r.get("degenerate_bounds") else []
    notes += [f"excluded from claims: {r['excluded']}"] if r.get("excluded") else []
    util = r.get("utility") or "-"
    return (f"{r['arm']:<{w}}{'  '.join(cells)}  {floor:>17}{_f(r['inlier_ratio']):>8}{_f(r['parse_rate'], '.2f'):>7}  {util:<13}"
            f"{pruned}" + "".join(f"  [{n}]" for n in notes))


def format_summary(summary: Sequence[Mapping], claims: Sequence[ClaimResult], dm=None) -> str:
    """The terminal table: per arm, each bias metric's mean |SMD| [95% CI] and random control, the noise floor,
    inlier and parse rates, the utility guard and what was pruned."""
    lines = []
    for split in dict.fromkeys(r["split"] for r in summary):
        rows = [r for r in summary if r["split"] == split]
        first = rows[0]
        lines.append(
            f"bias on the {split} names: {first['names_ref']} + {first['names_target']} names (reference + target),"
            f" {first['answers_per_prompt']:.0f} answers per prompt, {first['n_variations']} variation(s)"
        )
        w = max([14] + [len(str(r["arm"])) + 2 for r in rows])
        titles = "  ".join(f"{(m.label + ' |SMD|'):^34}" for m in BIAS_METRICS)
        groups = "  ".join(f"{'mean':>7} {'95% CI':<16}{'random ctrl':>11}" for _ in BIAS_METRICS)
        lines.append(f"{'':<{w}}{titles}")
        lines.append(f"{'arm':<{w}}{groups}  {'noise floor (p95)':>17}{'inlier':>8}{'parse':>7}  {'utility':<13}pruned")
        for r in rows:
            if r["phase"] == "random":
                continue
            if "inlier_ratio" not in r or f"{DECIDING.prefix}n_undefined" not in r:  # a study family never evaluated
                lines.append(f"{r['arm']:<{w}}  [{r['excluded']}]")
                continue
            lines.append(_arm_line(r, w))
        lines.append(f"minimum detectable |SMD| per variation at 80% power: {_f(first['mde'], '.2f')}"
                     f" (within-name correlation {_f(first['icc'], '.2f')}); noise floor: {DECIDING.label} |SMD| (p95)")
        lines.append("")
    for c in claims:
        lines.append(f"claim: {c.sentence}")
    return "\n".join(lines).rstrip()
