"""Dataset records kept as one buffer of bytes, so that forked DataLoader workers share them.

A list of Python dicts is read by every worker that maps records, and reading a Python object writes
its reference count (and the cyclic garbage collector writes its header): each page of the list a
worker reads becomes a private copy of that worker. At COCO-train size (118k images, 860k polygons,
~1.8 GB of dicts) every worker would end up with its own copy. Pickled one after another into a
single numpy byte array, the records are two objects; a worker unpickles the one it needs into its
own short-lived dict and never writes to the shared pages.
"""
from __future__ import annotations

import pickle
from typing import Sequence

import numpy as np


class SerializedRecords(Sequence):
    """Read-only sequence of records stored pickled in one uint8 buffer; ``records[i]`` is a fresh copy
    of record i (equal to the one given, not the same object)."""

    def __init__(self, records: Sequence[dict]):
        blobs = [pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL) for record in records]
        # ends[i] is where record i's bytes end; record i starts where record i - 1 ends
        self._ends = np.cumsum(np.fromiter((len(blob) for blob in blobs), dtype=np.int64, count=len(blobs)))
        self._buffer = np.frombuffer(b"".join(blobs), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> dict:
        if isinstance(index, slice):
            raise TypeError("SerializedRecords are read one record at a time")
        index = range(len(self._ends))[index]  # negative indices, IndexError
        start = int(self._ends[index - 1]) if index else 0
        return pickle.loads(self._buffer[start:int(self._ends[index])])

    @property
    def nbytes(self) -> int:
        """Size of the buffer and its offsets in bytes."""
        return self._buffer.nbytes + self._ends.nbytes
