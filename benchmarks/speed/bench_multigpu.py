"""Scoring on 1, 2 and 4 GPUs: steady-state throughput, scaling efficiency, memory, and equality of scores.

    python -m benchmarks.speed.bench_multigpu prepare --out DIR [--tiny]            # model, tokenizer, scoring examples
    python -m benchmarks.speed.bench_multigpu score --out DIR --devices N --strategy frozen_ddp --dtype bfloat16
    python -m benchmarks.speed.bench_multigpu compare --out DIR                     # the table, from the runs' JSON

``prepare`` builds a random Llama-3-8B-shaped model (hidden 4096, MLP 14336, 32 layers, 32 heads, 8 KV heads,
vocab 128256; ``--tiny``: a 2-layer model for a CPU smoke test) with a self-contained word-level tokenizer and a
chat template (no hub, no GGUF), and a fixed ``scoring_examples.jsonl``: every run scores the same examples.
``score`` runs ``Trainer.fit`` of the BiasPruneModule only (no evaluation) with ``--devices`` processes (each
rank re-runs this script: Lightning's launcher), records the wall time of every scoring step on every rank,
and writes ``score_<strategy>_<dtype>_<N>.json`` (steady-state tokens/s after ``--warmup`` steps, by the mean
and by the median step, peak memory per GPU) beside the run's ``scores.safetensors``. ``compare`` prints tokens/s per GPU, scaling efficiency (N-GPU
throughput / (N x 1-GPU)), the fraction of the 4N ceiling (a forward and a backward of an N-parameter model
cost about 4N FLOP per token at the bf16 rate measured here), peak memory, and for float32 runs the largest
elementwise relative difference of the scores against 1 GPU and the mask entries that differ.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

SHAPES = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
}
CHAT = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> {% endif %}")


def prepare(out: Path, tiny: bool, n_examples: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    words = [f"w{i}" for i in range(2000)] + ["<|user|>", "<|assistant|>", "<|end|>", "<pad>", "<unk>"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|end|>", unk_token="<unk>")
    fast.chat_template = CHAT
    shape = SHAPES["tiny" if tiny else "8b"]
    config = LlamaConfig(vocab_size=128256 if not tiny else 4096, max_position_embeddings=2048, **shape,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if not tiny else torch.float32)
    model.save_pretrained(out / "model")
    fast.save_pretrained(out / "model")
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n_examples):
        group = "white" if i % 2 == 0 else "black"
        n_prompt, n_resp = 96 + int(torch.randint(0, 32, (1,), generator=g)), 16 + int(torch.randint(0, 16, (1,), generator=g))
        prompt = fast.apply_chat_template([{"role": "user", "content": " ".join(f"w{int(x)}" for x in torch.randint(0, 2000, (n_prompt,), generator=g))}],
                                          tokenize=False, add_generation_prompt=True)
        response = " ".join(f"w{int(x)}" for x in torch.randint(0, 2000, (n_resp,), generator=g))
        rows.append({"group": group, "scenario": "purchase", "variation": "car", "name": f"N{i}", "prompt": prompt,
                     "response": response, "pair_id": f"p{i // 2}"})
    # One name per example; the run scores the examples of its scoring split (80% of the names, the same in
    # every run), with the prompt and response texts of the file.
    (out / "names.csv").write_text("name,group,gender\n" + "".join(f"N{i},{r['group']},man\n" for i, r in enumerate(rows)))
    (out / "scoring_examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"prepared {out}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters, {len(rows)} examples")


class StepTimer:
    """Wall time of every scoring step on rank 0 (synchronised), for a steady-state figure after warm-up."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[int] = []

    profile: Path | None = None  # where rank 0 writes the op table of steps 5-9 (torch.profiler)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.profile and batch_idx == 5 and trainer.global_rank == 0:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self._prof = profile(activities=acts)
            self._prof.__enter__()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t)
        self.tokens.append(int(batch["attention_mask"].sum()))
        if getattr(self, "_prof", None) is not None and batch_idx == 9:
            self._prof.__exit__(None, None, None)
            by = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
            t = sum(self.times[5:10])
            self.profile.write_text(f"steps 5-9: {t:.3f} s wall on rank 0\n"
                                    + self._prof.key_averages().table(sort_by=by, row_limit=30, max_name_column_width=60) + "\n"
                                    + self._prof.key_averages().table(sort_by="cpu_time_total", row_limit=20, max_name_column_width=60))
            self._prof = None


