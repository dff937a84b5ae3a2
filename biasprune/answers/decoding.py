"""The static decode path: preallocated keys and values, fixed-shape steps, CUDA graphs on a GPU.

The model runs its own Hugging Face forward, with its own hooks (pruning masks), but attention is routed
through :func:`_static_attention` (registered as the attention implementation ``biasprune_static`` for
the duration of a call). That function keeps every layer's keys and values in buffers allocated once per
call, ``[rows, kv_heads, length, head_dim]``: a decode step writes one column and attends over the
columns seen so far under a key mask. No cache grows (``DynamicCache`` concatenates per step) and no
causal mask is rebuilt per step.

Finished rows stay in the batch, masked, until the number of live rows falls to the next *bucket*: the
live rows are then moved to the front and the steps run on that many rows. On a GPU each bucket's step
(forward and token draw) is captured once as a CUDA graph and replayed; on a CPU the same step runs
eagerly, and the buckets are exact (the live rows, once a quarter of the batch has finished).

Hooks are taken as they are when a call starts (a graph replays what it captured): do not add or remove
hooks during a call. Models whose attention uses a binding sliding window, or whose attention modules do
not go through the Hugging Face attention interface, are not supported (:func:`static_support`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from biasprune.answers.streams import draw_tokens

__all__ = ["IMPLEMENTATION", "StaticUnsupported", "decode_static", "last_stats", "static_support"]

log = logging.getLogger(__name__)
IMPLEMENTATION = "biasprune_static"
_ACTIVE: list[StaticKV] = []  # the cache of the call in progress (the attention function has no other handle)
_LAST: dict = {}


def last_stats() -> dict:
    """What the latest :func:`decode_static` call ran: ``graphs`` (bucket sizes captured as CUDA graphs),
    ``eager_steps`` (steps run without a graph), ``buckets_used``, ``fixed``. For benchmarks and diagnostics."""
    return dict(_LAST)


def static_support(model: nn.Module, length: int) -> str | None:
    """Why the static path cannot run ``model`` for sequences of ``length`` tokens, or ``None`` when it can."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        return "the model has no Hugging Face config with an attention implementation"
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True) and int(window) < length:
        return f"its sliding window ({window} tokens) is shorter than prompt + answer ({length} tokens)"
    if getattr(config, "num_hidden_layers", None) is None:
        return "its config has no num_hidden_layers"
    return None


