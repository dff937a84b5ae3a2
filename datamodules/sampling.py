"""Sharding a dataset across processes without counting any example twice.

``DistributedSampler`` pads the shards to equal length by repeating examples from the start, so a
naive sum over all ranks counts those examples twice. Here the shards are padded too (every rank must run
the same number of steps, or collective calls would hang), but each position past the end of the dataset
is marked with weight 0 and contributes nothing.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

from torch.utils.data import Dataset, DistributedSampler

__all__ = ["EvenShardSampler", "WeightedView"]


class WeightedView(Dataset):
    """Positions ``0 .. n_padded - 1`` over a dataset of n rows: position i is row ``i % n``, weight ``i < n``."""

    def __init__(self, rows: Any, n_padded: int | None = None) -> None:
        self.rows = rows
        self.n = len(rows)
        self.n_padded = self.n if n_padded is None else n_padded

    def __len__(self) -> int:
        return self.n_padded

    def __getitem__(self, pos: int) -> dict:
        row = dict(self.rows[pos % self.n])
        row["index"] = pos % self.n
        row["weight"] = 1.0 if pos < self.n else 0.0
        return row


class EvenShardSampler(DistributedSampler):
    """Rank r gets positions r, r + W, r + 2W, ... of ``ceil(n / W) * W`` positions (no shuffling).

    Shards are disjoint and every real example appears in exactly one of them; padding positions
    (>= n) map to weight-0 rows through :class:`WeightedView`. Subclassing ``DistributedSampler`` tells
    Lightning that the loader is already distributed, so it does not wrap it again.
    """

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"invalid shard: rank={rank}, num_replicas={num_replicas}")
        # Not calling DistributedSampler.__init__: it would query torch.distributed and take a dataset.
        self.num_replicas = num_replicas
        self.rank = rank
        self.n = n
        self.num_samples = math.ceil(n / num_replicas) if n else 0
        self.total_size = self.num_samples * num_replicas
        self.shuffle = False
        self.drop_last = False
        self.seed = 0
        self.epoch = 0
        self.skip = 0

    def skip_next(self, n_samples: int) -> None:
        """Start the next pass after this rank's first ``n_samples`` positions (resuming mid-epoch)."""
        self.skip = n_samples

    def __iter__(self) -> Iterator[int]:
        start, self.skip = self.rank + self.skip * self.num_replicas, 0
        return iter(range(start, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples
