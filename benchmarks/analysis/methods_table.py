"""The comparison table of selection methods and the method the fixed rule chooses, from compare_methods' runs.

    python -m benchmarks.analysis.methods_table DIR [DIR ...] --out FILE.md [--chosen FILE.json]

THE RULE (fixed before any run; docs/results.md, "Choosing the method"). On the **dev** names only, over every
(method, budget) arm and every plant whose unpruned dev |SMD| is above its noise floor (a plant with no bias on dev
cannot inform the choice):

1. an arm is admissible if, on every such plant, its inlier ratio and parse rate are ≥ 0.9 × the baseline's;
2. among admissible arms, the one with the largest mean over those plants of (cut − random cut), where cut =
   1 − pruned mean |SMD| / baseline mean |SMD| and random cut is the same for the mean of its random arms;
3. ties (within 0.01) go to the cheaper method (wanda < nll < atp < contrastive < causal: docs/method.md,
   "Selection methods"), then the smaller budget.

No test number, and no per-plant choice, enters the rule. The table shows the **test** names' numbers of every arm,
with the chosen one marked; ``--chosen`` writes the choice (objective, rule, budgets) for the configs.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from biasprune.metrics.spec import DECIDING

COST_ORDER = ("wanda", "nll", "atp", "contrastive", "causal")
FACTOR = 0.9
TIE = 0.01


def load(dirs: list[Path]) -> list[dict]:
    rows = []
    for d in dirs:
        rows += [r for r in json.loads((d / "comparison.json").read_text()) if not r.get("rc")]
    if not rows:
        raise SystemExit(f"no successful run in {[str(d) for d in dirs]}")
    return rows


#: The scale-free measure: the metric spec's deciding bias metric (``rank_smd``, summary column
#: ``mean_abs_rank_smd``; docs/method.md, "Statistics"); its cut is a column of the table when the runs carry it.
#: The rule above decides on the paper's measure, as fixed before the runs.
SCALE_FREE = DECIDING.name


def _measure(arm: dict, measure: str) -> float:
    if measure == "smd":
        return arm["mean_abs_smd"]
    return arm.get("measures", {}).get(measure, math.nan)


def cut(split: dict, measure: str = "smd") -> tuple[float, float]:
    """(cut, random cut) of one split's arms: 1 − arm/baseline mean |SMD| of ``measure`` (NaN without a baseline
    bias or without the measure)."""
    base = _measure(split["baseline"], measure)
    if not base > 0:
        return math.nan, math.nan
    rnd = [_measure(a, measure) for a in split["random"]]
    return 1 - _measure(split["pruned"], measure) / base, (1 - sum(rnd) / len(rnd) / base) if rnd else math.nan


def arm_key(r: dict) -> tuple[str, str, str, str]:
    return (r["objective"], r["rule"], r["budget"], r["head_budget"])


def choose(rows: list[dict]) -> tuple[tuple | None, dict]:
    """The fixed rule (module docstring) on the dev rows; returns the chosen arm and each arm's dev evidence."""
    biased = {r["plant"] for r in rows if "dev" in r["splits"]
              and r["splits"]["dev"]["baseline"]["mean_abs_smd"] > r["splits"]["dev"]["baseline"]["null_p95"]}  # fmt: skip
    evidence: dict[tuple, dict] = {}
    for r in rows:
        if r["plant"] not in biased or "dev" not in r["splits"]:
            continue
        dev = r["splits"]["dev"]
        c, rc = cut(dev)
        ok = (dev["pruned"]["inlier_ratio"] >= FACTOR * dev["baseline"]["inlier_ratio"]
              and dev["pruned"]["parse_rate"] >= FACTOR * dev["baseline"]["parse_rate"])  # fmt: skip
        e = evidence.setdefault(arm_key(r), {"admissible": True, "gains": [], "plants": []})
        e["admissible"] &= ok
        e["gains"].append(c - rc)
        e["plants"].append(r["plant"])
    for e in evidence.values():
        e["mean_gain"] = sum(e["gains"]) / len(e["gains"]) if e["gains"] else math.nan
        e["complete"] = set(e["plants"]) == biased
    candidates = [(k, e) for k, e in evidence.items() if e["admissible"] and e["complete"] and not math.isnan(e["mean_gain"])]
    if not candidates:
        return None, evidence
    best = max(e["mean_gain"] for _, e in candidates)
    tied = [k for k, e in candidates if e["mean_gain"] >= best - TIE]

    def cost(k: tuple) -> tuple:
        objective, _, budget, head_budget = k
        rank = COST_ORDER.index(objective) if objective in COST_ORDER else len(COST_ORDER)
        return (rank, float(budget.rstrip("%")), float(head_budget))

    return min(tied, key=cost), evidence


