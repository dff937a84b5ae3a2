"""Batched generation of answers: k sampled responses per prompt, or one greedy response.

**Random streams.** Every sampled token is drawn from a uniform number that depends only on
``(seed, key, answer index, token index)``, where ``key`` names the prompt (the caller's ``keys``, e.g.
``"purchase/car/Jamal Washington"``, or the prompt text itself): see :mod:`biasprune.answers.streams` for the
formula. The batch a prompt lands in, its row, the batch size, the number of processes and the order of the
prompts never enter, so an answer changes only when the model's logits change. Two prompts with the same
key get the same uniforms. Greedy decoding (``temperature=0``) uses none.

**Decoders.** Both draw through :func:`biasprune.answers.streams.draw_tokens` with the same uniforms, so they pick
the same token from the same logits.

Both prefill the prefix that the batch's prompts share once (:mod:`biasprune.answers.prefix`; ``share_prefix``),
then each prompt's remainder once, and start the prompt's k answers from its keys and values.

* ``eager``: the reference. Each step is a plain Hugging Face forward over a ``DynamicCache``: the prefix's
  cache is repeated for the prompts, the prompts' for their k answers; finished sequences leave the batch once
  a quarter of it has finished. Under a sliding window shorter than prompt + answer it prefills whole prompts
  (the model's mask counts cache columns, and the padding between prefix and remainder would count).
* ``static``: :mod:`biasprune.answers.decoding`: the prefix's, the prompts' and the answers' keys kept apart and
  read once each; answers of a prompt that agree so far computed once; fixed-shape steps per bucket of rows,
  captured as CUDA graphs on a GPU (exact-shape eager steps on a CPU).
* ``auto`` (default): ``static`` on CUDA and on CPU, where it is the faster of the two (docs/benchmarks.md,
  "Generation"); ``eager`` under ``lockstep`` (sharded FSDP weights need every process to make the same forward
  calls, which the eager path guarantees), and ``eager`` for a model the static path does not support
  (:func:`biasprune.answers.decoding.static_support`). ``static`` under ``lockstep`` also runs the eager path.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from biasprune.answers.decoding import StaticUnsupported, decode_static, last_logits_only, static_support
from biasprune.answers.prefix import PromptBatch
from biasprune.answers.streams import draw_tokens, keyed_uniforms
from biasprune.core.checks import check_choice, check_positive

__all__ = ["DECODERS", "Decoder", "GenerationConfig", "decode_eager", "generate", "resolve_decoder", "stop_token_ids"]

Decoder = Literal["auto", "eager", "static"]
DECODERS: tuple[str, ...] = ("auto", "eager", "static")


@dataclass
class GenerationConfig:
    """How evaluation answers are sampled.

    Attributes:
        samples: responses sampled per prompt (k).
        temperature: sampling temperature; 0 means greedy decoding.
        top_p: nucleus sampling threshold; 1.0 keeps the whole distribution.
        max_new_tokens: longest response, in tokens.
        seed: root of the keyed random streams (with each prompt's key, answer index and token index).
        decoder: ``auto`` (the faster path for the device), ``eager`` (the reference) or ``static``
            (preallocated cache; CUDA graphs on a GPU). All draw the same tokens from the same logits.
        share_prefix: prefill the tokens that a batch's prompts start with (the chat template's system part,
            the scenario text up to the name) once per batch; off, each prompt is prefilled whole. The answers
            are the same up to floating-point rounding (docs/benchmarks.md, "Generation").
    """

    samples: int = 10
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 24
    seed: int = 0
    decoder: Decoder = "auto"
    share_prefix: bool = True

    def __post_init__(self) -> None:
        check_positive("generation.samples", self.samples)
        check_positive("generation.temperature", self.temperature, minimum=0)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"generation.top_p must be in (0, 1], got {self.top_p}")
        check_positive("generation.max_new_tokens", self.max_new_tokens)
        check_choice("generation.decoder", self.decoder, DECODERS)


def stop_token_ids(model: nn.Module, tokenizer) -> list[int]:
    """EOS ids of the generation config and the tokenizer (chat models often end turns on a special id)."""
    ids: set[int] = set()
    gen_cfg = getattr(model, "generation_config", None)
    eos = getattr(gen_cfg, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(e) for e in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def _cache_argument(model: nn.Module) -> str:
    """transformers >= 5.2x renamed ``past_key_values`` to ``cache``; accept both."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _output_cache(out):
    cache = out.get("cache") if "cache" in out.keys() else None
    return cache if cache is not None else out["past_key_values"]


