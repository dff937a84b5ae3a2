"""The static decode path: shared-prefix keys and values, fixed-shape steps, CUDA graphs on a GPU.

The model runs its own Hugging Face forward, with its own hooks (pruning masks), but attention is routed
through :func:`_static_attention` (registered as the attention implementation ``biasprune_static`` for
the duration of a call). Keys and values live at three levels, each computed once and read by every row
that shares it (:class:`StaticKV`):

* **shared**: the prefix common to the batch's prompts (the chat template's system part, and the scenario text
  up to the name), ``[1, kv_heads, S, head_dim]``, prefilled once per batch;
* **prompt**: each prompt's remainder, ``[prompts, kv_heads, P, head_dim]``, prefilled once per prompt;
* **answer**: each answer's own tokens, ``[prompts * k, kv_heads, steps, head_dim]``: a decode step writes one
  column.

A decode query of answer ``j`` of prompt ``i`` attends to the shared keys, to prompt ``i``'s keys and to its
own: one softmax over the three score blocks (:func:`_attend`). The k answers of a prompt read its keys once
(their queries are stacked, as the query heads of a key head are), so neither the prompt's prefill nor its
keys are repeated k times. Positions count real tokens (:class:`biasprune.answers.prefix.PromptBatch`), so
sliding windows and Gemma-2's logit soft-capping are applied exactly as the model's own attention does.

Finished rows stay in the batch, masked, until the number of live rows falls to the next *bucket*: the
live rows are then moved to the front and the steps run on that many rows. On a GPU each bucket's step
(forward and token draw) is captured once as a CUDA graph and replayed; on a CPU the same step runs
eagerly, and the buckets are exact (the live rows, once a quarter of the batch has finished).

Hooks are taken as they are when a call starts (a graph replays what it captured): do not add or remove
hooks during a call. Models whose attention modules do not go through the Hugging Face attention interface
are not supported (:func:`static_support`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from biasprune.answers.prefix import PromptBatch
from biasprune.answers.streams import draw_tokens

__all__ = ["IMPLEMENTATION", "StaticKV", "StaticUnsupported", "decode_static", "last_logits_only", "static_support"]

log = logging.getLogger(__name__)
IMPLEMENTATION = "biasprune_static"
_ACTIVE: list[StaticKV] = []  # the cache of the call in progress (the attention function has no other handle)


class StaticUnsupported(RuntimeError):
    """The model's attention did not go through the static cache (see :func:`static_support`)."""


def static_support(model: nn.Module) -> str | None:
    """Why the static path cannot run ``model``, or ``None`` when it can."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        return "the model has no Hugging Face config with an attention implementation"
    if getattr(config, "num_hidden_layers", None) is None:
        return "its config has no num_hidden_layers"
    return None


def _window_of(config) -> int | None:
    """The config's sliding window, if it has one in use."""
    window = getattr(config, "sliding_window", None)
    return int(window) if window is not None and getattr(config, "use_sliding_window", True) else None


# ----------------------------------------------------------------------------------------- attention


@dataclass
class _Level:
    """One block of keys for a forward's queries.

    ``kind``: ``own`` (one key row per query row), ``shared`` (one key row for all) or ``grouped`` (key row
    ``slot // k`` for query row ``slot``). ``allowed`` (True = attend) is ``[n or 1, q_len, keys]`` or None.
    """

    keys: torch.Tensor
    values: torch.Tensor
    kind: str
    allowed: torch.Tensor | None


def _stack_by_prompt(x: torch.Tensor, slot: torch.Tensor | None, prompts: int, k: int) -> torch.Tensor:
    """Rows ``x [n, h, G, E]`` into ``[prompts, h, k * G, E]``: the k answers of a prompt side by side
    (``slot`` places row r as answer ``slot % k`` of prompt ``slot // k``; None: rows are already in slot order)."""
    n, h, g, e = x.shape
    if slot is not None:
        x = x.new_zeros(prompts * k, h, g, e).index_copy_(0, slot, x)
    return x.view(prompts, k, h, g, e).transpose(1, 2).reshape(prompts, h, k * g, e)


