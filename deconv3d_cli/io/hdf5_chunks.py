"""HDF5 chunks compressed on worker threads, then written as they are (`write_direct_chunk`).

h5py runs a dataset's filters (shuffle, then deflate) in the thread that writes, one chunk after the
other: a gzipped HDF5 output was written at the speed of one core. Here a box that covers whole
chunks is cut into them, each chunk is shuffled and deflated on a thread pool (zlib-ng or zlib
release the GIL while they compress), and the compressed chunks are written in chunk order by the
writer's own thread. h5py serializes every call into the HDF5 library (not thread-safe) with one
lock, its `phil` (H5Dread and H5Dwrite run without the GIL, holding it), except `write_direct_chunk`,
which takes none: so a chunk write could run inside HDF5 while the reader thread reads the input or
the sync thread flushes the output. One whole-process bench run of a 256^3 x2 .h5 output failed with
HDF5's "ring type mismatch occurred for cache entry" (not reproduced since, in 6 runs and a stress
loop); whatever its cause, the chunk write is now made holding `phil`, as every other call is. The
bytes are the filters' own (the same pipeline, deterministic), and every reader decodes them as it
decodes h5py's; a box that does not cover whole chunks, or a dataset with other filters, is written
by h5py as before.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

GZIP = "gzip"
MIN_BYTES = 1 << 20  # below this a box is not worth the pool
# Chunks being compressed or waiting for their turn to be stored, per thread. `Executor.map` would take
# every chunk of the tile at once: a future and a compressed copy per chunk, held until the tile's last
# chunk is stored (a 64^3 output in 1^3 chunks, 262144 futures, peaked 0.7 GiB over the tile budget).
# A window keeps the encoder's memory at a few chunks per thread (`buffer_bytes`), whatever the tile.
WINDOW_PER_THREAD = 2
# Buffers one chunk costs while it is encoded: the padded or contiguous copy, the shuffled copy, the
# bytes handed to deflate, and its compressed output (at most about the input's size).
COPIES_PER_CHUNK = 4


def deflater(level: int) -> Callable[[bytes], bytes]:
    """zlib-format deflate at `level` (HDF5's gzip filter), from zlib-ng when installed, else zlib."""
    try:
        from zlib_ng import zlib_ng as z
    except ImportError:  # pragma: no cover - zlib-ng is a dependency; the stdlib must still work
        import zlib as z  # type: ignore[no-redef]
    return lambda raw: z.compress(raw, level)


class ChunkEncoder:
    """The shuffle + deflate pipeline of one dataset, run on a pool of threads."""

    def __init__(self, ds: Any, threads: int) -> None:
        self.chunks = tuple(int(c) for c in ds.chunks)
        self.shape = tuple(int(n) for n in ds.shape)
        self.dtype = np.dtype(ds.dtype)
        self.shuffle = bool(ds.shuffle)
        self.deflate = deflater(int(ds.compression_opts))
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="hdf5-deflate")
        self.window = WINDOW_PER_THREAD * max(1, threads)

    @classmethod
    def of(cls, ds: Any, threads: int) -> ChunkEncoder | None:
        """An encoder for datasets whose filters are exactly [shuffle,] gzip (what this tool writes)."""
        if ds.chunks is None or threads < 2:
            return None
        filters = set(_filter_names(ds))
        if GZIP not in filters or filters - {"shuffle", GZIP}:
            return None
        return cls(ds, threads)

    def covers(self, index: tuple[slice, ...]) -> bool:
        """Whether the box starts on chunk boundaries and ends on them (or at the dataset's end)."""
        for s, c, n in zip(index, self.chunks, self.shape):
            start, stop, _ = s.indices(n)
            if start % c or (stop % c and stop != n):
                return False
        return True

    def encode(self, block: np.ndarray) -> bytes:
        raw = np.ascontiguousarray(block, dtype=self.dtype)
        if self.shuffle and self.dtype.itemsize > 1:
            raw = raw.view(np.uint8).reshape(-1, self.dtype.itemsize).T
        return self.deflate(np.ascontiguousarray(raw).tobytes())

    def write(self, ds: Any, index: tuple[slice, ...], data: np.ndarray) -> None:
        """Write the box chunk by chunk: compressed in parallel, stored in chunk order."""
        starts = [range(s.indices(n)[0], s.indices(n)[1], c) for s, c, n in zip(index, self.chunks, self.shape)]
        origin = [s.indices(n)[0] for s, n in zip(index, self.shape)]
        in_flight: deque[tuple[tuple[int, ...], Future[bytes]]] = deque()
        try:
            for corner in itertools.product(*starts):
                in_flight.append((corner, self.pool.submit(self.encode, self._block(data, corner, origin))))
                if len(in_flight) >= self.window:
                    self._store(ds, *in_flight.popleft())
            while in_flight:
                self._store(ds, *in_flight.popleft())
        finally:
            for _, fut in in_flight:  # an error: let the rest finish before the tile's buffer is reused
                fut.cancel()
                try:
                    fut.result()
                except BaseException:  # noqa: BLE001, S110 - the first error is the one raised
                    pass

    @staticmethod
    def _store(ds: Any, corner: tuple[int, ...], fut: Future[bytes]) -> None:
        encoded = fut.result()
        with _phil():
            ds.id.write_direct_chunk(corner, encoded, filter_mask=0)

    def _block(self, data: np.ndarray, corner: tuple[int, ...], origin: list[int]) -> np.ndarray:
        """The chunk at `corner`, full size (an edge chunk is padded with zeros, which no reader sees)."""
        box = tuple(slice(a - o, min(a + c, n) - o) for a, o, c, n in zip(corner, origin, self.chunks, self.shape))
        part = data[box]
        if part.shape == self.chunks:
            return part
        full = np.zeros(self.chunks, self.dtype)
        full[tuple(slice(0, m) for m in part.shape)] = part
        return full

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def buffer_bytes(chunk_bytes: int, threads: int) -> int:
    """The most the encoder holds at once besides the tile: a chunk in its copies on each thread, and
    the compressed chunks of its window waiting for their turn to be stored."""
    threads = max(1, threads)
    return (threads * COPIES_PER_CHUNK + WINDOW_PER_THREAD * threads) * chunk_bytes


def _phil() -> Any:
    """h5py's lock around the HDF5 library (see the module's docstring)."""
    from h5py._objects import phil

    return phil


def _filter_names(ds: Any) -> list[str]:
    plist = ds.id.get_create_plist()
    names = []
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        names.append({1: "gzip", 2: "shuffle"}.get(code, str(code)))
    return names


def worth_it(data: np.ndarray, index: tuple[slice, ...], shape: tuple[int, ...]) -> bool:
    """A whole box (not one to broadcast), large enough for threads to pay."""
    box = tuple(len(range(*s.indices(n))) for s, n in zip(index, shape))
    return tuple(data.shape) == box and data.nbytes >= MIN_BYTES and math.prod(box) > 0