def score(out: Path, devices: int, strategy: str, dtype: str, batch_size: int, warmup: int, examples_file: str, names_file: str, profile: bool = False, cudnn_attention: bool = False, label: str = "") -> None:
    from lightning import Callback, Trainer
    from lightning.pytorch.loggers import CSVLogger

    import biasprune.pipeline.parallel  # noqa: F401
    from biasprune.answers.answering import TargetConfig
    from biasprune.datamodules import AuditDataModule
    from biasprune.pipeline.module import BiasPruneModule

    class Timer(StepTimer, Callback):
        pass

    timer = Timer()
    variant = ["cudnn"] * cudnn_attention + [label] * bool(label)  # what sets this run apart from its strategy
    tag = "_".join([strategy, dtype, str(devices), *variant])
    timer.profile = out / f"profile_{tag}.txt" if profile else None
    model_dir = str(out / "model")
    module = BiasPruneModule(model_dir, dtype=dtype, targets=TargetConfig(max_new_tokens=8))
    dm = AuditDataModule(names=str(out / names_file), scoring=["purchase/car"], evaluation=["purchase/car"], tokenizer=model_dir,
                         scoring_examples_file=str(out / examples_file), batch_size=batch_size, split_fractions=(0.8, 0.1, 0.1))
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    trainer = Trainer(accelerator=accelerator, devices=devices, strategy=strategy,
                      max_epochs=1, logger=CSVLogger(out / "runs", name=tag, version=0), callbacks=[timer],
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    if cudnn_attention:  # every backend, cuDNN first when it applies: the scoring of before the exclusion
        from torch.nn.attention import SDPBackend

        import biasprune.pipeline.module

        biasprune.pipeline.module.SCORING_ATTENTION = [SDPBackend.CUDNN_ATTENTION, *biasprune.pipeline.module.SCORING_ATTENTION]
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else math.nan
    from biasprune.core.distributed import gather_objects

    peaks = gather_objects(peak)
    steady = slice(min(warmup, max(0, len(timer.times) - 1)), None)
    # Over all ranks' steps; the slowest rank sets the pace (Lightning also syncs the ranks at every step).
    times = gather_objects(timer.times[steady])
    tokens = gather_objects(timer.tokens[steady])
    log_dir = trainer.log_dir  # a collective: every rank asks
    if trainer.global_rank == 0:
        t = max(sum(x) for x in times)
        medians = [float(torch.tensor(x).median()) for x in times]
        per_step = sum(map(sum, tokens)) / max(len(x) for x in tokens)  # tokens of one step over all ranks
        report = {"strategy": "+".join([strategy, *variant]), "dtype": dtype, "devices": devices, "batch_size": batch_size, "steps": len(timer.times),
                  "warmup_steps": steady.start, "steady_s": t, "tokens_per_s": sum(map(sum, tokens)) / t if t else math.nan,
                  "step_s_median_per_rank": medians, "step_s_max_per_rank": [max(x) for x in times],
                  "tokens_per_s_median_step": per_step / max(medians),  # robust to a few slow steps
                  "wall_s": wall, "peak_gib_per_gpu": peaks, "run_dir": str(log_dir), "world_size": trainer.world_size}
        (out / f"score_{tag}.json").write_text(json.dumps(report, indent=2))
        print(json.dumps(report))


def set_difference_masks(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The paper's neuron masks (set difference, p = 0.35, q = 0.4) from a ``scores.safetensors`` dict."""
    from biasprune.pruning.rules import keep_masks

    by_group = {g: {k.split("/", 1)[1]: v for k, v in scores.items() if k.startswith(f"{g}/")} for g in ("black", "white")}
    return keep_masks(by_group["black"], by_group["white"], "neuron", 0.35, 0.4, "module")


def compare(out: Path) -> None:
    from safetensors import safe_open

    from biasprune.core.artifacts import read_safetensors

    runs = [json.loads(p.read_text()) for p in sorted(out.glob("score_*.json"))]
    n_params = 0
    for f in (out / "model").glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as fh:
            n_params += sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())
    rate = float(os.environ.get("BF16_TFLOPS", "nan")) * 1e12  # measured by the run script (bench_generation's rate)
    ceiling = rate / (4 * n_params) if n_params == n_params else math.nan
    base = {r["dtype"]: r for r in sorted(runs, key=lambda r: r["strategy"] == "frozen_ddp") if r["devices"] == 1}  # frozen_ddp wins
    print(f"{'strategy':<18}{'dtype':<10}{'GPUs':>5}{'tokens/s':>11}{'per GPU':>10}{'efficiency':>11}{'of 4N ceiling':>14}{'peak GiB/GPU':>14}{'max rel diff':>13}{'mask flips':>11}{'median step':>12}{'tok/s (median)':>15}{'efficiency':>11}")
    for r in sorted(runs, key=lambda r: (r["dtype"], r["strategy"], r["devices"])):
        one = base.get(r["dtype"])
        eff = r["tokens_per_s"] / (r["devices"] * one["tokens_per_s"]) if one else math.nan
        eff_med = r.get("tokens_per_s_median_step", math.nan) / (r["devices"] * one.get("tokens_per_s_median_step", math.nan)) if one else math.nan
        diff, flips = "", ""
        if one and r is not one and r["dtype"] == "float32":  # N GPUs, or a repeat of 1, against the 1-GPU run
            a, b = (read_safetensors(Path(x["run_dir"]) / "scores.safetensors")[0] for x in (one, r))
            diff = f"{max(float(((b[k] - a[k]).abs() / a[k].abs().clamp(min=1e-30)).max()) for k in a):.1e}"
            ma, mb = set_difference_masks(a), set_difference_masks(b)
            flips = str(sum(int((ma[k] != mb[k]).sum()) for k in ma))
        frac = r["tokens_per_s"] / ceiling if ceiling == ceiling else math.nan
        print(f"{r['strategy']:<18}{r['dtype']:<10}{r['devices']:>5}{r['tokens_per_s']:>11,.0f}{r['tokens_per_s'] / r['devices']:>10,.0f}{eff:>11.2f}"
              f"{frac:>14.3f}{max(r['peak_gib_per_gpu']):>14.1f}{diff:>13}{flips:>11}{max(r.get('step_s_median_per_rank', [math.nan])):>12.3f}{r.get('tokens_per_s_median_step', math.nan):>15,.0f}{eff_med:>11.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["prepare", "score", "compare"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--examples", type=int, default=512)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--strategy", default="frozen_ddp", choices=["auto", "frozen_ddp", "frozen_ddp_spawn", "frozen_fsdp"])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--examples-file", default="scoring_examples.jsonl", help="in --out; every run of a comparison scores the same file")
    p.add_argument("--cudnn-attention", action="store_true", help="let scoring use the cuDNN attention backend (excluded by default)")
    p.add_argument("--label", default="", help="a name for a second run of one setting (e.g. repeat)")
    p.add_argument("--profile", action="store_true", help="op table of steps 5-9 on rank 0 into --out/profile_<run>.txt")
    p.add_argument("--names-file", default="names.csv", help="in --out; the names whose examples --examples-file holds")
    a = p.parse_args()
    if a.action == "prepare":
        prepare(a.out, a.tiny, a.examples)
    elif a.action == "score":
        score(a.out, a.devices, a.strategy, a.dtype, a.batch_size, a.warmup, a.examples_file, a.names_file, a.profile, a.cudnn_attention, a.label)
    else:
        compare(a.out)


if __name__ == "__main__":
    main()
