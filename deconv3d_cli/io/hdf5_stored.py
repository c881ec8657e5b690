"""Which chunks of an HDF5 dataset are stored, found in one pass over the chunk index.

Chunks never written read as the fill value, as HDF5 says; a run reports how many it met
(`missing_chunks`), because a volume with holes is usually a failed acquisition or conversion. Asking
HDF5 chunk by chunk (`get_chunk_info_by_coord`) scans the index on every call, so a dataset of many
small chunks took time quadratic in their number (64^3 uint8 in 2^3 chunks: 16.7 s where h5py reads
it all in 0.2 s; 96^3 in 1^3 chunks: hours). `chunk_iter` visits the index once; the answer is kept
as one byte per chunk of the grid, and the chunks that reads touched as another, so counting what a
read met unwritten is array arithmetic over the read's box of the grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .chunking import chunk_ranges


class StoredChunks:
    """The stored-chunk map of one dataset, built on the first read that needs it."""

    def __init__(self, dsid: object, shape: Sequence[int], chunks: Sequence[int]) -> None:
        self._dsid = dsid
        self.shape = tuple(int(n) for n in shape)
        self.chunks = tuple(int(c) for c in chunks)
        self.grid = tuple(-(-n // c) for n, c in zip(self.shape, self.chunks))
        self._stored: np.ndarray | None = None
        self._seen = np.zeros(self.grid, dtype=bool)

    @property
    def known(self) -> bool:
        """Whether this HDF5 can say which chunks are stored (HDF5 >= 1.10.5 with a chunk iterator)."""
        return hasattr(self._dsid, "chunk_iter") or hasattr(self._dsid, "get_num_chunks")

    def _build(self) -> np.ndarray:
        stored = np.zeros(self.grid, dtype=bool)
        chunks = self.chunks

        def visit(info: object) -> None:
            offset = info.chunk_offset  # type: ignore[attr-defined]
            stored[tuple(int(o) // c for o, c in zip(offset, chunks))] = True

        walk = getattr(self._dsid, "chunk_iter", None)
        if walk is not None:
            walk(visit)
        else:  # pragma: no cover - older HDF5: one call per stored chunk (each scans the index)
            for i in range(self._dsid.get_num_chunks()):  # type: ignore[attr-defined]
                visit(self._dsid.get_chunk_info(i))  # type: ignore[attr-defined]
        return stored

    def touch(self, index: tuple[slice, ...]) -> None:
        """Record the chunks a read of `index` meets."""
        if not self.known:
            return
        if self._stored is None:
            self._stored = self._build()
        box = tuple(slice(r.start, r.stop) for r in chunk_ranges(index, self.shape, self.chunks))
        self._seen[box] = True

    @property
    def missing(self) -> int:
        """Distinct chunks that reads met unwritten."""
        if self._stored is None:
            return 0
        return int(np.count_nonzero(self._seen & ~self._stored))

    @property
    def nbytes(self) -> int:
        """The map's own memory (two bytes per chunk of the grid), for budgets."""
        return 2 * math.prod(self.grid)
