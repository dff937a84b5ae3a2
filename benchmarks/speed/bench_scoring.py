"""Throughput of gradient x activation scoring on a Llama-3-8B-shaped model, against baselines.

Measured in one run, on the same random batches and the same units (the six neuron projections of every
layer and the per-head input of every ``o_proj``):

* ``ours``: :func:`biasprune.scoring.gradxact.score_batch`, one forward and one backward per batch;
* ``fwd+bwd``: the same loss and backward with no hook at all, the floor for any hook-based method;
* ``captum/module``: captum's ``LayerGradientXActivation`` with one attribution object per module, as it is
  commonly used: one forward and backward per module (timed on one batch: it is slow);
* ``captum/list``: one ``LayerGradientXActivation`` over a list of modules; captum attributes to either
  the inputs or the outputs of all listed layers, so heads (o_proj inputs) take a second pass;
* ``naive``: plain autograd, ``retain_grad`` on every activation and ``loss.backward()`` per example.

Every baseline's scores go through the same reduction as ours, |sum over tokens| per example, and are
compared with ours. Throughput is set against the "4N ceiling": scoring costs about 2N flops per token
forward and 2N backward (activation gradients only, no weight gradients; attention's own flops left
out), so at the measured bf16 matmul rate R no implementation exceeds R / 4N tokens/s. A last section
times variants of the per-unit reduction ``sum_t a * g`` at the model's widths, to show what share of
ours it takes.

Run from the repository root::

    python -m benchmarks.speed.bench_scoring --out out/scoring.json     # one GPU, full size
    python -m benchmarks.speed.bench_scoring --tiny                       # CPU smoke test
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
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
from biasprune.core.hooks import HookSet
from biasprune.models.architectures import UnitLayout, resolve_units
from biasprune.scoring.capture import response_nll, token_dot
from biasprune.scoring.gradxact import score_batch

Scores = dict[str, torch.Tensor]  # unit-group key -> float32 [batch, n_units]

SIZES = {
    "batch_size": SizeFlag("examples per batch", 8, 4),
    "seq_len": SizeFlag("tokens per example", 512, 64),
    "response_len": SizeFlag("response tokens at the end of each example", 32, 8),
    "iters": SizeFlag("timed iterations of the fast methods (captum/module: always 1)", 10, 3),
    "warmup": SizeFlag("untimed iterations before timing", 3, 1),
    "matmul_size": SizeFlag("n of the n x n x n matmul that measures the rate", 8192, 256),
    "sweep": SizeFlag("more BATCHxSEQ shapes to time ours on, comma-separated, e.g. 16x512,64x128", "", "8x32"),
}


# ---------------------------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class Batch:
    """Right-padded token ids; the response is the last ``response_len`` real tokens of each row."""

    name: str
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor

    @property
    def shape(self) -> str:
        return "x".join(map(str, self.input_ids.shape))

    @property
    def examples(self) -> int:
        return self.input_ids.shape[0]

    @property
    def tokens(self) -> int:
        """Non-padding tokens: the work a method must do, whatever it spends on padding."""
        return int(self.attention_mask.sum())

    def row(self, i: int) -> Batch:
        """Example ``i`` alone, padding cut off (what a batch-1 loop feeds the model)."""
        n = int(self.attention_mask[i].sum())
        return Batch(
            f"{self.name}[{i}]",
            self.input_ids[i : i + 1, :n],
            self.attention_mask[i : i + 1, :n],
            self.response_mask[i : i + 1, :n],
        )


def make_batch(
    batch_size: int, seq_len: int, response_len: int, vocab: int, padded: bool, seed: int, device: torch.device
) -> Batch:
    """Random ids; with ``padded``, row lengths are drawn from [seq_len / 2, seq_len] (row 0 is full)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch_size, seq_len), generator=g)
    lengths = torch.full((batch_size,), seq_len)
    if padded:
        lengths = torch.randint(seq_len // 2, seq_len + 1, (batch_size,), generator=g)
        lengths[0] = seq_len
    pos = torch.arange(seq_len)
    attn = (pos < lengths[:, None]).long()
    resp = (attn.bool() & (pos >= (lengths[:, None] - response_len))).long()
    ids = ids * attn  # pad id 0
    name = f"{'padded' if padded else 'full'} {batch_size}x{seq_len}"
    return Batch(name, ids.to(device), attn.to(device), resp.to(device))


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``"16x512,64x128"`` -> ``[(16, 512), (64, 128)]``."""
    shapes: list[tuple[int, int]] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        b, _, t = item.partition("x")
        if not (b.isdigit() and t.isdigit()):
            raise SystemExit(f"--sweep: {item!r} is not BATCHxSEQ, e.g. 16x512")
        if (int(b), int(t)) not in shapes:
            shapes.append((int(b), int(t)))
    return shapes


# ------------------------------------------------------------------------------------------------ units


@dataclass(frozen=True)
class Target:
    """One unit group as the baselines see it: a module, and whether its units live in its input."""

    key: str
    module: nn.Module
    on_input: bool  # heads: the input of o_proj; neurons: the module's output
    n_heads: int = 0  # > 0: sum each head's head_dim channels


def targets_of(layout: UnitLayout) -> list[Target]:
    neurons = [Target(f"neuron/{u.path}", u.module, on_input=False) for u in layout.neurons]
    heads = [Target(f"head/{h.path}", h.o_proj, on_input=True, n_heads=h.n_heads) for h in layout.heads]
    return neurons + heads


def reduce_attribution(attr: torch.Tensor, attention_mask: torch.Tensor, n_heads: int = 0) -> torch.Tensor:
    """Per-example score from element-wise ``a * g`` ``[B, T, C]``: |sum over non-padding tokens| (float32).

    With ``n_heads``, the channels are ``n_heads`` consecutive head_dim blocks, summed per head: ``[B, H]``.
    """
    # detach: captum's attributions keep their activations' graph alive (the whole forward) as long as they live.
    summed = (attr.detach().float() * attention_mask[..., None]).sum(1)
    if n_heads:
        summed = summed.view(summed.shape[0], n_heads, -1).sum(-1)
    return summed.abs()


def agreement(ours: Scores, other: Scores) -> dict[str, float]:
    """How far ``other`` is from ``ours``.

    ``max_rel_diff``: the largest |difference|, relative to the largest score of the same unit group (an
    element-wise ratio explodes on scores that are ~0 by cancellation). ``median_rel_diff``: the median of
    element-wise |difference| / |ours| over scores above 1e-3 of their group's largest.
    """
    worst, ratios = 0.0, []
    for key, ref in ours.items():
        got = other[key].to(ref.device, torch.float32)
        scale = ref.abs().max().clamp(min=torch.finfo(torch.float32).tiny)
        diff = (got - ref).abs()
        worst = max(worst, float(diff.max() / scale))
        big = ref.abs() > 1e-3 * scale
        ratios.append((diff[big] / ref.abs()[big]).flatten())
    return {"max_rel_diff": worst, "median_rel_diff": float(torch.cat(ratios).median())}


# ----------------------------------------------------------------------------------------------- methods


def ours(model: nn.Module, layout: UnitLayout, batch: Batch) -> Scores:
    return score_batch(model, layout, batch.input_ids, batch.attention_mask, batch.response_mask).scores


def plain_fwd_bwd(model: nn.Module, batch: Batch) -> None:
    """The scoring loss and its backward to the input embeddings, with no hook."""
    embeds = model.get_input_embeddings()(batch.input_ids).detach().requires_grad_(True)
    with torch.enable_grad():
        losses = response_nll(model, batch.input_ids, batch.attention_mask, batch.response_mask, inputs_embeds=embeds)
        torch.autograd.grad(losses.sum(), embeds)


def naive(model: nn.Module, targets: list[Target], batch: Batch) -> Scores:
    """One example at a time: keep every activation with ``retain_grad``, ``loss.backward()``, reduce."""
    rows: list[Scores] = []
    acts: dict[str, torch.Tensor] = {}

    def keep(key: str, tensor: torch.Tensor) -> None:
        tensor.retain_grad()
        acts[key] = tensor

    for i in range(batch.examples):
        ex = batch.row(i)
        with HookSet() as hooks:
            for t in targets:
                if t.on_input:
                    hooks.forward_pre(t.module, lambda m, args, k=t.key: keep(k, args[0]))
                else:
                    hooks.forward(t.module, lambda m, args, out, k=t.key: keep(k, out))
            # Parameters are frozen: the embeddings are the leaf that makes the graph (as in ours).
            embeds = model.get_input_embeddings()(ex.input_ids).detach().requires_grad_(True)
            with torch.enable_grad():
                loss = response_nll(model, ex.input_ids, ex.attention_mask, ex.response_mask, inputs_embeds=embeds)
                loss.sum().backward()
        row: Scores = {}
        for t in targets:
            a = acts.pop(t.key)
            row[t.key] = reduce_attribution(a.detach().float() * a.grad.float(), ex.attention_mask, t.n_heads)
        rows.append(row)
    return {t.key: torch.cat([r[t.key] for r in rows]) for t in targets}


def load_captum_lgxa() -> tuple[type, str]:
    """captum's ``LayerGradientXActivation`` class and captum's version, imported only when needed."""
    try:
        import captum
        from captum.attr import LayerGradientXActivation
    except ImportError as err:  # captum, or matplotlib/PIL that it imports, may be missing on the GPU machine
        raise RuntimeError(f"captum is not importable ({err}); install the wheel carried in .whl/") from err
    return LayerGradientXActivation, captum.__version__


def captum_forward(model: nn.Module) -> Callable[..., torch.Tensor]:
    """Captum's forward function: per-example losses ``[B]``; captum backpropagates their sum."""

    def forward(embeds: torch.Tensor, input_ids, attention_mask, response_mask) -> torch.Tensor:
        return response_nll(model, input_ids, attention_mask, response_mask, inputs_embeds=embeds)

    return forward


def _captum_args(model: nn.Module, batch: Batch) -> dict[str, Any]:
    # Embeddings without requires_grad: captum makes each hooked activation require grad itself, so a
    # single-module attribution builds the graph from that module on only (the cheapest captum can do).
    embeds = model.get_input_embeddings()(batch.input_ids).detach()
    return dict(inputs=embeds, additional_forward_args=(batch.input_ids, batch.attention_mask, batch.response_mask))


def captum_per_module(model: nn.Module, targets: list[Target], batch: Batch, lgxa: type) -> Scores:
    """One ``LayerGradientXActivation`` per module: a forward and a backward for each of them."""
    forward, args = captum_forward(model), _captum_args(model, batch)
    out: Scores = {}
    for t in targets:
        attr = lgxa(forward, t.module).attribute(**args, attribute_to_layer_input=t.on_input)
        out[t.key] = reduce_attribution(attr, batch.attention_mask, t.n_heads)
    return out


def captum_list(model: nn.Module, targets: list[Target], batch: Batch, lgxa: type) -> Scores:
    """One ``LayerGradientXActivation`` per side (outputs, inputs), each given the list of its modules."""
    forward, args = captum_forward(model), _captum_args(model, batch)
    out: Scores = {}
    for on_input in (False, True):
        group = [t for t in targets if t.on_input == on_input]
        if not group:
            continue
        attrs = lgxa(forward, [t.module for t in group]).attribute(**args, attribute_to_layer_input=on_input)
        for t, attr in zip(group, attrs, strict=True):
            out[t.key] = reduce_attribution(attr, batch.attention_mask, t.n_heads)
        del attrs
    return out


# ------------------------------------------------------------------------------------ the per-unit reduction

TokenDot = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (a, g, mask [B,T,1]) -> [B, C]


def token_dot_variants(device: torch.device) -> dict[str, TokenDot]:
    """Ways to compute ``sum_t a * g`` per example and channel, for the package's ``token_dot`` to be judged.

    The reduction is memory-bound: what matters is how many times each element crosses memory.
    """
    variants: dict[str, TokenDot] = {
        "fp32 mul + sum": lambda a, g, m: (a.float() * g.float() * m).sum(1),
        "bf16 product, fp32 sum": lambda a, g, m: (a * g).mul_(m.to(a.dtype)).sum(1, dtype=torch.float32),
    }
    variants = {"package token_dot": token_dot} | variants
    if device.type == "cuda":  # on CPU, inductor needs a C++ toolchain and compiles for minutes
        variants["fp32, torch.compile"] = torch.compile(lambda a, g, m: (a.float() * g.float() * m).sum(1))
    return variants


def bench_token_dot(
    layout: UnitLayout, batch: Batch, dtype: torch.dtype, iters: int, ours_s: float | None
) -> list[dict[str, Any]]:
    """Time each reduction variant at every channel width of the layout; extrapolate to one scored batch."""
    device = batch.input_ids.device
    widths = [u.module.out_features for u in layout.neurons] + [h.o_proj.in_features for h in layout.heads]
    B, T = batch.input_ids.shape
    mask = batch.attention_mask[..., None].float()
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(c: int) -> torch.Tensor:
        return torch.randn(B, T, c, generator=gen, device=device, dtype=dtype)

    tensors = {c: (randn(c), randn(c)) for c in sorted(set(widths))}
    refs = {c: (a.double() * b.double() * mask.double()).sum(1) for c, (a, b) in tensors.items()}
    rows = []
    for name, fn in token_dot_variants(device).items():
        row: dict[str, Any] = {"variant": name}
        rows.append(row)
        per_width, err = {}, 0.0
        try:
            for c, (a, b) in tensors.items():
                call = partial(fn, a, b, mask)
                per_width[c] = summarize(time_fn(call, device, iters, warmup=2))["median_s"]
                err = max(err, float((fn(a, b, mask).double() - refs[c]).abs().max() / refs[c].abs().max()))
        except Exception as e:  # noqa: BLE001 -- e.g. torch.compile failing: the other variants still count
            row["error"] = f"{type(e).__name__}: {e}"
            print(f"{name}: {row['error']}", flush=True)
            continue
        per_batch = sum(per_width[c] for c in widths)
        row.update(
            ms_per_width={c: t * 1e3 for c, t in per_width.items()},
            ms_per_batch=per_batch * 1e3,
            frac_of_ours=None if ours_s is None else per_batch / ours_s,
            max_rel_err=err,
        )
        print(f"{name}: {per_batch * 1e3:.2f} ms per {batch.shape} batch, max rel err {err:.1e}", flush=True)
    return rows


# ------------------------------------------------------------------------------------------- measurement


class Bench:
    """Times methods on batches and records one result row per measurement."""

    def __init__(self, setup: Setup, report: Report, ceiling_tokens_s: dict[str, float]) -> None:
        self.setup = setup
        self.report = report
        self.ceiling = ceiling_tokens_s
        self.rows: list[dict[str, Any]] = []
        self.ours_time: dict[str, float] = {}  # batch name -> ours' median seconds
        self.ours_scores: dict[str, Scores] = {}

    def measure(
        self, method: str, batch: Batch, fn: Callable[[], Scores | None], iters: int, warmup: int
    ) -> Scores | None:
        """Time ``fn`` on ``batch``; record throughput, peak memory, speed-up of ours, and agreement."""
        name = f"{method} @ {batch.name}"
        result: Scores | None = None
        with self.report.section(name) as rec:
            rec.update(method=method, batch=batch.name, shape=batch.shape, examples=batch.examples, tokens=batch.tokens)
            self.rows.append(rec)
            before = allocated_gib(self.setup.device)

            def call() -> None:
                nonlocal result
                result = None  # free the previous call's scores first
                result = fn()

            reset_peak(self.setup.device)
            rec.update(summarize(time_fn(call, self.setup.device, iters, warmup)))
            seconds = rec["median_s"]
            rec["median_ms"] = seconds * 1e3
            peak = peak_gib(self.setup.device)
            rec.update(
                tokens_per_s=batch.tokens / seconds,
                examples_per_s=batch.examples / seconds,
                peak_gib=peak,
                extra_gib=None if peak is None else peak - before,
                frac_ceiling=batch.tokens / seconds / self.ceiling["total"],
                frac_ceiling_non_embedding=batch.tokens / seconds / self.ceiling["non_embedding"],
            )
            if method == "ours":
                self.ours_time[batch.name] = seconds
                self.ours_scores[batch.name] = result
            elif batch.name in self.ours_time:
                rec["ours_speedup"] = seconds / self.ours_time[batch.name]
                if result is not None:
                    rec.update(agreement(self.ours_scores[batch.name], result))
            print(
                f"{name}: {seconds * 1e3:.1f} ms, {rec['tokens_per_s']:,.0f} tok/s"
                + (f", ours is {rec['ours_speedup']:.2f}x as fast" if "ours_speedup" in rec else "")
                + (f", max rel diff {rec['max_rel_diff']:.2e}" if "max_rel_diff" in rec else ""),
                flush=True,
            )
        return result


def main(argv: list[str] | None = None) -> int:
    p = base_parser(__doc__.split("\n\n")[0])
    add_size_flags(p, SIZES)
    p.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["captum-module", "captum-list", "naive", "fwd-bwd", "token-dot"],
        help="measurements to leave out (default: none)",
    )
    args = p.parse_args(argv)
    fill_defaults(args, SIZES)
    setup = resolve_setup(args)
    report = Report(args.out, env=env_info(setup), args=vars(args))

    with report.section("model") as rec:
        model = build_model(setup)
        layout = resolve_units(model)
        targets = targets_of(layout)
        counts = param_counts(model)
        rec.update(
            params=counts,
            unit_groups=len(targets),
            neurons=sum(u.size for u in layout.neurons),
            heads=sum(h.size for h in layout.heads),
            weights_gib=allocated_gib(setup.device),
        )
        units = f"{len(targets)} unit groups: {rec['neurons']:,} neurons, {rec['heads']} heads"
        print(f"{counts['total']:,} parameters, {units}")
    with report.section("hardware") as rec:
        rate = matmul_tflops(setup.device, setup.dtype, args.matmul_size)
        ceiling = {k: rate * 1e12 / (4 * n) for k, n in counts.items()}
        rec.update(matmul_tflops=rate, matmul_size=args.matmul_size, ceiling_tokens_per_s=ceiling)
        print(f"{args.matmul_size}^3 matmul: {rate:.1f} TFLOP/s -> 4N ceiling {ceiling['total']:,.0f} tok/s")
    if report.failed:
        return 1  # nothing to measure without the model and the ceiling

    def batch(batch_size: int, seq_len: int, padded: bool = False) -> Batch:
        # One seed for all: the padded batch is the full batch with rows cut short.
        vocab = model.config.vocab_size
        return make_batch(batch_size, seq_len, args.response_len, vocab, padded, setup.seed, setup.device)

    full, padded = batch(args.batch_size, args.seq_len), batch(args.batch_size, args.seq_len, padded=True)
    sweep = [batch(b, t) for b, t in parse_shapes(args.sweep) if (b, t) != (args.batch_size, args.seq_len)]

    bench = Bench(setup, report, ceiling)
    fast = dict(iters=args.iters, warmup=args.warmup)
    for b in [full, padded, *sweep]:
        bench.measure("ours", b, lambda b=b: ours(model, layout, b), **fast)
    if "fwd-bwd" not in args.skip:
        bench.measure("fwd+bwd (no hooks)", full, lambda: plain_fwd_bwd(model, full), **fast)
    if "naive" not in args.skip:
        for b in (full, padded):  # padded: the trimmed batch-1 rows must give the same scores
            bench.measure("naive (batch 1)", b, lambda b=b: naive(model, targets, b), iters=2, warmup=1)
    lgxa = None
    if not {"captum-list", "captum-module"} <= set(args.skip):
        with report.section("captum") as rec:
            lgxa, rec["version"] = load_captum_lgxa()
            print(f"captum {rec['version']}")
    if lgxa is not None and "captum-list" not in args.skip:
        few = dict(iters=min(3, args.iters), warmup=1)
        bench.measure("captum/list", full, lambda: captum_list(model, targets, full, lgxa), **few)
    if lgxa is not None and "captum-module" not in args.skip:  # slow: one batch, no warm-up
        once = dict(iters=1, warmup=0)
        bench.measure("captum/module", full, lambda: captum_per_module(model, targets, full, lgxa), **once)
    if "token-dot" not in args.skip:
        with report.section("token_dot") as rec:  # last: torch.compile's first compilation takes a while
            rec["variants"] = bench_token_dot(layout, full, setup.dtype, args.iters, bench.ours_time.get(full.name))

    print_table(
        f"Scoring {len(targets)} unit groups; 4N ceiling = {ceiling['total']:,.0f} tok/s at {rate:.1f} TFLOP/s"
        f" (non-embedding N: {ceiling['non_embedding']:,.0f} tok/s)",
        bench.rows,
        [
            ("method", "method"),
            ("batch", "batch"),
            ("median_ms", "ms/batch"),
            ("tokens_per_s", "tok/s"),
            ("examples_per_s", "ex/s"),
            ("frac_ceiling", "of 4N"),
            ("peak_gib", "peak GiB"),
            ("ours_speedup", "ours speed-up"),
            ("max_rel_diff", "max rel diff"),
            ("median_rel_diff", "median rel diff"),
            ("error", "error"),
        ],
    )
    print_table(
        f"The per-unit reduction sum_t a*g, summed over the {len(targets)} unit groups of one {full.shape} batch",
        report.data.get("token_dot", {}).get("variants", []),
        [
            ("variant", "variant"),
            ("ms_per_batch", "ms/batch"),
            ("frac_of_ours", "of ours"),
            ("max_rel_err", "max rel err"),
            ("error", "error"),
        ],
    )
    if report.failed:
        print(f"\nfailed sections: {report.failed}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