class StaticKV:
    """Keys, values and key mask of one call: ``rows`` sequences of up to ``length`` tokens.

    ``col`` is the column the next decode step writes: a Python int for exact-shape steps, which attend over
    the columns written so far; the tensor ``col_t`` for ``fixed`` shapes (CUDA graphs), where every step
    attends over all ``length`` columns and the key mask hides the future.
    """

    def __init__(self, rows: int, length: int, device: torch.device, fixed: bool) -> None:
        self.rows, self.length, self.device, self.fixed = rows, length, device, fixed
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.key_mask = torch.zeros(rows, 1, 1, length, dtype=torch.bool, device=device)
        self.col = 0
        self.col_t = torch.zeros(1, dtype=torch.long, device=device)
        self.prefill = False
        self.allowed: torch.Tensor | None = None  # this forward's mask (True = attend): [n, 1, q_len, keys]
        self._bias: torch.Tensor | None = None  # the same as an additive mask, made once per forward
        self.samples = 1
        self.calls = 0

    def set_mask(self, allowed: torch.Tensor) -> None:
        """The mask of the next forward; every layer uses it (converted once, to the query dtype)."""
        self.allowed, self._bias = allowed, None

    def bias(self, dtype: torch.dtype) -> torch.Tensor:
        if self._bias is None or self._bias.dtype != dtype:
            zero = torch.zeros((), dtype=dtype, device=self.device)
            self._bias = torch.where(self.allowed, zero, torch.full((), float("-inf"), dtype=dtype, device=self.device))
        return self._bias

    def buffers(self) -> list[torch.Tensor]:
        return [*self.keys.values(), *self.values.values(), self.key_mask]

    def attend(
        self, module: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale, softcap
    ) -> torch.Tensor:
        """``q [n, H, q_len, D]``, new ``k, v [n, H_kv, q_len, D]`` -> attention output ``[n, q_len, H, D]``."""
        layer = int(module.layer_idx)
        self.calls += 1
        if self.prefill:
            b, h_kv, p, d = k.shape
            if layer not in self.keys:
                self.keys[layer] = k.new_zeros(self.rows, h_kv, self.length, d)
                self.values[layer] = v.new_zeros(self.rows, h_kv, self.length, d)
            # Each prompt's cache is written once per answer: rows i*k .. i*k+k-1 share prompt i.
            shape = (b, self.samples, h_kv, self.length, d)
            self.keys[layer][: b * self.samples].view(shape)[:, :, :, :p] = k[:, None]
            self.values[layer][: b * self.samples].view(shape)[:, :, :, :p] = v[:, None]
            out = _attention(q, k, v, self.bias(q.dtype), scale, softcap)
        else:
            n = q.shape[0]
            keys, values = self.keys[layer][:n], self.values[layer][:n]
            if self.fixed:
                keys.index_copy_(2, self.col_t, k)
                values.index_copy_(2, self.col_t, v)
            else:
                keys[:, :, self.col] = k[:, :, 0]
                values[:, :, self.col] = v[:, :, 0]
                keys, values = keys[:, :, : self.col + 1], values[:, :, : self.col + 1]
            out = _attention(q, keys, values, self.bias(q.dtype), scale, softcap)
        return out.transpose(1, 2).contiguous()


def _attention(q, k, v, bias, scale, softcap) -> torch.Tensor:
    """Grouped-query attention with an additive mask ``bias`` (0 or -inf): ``[n, H, q_len, D]``."""
    n, heads, q_len, d = q.shape
    group = heads // k.shape[1]
    if softcap:  # Gemma-2 style logit soft-capping: written out, as the fused kernels do not offer it
        kr, vr = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        scores = torch.matmul(q, kr.transpose(-1, -2)) * (scale if scale is not None else d**-0.5)
        scores = torch.tanh(scores / softcap) * softcap + bias
        return torch.matmul(torch.softmax(scores.float(), -1).to(q.dtype), vr)
    if q_len == 1 and group > 1:
        # One query per step: the group's query heads become the "query length" of their KV head, so that
        # any kernel that accepts a mask runs it without repeating the keys and values.
        out = F.scaled_dot_product_attention(q.reshape(n, heads // group, group, d), k, v, attn_mask=bias, scale=scale)
        return out.reshape(n, heads, 1, d)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale, enable_gqa=group > 1)


def _static_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The attention implementation ``biasprune_static``: the call's :class:`StaticKV` does the work."""
    if not _ACTIVE:
        raise RuntimeError(f"attention implementation {IMPLEMENTATION!r} is only usable inside decode_static")
    return _ACTIVE[-1].attend(module, query, key, value, scaling, kwargs.get("softcap")), None


@contextlib.contextmanager
def _routed(model: nn.Module, state: StaticKV) -> Iterator[None]:
    """Route the model's attention through ``state`` (and restore its implementation afterwards)."""
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, _static_attention)
    try:  # some versions look the mask function up by implementation name even for a ready 4-D mask
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)
    except ImportError:  # pragma: no cover - older transformers
        pass
    previous = model.config._attn_implementation
    model.config._attn_implementation = IMPLEMENTATION
    _ACTIVE.append(state)
    try:
        yield
    finally:
        _ACTIVE.pop()
        model.config._attn_implementation = previous


