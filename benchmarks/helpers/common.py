"""Helpers shared by the benchmarks: model construction, timing, hardware ceilings and reporting.

Everything here runs on the GPU machine, where ``datasets``, ``gguf`` and possibly ``captum`` are missing:
import only torch, transformers and the standard library at module level.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

__all__ = [
    "LLAMA3_8B_SHAPE",
    "TINY_SHAPE",
    "Report",
    "Setup",
    "SizeFlag",
    "add_size_flags",
    "allocated_gib",
    "base_parser",
    "build_model",
    "copy_bandwidth_gbs",
    "env_info",
    "fill_defaults",
    "fmt",
    "matmul_tflops",
    "param_counts",
    "peak_gib",
    "print_table",
    "reset_peak",
    "resolve_setup",
    "summarize",
    "sync",
    "time_fn",
]

# Llama-3-8B's shape (random weights: no checkpoint exists on the GPU machine).
LLAMA3_8B_SHAPE = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=8192,
)
# Same architecture, small enough for a CPU smoke test in seconds.
TINY_SHAPE = dict(
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    max_position_embeddings=1024,
)
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


# --------------------------------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class Setup:
    """Where and how a benchmark runs."""

    tiny: bool
    device: torch.device
    dtype: torch.dtype
    seed: int


def base_parser(description: str) -> argparse.ArgumentParser:
    """Flags every benchmark has: ``--tiny``, ``--dtype``, ``--seed``, ``--out``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--tiny", action="store_true", help="tiny Llama on CPU with small sizes: a smoke test of the script")
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=None,
        help="weights and activations dtype (default: bfloat16 on a GPU, float32 with --tiny)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and of the random inputs (default: 0)")
    p.add_argument("--out", type=Path, default=None, help="write all figures as JSON to this file")
    return p


@dataclass(frozen=True)
class SizeFlag:
    """A flag whose default depends on ``--tiny``."""

    help: str
    full: Any
    tiny: Any


def add_size_flags(parser: argparse.ArgumentParser, flags: dict[str, SizeFlag]) -> None:
    """``--name-with-dashes`` for each entry, typed like its full-size default; see :func:`fill_defaults`."""
    for name, flag in flags.items():
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=type(flag.full),
            default=None,
            help=f"{flag.help} (default: {flag.full!r}; with --tiny: {flag.tiny!r})",
        )


def fill_defaults(args: argparse.Namespace, flags: dict[str, SizeFlag]) -> None:
    """Give every size flag left unset its full-size or ``--tiny`` default."""
    for name, flag in flags.items():
        if getattr(args, name) is None:
            setattr(args, name, flag.tiny if args.tiny else flag.full)


def resolve_setup(args: argparse.Namespace) -> Setup:
    if args.tiny:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        raise SystemExit("the full-size benchmark needs a CUDA GPU (16 GB of bf16 weights); --tiny runs on a CPU")
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float32 if device.type == "cpu" else torch.bfloat16)
    return Setup(tiny=args.tiny, device=device, dtype=dtype, seed=args.seed)


