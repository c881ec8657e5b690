"""What each format's writer holds in memory besides the tiles it is given: the one place the plan learns it.

A run's peak is the fixed footprint (the interpreter, torch and the libraries: the peak of a tiny run),
the tiles the plan sizes from `--memory-limit`, and the writer's own buffers. The writers' buffers were
not counted before, and `.nii.gz` and `.h5` outputs went over the budget by them (a file-ordered copy
of each tile, gzip members pending and in compression, HDF5 chunks being deflated, and per-chunk
bookkeeping per chunk). `writer_memory` states them per format so the plan counts them in its
estimate; HDF5's bookkeeping grows with the output's chunk count, and lets a job refuse a chunking
whose bookkeeping alone cannot fit.

Every figure is an upper bound of the buffers the writer's code allocates (see each constant's module);
the per-chunk figures were measured (whole process peaks, see below) and rounded up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import direct, gzip_stream, hdf5_chunks
from .chunking import output_chunks
from .formats import HDF5, NIFTI, NIFTI_GZ, NPY, ZARR, FormatFacts
from .gzip_pending import usable_cpus

# HDF5's raw-data chunk cache (h5py's default rdcc_nbytes), used by writes that are not whole chunks.
HDF5_CHUNK_CACHE = 1 << 20
# Bookkeeping per chunk. .h5: HDF5's chunk index and metadata cache grow with every chunk written, over
# the whole output: measured 7.4 bytes a chunk (whole process, 64^3 -> 128^3 float32 in 1^3 chunks,
# 2^21 chunks, peaked 13 MiB above the same in 2^18 chunks); counted as 16. .zarr: a tile's chunk boxes
# and the chunks written since the last flush (every --checkpoint-every seconds), so per chunk of a
# tile, not of the output: measured about 340 bytes a chunk (32^3 output in 1^3 chunks, 27 MiB above
# the tiny run under a 16 MiB budget); counted as 512, as copies of the tile when chunks are smaller.
HDF5_BYTES_PER_CHUNK = 16
ZARR_BYTES_PER_CHUNK = 512
# Copies of a chunk zarr makes while it encodes one (the box, the filled chunk, the encoded bytes).
ZARR_COPIES_PER_CHUNK = 4
# Whole tiles' worth that a Zarr output holds beyond those: with the same 48 x 384 x 384 float32 tiles
# (27 MiB), a .zarr output peaked 50 MiB above the .npy one (573 against 523 MiB, trilinear x2 of
# 192^3; the same with compression off), freed chunk buffers of zarr's event-loop and codec threads
# staying in their own heaps. Counted as two tiles, the plan keeps the Zarr rows within the budget.
ZARR_TILE_COPIES = 2


@dataclass(frozen=True)
class WriterMemory:
    """A writer's buffers, in the terms of geometry.tiling.Costs: `tiles` whole copies of a tile as
    stored, `per_tile` more copies capped at `cap` bytes, `fixed` bytes whatever the tile; and the
    `bookkeeping` bytes that grow with the output's `chunks` (also in `fixed`)."""

    tiles: int = 0
    per_tile: int = 0
    cap: int = 0
    fixed: int = 0
    bookkeeping: int = 0
    chunks: int = 0

    def total(self, tile_bytes: int) -> int:
        return self.tiles * tile_bytes + min(self.cap, self.per_tile * tile_bytes) + self.fixed


def chunk_count(shape: tuple[int, ...], chunk_shape: tuple[int, ...]) -> int:
    return math.prod(-(-int(n) // int(c)) for n, c in zip(shape, chunk_shape))


def writer_memory(
    facts: FormatFacts,
    shape: tuple[int, ...],
    dtype: np.dtype,
    layout: Any,
    options: dict[str, Any],
    threads: int | None = None,
) -> WriterMemory:
    """The buffers the writer of `facts` holds for an output of `shape` and `dtype` (`options`: the
    writer options the user gave, e.g. chunks; `layout`: the output's, which places its chunks;
    `threads`: the writer's compression threads, the usable CPUs by default, as the writers take)."""
    threads = max(1, int(threads or usable_cpus()))
    item = np.dtype(dtype).itemsize
    if facts in (HDF5, ZARR):
        chunk_shape = output_chunks(tuple(shape), np.dtype(dtype), layout, options)
        count = chunk_count(tuple(shape), chunk_shape)
        chunk_bytes = math.prod(chunk_shape) * item
        if facts == HDF5:
            # The encoder's chunks are the tile's (at most a few copies of it) and its window's.
            cap = hdf5_chunks.buffer_bytes(chunk_bytes, threads) + HDF5_CHUNK_CACHE
            book = count * HDF5_BYTES_PER_CHUNK
            return WriterMemory(per_tile=hdf5_chunks.COPIES_PER_CHUNK, cap=cap, fixed=book, bookkeeping=book,
                                chunks=count)  # fmt: skip
        per_tile = -(-ZARR_BYTES_PER_CHUNK // chunk_bytes) if chunk_bytes < ZARR_BYTES_PER_CHUNK else 0
        return WriterMemory(tiles=per_tile + ZARR_TILE_COPIES, per_tile=ZARR_COPIES_PER_CHUNK,
                            cap=ZARR_COPIES_PER_CHUNK * chunk_bytes, chunks=count)  # fmt: skip
    if facts == NIFTI_GZ:
        # The file-ordered copy of a tile (nifti_write's scratch); one member pending and its compressed
        # bytes whatever the tile (a member is the unit: a partial one is held whole); members pending
        # and in compression, at most about the tile's bytes and at most PENDING_BYTES plus the
        # compressed outputs of COMPRESSING_PER_THREAD members per thread.
        member = min(gzip_stream.MEMBER_BYTES, math.prod(shape) * item)  # a small output is one short member
        cap = gzip_stream.PENDING_BYTES + gzip_stream.COMPRESSING_PER_THREAD * threads * member
        return WriterMemory(tiles=1, per_tile=2, cap=cap, fixed=2 * member)
    if facts == NIFTI:
        return WriterMemory(tiles=1, per_tile=1, cap=direct.BOUNCE)  # the file-ordered copy; the O_DIRECT bounce
    if facts == NPY:
        return WriterMemory(per_tile=1, cap=direct.BOUNCE)
    return WriterMemory()
