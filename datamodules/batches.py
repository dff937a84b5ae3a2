"""A batch layout that does not depend on the number of processes, and its shards.

Work is cut into *global batches* first (a fixed function of the data and the batch size), and only then
dealt out to processes: global batch b goes to rank ``b % world_size``. Every batch therefore holds the same
examples whether one process or eight run it, so greedy target responses in bfloat16 (whose floating-point
result depends on which rows share a matmul) and per-example scores are the same for any world size.

Every rank must run the same number of steps (collective calls would hang otherwise), and a DataLoader
groups a fixed number of consecutive positions into one batch. So each rank's list of positions is
padded: every batch to ``batch_size`` positions and every rank to the same number of batches. A padding
position repeats a real row with weight 0; it is never counted (``DistributedSampler`` would repeat examples
with full weight and count them twice).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from torch.utils.data import Dataset, DistributedSampler

__all__ = ["ShardSampler", "ShardedBatches", "fixed_batches"]


def fixed_batches(groups: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Cut each group of row indices into consecutive batches of at most ``batch_size`` (no batch crosses groups)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out: list[list[int]] = []
    for rows in groups:
        rows = list(rows)
        out.extend(rows[i : i + batch_size] for i in range(0, len(rows), batch_size))
    return out


class ShardedBatches(Dataset):
    """This rank's positions: the rows of global batches ``rank, rank + W, ...``, padded with weight-0 rows.

    ``dataset[i]`` is the row dict of the i-th position with two fields added: ``index`` (the row's index in
    ``rows``) and ``weight`` (1.0 for a real position, 0.0 for padding). Serve it with
    :class:`ShardSampler` and ``DataLoader(batch_size=batch_size)``.
    """

    def __init__(self, rows: Any, batches: Sequence[Sequence[int]], batch_size: int, world_size: int = 1, rank: int = 0):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid shard: rank={rank}, world_size={world_size}")
        if any(len(b) > batch_size or not b for b in batches):
            raise ValueError(f"every batch must hold 1 to {batch_size} rows")
        self.rows = rows
        self.batch_size = batch_size
        mine = list(batches[rank::world_size])
        n_steps = -(-len(batches) // world_size)  # ceil: the busiest rank's number of batches
        filler = list(batches[0]) if batches else []
        self.items: list[tuple[int, float]] = []
        for b in range(n_steps):
            batch = mine[b] if b < len(mine) else []
            real = [(i, 1.0) for i in batch]
            pad_src = batch or filler
            real += [(pad_src[j % len(pad_src)], 0.0) for j in range(batch_size - len(batch))] if pad_src else []
            self.items.extend(real)
        self.n_steps = n_steps if filler else 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, pos: int) -> dict:
        i, w = self.items[pos]
        row = dict(self.rows[i])
        row["index"] = i
        row["weight"] = w
        return row


class ShardSampler(DistributedSampler):
    """Positions ``skip .. len - 1`` in order. A ``DistributedSampler`` so Lightning does not shard it again.

    ``skip_next(n)`` makes the next pass start after n positions (resuming a scoring epoch mid-way).
    """

    def __init__(self, n: int) -> None:
        # Not calling DistributedSampler.__init__: it would query torch.distributed and take a dataset.
        self.n = n
        self.num_replicas, self.rank = 1, 0
        self.num_samples = self.total_size = n
        self.shuffle, self.drop_last, self.seed, self.epoch = False, False, 0, 0
        self.skip = 0

    def skip_next(self, n_positions: int) -> None:
        self.skip = n_positions

    def __iter__(self) -> Iterator[int]:
        start, self.skip = self.skip, 0
        return iter(range(start, self.n))

    def __len__(self) -> int:
        return self.n