def build_model(setup: Setup, attn_implementation: str = "sdpa") -> LlamaForCausalLM:
    """A random Llama (Llama-3-8B-shaped, or tiny) built directly on the device, in eval mode, frozen.

    Constructing under the target device and default dtype allocates every weight once, where it lives:
    no float32 CPU copy of 8B parameters and no host-to-device transfer. ``post_init`` draws the weights
    from N(0, initializer_range = 0.02) (norm weights are ones), which is fast on the GPU.
    """
    config = LlamaConfig(**(TINY_SHAPE if setup.tiny else LLAMA3_8B_SHAPE), attn_implementation=attn_implementation)
    torch.manual_seed(setup.seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(setup.dtype)
    try:
        with setup.device:
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.eval().requires_grad_(False)
    return model


def param_counts(model: torch.nn.Module) -> dict[str, int]:
    """All parameters, and those outside the input embedding and the LM head.

    Scoring computes logits only for the response positions, so for most tokens the LM head costs
    nothing: the non-embedding count gives the tighter ceiling.
    """
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    outside = embed.numel() + (head.numel() if head.data_ptr() != embed.data_ptr() else 0)
    return {"total": total, "non_embedding": total - outside}


# --------------------------------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], Any], device: torch.device, iters: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of each of ``iters`` calls of ``fn``, after ``warmup`` untimed calls.

    Each call is synchronized on both ends, so a time includes all the GPU work the call queued.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def summarize(times: Sequence[float]) -> dict[str, float]:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "mean_s": statistics.fmean(times),
        "iters": len(times),
    }


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """Peak allocated memory since :func:`reset_peak` (``None`` on CPU, where it is not tracked)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def allocated_gib(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None


# ------------------------------------------------------------------------------------------ hardware ceilings


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 8192, iters: int = 10, warmup: int = 3) -> float:
    """Achieved dense ``n x n x n`` matrix-product rate, TFLOP/s (2 n^3 flops per product), on random data."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = time_fn(lambda: a @ b, device, iters, warmup)
    return 2 * n**3 / statistics.median(times) / 1e12


def copy_bandwidth_gbs(device: torch.device, nbytes: int = 2**31, iters: int = 10, warmup: int = 3) -> float:
    """Device-memory copy bandwidth, GB/s, counting bytes read plus bytes written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = time_fn(lambda: dst.copy_(src), device, iters, warmup)
    return 2 * nbytes / statistics.median(times) / 1e9


# ------------------------------------------------------------------------------------------------ reporting


def env_info(setup: Setup) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(setup.device),
        "dtype": str(setup.dtype).removeprefix("torch."),
        "tiny": setup.tiny,
    }
    if setup.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(setup.device)
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(setup.device).total_memory / 2**30
    return info


class Report:
    """Figures of one benchmark run, rewritten to ``path`` after every section.

    A section that raises is recorded as ``{"error": ...}`` and the run goes on: on a one-shot GPU run, an
    out-of-memory error in one measurement must not lose the others. :attr:`failed` tells the caller to
    exit non-zero at the end.
    """

    def __init__(self, path: Path | None, **meta: Any) -> None:
        self.path = path
        self.data: dict[str, Any] = dict(meta)
        self.failed: list[str] = []
        self.save()

    @contextmanager
    def section(self, name: str) -> Iterator[dict[str, Any]]:
        """``with report.section("x") as rec: rec["a"] = 1`` stores what the block filled in, even on error."""
        record: dict[str, Any] = {}
        self.data[name] = record
        print(f"\n== {name}", flush=True)
        start = time.perf_counter()
        try:
            yield record
        except Exception as err:  # noqa: BLE001 -- recorded and reported; the other sections still run
            traceback.print_exc()
            record["error"] = f"{type(err).__name__}: {err}"
            self.failed.append(name)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        finally:
            record["section_wall_s"] = time.perf_counter() - start
            self.save()

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2, default=str) + "\n")


def fmt(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` significant digits (thousands separated); ``-`` for missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 10**digits or abs(value) < 10 ** -(digits - 1)):
            return f"{value:,.0f}" if abs(value) >= 10**digits else f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


def print_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    """Print ``rows`` as an aligned text table; ``columns`` are ``(key, header)`` pairs.

    A column with no value in any row (e.g. GPU memory on a CPU run, errors in a clean run) is left out;
    with no rows, nothing is printed.
    """
    if not rows:
        return
    columns = [(key, header) for key, header in columns if any(row.get(key) is not None for row in rows)]
    cells = [[header for _, header in columns]] + [[fmt(row.get(key)) for key, _ in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    print(f"\n{title}")
    for i, r in enumerate(cells):
        # First column left-aligned (labels), numbers right-aligned.
        padded = [c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True))]
        print("  " + "  ".join(padded))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))
