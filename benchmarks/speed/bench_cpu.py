"""The embedded model on a CPU: load times, scoring speed and batched generation, each side by side.

    python -m benchmarks.speed.bench_cpu [--out cpu.json]

* load: the first load of ``embedded:SmolLM2-135M-Instruct`` (GGUF dequantization and conversion, in a
  fresh cache directory) against a load of the converted, cached checkpoint;
* scoring: ``score_batch`` over the quickstart's 60 scoring examples (real greedy responses) in batches
  of 8, against the same examples one at a time; examples/s, tokens/s and peak resident memory;
* generation: the quickstart's sampled answers (k per prompt, T = 1, 24 new tokens) in batches of 30
  prompts by today's eager decoder (before the static path), the eager decoder of ``generate``, and its static
  decoder with whole prompts and with the batch's common prefix prefilled once, interleaved batch by batch
  (``--rounds``; ``--profile`` adds the top operators of today's eager and the static decoder); the matrix
  products alone, with whole prompts and with a shared prefix; and one Hugging Face ``generate`` call per
  answer on a few prompts.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.helpers.common import Report, print_table
from benchmarks.helpers.legacy_generation import legacy_generate
from biasprune.answers.generation import generate
from biasprune.answers.prefix import PromptBatch
from biasprune.datamodules import AuditDataModule
from biasprune.models import loading as models
from biasprune.models.architectures import resolve_units
from biasprune.models.loading import DEFAULT_MODEL, load_model, load_tokenizer
from biasprune.scoring.gradxact import score_batch

QUICKSTART = ["purchase/car", "purchase/bicycle", "purchase/piano"]


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench_load(report: Report) -> None:
    with report.section("load") as rec:
        tmp = Path(tempfile.mkdtemp(prefix="biasprune-cache-"))
        old = models.os.environ.get("BIASPRUNE_CACHE")
        models.os.environ["BIASPRUNE_CACHE"] = str(tmp)
        try:
            t = time.perf_counter()
            load_model(DEFAULT_MODEL), load_tokenizer(DEFAULT_MODEL)
            rec["cold_s"] = time.perf_counter() - t
            t = time.perf_counter()
            load_model(DEFAULT_MODEL), load_tokenizer(DEFAULT_MODEL)
            rec["cached_s"] = time.perf_counter() - t
        finally:
            if old is None:
                models.os.environ.pop("BIASPRUNE_CACHE")
            else:
                models.os.environ["BIASPRUNE_CACHE"] = old
            shutil.rmtree(tmp, ignore_errors=True)
        rec["ratio"] = rec["cold_s"] / rec["cached_s"]
        print_table(
            "model load (model + tokenizer)",
            [rec],
            [("cold_s", "cold s"), ("cached_s", "cached s"), ("ratio", "cold / cached")],
        )


def bench_scoring(report: Report, model, tok) -> None:
    dm = AuditDataModule(scoring=QUICKSTART, evaluation=QUICKSTART, batch_size=8)
    dm.setup("fit")
    prompts = list(dm.scoring_prompts["prompt"])
    responses = generate(model, tok, prompts, num_samples=1, temperature=0.0, max_new_tokens=24, batch_size=30)
    dm.set_scoring_examples(
        [
            {k: r[k] for k in ("group", "scenario", "variation", "name", "prompt")} | {"response": resp[0]}
            for r, resp in zip(dm.scoring_prompts, responses)
        ]
    )
    layout = resolve_units(model)
    batches = list(dm.train_dataloader())
    n_ex = sum(int(b["weight"].sum()) for b in batches)
    n_tok = sum(int(b["attention_mask"].sum()) for b in batches)
    rows = []
    with report.section("scoring") as rec:
        score_batch(
            model,
            layout,
            batches[0]["input_ids"][:1],
            batches[0]["attention_mask"][:1],
            batches[0]["response_mask"][:1],
        )
        t = time.perf_counter()
        for b in batches:
            score_batch(model, layout, b["input_ids"], b["attention_mask"], b["response_mask"])
        batched = time.perf_counter() - t
        t = time.perf_counter()
        for b in batches:
            for i in range(b["input_ids"].shape[0]):
                L = int(b["attention_mask"][i].sum())
                score_batch(
                    model,
                    layout,
                    b["input_ids"][i : i + 1, :L],
                    b["attention_mask"][i : i + 1, :L],
                    b["response_mask"][i : i + 1, :L],
                )
        single = time.perf_counter() - t
        for name, s in (("ours, batches of 8", batched), ("one example at a time", single)):
            rows.append({"method": name, "s": s, "examples_s": n_ex / s, "tokens_s": n_tok / s})
        rec.update(examples=n_ex, tokens=n_tok, rows=rows, speedup=single / batched, peak_rss_gib=peak_rss_gib())
    print_table(
        f"scoring {n_ex} examples ({n_tok} tokens), {len(layout.keys())} unit groups; peak RSS {peak_rss_gib():.2f} GiB",
        rows,
        [("method", "method"), ("s", "s"), ("examples_s", "examples/s"), ("tokens_s", "tokens/s")],
    )


def _rows(table) -> list[dict]:
    """Rows of a DataModule table, whether a list of dicts or a ``datasets.Dataset``."""
    return list(table) if isinstance(table, list) else [dict(r) for r in table]


def _profile_top(fn, limit: int = 12) -> list[dict]:
    """The ``limit`` operators with the most self CPU time while ``fn()`` runs (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [
        {"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "share": e.self_cpu_time_total / total, "calls": e.count}
        for e in events[:limit]
    ]


def _matmul_floor(model, tok, batches: list[list[str]], samples: int, steps: int, share: bool = True) -> float:
    """Seconds for the decode's matrix products alone: every linear layer (and the LM head) on the prefill
    tokens of each batch and on ``len(batch) * samples`` rows for ``steps`` steps, with the model's weights.
    The prefill tokens are those the decoders compute: with ``share``, the batch's common prefix once and each
    prompt's left-padded remainder (:class:`biasprune.answers.prefix.PromptBatch`); else the whole padded batch.

    Every answer is counted at full length, so this is the least time any decoder of these answers can take
    with these matrix products (at most slightly more than the real work when some answers stop early).
    """
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    head = model.get_output_embeddings()
    inputs: dict[tuple[int, int], torch.Tensor] = {}

    def x(rows: int, width: int) -> torch.Tensor:
        if (rows, width) not in inputs:
            inputs[rows, width] = torch.randn(rows, width, dtype=head.weight.dtype)
        return inputs[rows, width]

    start = time.perf_counter()
    with torch.no_grad():
        for ps in batches:
            batch = PromptBatch.from_token_lists(tok(ps, add_special_tokens=False)["input_ids"], 0, share)
            for n_tokens in (batch.prefix_len, batch.rest.numel()):
                if n_tokens:
                    for lin in linears:
                        torch.nn.functional.linear(x(1 if lin is head else n_tokens, lin.in_features), lin.weight)
            for _ in range(steps - 1):
                for lin in linears:
                    torch.nn.functional.linear(x(len(ps) * samples, lin.in_features), lin.weight)
    return time.perf_counter() - start


def _quickstart_rows(rows: list[dict], per_group: int) -> list[dict]:
    """The first ``per_group`` evaluation rows of each group in each variation (the quickstart's 20 names)."""
    seen: dict[tuple, int] = {}
    out = []
    for r in rows:
        cell = (r["scenario"], r["variation"], r["group"])
        seen[cell] = seen.get(cell, 0) + 1
        if seen[cell] <= per_group:
            out.append(r)
    return out


def bench_generation(
    report: Report,
    model,
    tok,
    samples: int,
    loop_prompts: int,
    rounds: int,
    profile: bool,
    names_per_group: int = 10,
    max_new_tokens: int = 24,
) -> None:
    """The quickstart's evaluation answers (3 variations x 20 names x ``samples``, T = 1) by three decoders.

    Each batch of 30 prompts is answered by every decoder in turn (the order rotates every round), ``rounds``
    times; a decoder's time is the sum over batches of its fastest round, so a burst of load from other
    processes on a shared machine inflates no single decoder. ``today's eager`` is the decoder as it was
    before the static path (benchmarks/helpers/legacy_generation.py).
    """
    dm = AuditDataModule(scoring=QUICKSTART, evaluation=QUICKSTART)
    dm.setup("validate")
    rows = _quickstart_rows(_rows(dm.eval_set), names_per_group)
    prompts = [r["prompt"] for r in rows]
    keys = [r.get("key") or f"{r['scenario']}/{r['variation']}/{r['name']}" for r in rows]
    kw = dict(num_samples=samples, temperature=1.0, max_new_tokens=max_new_tokens, batch_size=30, seed=0)
    methods = {
        "today's eager (3db4ce5)": lambda ps, ks: legacy_generate(model, tok, ps, **kw),
        "eager (shared prefix)": lambda ps, ks: generate(model, tok, ps, keys=ks, decoder="eager", **kw),
        "static, whole prompts": lambda ps, ks: generate(model, tok, ps, keys=ks, decoder="static", share_prefix=False, **kw),
        "static (shared prefix)": lambda ps, ks: generate(model, tok, ps, keys=ks, decoder="static", **kw),
    }
    names = list(methods)
    batches = [(prompts[i : i + 30], keys[i : i + 30]) for i in range(0, len(prompts), 30)]
    wall = {m: [[] for _ in batches] for m in names}
    cpu = {m: [[] for _ in batches] for m in names}
    answers: dict[str, list] = {m: [] for m in names}
    with report.section("generation") as rec:
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for b, (ps, ks) in enumerate(batches):
                for m in order:
                    t, c = time.perf_counter(), time.process_time()
                    out = methods[m](ps, ks)
                    wall[m][b].append(time.perf_counter() - t)
                    cpu[m][b].append(time.process_time() - c)
                    if r == 0:
                        answers[m].extend(out)
                    print(f"round {r} batch {b} {m}: {wall[m][b][-1]:.1f} s", flush=True)
        n_answers = len(prompts) * samples
        table = []
        for m in names:
            best = sum(min(x) for x in wall[m])
            table.append(
                {
                    "method": m,
                    "answers": n_answers,
                    "s": best,
                    "s_median_round": sum(statistics.median(x) for x in wall[m]),
                    "cpu_s": sum(min(x) for x in cpu[m]),
                    "answers_s": n_answers / best,
                }
            )
        bounds = {}
        for share, label in ((False, "matrix products alone, whole prompts"), (True, "matrix products alone, shared prefix")):
            bounds[share] = min(
                _matmul_floor(model, tok, [ps for ps, _ in batches], samples, max_new_tokens, share) for _ in range(rounds)
            )
            table.append({"method": label, "answers": n_answers, "s": bounds[share]})
        floor = bounds[True]
        base = table[0]["s"]
        for row in table:
            row["speedup"] = base / row["s"]
        static = table[names.index("static (shared prefix)")]
        same = sum(a == b for a, b in zip(answers["eager (shared prefix)"], answers["static (shared prefix)"]))
        rec.update(
            floor_s=floor,
            max_speedup=base / floor,
            rows=table,
            rounds=rounds,
            static_vs_today=static["speedup"],
            same_answer_lists=same,
            prompts=len(prompts),
            threads=torch.get_num_threads(),
            load_average=os.getloadavg(),
        )
        print_table(
            f"quickstart answers ({len(prompts)} prompts x k={samples}, {max_new_tokens} new tokens, T=1; best of"
            f" {rounds} interleaved rounds per batch)",
            table,
            [
                ("method", "method"),
                ("answers", "answers"),
                ("s", "s"),
                ("s_median_round", "s (median round)"),
                ("cpu_s", "CPU s"),
                ("answers_s", "answers/s"),
                ("speedup", "x today's eager"),
            ],
        )
        print(
            f"static vs today's eager: {rec['static_vs_today']:.2f}x (at most {rec['max_speedup']:.2f}x: the matrix"
            f" products alone take {floor:.1f} s with a shared prefix); eager and static (shared prefix) gave the"
            f" same answers for {same} of {len(prompts)} prompts; load average {rec['load_average'][0]:.1f}"
        )
        if profile:
            ps, ks = batches[0]
            rec["profile"] = {m: _profile_top(lambda m=m: methods[m](ps, ks)) for m in (names[0], names[-1])}
            for m, top in rec["profile"].items():
                print_table(
                    f"profile, one batch of {len(ps)} prompts: {m}",
                    top,
                    [("op", "op"), ("self_s", "self s"), ("share", "share"), ("calls", "calls")],
                )
        if loop_prompts > 0:
            t = time.perf_counter()
            for p in prompts[:loop_prompts]:
                enc = tok(p, return_tensors="pt", add_special_tokens=False)
                for _ in range(samples):
                    model.generate(
                        **enc,
                        do_sample=True,
                        temperature=1.0,
                        max_new_tokens=max_new_tokens,
                        pad_token_id=tok.pad_token_id,
                    )
            s = time.perf_counter() - t
            rec["hf_loop"] = {"answers": loop_prompts * samples, "s": s, "answers_s": loop_prompts * samples / s}
            print(
                f"HF generate, 1 answer/call: {rec['hf_loop']['answers_s']:.2f} answers/s"
                f" (static: {static['answers_s'] / rec['hf_loop']['answers_s']:.0f}x)"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write every figure to this JSON file")
    parser.add_argument("--samples", type=int, default=10, help="answers per prompt")
    parser.add_argument("--loop-prompts", type=int, default=2, help="prompts answered by the one-answer-per-call loop")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the generation comparison")
    parser.add_argument("--profile", action="store_true", help="also profile one generation batch per decoder")
    parser.add_argument("--names-per-group", type=int, default=10, help="generation: test names per group and variation")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="generation: tokens per answer")
    parser.add_argument(
        "--sections", default="load,scoring,generation", help="comma-separated subset of load,scoring,generation"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (default 0: torch's choice, one per core)"
    )
    args = parser.parse_args(argv)
    if args.threads > 0:  # on a machine shared with other jobs, 1 thread avoids stalls at every op's barrier
        torch.set_num_threads(args.threads)
    sections = set(args.sections.split(","))
    report = Report(args.out, threads=torch.get_num_threads())
    if "load" in sections:
        bench_load(report)
    model, tok = load_model(DEFAULT_MODEL), load_tokenizer(DEFAULT_MODEL)
    if "scoring" in sections:
        bench_scoring(report, model, tok)
    if "generation" in sections:
        bench_generation(report, model, tok, args.samples, args.loop_prompts, args.rounds, args.profile,
                         args.names_per_group, args.max_new_tokens)
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
