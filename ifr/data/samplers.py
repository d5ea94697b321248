"""Index samplers: an endless shuffled stream grouped into same-aspect batches (training), and a
contiguous shard per process (inference)."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class GroupedInfiniteBatchSampler(Sampler[list[int]]):
    """Endless batches of ``batch_size`` indices whose images share an aspect group (cvpods' aspect
    ratio grouping: landscape vs portrait), from a seeded shuffle; with ``world_size`` > 1 each rank
    draws from its own slice of every permutation."""

    def __init__(self, groups: Sequence[int], batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.groups = torch.as_tensor(groups, dtype=torch.int64)
        self.batch_size = batch_size
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle

    def _indices(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed)
        n = len(self.groups)
        while True:
            order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
            yield from order[self.rank::self.world_size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        buckets: dict[int, list[int]] = {}
        for index in self._indices():
            bucket = buckets.setdefault(int(self.groups[index]), [])
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield bucket[:]
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
