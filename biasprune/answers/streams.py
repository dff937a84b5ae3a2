"""Keyed random streams and the token draw shared by every decoding path.

**The seeding rule.** The uniform number that samples token ``t`` of answer ``j`` of a prompt whose key
is ``key`` is a pure function of ``(seed, key, j, t)``:

    h      = first 8 bytes (little-endian) of sha256(f"{seed}\\x1f{key}")
    s[j]   = mix64(h ^ mix64(j + 1))                           the answer's stream seed
    z[j,t] = mix64(s[j] + (t + 1) * 0x9E3779B97F4A7C15)        SplitMix64 stream of s[j]
    u[j,t] = (z[j,t] >> 11) * 2**-53                           in [0, 1), 53 random bits

where ``mix64`` is SplitMix64's finalizer (all arithmetic modulo 2**64). Nothing else enters: not the
batch a prompt lands in, its row, the batch size, the process count or the device, so an answer can only
change with the model's logits. Given the logits, a token is drawn by inverse CDF (:func:`draw_tokens`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["draw_tokens", "key_hash", "keyed_uniforms", "mix64"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_BLOCK = 256  # tokens per block of the two-level cumulative sum in draw_tokens


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function on a ``uint64`` array (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def key_hash(seed: int, key: str) -> int:
    """64-bit digest of ``(seed, key)``: the root of that prompt's answer streams."""
    digest = hashlib.sha256(f"{int(seed)}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def keyed_uniforms(seed: int, keys: Sequence[str], num_samples: int, steps: int) -> np.ndarray:
    """Uniforms ``[len(keys) * num_samples, steps]`` (float64): row ``i * num_samples + j`` is answer ``j`` of
    ``keys[i]``, column ``t`` its token ``t``. See the module docstring for the formula."""
    roots = np.array([key_hash(seed, k) for k in keys], dtype=np.uint64)
    answer = mix64(np.arange(1, num_samples + 1, dtype=np.uint64))
    stream = mix64(roots[:, None] ^ answer[None, :]).reshape(-1, 1)
    with np.errstate(over="ignore"):
        counter = stream + np.arange(1, steps + 1, dtype=np.uint64)[None, :] * _GOLDEN
    return (mix64(counter) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def draw_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor | None, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Next token of each row of ``logits [n, V]``: greedy when ``temperature == 0``, else the inverse-CDF draw.

    ``u [n]`` (float64) holds one uniform per row. The token is the first index whose cumulative probability
    (temperature-scaled softmax, restricted to the top-p nucleus) exceeds ``u`` times the total: an exact
    draw from that distribution, with one uniform per row rather than one per vocabulary entry. With
    ``rows [m]``, draw ``i`` uses the logits of row ``rows[i]`` and the uniform ``u[i]`` (``[m]``): answers that
    share their history share one row of logits.

    The cumulative sum is taken in two levels: float32 block sums of ``_BLOCK`` tokens accumulated in float64,
    then a float64 cumulative sum inside the one block that holds the target; the full ``[n, V]`` cumulative
    sum is never formed. The draw is exact up to the float32 rounding of the probabilities themselves.
    """
    if temperature == 0:
        best = logits.argmax(-1)
        return best if rows is None else best.index_select(0, rows)
    scaled = logits.float()  # no copy for float32 logits
    probs = torch.softmax(scaled if temperature == 1 else scaled / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the tokens ranked above it already reach top_p; the top token always stays.
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    n, vocab = probs.shape
    n_blocks = -(-vocab // _BLOCK)
    if n_blocks * _BLOCK != vocab:
        probs = torch.nn.functional.pad(probs, (0, n_blocks * _BLOCK - vocab))
    blocks = probs.view(n * n_blocks, _BLOCK)
    block_sum = probs.view(n, n_blocks, _BLOCK).sum(-1).double()
    if rows is None:
        rows = torch.arange(n, device=logits.device)
    else:
        block_sum = block_sum.index_select(0, rows)
    m = rows.shape[0]
    block_cdf = block_sum.cumsum(-1)
    total = block_cdf[:, -1:]
    # u * total can round up to the total: stay just below it, so that some block's cumulative sum exceeds it.
    target = torch.minimum(u.to(torch.float64).view(m, 1) * total, torch.nextafter(total, total.new_zeros(())))
    # The block holding the target: the first whose cumulative sum exceeds it (so its own sum is > 0).
    j = torch.searchsorted(block_cdf, target, right=True)
    inside = blocks.index_select(0, rows * n_blocks + j.squeeze(1)).double().cumsum(-1)
    rest = target - (block_cdf.gather(1, j) - block_sum.gather(1, j))
    # Rounding may leave ``rest`` at or past the block's total: stop just below it, at the last positive token.
    rest = torch.minimum(rest, torch.nextafter(inside[:, -1:], inside.new_zeros(())))
    return (j * _BLOCK + torch.searchsorted(inside, rest, right=True)).squeeze(-1)