def _prefill_eager(model: nn.Module, batch: PromptBatch) -> tuple[torch.Tensor, object, torch.Tensor]:
    """Hugging Face forwards over the shared prefix (once, one row) and the prompts' remainders (once each):
    each prompt's next-token logits ``[B, V]``, the ``DynamicCache`` and its 2-D attention mask ``[B, S + P]``.

    The cache holds ``[prefix][padding][remainder]`` per row; the mask hides the padding and positions count
    real tokens only, so each prompt is computed exactly as on its own.
    """
    cache_kw, n, s = _cache_argument(model), batch.n_prompts, batch.prefix_len
    extra = {}
    if s:
        out = model(input_ids=batch.prefix[None], position_ids=torch.arange(s, device=batch.device)[None],
                    use_cache=True, logits_to_keep=last_logits_only(batch.prefix[None]))
        cache = _output_cache(out)
        cache.batch_repeat_interleave(n)
        extra[cache_kw] = cache
    attention_mask = torch.cat([batch.mask.new_ones(n, s), batch.mask], 1)
    out = model(input_ids=batch.rest, attention_mask=attention_mask, position_ids=batch.positions(), use_cache=True,
                logits_to_keep=last_logits_only(batch.rest), **extra)
    return out.logits[:, -1], _output_cache(out), attention_mask


