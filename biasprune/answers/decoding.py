"""The static decode path: shared-prefix keys and values, fixed-shape steps, CUDA graphs on a GPU.

The model runs its own Hugging Face forward, with its own hooks (pruning masks), but attention is routed
through :func:`_static_attention` (registered as the attention implementation ``biasprune_static`` for
the duration of a call). Keys and values live at three levels, each computed once and read by every row
that shares it (:class:`StaticKV`):

* **shared**: the prefix common to the batch's prompts (the chat template's system part, and the scenario text
  up to the name), ``[1, kv_heads, S, head_dim]``, prefilled once per batch;
* **prompt**: each prompt's remainder, ``[prompts, kv_heads, P, head_dim]``, prefilled once per prompt;
* **answer**: each row's own tokens, ``[rows, kv_heads, steps, head_dim]`` (at most ``prompts * k`` rows): a
  decode step writes one column.

A decode query of answer ``j`` of prompt ``i`` attends to the shared keys, to prompt ``i``'s keys and to its
own: one softmax over the three score blocks (:func:`_attend`). The k answers of a prompt read its keys once
(their queries are stacked, as the query heads of a key head are), so neither the prompt's prefill nor its
keys are repeated k times. Positions count real tokens (:class:`biasprune.answers.prefix.PromptBatch`), so
sliding windows and Gemma-2's logit soft-capping are applied exactly as the model's own attention does.

Answers of a prompt that have drawn the same tokens so far share one row (:class:`_Answers`): one forward
gives their next-token logits and each answer draws from them with its own keyed uniform, so its tokens are
the ones it would draw alone. A row forks when its answers draw different tokens, and dies when they have all
stopped; greedy answers of a prompt never fork, and sampled answers of a sharp model (a number's first digits)
fork late. On a CPU every step runs on exactly the rows in use (dead rows are dropped once they are a quarter of
the rows). On a GPU the steps run on fixed-size *buckets* of rows (halving sizes; dead rows are dropped when the
rows in use fit a smaller bucket), and each bucket's forward is captured once as a CUDA graph and replayed.

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


def _stack_by_prompt(x: torch.Tensor, slot: torch.Tensor, prompts: int, k: int) -> torch.Tensor:
    """Rows ``x [n, h, G, E]`` into ``[prompts, h, k * G, E]``: the k answers of a prompt side by side. ``slot``
    places row r as answer ``slot % k`` of prompt ``slot // k``; a slot ``>= prompts * k`` (a filler row of a
    fixed-size step) is dropped, and an answer slot that no row holds stays zero."""
    n, h, g, e = x.shape
    x = x.new_zeros((prompts + 1) * k, h, g, e).index_copy_(0, slot.clamp(max=prompts * k), x)[: prompts * k]
    return x.view(prompts, k, h, g, e).transpose(1, 2).reshape(prompts, h, k * g, e)


def _unstack_by_prompt(y: torch.Tensor, slot: torch.Tensor, k: int) -> torch.Tensor:
    """The inverse of :func:`_stack_by_prompt` on ``y [prompts, h, k * G, F]``: ``[n, h, G, F]`` (zeros for a
    filler row)."""
    b, h, kg, f = y.shape
    y = y.view(b, h, k, kg // k, f).transpose(1, 2).reshape(b * k, h, kg // k, f)
    return torch.cat([y, y.new_zeros(1, h, kg // k, f)]).index_select(0, slot.clamp(max=b * k))


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
        self.answer_start = batch.last_positions() + 1  # position of answer column 0, per prompt
        self.slot = torch.full((self.rows,), self.rows, dtype=torch.long, device=device)  # see _Answers
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

    def kv_buffers(self) -> list[torch.Tensor]:
        """The answer-level keys and values, indexed by row."""
        return [t for kv in self.answer.values() for t in kv]

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
            # a filler row (slot >= rows) takes the last prompt's masks: its output is never read
            prompt_of = (self.slot[: self.n] // self.samples).clamp(max=self.prompts - 1)
            prompt = _both(self.prompt_valid.index_select(0, prompt_of)[:, None], self._window(self.prompt_pos.index_select(0, prompt_of), window))
            cols = torch.arange(self.columns if self.fixed else self.col + 1, device=prompt_of.device)
            answer = (cols <= self.col_t)[None, None] if self.fixed else None
            answer = _both(answer, self._window(self.answer_start.index_select(0, prompt_of)[:, None] + cols, window))
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
        return _attend(q, levels, scale, softcap, self.slot[:n], self.samples)


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


class _Answers:
    """The ``B * k`` answers being decoded, each with its own uniforms, and the rows that compute them.

    Answers of a prompt that have drawn the same tokens so far share one row: one forward gives their common
    next-token logits, and each answer draws from them with its own uniform, so every answer gets exactly the
    tokens it would get alone. When the answers of a row draw different tokens, the row forks: the first
    token keeps the row, every other one gets a new row holding a copy of the row's answer keys and values
    (the columns written so far). A row whose answers have all stopped is dead; dead rows are dropped once they
    are a quarter of the rows. ``state.slot[r]`` names row r by the smallest answer index it computes.
    """

    def __init__(self, batch: PromptBatch, samples: int, steps: int, pad_id: int, uniforms, state: StaticKV) -> None:
        device, self.state = batch.device, state
        self.rows = batch.n_prompts * samples
        self.result = torch.full((self.rows, steps), pad_id, dtype=torch.long, device=device)
        self.alive = torch.ones(self.rows, dtype=torch.bool, device=device)
        self.row_of = torch.arange(self.rows, device=device) // samples  # step 0 draws from each prompt's logits
        self.uniforms = uniforms
        self.ids = torch.full((self.rows, 1), pad_id, dtype=torch.long, device=device)
        self.pos = torch.zeros((self.rows, 1), dtype=torch.long, device=device)
        self.in_use = torch.zeros(self.rows, dtype=torch.bool, device=device)  # rows that compute a live answer
        self.first_pos = batch.last_positions() + 1  # position of each prompt's first answer token
        self.n = 0  # rows 0 .. n - 1 hold live or dead rows; the rest are free

    def draw(self, t: int, logits: torch.Tensor, temperature: float, top_p: float, is_stop: torch.Tensor):
        """Token ``t`` of every live answer from its row's ``logits``: the answers that go on, and their tokens."""
        live = self.alive.nonzero().flatten()
        u = None if self.uniforms is None else self.uniforms[live, t]
        tok = draw_tokens(logits, temperature, top_p, u, rows=self.row_of[live])
        self.result[live, t] = tok
        go = ~is_stop[tok]
        self.alive[live] = go
        return live[go], tok[go]

    def regroup(self, t: int, live: torch.Tensor, tok: torch.Tensor, vocab: int) -> int:
        """The rows of the next step: one per distinct (row, token) among the answers ``live`` that go on. Returns
        the number of rows in use (the others, up to ``n``, are dead)."""
        parent = self.row_of[live]
        keys, inverse = torch.unique(parent * vocab + tok, return_inverse=True)  # sorted: by parent, then token
        g_parent, g_tok = keys // vocab, keys % vocab
        g_slot = torch.full_like(keys, self.rows).scatter_reduce(0, inverse, live, "amin")
        if t == 0:  # the parents are prompts: every group starts a row
            rows = torch.arange(len(keys), device=keys.device)
            g_pos = self.first_pos[g_parent]
            self.n = len(keys)
        else:
            keeps = torch.ones_like(g_parent, dtype=torch.bool)
            keeps[1:] = g_parent[1:] != g_parent[:-1]  # the first token drawn from a row keeps the row
            n_forks = len(keys) - int(keeps.sum())
            if self.n + n_forks > self.rows:  # no room: drop the rows without a continuing answer first
                g_parent = self._compact(torch.unique(g_parent), g_parent)
            rows = g_parent.clone()
            rows[~keeps] = torch.arange(self.n, self.n + n_forks, device=keys.device)
            g_pos = self.pos[g_parent, 0] + 1
            if n_forks:
                src, dst = g_parent[~keeps], rows[~keeps]
                for buf in self.state.kv_buffers():  # columns 0 .. t - 1 hold this row's answer tokens so far
                    buf[dst, :, :t] = buf[src, :, :t]
            self.n += n_forks
        self.in_use[: self.n] = False
        self.in_use[rows] = True
        self.ids[rows, 0], self.pos[rows, 0], self.state.slot[rows] = g_tok, g_pos, g_slot
        self.state.slot[self.n :] = self.rows  # free rows (fillers of a fixed-size step) hold no answer
        self.row_of[live] = rows[inverse]
        return len(keys)

    def drop_dead(self) -> None:
        """Move the rows in use to the front (each drop copies their keys and values)."""
        self._compact(self.in_use[: self.n].nonzero().flatten())

    def _compact(self, keep: torch.Tensor, also: torch.Tensor | None = None) -> torch.Tensor | None:
        """Keep only rows ``keep`` (sorted), moved to the front; ``also`` (row indices) renumbered likewise."""
        new = torch.full((self.rows,), -1, dtype=torch.long, device=keep.device)
        new[keep] = torch.arange(len(keep), device=keep.device)
        for x in (self.ids, self.pos, self.in_use, self.state.slot, *self.state.kv_buffers()):
            x[: len(keep)] = x.index_select(0, keep)
        live = self.alive.nonzero().flatten()
        self.row_of[live] = new[self.row_of[live]]
        self.n = len(keep)
        self.state.slot[self.n :] = self.rows
        return None if also is None else new[also]


