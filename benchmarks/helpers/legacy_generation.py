"""The eager decoder as it was before the static path (git 3db4ce5, ``biasprune/generation.py``): the baseline
"today's eager path" of the generation benchmarks, kept verbatim apart from this docstring and the names.

A ``DynamicCache`` grown by ``torch.cat`` every step, a causal mask rebuilt every step, a full float64
cumulative sum over the vocabulary per draw, and a ``torch.Generator`` seeded per batch (so its answers
depend on the batch layout, unlike :func:`biasprune.answers.generation.generate`). Not used by the package.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from biasprune.answers.generation import _cache_argument, _output_cache, stop_token_ids

__all__ = ["legacy_generate"]


def _next_tokens(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the tokens ranked above it already reach top_p; the top token always stays.
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    # Inverse-CDF draw: one uniform per row and a binary search in the cumulative distribution. Exact,
    # and far cheaper on CPU than torch.multinomial or one random number per vocabulary entry.
    cdf = probs.double().cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, generator=gen, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


@torch.no_grad()
def _generate_batch(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_samples: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    stop_ids: torch.Tensor,
    pad_id: int,
    gen: torch.Generator | None,
    lockstep: bool = False,
) -> torch.Tensor:
    """New tokens ``[B * num_samples, max_new_tokens]`` (pad after a sequence stops), sample-major per prompt."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,
    )
    cache = _output_cache(out)
    logits = out.logits[:, -1]
    last_pos = position_ids[:, -1]
    if num_samples > 1:
        cache.batch_repeat_interleave(num_samples)
        logits = logits.repeat_interleave(num_samples, 0)
        attention_mask = attention_mask.repeat_interleave(num_samples, 0)
        last_pos = last_pos.repeat_interleave(num_samples, 0)
    cache_kw = _cache_argument(model)
    n = logits.shape[0]
    tokens = torch.full((n, max_new_tokens), pad_id, dtype=torch.long, device=input_ids.device)
    rows = torch.arange(n, device=input_ids.device)  # output row of each sequence still in the batch
    alive = torch.ones(n, dtype=torch.bool, device=input_ids.device)
    for step in range(max_new_tokens):
        nxt = _next_tokens(logits, temperature, top_p, gen)
        tokens[rows[alive], step] = nxt[alive]
        alive &= ~torch.isin(nxt, stop_ids)
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


def legacy_generate(
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
) -> list[list[str]]:
    """Responses to already-templated prompts: ``out[i]`` holds ``num_samples`` strings for ``prompts[i]``.

    ``temperature=0`` decodes greedily. Responses are decoded without special tokens and cut at the first
    stop token. ``lockstep`` runs every one of the ``max_new_tokens`` steps even when all sequences have
    stopped: sharded (FSDP) models need every process to make the same number of forward calls.
    """
    device = next(model.parameters()).device
    stop = stop_token_ids(model, tokenizer)
    stop_ids = torch.tensor(stop, device=device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    results: list[list[str]] = []
    starts = range(0, len(prompts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", leave=False)
    for start in starts:
        chunk = list(prompts[start : start + batch_size])
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="left")
        gen = None
        if temperature > 0:
            gen = torch.Generator(device=device)
            gen.manual_seed(int(seed) * 1_000_003 + start)
        tokens = _generate_batch(
            model,
            enc["input_ids"].to(device),
            enc["attention_mask"].to(device),
            num_samples,
            temperature,
            top_p,
            max_new_tokens,
            stop_ids,
            pad_id,
            gen,
            lockstep,
        ).cpu()
        is_stop = torch.isin(tokens, stop_ids.cpu())
        texts = []
        for row, stops in zip(tokens, is_stop):
            end = int(stops.nonzero()[0]) if bool(stops.any()) else row.shape[0]
            texts.append(tokenizer.decode(row[:end], skip_special_tokens=True))
        results.extend(texts[i * num_samples : (i + 1) * num_samples] for i in range(len(chunk)))
    return results
