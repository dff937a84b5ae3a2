"""The embedded model on a CPU: load times, scoring speed and batched generation, each side by side.

    python -m benchmarks.bench_cpu [--out cpu.json]

* load: the first load of ``embedded:SmolLM2-135M-Instruct`` (GGUF dequantization and conversion, in a
  fresh cache directory) against a load of the converted, cached checkpoint;
* scoring: ``score_batch`` over the quickstart's 60 scoring examples (real greedy responses) in batches
  of 8, against the same examples one at a time; examples/s, tokens/s and peak resident memory;
* generation: the quickstart's sampled answers (k per prompt) with ``generate`` in batches of 30 prompts,
  against one Hugging Face ``generate`` call per answer on a few prompts.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import Report, print_table
from biasprune import models
from biasprune.architectures import resolve_units
from biasprune.generation import generate
from biasprune.models import DEFAULT_MODEL, load_model, load_tokenizer
from biasprune.scoring import score_batch
from biasprune.datamodules import AuditDataModule

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
        print_table("model load (model + tokenizer)", [rec], [("cold_s", "cold s"), ("cached_s", "cached s"), ("ratio", "cold / cached")])


def bench_scoring(report: Report, model, tok) -> None:
    dm = AuditDataModule(scoring=QUICKSTART, evaluation=QUICKSTART, batch_size=8)
    dm.setup("fit")
    prompts = list(dm.scoring_prompts["prompt"])
    responses = generate(model, tok, prompts, num_samples=1, temperature=0.0, max_new_tokens=24, batch_size=30)
    dm.set_scoring_examples(
        [{k: r[k] for k in ("group", "scenario", "variation", "name", "prompt")} | {"response": resp[0]} for r, resp in zip(dm.scoring_prompts, responses)]
    )
    layout = resolve_units(model)
    batches = list(dm.train_dataloader())
    n_ex = sum(int(b["weight"].sum()) for b in batches)
    n_tok = sum(int(b["attention_mask"].sum()) for b in batches)
    rows = []
    with report.section("scoring") as rec:
        score_batch(model, layout, batches[0]["input_ids"][:1], batches[0]["attention_mask"][:1], batches[0]["response_mask"][:1])
        t = time.perf_counter()
        for b in batches:
            score_batch(model, layout, b["input_ids"], b["attention_mask"], b["response_mask"])
        batched = time.perf_counter() - t
        t = time.perf_counter()
        for b in batches:
            for i in range(b["input_ids"].shape[0]):
                L = int(b["attention_mask"][i].sum())
                score_batch(model, layout, b["input_ids"][i : i + 1, :L], b["attention_mask"][i : i + 1, :L], b["response_mask"][i : i + 1, :L])
        single = time.perf_counter() - t
        for name, s in (("ours, batches of 8", batched), ("one example at a time", single)):
            rows.append({"method": name, "s": s, "examples_s": n_ex / s, "tokens_s": n_tok / s})
        rec.update(examples=n_ex, tokens=n_tok, rows=rows, speedup=single / batched, peak_rss_gib=peak_rss_gib())
    print_table(
        f"scoring {n_ex} examples ({n_tok} tokens), {len(layout.keys())} unit groups; peak RSS {peak_rss_gib():.2f} GiB",
        rows,
        [("method", "method"), ("s", "s"), ("examples_s", "examples/s"), ("tokens_s", "tokens/s")],
    )


def bench_generation(report: Report, model, tok, samples: int, loop_prompts: int) -> None:
    dm = AuditDataModule(scoring=QUICKSTART, evaluation=QUICKSTART)
    dm.setup("validate")
    prompts = list(dm.eval_set["prompt"])
    rows = []
    with report.section("generation") as rec:
        t = time.perf_counter()
        generate(model, tok, prompts, num_samples=samples, temperature=1.0, max_new_tokens=24, batch_size=30, seed=0)
        s = time.perf_counter() - t
        rows.append({"method": "ours, 30 prompts/batch", "answers": len(prompts) * samples, "s": s, "answers_s": len(prompts) * samples / s})
        t = time.perf_counter()
        for p in prompts[:loop_prompts]:
            enc = tok(p, return_tensors="pt", add_special_tokens=False)
            for _ in range(samples):
                model.generate(**enc, do_sample=True, temperature=1.0, max_new_tokens=24, pad_token_id=tok.pad_token_id)
        s = time.perf_counter() - t
        rows.append({"method": "HF generate, 1 answer/call", "answers": loop_prompts * samples, "s": s, "answers_s": loop_prompts * samples / s})
        rec.update(rows=rows, speedup=rows[0]["answers_s"] / rows[1]["answers_s"])
        print_table(f"sampled answers (k={samples}, 24 new tokens)", rows, [("method", "method"), ("answers", "answers"), ("s", "s"), ("answers_s", "answers/s")])
        print(f"batched / loop: {rec['speedup']:.1f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write every figure to this JSON file")
    parser.add_argument("--samples", type=int, default=10, help="answers per prompt")
    parser.add_argument("--loop-prompts", type=int, default=2, help="prompts answered by the one-answer-per-call loop")
    args = parser.parse_args(argv)
    report = Report(args.out, threads=torch.get_num_threads())
    bench_load(report)
    model, tok = load_model(DEFAULT_MODEL), load_tokenizer(DEFAULT_MODEL)
    bench_scoring(report, model, tok)
    bench_generation(report, model, tok, args.samples, args.loop_prompts)
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
