"""Answers per second of batched sampling against a one-answer-per-call loop, on a Llama-3-8B-shaped model.

* ``ours``: :func:`biasprune.generation.generate`: a batch of prompts is prefilled once and its KV cache
  repeated for the k samples; timed at two batch sizes (prompts per batch);
* ``hf loop``: the paper authors' way: for each prompt, for each of its k samples, one
  ``model.generate(do_sample=True, max_new_tokens=...)`` with batch 1 (timed on a few prompts).

The weights are random, so the text is noise. No token stops an answer (the tokenizer's EOS id is outside
the vocabulary and the model has none), so every answer is exactly ``max_new_tokens`` tokens long and both
methods do the same work per answer. Sampling is plain: temperature 1, no top-p, no top-k.

Run from the repository root::

    python -m benchmarks.bench_generation --out out/generation.json     # one GPU, full size
    python -m benchmarks.bench_generation --tiny                         # CPU smoke test
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from benchmarks.common import (
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
    param_counts,
    peak_gib,
    print_table,
    reset_peak,
    resolve_setup,
    summarize,
    time_fn,
)
from biasprune.generation import generate

SIZES = {
    "prompts": SizeFlag("prompts answered by ours", 64, 8),
    "samples": SizeFlag("answers sampled per prompt (k)", 10, 3),
    "max_new_tokens": SizeFlag("tokens per answer", 32, 8),
    "prompt_len": SizeFlag("longest prompt, in tokens (lengths vary down to half of it)", 80, 16),
    "batch_size": SizeFlag("prompts per batch of ours", 16, 2),
    "large_batch_size": SizeFlag("prompts per batch of ours, larger variant (0: skip)", 64, 8),
    "loop_prompts": SizeFlag("prompts answered by the HF loop (it is slow)", 2, 2),
    "iters": SizeFlag("timed runs of each method", 1, 1),
    "copy_mib": SizeFlag("MiB copied to measure the memory bandwidth", 2048, 16),
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
        return_tensors: str = "pt",
        padding: bool = True,
        add_special_tokens: bool = False,
        padding_side: str = "left",
    ) -> dict[str, torch.Tensor]:
        if return_tensors != "pt" or not padding or padding_side not in ("left", "right"):
            raise ValueError("IdTokenizer pads to tensors only: return_tensors='pt', padding=True")
        rows = [self.encode(t) for t in texts]
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


def make_prompts(n: int, max_len: int, vocab: int, seed: int) -> list[str]:
    """``n`` random prompts of ``max_len / 2`` to ``max_len`` token ids, written as text for IdTokenizer."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max_len // 2, max_len + 1, (n,), generator=g).tolist()
    return [" ".join(map(str, torch.randint(1, vocab, (L,), generator=g).tolist())) for L in lengths]


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
    run: Callable[[], list[int]],
    answers: int,
    new_tokens: int,
    iters: int,
    **info: Any,
) -> dict[str, Any]:
    """Time ``run()`` (it returns each answer's token count), check every answer is full length, record rates."""
    with report.section(name) as rec:
        rec.update(method=name, answers=answers, **info)
        counts: list[int] = []

        def call() -> None:
            counts[:] = run()

        before = allocated_gib(setup.device)
        reset_peak(setup.device)
        rec.update(summarize(time_fn(call, setup.device, iters, warmup=0)))  # warmed up before, on small sizes
        if len(counts) != answers or any(c != new_tokens for c in counts):
            raise RuntimeError(f"expected {answers} answers of {new_tokens} tokens, got lengths {counts[:8]}...")
        peak = peak_gib(setup.device)
        rec.update(
            answers_per_s=answers / rec["median_s"],
            tokens_per_s=answers * new_tokens / rec["median_s"],
            peak_gib=peak,
            extra_gib=None if peak is None else peak - before,
        )
        print(f"{name}: {rec['median_s']:.2f} s, {rec['answers_per_s']:,.1f} answers/s", flush=True)
    return rec


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    add_size_flags(p, SIZES)
    args = p.parse_args(argv)
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
        bandwidth = copy_bandwidth_gbs(setup.device, args.copy_mib * 2**20)
        # A batch-1 decode step reads every weight once; it cannot beat bandwidth / weight bytes.
        ceiling = bandwidth * 1e9 / weight_bytes
        rec.update(copy_gbs=bandwidth, batch1_decode_ceiling_tokens_per_s=ceiling)
        print(f"copy bandwidth {bandwidth:,.0f} GB/s -> batch-1 decode ceiling {ceiling:,.1f} tok/s")
    if report.failed:
        return 1

    vocab = model.config.vocab_size
    tokenizer = IdTokenizer(vocab)
    prompts = make_prompts(args.prompts, args.prompt_len, vocab, setup.seed)
    k, m = args.samples, args.max_new_tokens

    def ours(batch_size: int, subset: Sequence[str] = prompts, max_new_tokens: int = m) -> list[int]:
        out = generate(
            model,
            tokenizer,
            subset,
            num_samples=k,
            temperature=1.0,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            seed=setup.seed,
        )
        return [len(tokenizer.encode(text)) for answers in out for text in answers]

    loop_ids = [tokenizer([text])["input_ids"].to(setup.device) for text in prompts[: args.loop_prompts]]

    def loop() -> list[int]:
        return [len(answer) for answer in hf_loop(model, loop_ids, k, m)]

    with report.section("warm-up"):
        ours(args.batch_size, subset=prompts[: args.batch_size], max_new_tokens=2)
        hf_loop(model, loop_ids[:1], samples=1, max_new_tokens=2)
    rows = []
    for bs in dict.fromkeys(b for b in (args.batch_size, args.large_batch_size) if b > 0):  # unique, in order
        name, seqs = f"ours, {bs} prompts/batch", min(bs, len(prompts)) * k
        rec = measure(report, setup, name, partial(ours, bs), len(prompts) * k, m, args.iters, seqs_per_batch=seqs)
        rows.append(rec)
    torch.manual_seed(setup.seed)  # HF sampling draws from the global generator
    base = measure(report, setup, "hf loop, 1 answer/call", loop, len(loop_ids) * k, m, args.iters, seqs_per_batch=1)
    rows.append(base)
    if "answers_per_s" in base:
        base["frac_decode_ceiling"] = base["tokens_per_s"] / ceiling
        for rec in rows[:-1]:
            if "answers_per_s" in rec:
                rec["speedup_vs_loop"] = rec["answers_per_s"] / base["answers_per_s"]
        report.save()

    print_table(
        f"Sampling k={k} answers of {m} tokens per prompt; batch-1 decode ceiling {ceiling:,.1f} tok/s",
        rows,
        [
            ("method", "method"),
            ("answers", "answers"),
            ("seqs_per_batch", "seqs/batch"),
            ("median_s", "s/run"),
            ("answers_per_s", "answers/s"),
            ("tokens_per_s", "new tok/s"),
            ("peak_gib", "peak GiB"),
            ("speedup_vs_loop", "x loop"),
            ("error", "error"),
        ],
    )
    if report.failed:
        print(f"\nfailed sections: {report.failed}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