def _unstack_by_prompt(y: torch.Tensor, slot: torch.Tensor | None, k: int) -> torch.Tensor:
    """The inverse of :func:`_stack_by_prompt` on ``y [prompts, h, k * G, F]``: ``[n, h, G, F]``."""
    b, h, kg, f = y.shape
    y = y.view(b, h, k, kg // k, f).transpose(1, 2).reshape(b * k, h, kg // k, f)
    return y if slot is None else y.index_select(0, slot)


def _product(x: torch.Tensor, m: torch.Tensor, level: _Level, slot, k: int) -> torch.Tensor:
    """``x [n, h, G, E] @ m`` per query row, with ``m [rows of the level, h, E, F]``: ``[n, h, G, F]``."""
    if level.kind == "own":
        return x @ m
    if level.kind == "shared":
        n, h, g, e = x.shape
        return (x.transpose(0, 1).reshape(h, n * g, e) @ m[0]).view(h, n, g, -1).transpose(0, 1)
    return _unstack_by_prompt(_stack_by_prompt(x, slot, m.shape[0], k) @ m, slot, k)


def _attend(q: torch.Tensor, levels: list[_Level], scale: float | None, softcap: float | None, slot, k: int) -> torch.Tensor:
    """Grouped-query attention over several key blocks with one softmax: ``q [n, H, q_len, D]`` ->
    ``[n, q_len, H, D]``.

    softmax over all blocks of ``s = q . key * scale`` (``softcap * tanh(s / softcap)`` when soft-capped),
    with disallowed keys at -inf; query head ``h`` reads key head ``h // (H / kv_heads)``. Computed in
    float32 for half-precision inputs.
    """
    n, heads, q_len, d = q.shape
    kv_heads = levels[0].keys.shape[1]
    group = heads // kv_heads
    work = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    qg = q.reshape(n, kv_heads, group * q_len, d).to(work)
    blocks = [_product(qg, lv.keys.to(work).transpose(-1, -2), lv, slot, k) for lv in levels]
    widths = [b.shape[-1] for b in blocks]
    s = torch.cat(blocks, -1) * (scale if scale is not None else d**-0.5)
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    allowed = torch.cat(
        [(lv.allowed if lv.allowed is not None else qg.new_ones((1, q_len, w), dtype=torch.bool)).expand(n, q_len, w)
         for lv, w in zip(levels, widths)],
        -1,
    )
    s = s.view(n, kv_heads, group, q_len, -1).masked_fill(~allowed[:, None, None], float("-inf"))
    p = torch.softmax(s, -1).view(n, kv_heads, group * q_len, -1)
    parts = [_product(pp, lv.values.to(work), lv, slot, k) for pp, lv in zip(p.split(widths, -1), levels)]
    out = parts[0]
    for part in parts[1:]:
        out = out + part
    return out.reshape(n, heads, q_len, d).transpose(1, 2).to(q.dtype).contiguous()


class StaticKV:
    """Keys and values of one call at three levels (module docstring), and the state of the forward in progress.

    ``phase`` says what the next forward is: ``prefix`` (the shared prefix, one row), ``prompts`` (the remainders,
    one row per prompt) or ``decode`` (one token per answer row). In ``decode``, ``slot[r]`` names answer row r
    (answer ``slot % k`` of prompt ``slot // k``); ``col`` is the answer column the step writes: a Python int for
    exact-shape steps, which attend over the columns written so far; the tensor ``col_t`` for ``fixed`` shapes
    (CUDA graphs), where every step attends over all columns and a mask hides the future.
    """

    def __init__(self, batch: PromptBatch, samples: int, steps: int, fixed: bool) -> None:
        device = batch.device
        self.prompts, self.samples, self.fixed = batch.n_prompts, samples, fixed
        self.rows = batch.n_prompts * samples
        self.columns = max(steps - 1, 1)  # the last drawn token is never fed back
        self.shared: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.prompt: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.answer: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.prefix_pos = torch.arange(batch.prefix_len, device=device)
        self.prompt_pos, self.prompt_valid = batch.positions(), batch.mask.bool()
        self.answer_start = (batch.last_positions() + 1).repeat_interleave(samples)  # position of column 0, per slot
        self.slot = torch.arange(self.rows, device=device)
        self.col = 0
        self.col_t = torch.zeros(1, dtype=torch.long, device=device)
        self.phase = "prefix"
        self.n = 1
        self.query_pos = self.prefix_pos[None]
        self.window_needed: int | None = None  # a binding window that a layer must be told about
        self.calls = 0
        self._allowed: dict = {}

    def begin(self, phase: str, n: int, query_pos: torch.Tensor) -> None:
        """Announce the next forward: its phase, its rows and its queries' positions ``[n, q_len]``."""
        self.phase, self.n, self.query_pos = phase, n, query_pos
        self.calls, self._allowed = 0, {}

    def buffers(self) -> list[torch.Tensor]:
        """The tensors indexed by answer row (compacted with the rows)."""
        return [self.slot, *(t for kv in self.answer.values() for t in kv)]

    # ----------------------------------------------------------------------------------- masks
    def _window(self, key_pos: torch.Tensor, window: int | None) -> torch.Tensor | None:
        """``key_pos [n or 1, keys]`` against the queries: True where ``key > query - window``."""
        if window is None:
            return None
        return key_pos[:, None, :] > self.query_pos[:, :, None] - window

    def _masks(self, window: int | None) -> list[torch.Tensor | None]:
        """This forward's allowed-key masks per level (made once per forward and window size)."""
        if window in self._allowed:
            return self._allowed[window]
        if self.phase == "prefix":
            s = self.prefix_pos.shape[0]
            masks = [_both(torch.ones(s, s, dtype=torch.bool, device=self.slot.device).tril()[None], self._window(self.prefix_pos[None], window))]
        elif self.phase == "prompts":
            p = self.prompt_pos.shape[1]
            causal = torch.ones(p, p, dtype=torch.bool, device=self.slot.device).tril()
            # A padding position attends to itself only (no empty row, so no NaN anywhere).
            own = (_both(causal & self.prompt_valid[:, None, :], self._window(self.prompt_pos, window))) | torch.eye(
                p, dtype=torch.bool, device=causal.device
            )
            masks = [self._window(self.prefix_pos[None], window), own]
        else:
            n, prompt_of = self.n, self.slot[: self.n] // self.samples
            prompt = _both(self.prompt_valid.index_select(0, prompt_of)[:, None], self._window(self.prompt_pos.index_select(0, prompt_of), window))
            cols = torch.arange(self.columns if self.fixed else self.col + 1, device=prompt_of.device)
            answer = (cols <= self.col_t)[None, None] if self.fixed else None
            answer = _both(answer, self._window(self.answer_start.index_select(0, self.slot[:n])[:, None] + cols, window))
            masks = [self._window(self.prefix_pos[None], window), prompt, answer]
        self._allowed[window] = masks
        return masks

    # ------------------------------------------------------------------------------- attention
    def attend(self, module: nn.Module, q, k, v, scale, softcap, window: int | None) -> torch.Tensor:
        """``q [n, H, q_len, D]``, new ``k, v [n, H_kv, q_len, D]`` -> attention output ``[n, q_len, H, D]``."""
        layer = int(module.layer_idx)
        self.calls += 1
        masks = self._masks(window)
        if self.phase == "prefix":
            self.shared[layer] = (k, v)
            return _attend(q, [_Level(k, v, "own", masks[0])], scale, softcap, None, 1)
        if self.phase == "prompts":
            self.prompt[layer] = (k, v)
            levels = [_Level(k, v, "own", masks[1])]
            if layer in self.shared:
                levels.insert(0, _Level(*self.shared[layer], "shared", masks[0]))
            return _attend(q, levels, scale, softcap, None, 1)
        n = q.shape[0]
        if layer not in self.answer:
            shape = (self.rows, k.shape[1], self.columns, k.shape[3])
            self.answer[layer] = (k.new_zeros(shape), v.new_zeros(shape))
        keys, values = (t[:n] for t in self.answer[layer])
        if self.fixed:
            keys.index_copy_(2, self.col_t, k)
            values.index_copy_(2, self.col_t, v)
        else:
            keys[:, :, self.col] = k[:, :, 0]
            values[:, :, self.col] = v[:, :, 0]
            keys, values = keys[:, :, : self.col + 1], values[:, :, : self.col + 1]
        levels = [_Level(*self.prompt[layer], "grouped", masks[1]), _Level(keys, values, "own", masks[2])]
        if layer in self.shared:
            levels.insert(0, _Level(*self.shared[layer], "shared", masks[0]))
        slot = None if n == self.rows else self.slot[:n]  # all rows, never compacted: slot r is row r
        return _attend(q, levels, scale, softcap, slot, self.samples)


def _both(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """``a & b`` where None means "all allowed"."""
    if a is None:
        return b
    return a if b is None else a & b


def _static_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The attention implementation ``biasprune_static``: the call's :class:`StaticKV` does the work."""
    if not _ACTIVE:
        raise RuntimeError(f"attention implementation {IMPLEMENTATION!r} is only usable inside decode_static")
    state = _ACTIVE[-1]
    if state.window_needed is not None and "sliding_window" not in kwargs:
        raise StaticUnsupported(
            f"the config has a sliding window of {state.window_needed} tokens, but layer {module.layer_idx} does not"
            " pass its window to the attention function"
        )
    return state.attend(module, query, key, value, scaling, kwargs.get("softcap"), kwargs.get("sliding_window")), None


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


# -------------------------------------------------------------------------------------------- prefill


_READY_MASK_SHAPE = (1, 1, 1, 1)  # a 4-D mask is passed through the model's mask code as it is


def _forward(model: nn.Module, state: StaticKV, ids: torch.Tensor, pos: torch.Tensor, **kw) -> torch.Tensor:
    """One routed forward (``state.begin`` already called): the last position's logits ``[n, V]``."""
    ready = torch.ones(_READY_MASK_SHAPE, dtype=torch.bool, device=ids.device)
    out = model(input_ids=ids, attention_mask=ready, position_ids=pos, use_cache=False, **kw)
    return out.logits[:, -1]


def last_logits_only(ids: torch.Tensor) -> torch.Tensor:
    """``logits_to_keep`` for the last column of ``ids [n, L]``: an index tensor, so that the model gathers a
    contiguous ``[n, 1, hidden]`` for its LM head (a slice is a strided view, which the CPU multiplies as n
    separate products, about 10x slower per row)."""
    return torch.tensor([ids.shape[1] - 1], device=ids.device)


def _prefill(model: nn.Module, state: StaticKV, batch: PromptBatch) -> torch.Tensor:
    """Prefill the shared prefix (once) and the prompts' remainders (once each): each prompt's next-token
    logits ``[B, V]``. Raises :class:`StaticUnsupported` if some layer's attention bypassed the cache."""
    expected = int(model.config.num_hidden_layers)
    if batch.prefix_len:
        state.begin("prefix", 1, state.prefix_pos[None])
        _forward(model, state, batch.prefix[None], state.prefix_pos[None], logits_to_keep=last_logits_only(batch.prefix[None]))
        if state.calls != expected:
            raise StaticUnsupported(f"{state.calls} of {expected} attention layers went through the static cache")
    state.begin("prompts", batch.n_prompts, state.prompt_pos)
    logits = _forward(model, state, batch.rest, state.prompt_pos, logits_to_keep=last_logits_only(batch.rest))
    if state.calls != expected:
        raise StaticUnsupported(f"{state.calls} of {expected} attention layers went through the static cache")
    return logits


# --------------------------------------------------------------------------------------------- decode


def _buckets(rows: int, exact: bool) -> list[int]:
    """Row counts the steps run at, largest first: halving, rounded up to a multiple of 8 (CUDA graphs)."""
    if exact:
        return [rows]
    sizes = [rows]
    while sizes[-1] > 8:
        sizes.append(max(8, -(-sizes[-1] // 2 // 8) * 8))
    return sizes


class _Rows:
    """Per-row state of the answers being decoded; the first ``b`` rows run, the others are done.

    ``origin[r]`` is the output row of row r (``rows`` marks a filler row of a fixed-size bucket), ``tok``
    its tokens so far, ``ids``/``pos`` the token it feeds next and that token's position.
    """

    def __init__(self, batch: PromptBatch, samples: int, steps: int, pad_id: int, uniforms: torch.Tensor | None) -> None:
        device, self.rows, self.pad_id = batch.device, batch.n_prompts * samples, pad_id
        self.ids = torch.full((self.rows, 1), pad_id, dtype=torch.long, device=device)
        self.pos = batch.last_positions().repeat_interleave(samples)[:, None].clone()
        self.tok = torch.full((self.rows, steps), pad_id, dtype=torch.long, device=device)
        self.alive = torch.ones(self.rows, dtype=torch.bool, device=device)
        self.origin = torch.arange(self.rows, device=device)
        self.uniforms = None if uniforms is None else uniforms.clone()  # compacted in place with the rows
        self.result = torch.full((self.rows, steps), pad_id, dtype=torch.long, device=device)
        self.b = self.rows

    def record(self, t: int, nxt: torch.Tensor, is_stop: torch.Tensor) -> int:
        """Store step ``t``'s tokens ``nxt [b]``; the number of rows still alive."""
        b = self.b
        self.tok[:b, t] = torch.where(self.alive[:b], nxt, self.pad_id)
        self.alive[:b] &= ~is_stop[nxt]
        self.ids[:b, 0] = nxt
        self.pos[:b] += 1
        return int(self.alive[:b].sum())

    def compact(self, target: int, n_alive: int, extra: list[torch.Tensor]) -> None:
        """Move the live rows to the front and run ``target`` rows from now on (fillers repeat a live row)."""
        self.flush()
        keep = self.alive[: self.b].nonzero().flatten()
        sel = torch.cat([keep, keep[:1].expand(target - n_alive)])
        tensors = [self.ids, self.pos, self.tok, self.alive, self.origin, *extra]
        for x in tensors + ([] if self.uniforms is None else [self.uniforms]):
            x[:target] = x.index_select(0, sel)
        self.origin[n_alive:target] = self.rows
        self.alive[n_alive:target] = False
        self.b = target

    def flush(self) -> torch.Tensor:
        """Copy the running rows' tokens to their output rows (filler rows are skipped); the output."""
        origin, tok = self.origin[: self.b], self.tok[: self.b]
        real = origin < self.rows
        self.result[origin[real]] = tok[real]
        return self.result


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


@torch.no_grad()
def decode_static(
    model: nn.Module,
    batch: PromptBatch,
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
    """New tokens ``[B * num_samples, max_new_tokens]`` of ``batch``'s prompts (pad after a stop), sample-major.

    ``uniforms [B * num_samples, max_new_tokens]`` (float64, on the model's device; ``None`` when greedy)
    drive the draws, as in the eager path. ``fixed`` (default: on CUDA) runs fixed-shape steps over buckets
    of rows, captured as CUDA graphs on CUDA; otherwise each step runs on exactly the live rows. ``stats``,
    when given, receives what ran: ``graphs`` (buckets captured), ``eager_steps``, ``buckets_used``, ``fixed``.
    """
    device = batch.device
    fixed = device.type == "cuda" if fixed is None else fixed
    state = StaticKV(batch, num_samples, max_new_tokens, fixed)
    window = _window_of(model.config)
    longest = int(batch.lengths().max()) + max_new_tokens
    state.window_needed = window if window is not None and window < longest else None
    rows = _Rows(batch, num_samples, max_new_tokens, pad_id, uniforms)
    vocab = max(int(model.config.vocab_size), max(stop_ids, default=0) + 1)
    is_stop = torch.zeros(vocab, dtype=torch.bool, device=device)
    is_stop[torch.tensor(stop_ids, dtype=torch.long, device=device)] = True
    step_t = torch.zeros(1, dtype=torch.long, device=device)

    def forward(b: int) -> torch.Tensor:
        state.begin("decode", b, rows.pos[:b])
        return _forward(model, state, rows.ids[:b], rows.pos[:b])

    def draw(logits: torch.Tensor, b: int) -> torch.Tensor:
        u = None if rows.uniforms is None else rows.uniforms[:b].index_select(1, step_t).squeeze(1)
        return draw_tokens(logits, temperature, top_p, u)

    with _routed(model, state):
        logits = _prefill(model, state, batch)
        u0 = None if rows.uniforms is None else rows.uniforms[:, 0]
        nxt = draw_tokens(logits.repeat_interleave(num_samples, 0), temperature, top_p, u0)
        del logits
        step = _Step(forward, draw, torch.zeros(rows.rows, dtype=torch.long, device=device), fixed and device.type == "cuda")
        used = _decode_loop(rows, state, step, nxt, is_stop, step_t, max_new_tokens, _buckets(rows.rows, exact=not fixed))
    if stats is not None:
        stats.update(graphs=sorted(step.captured), eager_steps=step.eager_steps, buckets_used=used, fixed=fixed,
                     prefix_len=batch.prefix_len)
    return rows.flush()


def _decode_loop(rows: _Rows, state: StaticKV, step: _Step, nxt: torch.Tensor, is_stop: torch.Tensor,
                 step_t: torch.Tensor, steps: int, buckets: list[int]) -> list[int]:
    """Draw tokens 1 .. steps - 1 (token 0 is ``nxt``), shrinking the rows as answers stop: the bucket sizes used."""
    used = [rows.b]
    for t in range(steps):
        if t > 0:
            state.col = t - 1
            state.col_t.fill_(t - 1)
            step_t.fill_(t)
            step(rows.b)
            nxt = step.out[: rows.b]
        n_alive = rows.record(t, nxt, is_stop)
        if n_alive == 0 or t == steps - 1:
            break
        if state.fixed:
            target = min(s for s in buckets if s >= n_alive)
        else:  # compact once a quarter of the rows has finished: each compaction copies the answers' keys
            target = n_alive if n_alive <= 0.75 * rows.b else rows.b
        if target < rows.b:
            rows.compact(target, n_alive, state.buffers())
            used.append(target)
    return used