class _Step:
    """The forward of one decode step on the first ``b`` rows: their next-token logits ``[b, V]``.

    Under CUDA graphs, each bucket's forward is run once eagerly (its warm-up, which is also the real step)
    and captured; later steps replay it. If capture fails, the call continues eagerly.
    """

    def __init__(self, forward: Callable[[int], torch.Tensor], graphs: bool) -> None:
        self.forward, self.graphs = forward, graphs
        self.captured: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle() if graphs else None
        self.eager_steps = 0  # steps run without a graph (warm-ups included)

    def __call__(self, b: int) -> torch.Tensor:
        if not self.graphs:
            self.eager_steps += 1
            return self.forward(b)
        if b in self.captured:
            graph, logits = self.captured[b]
            graph.replay()
            return logits
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.eager_steps += 1
            logits = self.forward(b)  # warm-up and the real step: it only writes what a replay would write again
        torch.cuda.current_stream().wait_stream(side)
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = self.forward(b)
            self.captured[b] = (graph, out)
        except Exception as err:  # noqa: BLE001 -- a model that cannot be captured still decodes, eagerly
            log.warning("CUDA graph capture failed (%s: %s); decoding eagerly", type(err).__name__, err)
            self.graphs = False
            self.captured.clear()
        return logits


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
    of rows, captured as CUDA graphs on CUDA; otherwise each step runs on exactly the rows in use. ``stats``,
    when given, receives what ran: ``rows`` (rows computed at each step), ``graphs`` (buckets captured),
    ``eager_steps``, ``fixed``, ``prefix_len``.
    """
    device = batch.device
    fixed = device.type == "cuda" if fixed is None else fixed
    state = StaticKV(batch, num_samples, max_new_tokens, fixed)
    window = _window_of(model.config)
    longest = int(batch.lengths().max()) + max_new_tokens
    state.window_needed = window if window is not None and window < longest else None
    answers = _Answers(batch, num_samples, max_new_tokens, pad_id, uniforms, state)
    vocab = max(int(model.config.vocab_size), max(stop_ids, default=0) + 1)
    is_stop = torch.zeros(vocab, dtype=torch.bool, device=device)
    is_stop[torch.tensor(stop_ids, dtype=torch.long, device=device)] = True

    def forward(b: int) -> torch.Tensor:
        state.begin("decode", b, answers.pos[:b])
        return _forward(model, state, answers.ids[:b], answers.pos[:b])

    step = _Step(forward, fixed and device.type == "cuda")
    with _routed(model, state):
        logits = _prefill(model, state, batch)
        rows_run = _decode_loop(answers, state, step, logits, (temperature, top_p), is_stop, max_new_tokens)
    if stats is not None:
        stats.update(rows=rows_run, graphs=sorted(step.captured), eager_steps=step.eager_steps, fixed=fixed,
                     prefix_len=batch.prefix_len)
    return answers.result


def _decode_loop(answers: _Answers, state: StaticKV, step: _Step, logits: torch.Tensor, sampling: tuple[float, float],
                 is_stop: torch.Tensor, steps: int) -> list[int]:
    """Draw tokens 0 .. steps - 1 (token 0 from the prompts' ``logits``), regrouping the answers into rows after
    each draw and dropping dead rows: the number of rows computed at each step after the first."""
    buckets = _buckets(answers.rows, exact=not state.fixed)
    vocab = max(is_stop.shape[0], logits.shape[-1])
    rows_run: list[int] = []
    for t in range(steps):
        if t > 0:
            state.col = t - 1
            state.col_t.fill_(t - 1)
            b = answers.n if not state.fixed else min(s for s in buckets if s >= answers.n)
            rows_run.append(b)
            logits = step(b)
        live, tok = answers.draw(t, logits, *sampling, is_stop)
        if len(live) == 0 or t == steps - 1:
            break
        in_use = answers.regroup(t, live, tok, vocab)
        if state.fixed:  # drop dead rows when the rows in use fit a smaller bucket
            drop = min(s for s in buckets if s >= in_use) < min(s for s in buckets if s >= answers.n)
        else:  # once a quarter of the rows is dead
            drop = answers.n - in_use >= max(1, 0.25 * answers.n)
        if drop:
            answers.drop_dead()
    return rows_run