def _buckets(rows: int, exact: bool) -> list[int]:
    """Row counts the steps run at, largest first: halving, rounded up to a multiple of 8 (CUDA graphs)."""
    if exact:
        return [rows]
    sizes = [rows]
    while sizes[-1] > 8:
        sizes.append(max(8, -(-sizes[-1] // 2 // 8) * 8))
    return sizes


class _Step:
    """One decode step on the first ``b`` rows: forward at column ``col`` and the draw of the next token.

    Under CUDA graphs, each bucket's step is run once eagerly (its warm-up, which is also the real step)
    and captured; later steps replay it. If capture fails, the call continues eagerly.
    """

    def __init__(
        self,
        forward: Callable[[int], torch.Tensor],
        draw: Callable[[torch.Tensor, int], torch.Tensor],
        out: torch.Tensor,
        graphs: bool,
    ) -> None:
        self.forward, self.draw, self.out, self.graphs = forward, draw, out, graphs
        self.captured: dict[int, torch.cuda.CUDAGraph] = {}
        self.pool = torch.cuda.graph_pool_handle() if graphs else None
        self.eager_steps = 0  # steps run without a graph (warm-ups included)

    def _run(self, b: int) -> None:
        self.out[:b].copy_(self.draw(self.forward(b), b))

    def __call__(self, b: int) -> None:
        if not self.graphs:
            self.eager_steps += 1
            return self._run(b)
        if b in self.captured:
            return self.captured[b].replay()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.eager_steps += 1
            self._run(b)  # warm-up and the real step: it only writes what a replay would write again
        torch.cuda.current_stream().wait_stream(side)
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self._run(b)
            self.captured[b] = graph
        except Exception as err:  # noqa: BLE001 -- a model that cannot be captured still decodes, eagerly
            log.warning("CUDA graph capture failed (%s: %s); decoding eagerly", type(err).__name__, err)
            self.graphs = False
            self.captured.clear()


class StaticUnsupported(RuntimeError):
    """The model's attention did not go through the static cache (see :func:`static_support`)."""


@torch.no_grad()
def decode_static(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_samples: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    stop_ids: list[int],
    pad_id: int,
    uniforms: torch.Tensor | None,
    fixed: bool | None = None,
    stats: dict | None = None,
) -> torch.Tensor:
    """New tokens ``[B * num_samples, max_new_tokens]`` of left-padded prompts (pad after a stop), sample-major.

    ``uniforms [B * num_samples, max_new_tokens]`` (float64, on the model's device; ``None`` when greedy)
    drive the draws, as in the eager path. ``fixed`` (default: on CUDA) runs fixed-shape steps over buckets
    of rows, captured as CUDA graphs on CUDA; otherwise each step runs on exactly the live rows. ``stats``,
    when given, receives what ran: ``graphs`` (buckets captured), ``eager_steps``, ``buckets_used``.
    """
    device = input_ids.device
    fixed = device.type == "cuda" if fixed is None else fixed
    n_prompts, p = input_ids.shape
    rows, steps = n_prompts * num_samples, max_new_tokens
    length = p + steps if not fixed else -(-(p + steps) // 16) * 16  # aligned rows for the fused kernels
    state = StaticKV(rows, length, device, fixed)

    pad = attention_mask.bool()
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    eye = torch.eye(p, dtype=torch.bool, device=device)
    # A padding position attends to itself only: no row of the mask is empty (that would give NaN values).
    state.set_mask((torch.ones_like(eye).tril() & (pad[:, None, :] | eye))[:, None])
    state.prefill = True
    state.samples = num_samples
    state.key_mask[:, 0, 0, :p] = pad.repeat_interleave(num_samples, 0)
    ready_mask = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device)  # a 4-D mask is passed through as is

    ids = torch.full((rows, 1), pad_id, dtype=torch.long, device=device)
    pos = position_ids[:, -1:].repeat_interleave(num_samples, 0).clone()
    tok = torch.full((rows, steps), pad_id, dtype=torch.long, device=device)
    alive = torch.ones(rows, dtype=torch.bool, device=device)
    origin = torch.arange(rows, device=device)  # output row of each live row; ``rows`` marks a filler row
    result = torch.full((rows, steps), pad_id, dtype=torch.long, device=device)
    vocab = max(int(model.config.vocab_size), max(stop_ids, default=0) + 1)
    is_stop = torch.zeros(vocab, dtype=torch.bool, device=device)
    is_stop[torch.tensor(stop_ids, dtype=torch.long, device=device)] = True
    step_t = torch.zeros(1, dtype=torch.long, device=device)
    nxt_buf = torch.zeros(rows, dtype=torch.long, device=device)
    U = None if uniforms is None else uniforms.clone()  # compacted in place with the rows

    def forward(b: int) -> torch.Tensor:
        if fixed:
            state.key_mask[:b].index_fill_(3, state.col_t, True)
            state.set_mask(state.key_mask[:b])
        else:
            state.key_mask[:b, :, :, state.col] = True
            state.set_mask(state.key_mask[:b, :, :, : state.col + 1])
        out = model(input_ids=ids[:b], attention_mask=ready_mask, position_ids=pos[:b], use_cache=False)
        return out.logits[:, -1]

    def draw(logits: torch.Tensor, b: int) -> torch.Tensor:
        u = None if U is None else U[:b].index_select(1, step_t).squeeze(1)
        return draw_tokens(logits, temperature, top_p, u)

    with _routed(model, state):
        out = model(
            input_ids=input_ids, attention_mask=ready_mask, position_ids=position_ids, use_cache=False, logits_to_keep=1
        )
        expected = int(model.config.num_hidden_layers)
        if state.calls != expected:
            raise StaticUnsupported(f"{state.calls} of {expected} attention layers went through the static cache")
        state.prefill = False
        nxt = draw_tokens(
            out.logits[:, -1].repeat_interleave(num_samples, 0), temperature, top_p, None if U is None else U[:, 0]
        )
        del out
        step = _Step(forward, draw, nxt_buf, fixed and device.type == "cuda")
        buckets = _buckets(rows, exact=not fixed)
        used = [rows]
        b = rows
        for t in range(steps):
            if t > 0:
                state.col = p + t - 1
                state.col_t.fill_(p + t - 1)
                step_t.fill_(t)
                step(b)
                nxt = nxt_buf[:b]
            tok[:b, t] = torch.where(alive[:b], nxt, pad_id)
            alive[:b] &= ~is_stop[nxt]
            n_alive = int(alive[:b].sum()) if t < steps - 1 else 0
            if n_alive == 0:
                break
            ids[:b, 0] = nxt
            pos[:b] += 1
            if fixed:
                target = min(s for s in buckets if s >= n_alive)
            else:  # compact once a quarter of the rows has finished: each compaction copies the cache
                target = n_alive if n_alive <= 0.75 * b else b
            if target < b:
                _flush(result, tok[:b], origin[:b], rows)
                keep = alive[:b].nonzero().flatten()
                sel = torch.cat([keep, keep[:1].expand(target - n_alive)])
                for x in (ids, pos, tok, alive, origin, *state.buffers(), *([] if U is None else [U])):
                    x[:target] = x.index_select(0, sel)
                origin[n_alive:target] = rows
                alive[n_alive:target] = False
                b = target
                used.append(b)
        _flush(result, tok[:b], origin[:b], rows)
    _LAST.clear()
    _LAST.update(graphs=sorted(step.captured), eager_steps=step.eager_steps, buckets_used=used, fixed=fixed)
    if stats is not None:
        stats.update(_LAST)
    return result


def _flush(result: torch.Tensor, tok: torch.Tensor, origin: torch.Tensor, rows: int) -> None:
    """Copy the live rows' tokens to their output rows (filler rows, ``origin == rows``, are skipped)."""
    real = origin < rows
    result[origin[real]] = tok[real]
