"""A reduced study-shaped run on the benchmark model, and the paper-scale budget projected from it.

The pieces of a study that cost time, each timed once on the study's own shapes:

* ``t_a``: seconds per sampled answer, evaluating one variation (``study_prompts`` prompts x k answers of m
  tokens, ``study_rows`` sequences per batch) with the static decoder, unpruned;
* ``t_p``: the same with pruning masks applied as hooks (10% of every neuron module, 40 heads);
* ``t_today``: the same, unpruned, with today's eager decoder (benchmarks/helpers/legacy_generation.py);
* ``t_r``: seconds per greedy target response (one per scoring example, m tokens);
* ``t_s``: seconds per scoring example (gradient x activation over prompt + response, batches of 8).

The paper-scale design (:data:`PAPER`): V variations evaluated, with test prompts P_t = 2 x test names per
group and dev prompts P_d = 2 x dev names per group, k answers each; S strategies x U unit kinds; a G-point
p/q grid on dev names; R random-control draws per pruned arm on test; V_s variations scored (the evaluated
ones plus the other scenarios' for cross-context), E_s = V_s x P_s scoring examples. Then::

    A_u = V k (P_t + P_d)                                 unpruned answers (test, dev)
    A_p = V k (P_t S U (1 + R) + P_d S U G)              pruned and random-control answers
    T   = A_u t_a + A_p t_p + E_s (t_r + t_s)             (masks and statistics: seconds, left out)

Every answer here runs to m tokens (no stop token), so T is an upper bound for a model that stops early.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from benchmarks.helpers.common import SizeFlag, sync
from benchmarks.helpers.legacy_generation import legacy_generate
from biasprune.answers.generation import generate
from biasprune.models.architectures import resolve_units
from biasprune.pruning.masks import apply_masks
from biasprune.scoring.gradxact import score_batch

__all__ = ["PAPER", "STUDY_SIZES", "project", "study_section"]

STUDY_SIZES = {
    "study_prompts": SizeFlag("study run: prompts of the evaluated variation (0 skips the study run)", 40, 4),
    "study_samples": SizeFlag("study run: answers per prompt", 100, 5),
    "study_rows": SizeFlag("study run: sequences per decode batch", 640, 20),
    "study_examples": SizeFlag("study run: scoring examples (greedy responses, then scores)", 40, 4),
}

PAPER = {
    "V": 10,  # evaluated variations (Purchase)
    "P_t": 40,  # test prompts per variation: 20 names per group
    "P_d": 20,  # dev prompts per variation: 10 names per group
    "k": 100,  # answers per prompt
    "S": 3,  # strategies: prompt-specific, within-context, cross-context
    "U": 2,  # unit kinds: neurons, heads
    "G": 9,  # 3 x 3 p/q grid, on dev names
    "R": 1,  # random-control draws per pruned arm, on test
    "V_s": 19,  # scored variations: 10 Purchase + 3 x 3 of Finance, Activity, Service
    "P_s": 40,  # scoring examples per scored variation: 20 scoring names per group
}


def project(t_a: float, t_p: float, t_r: float, t_s: float, design: dict[str, int] = PAPER) -> dict[str, float]:
    """The projected budget (seconds) of ``design`` from the per-piece times (see the module docstring)."""
    d = design
    a_u = d["V"] * d["k"] * (d["P_t"] + d["P_d"])
    a_p = d["V"] * d["k"] * (d["P_t"] * d["S"] * d["U"] * (1 + d["R"]) + d["P_d"] * d["S"] * d["U"] * d["G"])
    e_s = d["V_s"] * d["P_s"]
    t_eval = a_u * t_a + a_p * t_p
    t_scoring = e_s * (t_r + t_s)
    return {"A_u": a_u, "A_p": a_p, "E_s": e_s, "T_eval": t_eval, "T_scoring": t_scoring, "T": t_eval + t_scoring}


def _timed(fn, device: torch.device) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def _random_masks(layout, share: float, heads: int, seed: int) -> dict[str, torch.Tensor]:
    """Keep-masks pruning ``share`` of every neuron module and ``heads`` heads over the model, at random."""
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for u in layout.neurons:
        keep = torch.ones(u.size, dtype=torch.uint8)
        keep[torch.randperm(u.size, generator=g)[: int(share * u.size)]] = 0
        masks[f"neuron/{u.path}"] = keep
    flat = torch.randperm(sum(h.size for h in layout.heads), generator=g)[:heads].tolist()
    offset = 0
    for h in layout.heads:
        keep = torch.ones(h.size, dtype=torch.uint8)
        keep[[i - offset for i in flat if offset <= i < offset + h.size]] = 0
        masks[f"head/{h.path}"] = keep
        offset += h.size
    return masks


def study_section(report, args, setup, model, tokenizer, make_prompts, static_tok_s, today_tok_s) -> list[dict]:
    """Time the study's pieces (``report`` section ``study``) and return the projection's table rows."""
    if args.study_prompts <= 0:
        return []
    rows: list[dict] = []
    with report.section("study") as rec:
        k, m, dev = args.study_samples, args.max_new_tokens, setup.device
        vocab = model.config.vocab_size
        prompts = make_prompts(args.study_prompts, args.prompt_len, vocab, setup.seed + 7)
        kw = dict(num_samples=k, temperature=1.0, max_new_tokens=m, batch_size=max(1, args.study_rows // k), seed=0)
        n_answers = len(prompts) * k
        t, _ = _timed(lambda: generate(model, tokenizer, prompts, decoder="static", **kw), dev)
        rec["t_a"] = t / n_answers
        layout = resolve_units(model)
        masks = _random_masks(layout, 0.10, 40, setup.seed)
        with apply_masks(model, layout, masks):
            t, _ = _timed(lambda: generate(model, tokenizer, prompts, decoder="static", **kw), dev)
        rec["t_p"] = t / n_answers
        t, _ = _timed(lambda: legacy_generate(model, tokenizer, prompts, **kw), dev)
        rec["t_today"] = t / n_answers
        examples = make_prompts(args.study_examples, args.prompt_len, vocab, setup.seed + 11)
        greedy = dict(num_samples=1, temperature=0.0, max_new_tokens=m, batch_size=len(examples))
        t, responses = _timed(lambda: generate(model, tokenizer, examples, **greedy), dev)
        rec["t_r"] = t / len(examples)
        rec["t_s"] = _score_time(model, layout, tokenizer, examples, [r[0] for r in responses], dev) / len(examples)
        measured = project(rec["t_a"], rec["t_p"], rec["t_r"], rec["t_s"])
        today = project(rec["t_today"], rec["t_today"], rec["t_r"], rec["t_s"])
        rec.update(design=PAPER, projection=measured, projection_today=today, answers_timed=n_answers)
        d = PAPER
        formula = (
            f"T = A_u t_a + A_p t_p + E_s (t_r + t_s); A_u = V k (P_t + P_d) = {measured['A_u']:,};"
            f" A_p = V k (P_t S U (1+R) + P_d S U G) = {measured['A_p']:,}; E_s = V_s P_s = {measured['E_s']:,}"
            f" with V={d['V']}, k={d['k']}, P_t={d['P_t']}, P_d={d['P_d']}, S={d['S']}, U={d['U']}, G={d['G']},"
            f" R={d['R']}, V_s={d['V_s']}, P_s={d['P_s']}, m={m}"
        )
        rec["formula"] = formula
        print(formula)
        rows = [
            {"piece": "t_a: s per answer, static, unpruned", "value": rec["t_a"], "unit": "s"},
            {"piece": "t_p: s per answer, static, masks as hooks", "value": rec["t_p"], "unit": "s"},
            {"piece": "t_today: s per answer, today's eager", "value": rec["t_today"], "unit": "s"},
            {"piece": "t_r: s per greedy response", "value": rec["t_r"], "unit": "s"},
            {"piece": "t_s: s per scoring example", "value": rec["t_s"], "unit": "s"},
            {"piece": "answers A_u + A_p", "value": measured["A_u"] + measured["A_p"], "unit": "answers"},
            {"piece": "T_eval (static)", "value": measured["T_eval"] / 60, "unit": "min"},
            {"piece": "T_scoring (responses + scores)", "value": measured["T_scoring"] / 60, "unit": "min"},
            {"piece": "T projected, static", "value": measured["T"] / 60, "unit": "min"},
            {"piece": "T projected, today's eager", "value": today["T"] / 60, "unit": "min"},
        ]
    return rows


def _score_time(model, layout, tokenizer, prompts, responses, device, batch: int = 8) -> float:
    """Seconds to score ``prompts`` + ``responses`` (right-padded, batches of ``batch``), neurons and heads."""
    batches = []
    for start in range(0, len(prompts), batch):
        chunk = list(zip(prompts[start : start + batch], responses[start : start + batch]))
        rows = [tokenizer.encode(p) + tokenizer.encode(r) for p, r in chunk]
        n_resp = [len(tokenizer.encode(r)) for _, r in chunk]
        width = max(map(len, rows))
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        attn = torch.zeros_like(ids)
        resp = torch.zeros_like(ids)
        for i, (row, n) in enumerate(zip(rows, n_resp)):
            ids[i, : len(row)] = torch.tensor(row)
            attn[i, : len(row)] = 1
            resp[i, len(row) - n : len(row)] = 1
        batches.append((ids.to(device), attn.to(device), resp.to(device)))
    score_batch(model, layout, *batches[0])  # warm-up: the fused reduction compiles on first use
    total = 0.0
    for b in batches:
        t, _ = _timed(lambda b=b: score_batch(model, layout, *b), device)
        total += t
    return total
