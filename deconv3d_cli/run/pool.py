"""Host buffers for output tiles (`Pool`) and the memory order a tile is laid out in for its writer."""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

import numpy as np

from ..io.direct import ALIGN


class Pool:
    """Host buffers for output tiles, recycled by the writer thread.

    Fresh pages cost a page fault each (slow on virtual machines) and freed ones linger in the
    allocator's heap; a fixed set of buffers avoids both and bounds the tiles in flight.
    """

    def __init__(self, count: int, nbytes: int, make: Callable[[int], np.ndarray] | None = None) -> None:
        self.free: queue.Queue[np.ndarray] = queue.Queue()
        nbytes += ALIGN  # room to place a tile at any phase within a page (see `view`)
        for _ in range(count):
            self.free.put(make(nbytes) if make else np.empty(max(nbytes, 1), np.uint8))

    def view(
        self,
        buf: np.ndarray,
        shape: tuple[int, ...],
        dtype: np.dtype,
        phase: int | None = None,
        axes: tuple[int, ...] | None = None,
    ) -> np.ndarray:
        """A `shape` array in `buf`, starting `phase` bytes past a page boundary when a phase is given.

        A writer that sends tiles to disk directly (io/direct.py) wants the data aligned in memory like
        its place in the file; then the disk reads the tile's own pages and nothing is copied. `axes`:
        the array's axes slowest in memory first (C order when None).
        """
        start = 0 if phase is None else (phase - buf.ctypes.data) % ALIGN
        flat = buf[start : start + int(np.prod(shape)) * dtype.itemsize].view(dtype)
        if axes is None:
            return flat.reshape(shape)
        return flat.reshape([shape[i] for i in axes]).transpose(np.argsort(axes))


def memory_axes(writer: Any, y: Any, presented: Any) -> tuple[int, ...] | None:
    """The memory order of the tile `y` when the writer's file order (`file_axes`, NIfTI's) is that of
    `presented`, the tile as the writer takes it (y without its length-1 batch or channel axes).

    A host array laid out like `y` is then a plain copy of it and the writer takes it as it is, instead
    of a copy into C order followed by a transposing one into the file's order.
    """
    axes = getattr(writer, "file_axes", None)
    if axes is None or len(axes) != presented.ndim or not presented.permute(tuple(axes)).is_contiguous():
        return None
    from ..engine import memory

    return memory.order(y)
