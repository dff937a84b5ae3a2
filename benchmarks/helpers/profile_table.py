"""Where a decode step spends its time: a torch.profiler run grouped into GEMM, attention, the draw and the rest.

:func:`profile_run` profiles one call of a function and returns (a) the top operators by device time (self time,
so nothing is counted twice) and (b) their sum per category:

* ``gemm``: matrix multiplications (cuBLAS/cutlass kernels and the ``aten::mm``/``addmm``/``bmm`` family);
* ``attention``: scaled-dot-product and flash/efficient attention kernels;
* ``draw``: softmax, top-k/top-p filtering, sorting, multinomial sampling and random numbers;
* ``copy``: memory copies, index and cat (the cache writes and the host-device traffic);
* ``other``: every other device kernel (norms, activations, elementwise).

The host side is the profiled wall time minus the device-busy time (device kernels do not overlap on one stream
here); a step whose host time exceeds its device time is launch-bound. On CPU every figure is host time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

__all__ = ["CATEGORIES", "category", "profile_run"]

CATEGORIES = ("gemm", "attention", "draw", "copy", "other")

_PATTERNS = {
    "attention": ("attention", "flash", "fmha", "sdpa", "softmax_kernel_attn", "_efficient_attention"),
    "gemm": ("gemm", "cublas", "cutlass", "aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear",
             "sm90_xmma", "nvjet", "ampere_", "splitk"),
    "draw": ("softmax", "multinomial", "topk", "sort", "cumsum", "uniform", "exponential", "philox", "argmax", "gumbel"),
    "copy": ("memcpy", "memset", "copy", "index", "cat", "scatter", "gather"),
}


def category(name: str) -> str:
    """The category of an operator or kernel name (first match in the order attention, gemm, draw, copy)."""
    low = name.lower()
    for cat in ("attention", "gemm", "draw", "copy"):
        if any(p in low for p in _PATTERNS[cat]):
            return cat
    return "other"


def profile_run(fn: Callable[[], Any], device: torch.device, top: int = 15) -> dict[str, Any]:
    """Profile one call of ``fn``; returns wall seconds, device seconds per category, host seconds and the top rows."""
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
    events = prof.key_averages()

    def own(e: Any) -> float:  # self device time in seconds (self CPU time on CPU)
        us = getattr(e, "self_device_time_total", None) if cuda else e.self_cpu_time_total
        return (us if us is not None else getattr(e, "self_cuda_time_total", 0.0)) / 1e6

    # On CUDA, count the kernels (device events) only: the host ops that launch them report the same device time.
    kept = [e for e in events if not cuda or str(getattr(e, "device_type", "")).endswith("CUDA")]
    rows = [{"name": e.key, "category": category(e.key), "calls": e.count, "self_s": own(e)} for e in kept]
    rows = [r for r in rows if r["self_s"] > 0]
    by_cat = dict.fromkeys(CATEGORIES, 0.0)
    for r in rows:
        by_cat[r["category"]] += r["self_s"]
    busy = sum(by_cat.values())
    rows.sort(key=lambda r: r["self_s"], reverse=True)
    return {
        "wall_s": wall,
        "device_busy_s": busy if cuda else None,
        "host_only_s": max(wall - busy, 0.0) if cuda else wall,
        "by_category_s": by_cat,
        "by_category_share": {c: (v / busy if busy else 0.0) for c, v in by_cat.items()},
        "top": [r | {"share": r["self_s"] / busy if busy else 0.0} for r in rows[:top]],
    }
