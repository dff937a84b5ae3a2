"""Decoding on a Llama-3-8B-shaped model: today's eager decoder, the eager and static decoders, side by side.

* ``decoders``: ``prompts`` prompts (up to ``prompt_len`` tokens) x k answers x m new tokens, one batch of
  all prompts (``prompts * k`` sequences), answered by today's eager decoder (before the static path:
  benchmarks/helpers/legacy_generation.py), ``generate(decoder="eager")`` and ``generate(decoder="static")``
  (preallocated cache, CUDA graphs). New tokens/s, and the fraction of the decode compute bound: a new token
  costs at least 2 N FLOP (N = all parameters), so at the bf16 matmul rate R measured in the same run no
  decoder exceeds R / 2N tokens/s.
* ``agreement``: the share of answers (and of first tokens) that eager and static give under the same seed;
  bf16 logits differ in the last bits between the two attention kernels, so not all answers agree.
* ``two-sample``: static answers (seed + 1) against eager answers (seed): Kolmogorov-Smirnov on the
  per-answer mean log-probability of the drawn tokens under the model (teacher-forced; it moves with any
  change of temperature, nucleus or draw), and chi-square homogeneity of the first and of the last token of
  each answer (one token per answer, so the draws are independent), ids in 64 equal bins.
* ``profile``: one static run (all prompts, k answers, ``profile_tokens`` tokens) under torch.profiler: device
  time by category (GEMM, attention, the draw, copies, other) and the host time left over
  (benchmarks/helpers/profile_table.py), and the top kernels.
* ``hf loop``: one ``model.generate`` call per answer, batch 1 (the paper authors' way), on a few prompts.
* ``study``: a reduced study-shaped run, timed piece by piece (benchmarks/speed/study_budget.py), and the
  projection of the paper-scale design from it (the formula is printed).

The weights are random, so the text is noise. No token stops an answer (the EOS id lies outside the
vocabulary), so every answer is exactly m tokens long: every decoder does the same work, and the study
projection is an upper bound (real answers stop early).

Run from the repository root::

    python -m benchmarks.speed.bench_generation --out out/generation.json     # one GPU, full size
    python -m benchmarks.speed.bench_generation --tiny                         # CPU smoke test
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.helpers.common import (
    Report,
    Setup,
    SizeFlag,
    add_size_flags,
    allocated_gib,
    base_parser,
    build_model,
    copy_bandwidth_gbs,
    env_info,
    fill_defaults,
    matmul_tflops,
    param_counts,
    peak_gib,
    print_table,
    reset_peak,
    resolve_setup,
    summarize,
    time_fn,
)
from benchmarks.helpers.decode_checks import answer_logprobs, chi2_homogeneity, id_bins, ks_two_sample
from benchmarks.helpers.legacy_generation import legacy_generate
from benchmarks.helpers.profile_table import profile_run
from benchmarks.speed.study_budget import STUDY_SIZES, study_section
from biasprune.answers.generation import generate

SIZES = {
    "prompts": SizeFlag("prompts answered per decoder, in one batch", 64, 6),
    "samples": SizeFlag("answers sampled per prompt (k)", 10, 3),
    "max_new_tokens": SizeFlag("tokens per answer (m)", 32, 8),
    "prompt_len": SizeFlag("longest prompt, in tokens (lengths vary down to half of it)", 80, 16),
    "prefix_len": SizeFlag("tokens every prompt starts with, before its own (a chat template's system part)", 0, 4),
    "loop_prompts": SizeFlag("prompts answered by the HF loop (it is slow; 0 skips it)", 1, 1),
    "iters": SizeFlag("timed runs of each decoder (after one untimed run at full size)", 5, 1),
    "copy_mib": SizeFlag("MiB copied to measure the memory bandwidth", 2048, 16),
    "matmul_size": SizeFlag("n of the n x n x n matmul that measures the bf16 rate", 8192, 256),
    "profile_tokens": SizeFlag("tokens per answer in the profiled static run (0 skips the profile)", 8, 2),
    **STUDY_SIZES,
}


class IdTokenizer:
    """The part of a Hugging Face tokenizer that ``generate`` uses; a text is its token ids, space-separated.

    The EOS id is ``vocab_size``: the model can never sample it, so no answer stops early.
    """

    pad_token_id = 0

    def __init__(self, vocab_size: int) -> None:
        self.eos_token_id = vocab_size

    @staticmethod
    def encode(text: str) -> list[int]:
        return [int(tok) for tok in text.split()]

    def __call__(
        self,
        texts: Sequence[str],
        return_tensors: str | None = None,
        padding: bool = False,
        add_special_tokens: bool = False,
        padding_side: str = "left",
    ) -> dict[str, torch.Tensor] | dict[str, list[list[int]]]:
        rows = [self.encode(t) for t in texts]
        if return_tensors is None and not padding:  # as a Hugging Face tokenizer: lists of ids
            return {"input_ids": rows}
        if return_tensors != "pt" or not padding or padding_side not in ("left", "right"):
            raise ValueError("IdTokenizer pads to tensors only: return_tensors='pt', padding=True")
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
            ids[i, span] = torch.tensor(row)
            mask[i, span] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, ids: torch.Tensor | Sequence[int], skip_special_tokens: bool = True) -> str:
        return " ".join(str(int(i)) for i in ids)


def make_prompts(n: int, max_len: int, vocab: int, seed: int, prefix_len: int = 0) -> list[str]:
    """``n`` random prompts of ``max_len / 2`` to ``max_len`` token ids, written as text for IdTokenizer; all start
    with the same ``prefix_len`` tokens (as chat prompts start with their template's system part)."""
    g = torch.Generator().manual_seed(seed)
    head = torch.randint(1, vocab, (prefix_len,), generator=g).tolist()
    lengths = torch.randint(max_len // 2, max_len + 1, (n,), generator=g).tolist()
    return [" ".join(map(str, head + torch.randint(1, vocab, (L,), generator=g).tolist())) for L in lengths]


def without_stop_tokens(model: nn.Module) -> None:
    """No EOS in the model's generation config: Llama's default (2) would end some random answers early."""
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = IdTokenizer.pad_token_id


def hf_loop(model: nn.Module, prompt_ids: list[torch.Tensor], samples: int, max_new_tokens: int) -> list[torch.Tensor]:
    """One ``model.generate`` call per answer, batch 1; returns the new tokens of each answer."""
    answers = []
    for ids in prompt_ids:
        for _ in range(samples):
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=max_new_tokens,
            )
            answers.append(out[0, ids.shape[1] :])
    return answers


def measure(
    report: Report,
    setup: Setup,
    name: str,
    run: Callable[[], list[list[str]]],
    tokenizer: IdTokenizer,
    new_tokens: int,
    iters: int,
    bound: float,
    **info: Any,
) -> tuple[dict[str, Any], list[list[str]]]:
    """Time ``run()``, check every answer is ``new_tokens`` long, record rates; returns the record and answers."""
    answers: list[list[str]] = []
    with report.section(name) as rec:
        rec.update(method=name, **info)

        def call() -> None:
            answers[:] = run()

        before = allocated_gib(setup.device)
        reset_peak(setup.device)
        rec.update(summarize(time_fn(call, setup.device, iters, warmup=1)))  # one untimed run at full size first
        lengths = [len(tokenizer.encode(a)) for row in answers for a in row]
        if any(n != new_tokens for n in lengths):
            raise RuntimeError(f"expected answers of {new_tokens} tokens, got lengths {lengths[:8]}...")
        peak = peak_gib(setup.device)
        tokens_per_s = len(lengths) * new_tokens / rec["median_s"]
        rec.update(
            answers=len(lengths),
            answers_per_s=len(lengths) / rec["median_s"],
            tokens_per_s=tokens_per_s,
            frac_bound=tokens_per_s / bound,
            peak_gib=peak,
            extra_gib=None if peak is None else peak - before,
        )
        print(f"{name}: {rec['median_s']:.2f} s, {tokens_per_s:,.0f} new tokens/s", flush=True)
    return rec, answers


def print_profile(rec: dict[str, Any], tokens: int, seqs: int) -> None:
    """The profile's categories and top kernels, as two small tables."""
    busy = rec["device_busy_s"]
    print(f"\nprofile: static decoder, {seqs} sequences x {tokens} tokens: wall {rec['wall_s']:.3f} s"
          + (f", device busy {busy:.3f} s, host only {rec['host_only_s']:.3f} s" if busy is not None else " (host only)"))
    for cat, s in rec["by_category_s"].items():
        print(f"  {cat:<10} {s:8.4f} s  {rec['by_category_share'][cat]:6.1%}")
    for row in rec["top"]:
        print(f"  {row['self_s']:8.4f} s {row['share']:6.1%} x{row['calls']:<5} [{row['category']}] {row['name'][:90]}")


def as_ids(answers: list[list[str]], tokenizer: IdTokenizer) -> torch.Tensor:
    """``[prompts * k, m]`` token ids of the answers (all have the same length here)."""
    return torch.tensor([tokenizer.encode(a) for row in answers for a in row], dtype=torch.long)


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    add_size_flags(p, SIZES)
    p.add_argument("--summarize", type=Path, default=None, help="print the tables of a saved JSON report and exit")
    args = p.parse_args(argv)
    if args.summarize is not None:
        print_tables(json.loads(args.summarize.read_text()))
        return 0
    fill_defaults(args, SIZES)
    setup = resolve_setup(args)
    report = Report(args.out, env=env_info(setup), args=vars(args))

    with report.section("model") as rec:
        model = build_model(setup)
        without_stop_tokens(model)
        counts = param_counts(model)
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        rec.update(params=counts, weights_gib=weight_bytes / 2**30)
        print(f"{counts['total']:,} parameters, {weight_bytes / 2**30:.1f} GiB of weights")
    with report.section("hardware") as rec:
        tflops = matmul_tflops(setup.device, setup.dtype, n=args.matmul_size)
        bound = tflops * 1e12 / (2 * counts["total"])
        bandwidth = copy_bandwidth_gbs(setup.device, args.copy_mib * 2**20)
        rec.update(matmul_tflops=tflops, decode_bound_tokens_per_s=bound, copy_gbs=bandwidth)
        print(f"{tflops:,.1f} TFLOP/s -> decode compute bound {bound:,.0f} tokens/s; copy {bandwidth:,.0f} GB/s")
    if report.failed:
        return 1

    vocab = model.config.vocab_size
    tokenizer = IdTokenizer(vocab)
    prompts = make_prompts(args.prompts, args.prompt_len, vocab, setup.seed, args.prefix_len)
    k, m, seed = args.samples, args.max_new_tokens, setup.seed
    kw = dict(num_samples=k, temperature=1.0, max_new_tokens=m, batch_size=len(prompts))
    static_stats: dict = {}
    decoders: dict[str, Callable[..., list[list[str]]]] = {
        "today's eager (3db4ce5)": lambda ps, s=seed, **o: legacy_generate(model, tokenizer, ps, seed=s, **(kw | o)),
        "eager": lambda ps, s=seed, **o: generate(model, tokenizer, ps, seed=s, decoder="eager", **(kw | o)),
        "static": lambda ps, s=seed, **o: generate(model, tokenizer, ps, seed=s, decoder="static", stats=static_stats, **(kw | o)),
    }
    with report.section("warm-up"):
        for run in decoders.values():
            run(prompts[:2], max_new_tokens=2)

    rows, outputs = [], {}
    for name, run in decoders.items():
        rec, outputs[name] = measure(
            report,
            setup,
            name,
            lambda run=run: run(prompts),
            tokenizer,
            m,
            args.iters,
            bound,
            seqs_per_batch=len(prompts) * k,
        )
        if name == "static":
            rec["graphs"] = dict(static_stats)
            print(f"static decoder ran: {rec['graphs']}")
        rows.append(rec)
    today, eager = rows[0].get("tokens_per_s"), rows[1].get("tokens_per_s")
    for rec in rows:
        if "tokens_per_s" in rec and today and eager:
            rec.update(x_today=rec["tokens_per_s"] / today, x_eager=rec["tokens_per_s"] / eager)
    report.save()

    checks: list[dict[str, Any]] = []
    if outputs.get("eager") and outputs.get("static"):
        with report.section("agreement") as rec:
            a, b = as_ids(outputs["eager"], tokenizer), as_ids(outputs["static"], tokenizer)
            rec.update(
                same_answers=float((a == b).all(1).double().mean()),
                same_first_token=float((a[:, 0] == b[:, 0]).double().mean()),
            )
            checks.append({"check": "same seed: answers identical (eager vs static)", "value": rec["same_answers"]})
            checks.append({"check": "same seed: first tokens identical", "value": rec["same_first_token"]})
        with report.section("two-sample") as rec:
            other = decoders["static"](prompts, s=seed + 1)
            a, b = as_ids(outputs["eager"], tokenizer), as_ids(other, tokenizer)
            lp_a = answer_logprobs(model, tokenizer, prompts, a, k, setup.device)
            lp_b = answer_logprobs(model, tokenizer, prompts, b, k, setup.device)
            ks = ks_two_sample(lp_a, lp_b)
            rec.update(ks=ks, mean_logprob_eager=float(lp_a.mean()), mean_logprob_static=float(lp_b.mean()))
            checks.append(
                {
                    "check": "KS, per-answer mean log-prob, eager (seed) vs static (seed+1)",
                    "statistic": ks["statistic"],
                    "p": ks["p"],
                    "n": ks["n"],
                }
            )
            for t in (0, m - 1):  # one token per answer: independent draws
                chi = chi2_homogeneity(id_bins(a[:, t], vocab, 64), id_bins(b[:, t], vocab, 64))
                rec[f"chi2_token{t}"] = chi
                checks.append(
                    {
                        "check": f"chi-square, token {t} of each answer, ids in 64 bins, eager vs static",
                        "statistic": chi["statistic"],
                        "p": chi["p"],
                        "df": chi["df"],
                        "n": chi["n"],
                    }
                )

    if args.profile_tokens > 0:
        with report.section("profile") as rec:
            rec.update(profile_run(lambda: decoders["static"](prompts, max_new_tokens=args.profile_tokens), setup.device),
                       seqs=len(prompts) * k)
            print_profile(rec, args.profile_tokens, len(prompts) * k)

    if args.loop_prompts > 0:
        loop_ids = [tokenizer([text], return_tensors="pt", padding=True)["input_ids"].to(setup.device) for text in prompts[: args.loop_prompts]]
        hf_loop(model, loop_ids[:1], samples=1, max_new_tokens=2)
        torch.manual_seed(seed)  # HF sampling draws from the global generator

        def loop() -> list[list[str]]:
            return [[tokenizer.decode(t)] for t in hf_loop(model, loop_ids, k, m)]

        rec, _ = measure(report, setup, "hf loop, 1 answer/call", loop, tokenizer, m, 1, bound, seqs_per_batch=1)
        rows.append(rec)

    study = study_section(report, args, setup, model, tokenizer, make_prompts, rows[2].get("tokens_per_s"), today)

    report.data["tables"] = [
        {
            "title": f"Decoders: {len(prompts)} prompts x k={k} answers of {m} tokens; bf16 matmul {tflops:,.0f}"
            f" TFLOP/s, decode bound 2N -> {bound:,.0f} tok/s",
            "rows": rows,
            "columns": DECODER_COLUMNS,
        },
        {"title": "Same distribution", "rows": checks, "columns": CHECK_COLUMNS},
        {"title": "Study budget (projection; formula above)", "rows": study, "columns": STUDY_COLUMNS},
    ]
    report.save()
    print_tables(report.data)
    if report.failed:
        print(f"\nfailed sections: {report.failed}")
    return 1 if report.failed else 0


DECODER_COLUMNS = [
    ("method", "method"),
    ("answers", "answers"),
    ("seqs_per_batch", "seqs/batch"),
    ("median_s", "s/run"),
    ("tokens_per_s", "new tok/s"),
    ("frac_bound", "of bound"),
    ("x_today", "x today's"),
    ("x_eager", "x eager"),
    ("peak_gib", "peak GiB"),
    ("error", "error"),
]
CHECK_COLUMNS = [
    ("check", "check"),
    ("value", "value"),
    ("statistic", "statistic"),
    ("df", "df"),
    ("n", "n"),
    ("p", "p"),
]
STUDY_COLUMNS = [("piece", "piece"), ("value", "value"), ("unit", "unit")]


def print_tables(data: dict[str, Any]) -> None:
    """The closing tables of a run, from its report data (also ``--summarize PATH`` on a saved JSON)."""
    for table in data.get("tables", []):
        print_table(table["title"], table["rows"], [tuple(c) for c in table["columns"]])
    study = data.get("study", {})
    if "formula" in study:
        print(f"\n{study['formula']}")
    graphs = data.get("static", {}).get("graphs")
    if graphs is not None:
        print(
            f"static decoder: CUDA graphs for buckets {graphs.get('graphs')}, steps without a graph: {graphs.get('eager_steps')}"
        )
    prof = data.get("profile", {})
    if "by_category_s" in prof:
        print_profile(prof, data.get("args", {}).get("profile_tokens", 0), prof.get("seqs", 0))
    failed = [name for name, sec in data.items() if isinstance(sec, dict) and "error" in sec]
    if failed:
        print(f"failed sections: {failed}")


if __name__ == "__main__":
    raise SystemExit(main())
