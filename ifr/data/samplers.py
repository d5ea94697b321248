"""Index samplers: an endless shuffled stream grouped into same-aspect batches (training), and a
contiguous shard per process (inference)."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class GroupedInfiniteBatchSampler(Sampler[list[tuple[int, int]]]):
    """Endless batches of ``batch_size`` (index, sample seed) pairs whose images share an aspect group
    (cvpods' aspect ratio grouping: landscape vs portrait), from a seeded shuffle; with ``world_size``
    > 1 each rank draws from its own slice of every permutation.

    Every drawn sample carries its own augmentation seed, so what a batch contains and how it is
    augmented depend only on (seed, rank, batch position), not on loader workers; ``start_batch``
    skips that many batches, which is how a resumed run continues the same stream.
    """

    def __init__(self, groups: Sequence[int], batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, start_batch: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.groups = torch.as_tensor(groups, dtype=torch.int64)
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.start_batch = start_batch

    def _indices(self) -> Iterator[tuple[int, int]]:
        order_generator = torch.Generator().manual_seed(self.seed)
        seed_generator = torch.Generator().manual_seed(self.seed * 1000 + self.rank)
        n = len(self.groups)
        while True:
            order = torch.randperm(n, generator=order_generator) if self.shuffle else torch.arange(n)
            shard = order[self.rank::self.world_size]
            seeds = torch.randint(2 ** 31, (len(shard),), generator=seed_generator)
            yield from zip(shard.tolist(), seeds.tolist())

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        buckets: dict[int, list[tuple[int, int]]] = {}
        produced = 0
        for item in self._indices():
            bucket = buckets.setdefault(int(self.groups[item[0]]), [])
            bucket.append(item)
            if len(bucket) == self.batch_size:
                if produced >= self.start_batch:
                    yield bucket[:]
                produced += 1
                bucket.clear()


class InferenceSampler(Sampler[int]):
    """Each rank gets a contiguous, near-equal slice of range(size), in order."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        shard = -(-size // world_size)
        self.indices = range(min(rank * shard, size), min((rank + 1) * shard, size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