@torch.no_grad()
def decode_eager(
    model: nn.Module,
    batch: PromptBatch,
    num_samples: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    stop_ids: list[int],
    pad_id: int,
    uniforms: torch.Tensor | None,
    lockstep: bool = False,
    stats: dict | None = None,
) -> torch.Tensor:
    """The eager decoder: new tokens ``[B * num_samples, max_new_tokens]`` (pad after a stop), sample-major.

    ``uniforms [B * num_samples, max_new_tokens]`` (float64, ``None`` when greedy) drive the draws. Each
    prompt is prefilled once (its shared prefix once per batch, except under a binding sliding window) and its
    cache repeated for its k answers. ``stats``, when given, receives ``prefix_len`` (the tokens prefilled once).
    """
    device = batch.device
    if batch.prefix_len and not _eager_can_share(model, int(batch.lengths().max()) + max_new_tokens):
        batch = batch.unshared()
    stop = torch.tensor(stop_ids, device=device)
    if stats is not None:
        stats.update(prefix_len=batch.prefix_len)
    logits, cache, attention_mask = _prefill_eager(model, batch)
    last_pos = batch.last_positions()
    if num_samples > 1:
        cache.batch_repeat_interleave(num_samples)
        logits = logits.repeat_interleave(num_samples, 0)
        attention_mask = attention_mask.repeat_interleave(num_samples, 0)
        last_pos = last_pos.repeat_interleave(num_samples, 0)
    cache_kw = _cache_argument(model)
    n = logits.shape[0]
    tokens = torch.full((n, max_new_tokens), pad_id, dtype=torch.long, device=device)
    rows = torch.arange(n, device=device)  # output row of each sequence still in the batch
    alive = torch.ones(n, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        nxt = draw_tokens(logits, temperature, top_p, None if uniforms is None else uniforms[rows, step])
        tokens[rows[alive], step] = nxt[alive]
        alive &= ~torch.isin(nxt, stop)
        n_alive = int(alive.sum())
        if step == max_new_tokens - 1 or (n_alive == 0 and not lockstep):
            break
        # Drop finished sequences from the cache only once a quarter of the batch has finished: each
        # compaction copies the whole cache.
        if n_alive <= 0.75 * alive.shape[0] and n_alive > 0:
            keep = alive.nonzero().flatten()
            cache.batch_select_indices(keep)
            rows, nxt, attention_mask, last_pos = rows[keep], nxt[keep], attention_mask[keep], last_pos[keep]
            alive = alive[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=1)
        last_pos = last_pos + 1
        out = model(
            input_ids=nxt[:, None],
            attention_mask=attention_mask,
            position_ids=last_pos[:, None],
            use_cache=True,
            **{cache_kw: cache},
        )
        logits = out.logits[:, -1]
    return tokens


def resolve_decoder(decoder: str, device: torch.device, lockstep: bool = False) -> str:
    """The decoder that ``decoder`` runs as on ``device``: ``eager`` or ``static`` (see the module docstring)."""
    check_choice("decoder", decoder, DECODERS)
    if lockstep or decoder == "eager":
        return "eager"
    return "static"


def _token_lists(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Each prompt's token ids, without added special tokens (the prompts are already templated)."""
    ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    return [list(map(int, row)) for row in ids]


def _eager_can_share(model: nn.Module, longest: int) -> bool:
    """Whether the eager decoder may prefill a shared prefix apart: not under a binding sliding window, which
    the model's own mask counts in cache columns (the padding between prefix and remainder would count)."""
    config = getattr(model, "config", None)
    window = getattr(config, "sliding_window", None)
    return window is None or not getattr(config, "use_sliding_window", True) or int(window) >= longest


def _decode_chunk(
    model: nn.Module, tokens: list[list[int]], path: str, decoder: str, share_prefix: bool, lockstep: bool,
    args: tuple, stats: dict | None,
) -> tuple[torch.Tensor, str]:
    """New tokens of one chunk of prompts and the decoder that made them (``static`` falls back to ``eager``
    when ``decoder`` is ``auto`` and the model cannot run it)."""
    device = next(model.parameters()).device
    pad_id = args[5]
    if path == "static":
        reason = static_support(model)
        if reason is None:
            try:
                batch = PromptBatch.from_token_lists(tokens, pad_id, share_prefix).to(device)
                return decode_static(model, batch, *args, stats=stats), "static"
            except StaticUnsupported as err:
                reason = str(err)
        if decoder == "static":
            raise ValueError(f"decoder='static' cannot run this model: {reason}; use decoder='eager' or 'auto'")
    batch = PromptBatch.from_token_lists(tokens, pad_id, share_prefix).to(device)
    return decode_eager(model, batch, *args, lockstep=lockstep, stats=stats), "eager"


def _texts(tokens: torch.Tensor, stop: list[int], tokenizer) -> list[str]:
    """Each row of new tokens cut at its first stop token and decoded without special tokens."""
    tokens = tokens.cpu()
    is_stop = torch.isin(tokens, torch.tensor(stop))
    texts = []
    for row, stops in zip(tokens, is_stop):
        end = int(stops.nonzero()[0]) if bool(stops.any()) else row.shape[0]
        texts.append(tokenizer.decode(row[:end], skip_special_tokens=True))
    return texts


def generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    num_samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = False,
    desc: str = "generate",
    lockstep: bool = False,
    keys: Sequence[str] | None = None,
    decoder: Decoder = "auto",
    share_prefix: bool = True,
    stats: dict | None = None,
) -> list[list[str]]:
    """Responses to already-templated prompts: ``out[i]`` holds ``num_samples`` strings for ``prompts[i]``.

    ``temperature=0`` decodes greedily. Responses are decoded without special tokens and cut at the first
    stop token. ``keys[i]`` names prompt ``i``'s random streams (default: the prompt text); answer ``j`` of
    prompt ``i`` is the same whatever the batch size, the order of the prompts or the other prompts of the
    call (up to the floating-point effect of padding, batch shape and the shared prefix on the logits).
    ``lockstep`` runs every one of the ``max_new_tokens`` steps even when all sequences have stopped (sharded
    FSDP models), with the eager decoder. ``decoder``: see the module docstring. ``share_prefix`` prefills the
    tokens common to a batch's prompts once (off: each prompt whole, once). ``stats``, when given, receives
    what the last batch ran (``decoder``, ``prefix_len``, and the static decoder's ``graphs``, ``buckets_used``).
    """
    if keys is None:
        keys = list(prompts)
    elif len(keys) != len(prompts):
        raise ValueError(f"generate: keys has {len(keys)} entries for {len(prompts)} prompts; give one key per prompt")
    if batch_size < 1:
        raise ValueError(f"generate: batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    path = resolve_decoder(decoder, device, lockstep)
    stop = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    results: list[list[str]] = []
    starts = range(0, len(prompts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", leave=False)
    for start in starts:
        chunk = list(prompts[start : start + batch_size])
        uniforms = None
        if temperature > 0:
            u = keyed_uniforms(seed, keys[start : start + batch_size], num_samples, max_new_tokens)
            uniforms = torch.from_numpy(u).to(device)
        args = (num_samples, temperature, top_p, max_new_tokens, stop, pad_id, uniforms)
        tokens, path = _decode_chunk(model, _token_lists(tokenizer, chunk), path, decoder, share_prefix, lockstep, args, stats)
        if stats is not None:
            stats["decoder"] = path
        texts = _texts(tokens, stop, tokenizer)
        results.extend(texts[i * num_samples : (i + 1) * num_samples] for i in range(len(chunk)))
    return results
