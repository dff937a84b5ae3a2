"""The causal search on the Llama-3-8B shape (random weights) on one GPU, and the paper study projected with it.

    python -m benchmarks.speed.bench_causal --out DIR/causal_8b.json      # one GPU, about 1-2 minutes
    python -m benchmarks.speed.bench_causal --tiny --out DIR/causal.json  # the same path on a CPU in seconds

Timed on n_p random name-swapped pairs (prompts of ``prompt_len`` tokens with a name of 2 tokens, answers of
``answer_len`` tokens: 4·n_p sequences; :mod:`biasprune.localize.pairs`):

* ``t_eval``: seconds per evaluation of the gap M (one forward pass without gradients over the 4·n_p sequences,
  answer-position logits only) with one head zeroed: the unit cost of the heads search and of the ``causal``
  objective's heads (median of ``iters``);
* ``t_grad``: seconds of the neurons' first-order pass (one forward and one backward over the 4·n_p sequences for
  every MLP/attention projection at once, plus one evaluation; ``pair_effects(..., heads=False)``);
* ``t_s``: seconds per grad×act scoring example (``score_batch``, batches of 8, prompt + answer): the default
  method's unit cost, measured here on the same model for the ratio;
* a check: a real ``causal_search`` (heads, the first ``check_layers`` layers, budget 3, pool 8) against its
  own count of evaluations × t_eval.

The projection (the paper's design of :data:`benchmarks.speed.study_budget.PAPER`: V_s·P_s = 760 scoring
examples, i.e. E_p = 380 name-swapped pairs) replaces grad×act scoring by the causal objective
(``--model.objective causal``: every head ablated alone, neurons first order, per batch of n_p pairs)::

    T_causal  = (E_p / n_p) · ((1 + H) · t_eval + t_grad) + E_s · t_r
    T_gradxact = E_s · (t_r + t_s)
    T_study   = T_eval + T_causal                 (T_eval: the study's answers, unchanged by the method)

with H = 1,024 heads. The greedy stage of ``causal_search`` (re-measured picks on all pairs of a pool) adds at
most Σ_{t=1..b−1} (P − t) evaluations over that pool's pairs per search; :func:`project` reports it for budget b
and pool P per strategy pool. t_r (seconds per greedy target response) and T_eval are not measured here: they are
the H200 figures of docs/benchmarks.md ("Paper-scale study budget", t_a = 1.72e-3 s, t_p = 1.69e-3 s,
t_r = 0.0151 s), flags ``--t-a``, ``--t-p``, ``--t-r``; on another card they are indicative only.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from benchmarks.helpers.common import (
    Report,
    SizeFlag,
    add_size_flags,
    base_parser,
    build_model,
    env_info,
    fill_defaults,
    peak_gib,
    print_table,
    reset_peak,
    resolve_setup,
    sync,
    time_fn,
)
from benchmarks.speed.study_budget import PAPER
from benchmarks.speed.study_budget import project as project_study
from biasprune.localize.causal import causal_search
from biasprune.localize.objective import pair_effects
from biasprune.localize.pairs import NamePair, ablate, answer_logprobs, pair_sequences
from biasprune.models.architectures import UnitLayout, resolve_units
from biasprune.scoring.gradxact import score_batch

__all__ = ["SIZES", "main", "project", "random_pairs"]

SIZES = {
    "pairs": SizeFlag("name-swapped pairs per batch (4 sequences each; 8: about 27 GB of activations kept for the neurons' backward on the 8B shape)", 8, 2),
    "prompt_len": SizeFlag("prompt tokens (chat-rendered Purchase prompts are about 80-100)", 90, 12),
    "answer_len": SizeFlag("answer tokens", 4, 2),
    "iters": SizeFlag("timed repeats of one evaluation", 5, 2),
    "check_layers": SizeFlag("layers whose heads the end-to-end search check ablates", 1, 1),
}
#: Greedy stage of one search, as in docs/method.md ("Causal localization"): budget b, pool P.
GREEDY = {"budget": 4, "pool": 64}


def random_pairs(n: int, prompt_len: int, answer_len: int, vocab: int, seed: int) -> list[NamePair]:
    """``n`` pairs of random tokens: a shared prompt with a 2-token name that differs, two different answers."""
    g = torch.Generator().manual_seed(seed)

    def toks(k: int) -> tuple[int, ...]:
        return tuple(torch.randint(10, vocab, (k,), generator=g).tolist())

    pairs = []
    for _ in range(n):
        pre, post = toks(prompt_len // 3), toks(prompt_len - prompt_len // 3 - 2)
        pairs.append(NamePair(pre + toks(2) + post, pre + toks(2) + post, toks(answer_len), toks(answer_len)))
    return pairs


def project(t_eval: float, t_grad: float, t_s: float, n_pairs: int, n_heads: int, t_a: float, t_p: float, t_r: float,
            design: dict[str, int] = PAPER, greedy: dict[str, int] = GREEDY) -> dict[str, float]:
    """The paper study's time with the causal objective instead of grad×act scoring (module docstring), seconds."""
    study = project_study(t_a, t_p, t_r, t_s, design)
    e_s = study["E_s"]
    e_p = e_s / 2
    batches = e_p / n_pairs
    heads = batches * (1 + n_heads) * t_eval
    neurons = batches * t_grad
    causal = heads + neurons + e_s * t_r
    b, pool = greedy["budget"], greedy["pool"]
    greedy_evals = sum(pool - t for t in range(1, b))
    # one greedy search per strategy pool and unit kind: its evaluations run over that pool's pairs, at most all E_p
    greedy_s = design["S"] * design["U"] * greedy_evals * (e_p / n_pairs) * t_eval
    return {"E_s": e_s, "E_p": e_p, "T_eval": study["T_eval"], "T_gradxact": study["T_scoring"], "T_causal_heads": heads,
            "T_causal_neurons": neurons, "T_causal": causal, "T_greedy_max": greedy_s,
            "T_study_gradxact": study["T"], "T_study_causal": study["T_eval"] + causal,
            "ratio_scoring": causal / study["T_scoring"] if study["T_scoring"] else float("nan")}  # fmt: skip


