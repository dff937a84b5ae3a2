"""The layer-wise causal trace and the causal ablation search on a localized plant, against its planted units.

    python -m benchmarks.analysis.localized_causal PLANT_ID --out DIR [--evaluation purchase] [--units auto]
        [--budget N] [--device cuda] [--max-pairs 60]

Pairs: the dev names (never test: the search chooses units) on the evaluation variations, each Black-associated
name with the White-associated name of the same pair id (same gender and rank), both prompts rendered with the
chat template; each prompt's answer is the model's greedy answer (then the end of turn). Pairs whose two answers
are the same text carry no gap and are dropped (counted).

1. :func:`biasprune.localize.trace.causal_trace`: per stage (resid, attn, mlp) and layer, the share of the pairs'
   gap that patching that output from the name-swapped prompt moves (``trace.csv``), and the layers the attn and
   mlp stages point to (80% of their positive effect);
2. :func:`biasprune.localize.causal.causal_search` of the plant's unit kind (``auto``: heads for a heads plant,
   MLP neurons, as ``gate_proj`` channels, for a neurons plant), budget = the planted count by default, stopping
   at 90% of the gap: heads each ablated alone, neurons shortlisted first-order (256) then ablated; greedy over
   the 64 best;
3. precision and recall of the search's picks against the planted units
   (:func:`biasprune.plant.groundtruth.unit_precision_recall`), and the share of the planted units and of the
   picks in the layers the trace points to (:func:`biasprune.localize.trace.layer_share`).

Writes ``DIR/causal.json``, ``DIR/trace.csv``, ``DIR/search_masks.safetensors`` and prints a summary.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import torch

from biasprune.answers.generation import generate
from biasprune.data.prompts import chat_prompt
from biasprune.data.scenarios import build_prompt_rows, load_scenarios, parse_selectors
from biasprune.localize.causal import causal_search
from biasprune.localize.pairs import NamePair
from biasprune.localize.trace import STAGES, causal_trace, layer_share, pointed_layers
from biasprune.models.architectures import NEURON_MODULE_CHOICES, resolve_units
from biasprune.models.loading import load_model, load_tokenizer, plant_chain, resolve_plant
from biasprune.plant.groundtruth import planted_units, truth_keep_masks, unit_precision_recall
from biasprune.plant.spec import default_split
from biasprune.pruning.masks import save_masks


def name_pairs(model, tok, selectors: list[str], split: str = "dev", groups=("white", "black"), max_pairs: int | None = None,
               batch_size: int = 64, keep_same: bool = False) -> tuple[list[NamePair], dict]:  # fmt: skip
    """Name-swapped pairs of one name split with the model's greedy answers (module docstring)."""
    scen_names = list(dict.fromkeys(s.partition("/")[0] for s in selectors))
    scenarios = load_scenarios(scen_names)
    selection = parse_selectors(selectors, scenarios, "--evaluation")
    names = default_split()[split]
    rows = build_prompt_rows(scenarios, selection, names, groups)
    ref, tgt = groups
    twins = {r["pair_id"]: r for r in rows if r["group"] == ref}
    matched = [(r, twins[r["pair_id"]]) for r in rows if r["group"] == tgt and r["pair_id"] in twins]
    if max_pairs:
        step = max(1, len(matched) // max_pairs)  # spread over variations
        matched = matched[::step][:max_pairs]
    prompts = [chat_prompt(tok, r["user_prompt"]) for pair in matched for r in pair]
    answers = generate(model, tok, prompts, temperature=0.0, max_new_tokens=12, batch_size=batch_size, decoder="eager")
    ids = tok(prompts, add_special_tokens=False)["input_ids"]
    texts = [a[0] for a in answers]
    ans_ids = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    pairs, same = [], 0
    for i in range(len(matched)):
        t, r = 2 * i, 2 * i + 1
        if texts[t].strip() == texts[r].strip():
            same += 1
            if not keep_same:
                continue
        pairs.append(NamePair(ids[t], ids[r], ans_ids[t], ans_ids[r]))
    info = {"split": split, "variations": [f"{s}/{v}" for s, v in selection], "pairs_built": len(matched),
            "pairs_same_answer": same, "same_answer_kept": keep_same, "pairs": len(pairs),
            "examples": [{"target": matched[i][0]["name"], "reference": matched[i][1]["name"],
                          "variation": matched[i][0]["variation"], "answers": [texts[2 * i], texts[2 * i + 1]]}
                         for i in range(min(6, len(matched)))]}  # fmt: skip
    return pairs, info


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plant", help="model id whose last plant is localized")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--evaluation", default="purchase", help="comma-separated scenario or scenario/variation selectors")
    parser.add_argument("--units", choices=("auto", "heads", "neurons"), default="auto")
    parser.add_argument("--budget", type=int, default=0, help="units the search may pick (0: the planted count)")
    parser.add_argument("--target-fraction", type=float, default=0.9)
    parser.add_argument("--shortlist", type=int, default=256, help="neurons: first-order shortlist ablated for real")
    parser.add_argument("--pool", type=int, default=64)
    parser.add_argument("--max-pairs", type=int, default=60)
    parser.add_argument("--keep-same", action="store_true", help="keep pairs whose two answers are equal (smoke tests)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    out: dict = {"plant": args.plant, "device": args.device,
                 "accelerator": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"}  # fmt: skip

    truth = planted_units(resolve_plant(plant_chain(args.plant)[1][-1], args.plant))
    model = load_model(args.plant, dtype=args.dtype, device=args.device, attn_implementation="eager")
    tok = load_tokenizer(args.plant)
    layout = resolve_units(model, NEURON_MODULE_CHOICES)
    t0 = time.perf_counter()
    pairs, out["pairs"] = name_pairs(model, tok, args.evaluation.split(","), max_pairs=args.max_pairs, batch_size=args.batch_size,
                                   keep_same=args.keep_same)
    out["pairs"]["wall_s"] = round(time.perf_counter() - t0, 1)
    if not pairs:
        raise SystemExit(f"no pair with two different answers: {out['pairs']}")

    t0 = time.perf_counter()
    trace = causal_trace(model, pairs, batch_size=max(1, args.batch_size // 4))
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    sync()
    n_layers = len(trace.effect["resid"])
    with (args.out / "trace.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["stage", "layer", "effect", "share", "answer_change"])
        for s in STAGES:
            for L in range(n_layers):
                w.writerow([s, L, f"{float(trace.effect[s][L]):.6g}", f"{float(trace.share(s)[L]):.4f}",
                            f"{float(trace.answer_change[s][L]):.6g}"])  # fmt: skip
    pointed = pointed_layers(trace, ("attn", "mlp"), share=0.8)
    out["trace"] = {"total_gap": trace.total, "n_pairs": trace.n_pairs, "wall_s": round(time.perf_counter() - t0, 1),
                    "pointed_layers": pointed, "pointed_attn": pointed_layers(trace, ("attn",)),
                    "pointed_mlp": pointed_layers(trace, ("mlp",)),
                    "share": {s: [round(float(v), 4) for v in trace.share(s)] for s in STAGES}}  # fmt: skip

    units = args.units if args.units != "auto" else ("heads" if any(k.startswith("head/") for k in truth) else "neurons")
    if units == "heads":
        search_layout, planted_count = resolve_units(model), sum(len(v) for k, v in truth.items() if k.startswith("head/"))
        kwargs = {"shortlist": None}
    else:
        search_layout = resolve_units(model, ("gate_proj",))
        planted_count = sum(len(v) for k, v in truth.items() if k.endswith("gate_proj"))
        kwargs = {"shortlist": args.shortlist}
    budget = args.budget or planted_count
    t0 = time.perf_counter()
    res = causal_search(model, search_layout, pairs, units=units, budget=budget, target_fraction=args.target_fraction,
                        pool=args.pool, batch_size=args.batch_size, **kwargs)  # fmt: skip
    sync()
    masks = res.keep_masks()
    save_masks(args.out / "search_masks.safetensors", masks, {"source": f"causal search ({units}) on {args.plant}"})
    planted_mask = truth_keep_masks(truth, layout.sizes())
    pr = unit_precision_recall(masks, truth, layout)
    out["search"] = {
        "units": units, "budget": budget, "planted_count": planted_count, "stopped": res.stopped,
        "baseline_gap": res.baseline, "picked": [list(u) for u in res.selected()], "remaining": res.remaining(),
        "evaluations": res.evaluations, "gradient_passes": res.gradient_passes, "wall_s": round(time.perf_counter() - t0, 1),
        "precision_recall": pr,
        "layer_share_picks": vars(layer_share(masks, layout, pointed)),
        "layer_share_planted": vars(layer_share(planted_mask, layout, pointed)),
    }  # fmt: skip
    (args.out / "causal.json").write_text(json.dumps(_clean(out), indent=2) + "\n")

    print(f"pairs: {out['pairs']['pairs']} ({out['pairs']['pairs_same_answer']} with equal answers{'' if args.keep_same else ' dropped'}) on {len(out['pairs']['variations'])} variations")
    print(f"trace: mean gap {trace.total:.3f} over {trace.n_pairs} pairs ({out['trace']['wall_s']} s); layers pointed to"
          f" (attn {out['trace']['pointed_attn']}, mlp {out['trace']['pointed_mlp']})")  # fmt: skip
    for s in STAGES:
        print(f"  {s:<6}" + " ".join(f"{float(v):5.2f}" for v in trace.share(s)))
    planted_layers = sorted({layout.head(k[5:]).layer if k.startswith("head/") else layout.neuron(k[7:]).layer for k in truth})
    print(f"planted units in layers {planted_layers}; share of them in the pointed layers:"
          f" {out['search']['layer_share_planted']['share']:.2f}")  # fmt: skip
    print(f"search ({units}, budget {budget}): {len(res.steps)} picks, stopped: {res.stopped}, gap {res.baseline:.3f} ->"
          f" {res.steps[-1].metric if res.steps else res.baseline:.3f}; {res.evaluations} evaluations,"
          f" {res.gradient_passes} gradient passes, {out['search']['wall_s']} s")  # fmt: skip
    for kind, s in pr.items():
        print(f"  {kind:<11} precision {s['precision']:.3f} recall {s['recall']:.3f} (chance {s['chance']:.4f};"
              f" {s['n_hits']} of {s['n_pruned']} picks, {s['n_truth']} planted)")  # fmt: skip
    print(f"  picks in the pointed layers: {out['search']['layer_share_picks']['share']:.2f}")


if __name__ == "__main__":
    main()