def _f(x, fmt="{:.2f}") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def truth_cell(truth: dict | None, kind: str) -> str:
    """Precision / recall of one unit kind against the plant's truth (compare_methods.truth_scores): a localized
    plant's units (MLP neurons counted as gate/up pairs), or for a LoRA plant the units of largest update norm,
    where precision = recall, shown with the share of the update's squared norm that the pruned units hold."""
    if not truth:
        return "–"
    by_norm = truth.get("truth") == "update_norm"
    if kind == "neuron" and not by_norm and "mlp_neuron" in truth:
        kind = "mlp_neuron"
    t = truth.get(kind)
    if not t:
        return "–"
    if by_norm:
        return f"{_f(t.get('precision'))} (mass {_f(t.get('mass'))})"
    return f"{_f(t.get('precision'))} / {_f(t.get('recall'))}"


def table(rows: list[dict], chosen: tuple | None) -> str:
    head = ("| plant | method | budget (neurons/module, heads) | base \\|SMD\\| | cut | random cut | inlier × base |"
            " parse × base | neurons P / R | heads P / R | wall s |")
    scale_free = any(SCALE_FREE in a.get("measures", {}) for r in rows for s in r["splits"].values() for a in [s["baseline"]])
    if scale_free:
        head = head.replace(" | base \\|SMD\\| |", f" | scale-free cut ({SCALE_FREE}) | random cut ({SCALE_FREE}) | base \\|SMD\\| |")
    lines = [head, "|" + "---|" * (head.replace("\\|", "").count("|") - 1)]  # escaped pipes are not columns
    for r in sorted(rows, key=lambda r: (r["plant"], COST_ORDER.index(r["objective"]) if r["objective"] in COST_ORDER else 9,
                                         r["budget"])):  # fmt: skip
        test = r["splits"].get("test")
        if test is None:
            continue
        c, rc = cut(test)
        b, p = test["baseline"], test["pruned"]
        mark = " **(chosen)**" if arm_key(r) == chosen else ""
        sf = "".join(f" | {_f(x, '{:.0%}')}" for x in cut(test, SCALE_FREE)) if scale_free else ""
        lines.append(
            f"| {r['plant']} | {r['objective']}:{r['rule']}{mark} | {r['budget']}, {r['head_budget']}{sf} | {_f(b['mean_abs_smd'], '{:.3f}')}"
            f" | {_f(c, '{:.0%}')} | {_f(rc, '{:.0%}')} | {_f(p['inlier_ratio'] / b['inlier_ratio'] if b['inlier_ratio'] else math.nan)}"
            f" | {_f(p['parse_rate'] / b['parse_rate'] if b['parse_rate'] else math.nan)} | {truth_cell(r.get('truth'), 'neuron')}"
            f" | {truth_cell(r.get('truth'), 'head')} | {_f(r.get('wall_s'), '{:.0f}')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--chosen", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = load(args.dirs)
    chosen, evidence = choose(rows)
    text = ["Cut = 1 − pruned / unpruned mean |SMD| on the **test** names (the paper's measure; with the metric spec also",
            f"the scale-free measure, {SCALE_FREE}: the SMD of normal scores, docs/method.md); inlier and parse as a",
            "ratio to the unpruned model's; P / R: precision and recall of the pruned units against the plant's ground",
            "truth: a localized plant's unit list (MLP neurons as gate/up pairs), or for a LoRA plant (format, purchase,",
            "all) the k units of largest LoRA update norm, k = the number pruned, so P = R, with the share of the update's",
            "squared norm they hold (mass); wall time of the whole fit run.", "", table(rows, chosen), ""]
    if chosen is None:
        text.append("The fixed rule chose nothing: no arm was admissible on every plant biased on dev.")
    else:
        o, rl, b, hb = chosen
        text.append(f"Chosen on dev by the fixed rule: `--model.objective {o} --pruning.rule {rl} --pruning.budget {b}"
                    f" --pruning.head_budget {hb}` (mean dev gain over its random control {evidence[chosen]['mean_gain']:.0%}).")
    args.out.write_text("\n".join(text) + "\n")
    print("\n".join(text))
    if args.chosen:
        out = {"objective": chosen[0], "rule": chosen[1], "budget": chosen[2], "head_budget": chosen[3]} if chosen else None
        args.chosen.write_text(json.dumps({"chosen": out, "evidence": {":".join(k): v for k, v in evidence.items()}},
                                          indent=2) + "\n")


if __name__ == "__main__":
    main()