def _heads_only(layout: UnitLayout, layers: int) -> UnitLayout:
    return UnitLayout(neurons=(), heads=tuple(h for h in layout.heads if h.layer < layers))


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    add_size_flags(parser, SIZES)
    parser.add_argument("--t-a", type=float, default=1.72e-3, help="s per unpruned answer (docs/benchmarks.md, H200)")
    parser.add_argument("--t-p", type=float, default=1.69e-3, help="s per pruned answer (docs/benchmarks.md, H200)")
    parser.add_argument("--t-r", type=float, default=0.0151, help="s per greedy target response (docs/benchmarks.md, H200)")
    args = parser.parse_args(argv)
    fill_defaults(args, SIZES)
    setup = resolve_setup(args)
    report = Report(args.out, env=env_info(setup), sizes={k: getattr(args, k) for k in SIZES})
    model = build_model(setup)
    layout = resolve_units(model)
    n_heads = sum(h.n_heads for h in layout.heads)
    pairs = random_pairs(args.pairs, args.prompt_len, args.answer_len, model.config.vocab_size, setup.seed + 1)
    seqs, n_answer = pair_sequences(pairs)
    with report.section("causal") as rec:
        rec.update(n_pairs=len(pairs), sequences=len(seqs), n_heads=n_heads, n_layers=model.config.num_hidden_layers)
        h = layout.heads[0]
        prune = {f"head/{h.path}": torch.arange(h.n_heads) == 0}

        def evaluate():
            with torch.no_grad(), ablate(model, layout, prune):
                return answer_logprobs(model, seqs, n_answer, batch_size=len(seqs))

        reset_peak(setup.device)
        times = time_fn(evaluate, setup.device, iters=args.iters, warmup=1)
        rec["t_eval"] = statistics.median(times)
        rec["peak_gib_eval"] = peak_gib(setup.device)
        reset_peak(setup.device)
        sync(setup.device)
        times = time_fn(lambda: pair_effects(model, layout, pairs, neurons=True, heads=False), setup.device, iters=1, warmup=1)
        rec["t_grad"] = times[0]
        rec["peak_gib_grad"] = peak_gib(setup.device)
        # grad x act scoring of the same sequences (target prompt + its answer), batches of 8
        ids = torch.tensor([p.target + p.target_answer for p in pairs][:8], device=setup.device)
        attn = torch.ones_like(ids)
        resp = torch.zeros_like(ids)
        resp[:, -args.answer_len :] = 1
        times = time_fn(lambda: score_batch(model, layout, ids, attn, resp), setup.device, iters=max(1, args.iters // 2), warmup=1)
        rec["t_s"] = statistics.median(times) / len(ids)
        # end to end: a real heads search on the first layers, against evaluations x t_eval
        sub = _heads_only(layout, args.check_layers)
        sync(setup.device)
        start = time.perf_counter()
        search = causal_search(model, sub, pairs, "heads", budget=3, pool=8, batch_size=len(seqs))
        sync(setup.device)
        rec["check"] = {"heads": sum(h.n_heads for h in sub.heads), "evaluations": search.evaluations,
                        "wall_s": time.perf_counter() - start, "predicted_s": search.evaluations * rec["t_eval"]}  # fmt: skip
        rec["projection"] = project(rec["t_eval"], rec["t_grad"], rec["t_s"], len(pairs), n_heads, args.t_a, args.t_p, args.t_r)
        rec["per_pair"] = {"heads_s": (1 + n_heads) * rec["t_eval"] / len(pairs), "neurons_s": rec["t_grad"] / len(pairs)}
    report.save()
    if "projection" in rec:
        p = rec["projection"]
        print_table("causal search timing and the paper study with it", [
            {"piece": "t_eval: s per evaluation of M (4 x pairs sequences, one head zeroed)", "value": rec["t_eval"]},
            {"piece": "t_grad: s per neurons' first-order pass", "value": rec["t_grad"]},
            {"piece": "t_s: s per grad x act scoring example", "value": rec["t_s"]},
            {"piece": f"check: search over {rec['check']['heads']} heads, {rec['check']['evaluations']} evaluations, s",
             "value": rec["check"]["wall_s"]},
            {"piece": "check: predicted (evaluations x t_eval), s", "value": rec["check"]["predicted_s"]},
            {"piece": "causal objective per pair: heads, s", "value": rec["per_pair"]["heads_s"]},
            {"piece": "T scoring, grad x act (responses + scores), min", "value": p["T_gradxact"] / 60},
            {"piece": "T scoring, causal (heads + neurons + responses), min", "value": p["T_causal"] / 60},
            {"piece": "  of which heads, min", "value": p["T_causal_heads"] / 60},
            {"piece": "greedy stage, at most, min", "value": p["T_greedy_max"] / 60},
            {"piece": "T study, grad x act, min", "value": p["T_study_gradxact"] / 60},
            {"piece": "T study, causal objective, min", "value": p["T_study_causal"] / 60},
            {"piece": "causal / grad x act scoring", "value": p["ratio_scoring"]},
        ], [("piece", "piece"), ("value", "value")])  # fmt: skip
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
