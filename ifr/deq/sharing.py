"""Finding samples of a batch that are bit-for-bit identical, so that a per-sample computation (a
fixed-point solve) runs once for each distinct sample and is shared by its copies.

Identical RoI features are common at test time in the cascade: its boxes are class-agnostic, so a box
whose score passes the threshold for several classes gives several detections with one pooled feature.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

# Floating-point samples are compared by their bits (so -0.0 and 0.0 differ, and a NaN sample can match).
_SAME_WIDTH_INTEGER = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class DistinctSamples(NamedTuple):
    """``first`` (U,): the index of each distinct sample's first occurrence, in batch order;
    ``inverse`` (B,): for each sample, the position in ``first`` of the sample it equals."""

    first: torch.Tensor
    inverse: torch.Tensor


def distinct_samples(x: torch.Tensor) -> DistinctSamples:
    """The distinct samples of ``x`` (B, ...), compared bit for bit.

    ``x[first][inverse]`` equals ``x``; with no repeats, ``first`` is ``arange(B)``.
    """
    batch = x.shape[0]
    rows = x.detach().reshape(batch, math.prod(x.shape[1:]))
    if rows.dtype.is_floating_point:
        rows = rows.contiguous().view(_SAME_WIDTH_INTEGER[rows.element_size()])
    if batch == 0 or rows.shape[1] == 0:  # nothing to share (empty samples are left unshared)
        index = torch.arange(batch, device=x.device)
        return DistinctSamples(index, index)
    _, sorted_inverse = torch.unique(rows, dim=0, return_inverse=True)  # positions in sorted order
    count = int(sorted_inverse.max()) + 1
    positions = torch.arange(batch, device=x.device)
    first_sorted = torch.full((count,), batch, device=x.device).scatter_reduce_(0, sorted_inverse, positions, "amin")
    order = first_sorted.argsort()
    rank = torch.empty_like(order)
    rank[order] = torch.arange(count, device=x.device)
    return DistinctSamples(first_sorted[order], rank[sorted_inverse])


def take_samples(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t[index]`` in ``t``'s memory layout (a channels_last batch stays channels_last, so a
    computation on the selection rounds exactly as on the whole batch)."""
    out = t.index_select(0, index)
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out
