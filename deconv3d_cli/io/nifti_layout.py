"""Where a box of the presented array lies in a NIfTI file, and its bytes in the file's order.

NIfTI stores voxels x fastest: the data block is the Fortran-ordered array of shape
``(x, y, z[, t][, c])``; read as a C-ordered array it has the reversed shape ``(c, t, z, y, x)`` (the
"file order" below, slowest axis first). Readers and writers present other axis orders (channels
last, a series first), so every box goes through two maps:

- `AxisMap`: presented axis i is file axis ``axes[i]`` (or a virtual length-1 axis); file axes that
  are not presented have length 1.
- `FileOrder`: a box of file axes is a set of contiguous byte runs of the data block. A box that spans
  whole x-y planes (and, for one channel, a range of z) is one long run: that is why plans cut slabs
  along z (`nifti.SLAB_AXIS`).

`arrange` puts a presented box into file order (a C-contiguous array of the reversed box shape). The
pipeline's tiles are C-ordered in the presented layout, x slowest, so this is a transposition; numpy's
own strided copy of a reversal runs at about 0.2 GB/s here, copying blocks of 8 x-rows at once about
1.2 GB/s, and the work is shared out over threads by planes. A tile that is already in file order (its
reversed view is C-contiguous) is used as it is, without a copy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from functools import partial
from typing import Any

import numpy as np

from ..errors import InputError

# x-rows copied together by `arrange`: the best of 4-64 measured for float32 and int16 tiles.
ARRANGE_BLOCK = 8
# Boxes at least this large are arranged on several threads.
PARALLEL_BYTES = 4 << 20


class AxisMap:
    """Presented axis i is file axis `axes[i]`, or a virtual length-1 axis when that is None.

    File axes not named in `axes` have length 1 and are indexed with 0.
    """

    def __init__(self, axes: Sequence[int | None], file_shape: Sequence[int]) -> None:
        self.axes = tuple(axes)
        self.file_shape = tuple(int(n) for n in file_shape)
        self.shape = tuple(1 if a is None else self.file_shape[a] for a in self.axes)
        self._mapped = [i for i, a in enumerate(self.axes) if a is not None]
        # order in which the mapped presented axes appear in the file
        self._file_axis = {i: int(a) for i, a in enumerate(self.axes) if a is not None}
        in_file = sorted(self._mapped, key=self._file_axis.__getitem__)
        self._to_presented = [in_file.index(i) for i in self._mapped]
        self._to_file = [self._mapped.index(i) for i in in_file]

    def file_ranges(self, index: Sequence[slice]) -> list[tuple[int, int]]:
        """(start, stop) on every file axis for a box of the presented array (steps of 1 only)."""
        if len(index) != len(self.axes) or not all(isinstance(s, slice) for s in index):
            raise IndexError(f"expected {len(self.axes)} slices, got {index!r}")
        out = [(0, 1)] * len(self.file_shape)
        for s, a, n in zip(index, self.axes, self.shape):
            start, stop, step = s.indices(n)
            if step != 1:
                raise IndexError(f"steps other than 1 are not supported: {s!r}")
            if a is not None:
                out[a] = (start, max(start, stop))
        return out

    def _file_index(self, index: Sequence[slice]) -> tuple[Any, ...]:
        return tuple(slice(a, b) for a, b in self.file_ranges(index))

    def get(self, array: np.ndarray, index: Sequence[slice]) -> np.ndarray:
        """array[index] in the presented layout (a view of the file-ordered block)."""
        return self.present(array[self._file_index(index)], index)

    def present(self, block: np.ndarray, index: Sequence[slice]) -> np.ndarray:
        """A block with one axis per file axis (the box's own), as the presented box (a view)."""
        squeezed = block[tuple(slice(None) if k in self.axes else 0 for k in range(len(self.file_shape)))]
        out = squeezed.transpose(self._to_presented)
        for i, a in enumerate(self.axes):
            if a is None:
                out = np.expand_dims(out, i)[(slice(None),) * i + (index[i],)]
        return out

    def to_file_axes(self, data: np.ndarray) -> np.ndarray:
        """A presented box as a view with one axis per file axis (x, y, z, ...), length 1 where not presented."""
        data = np.asarray(data)
        if data.ndim != len(self.axes):
            raise ValueError(f"expected a {len(self.axes)}-D block, got shape {data.shape}")
        if any(data.shape[i] != 1 for i, a in enumerate(self.axes) if a is None):
            raise ValueError(f"block {data.shape} does not fit the output layout {self.shape}")
        squeezed = data[tuple(slice(None) if a is not None else 0 for a in self.axes)].transpose(self._to_file)
        mapped = sorted(a for a in self.axes if a is not None)
        for k in range(len(self.file_shape)):
            if k not in mapped:
                squeezed = np.expand_dims(squeezed, k)
        return squeezed

    @property
    def file_axes(self) -> tuple[int, ...]:
        """Presented axes, slowest in the file first: `empty(shape[file_axes]).transpose(argsort(file_axes))`
        is a presented-shape array whose memory is already in file order (no copy when written)."""
        mapped = sorted(self._mapped, key=self._file_axis.__getitem__, reverse=True)
        virtual = [i for i, a in enumerate(self.axes) if a is None]
        return tuple(virtual + mapped)


class FileOrder:
    """The data block of a file as a C-ordered array of `file_shape` reversed, starting at byte `offset`."""

    def __init__(self, file_shape: Sequence[int], itemsize: int, offset: int) -> None:
        self.file_shape = tuple(int(n) for n in file_shape)
        self.rev_shape = self.file_shape[::-1]
        self.itemsize = int(itemsize)
        self.offset = int(offset)
        self.strides = [int(v) * self.itemsize for v in np.cumprod((1, *self.rev_shape[:0:-1]))[::-1]]
        self.nbytes = math.prod(self.file_shape) * self.itemsize

    def rev(self, franges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        return list(franges)[::-1]

    def runs(self, franges: Sequence[tuple[int, int]]) -> tuple[list[int], int]:
        """Byte offsets of the box's contiguous runs (in the order of its file-ordered copy) and their length."""
        box = self.rev(franges)
        if any(b <= a for a, b in box):
            return [], 0
        k = max([i for i, (a, b) in enumerate(box) if b - a != self.rev_shape[i]], default=0)
        run = (box[k][1] - box[k][0]) * self.strides[k]
        first = self.offset + sum(a * st for (a, _), st in zip(box, self.strides))
        grid = np.zeros((), np.int64)
        for (a, b), st in zip(box[:k], self.strides):
            grid = np.add.outer(grid, np.arange(b - a, dtype=np.int64) * st)
        return (first + grid.reshape(-1)).tolist(), run

    def span(self, franges: Sequence[tuple[int, int]]) -> tuple[int, int]:
        """First byte of the box and the byte after its last one."""
        box = self.rev(franges)
        first = self.offset + sum(a * st for (a, _), st in zip(box, self.strides))
        last = self.offset + sum((b - 1) * st for (_, b), st in zip(box, self.strides))
        return first, last + self.itemsize

    def view(self, buffer: Any, start: int, franges: Sequence[tuple[int, int]], dtype: np.dtype) -> np.ndarray:
        """The box as an array with file axes (x, y, z, ...), over `buffer` holding file bytes from `start`."""
        box = self.rev(franges)
        first = self.offset + sum(a * st for (a, _), st in zip(box, self.strides))
        shape = tuple(b - a for a, b in box)
        arr = np.ndarray(shape, dtype=dtype, buffer=buffer, offset=first - start, strides=tuple(self.strides))
        return arr.transpose(tuple(range(len(shape)))[::-1])


def is_file_ordered(block: np.ndarray) -> bool:
    """Whether a block with file axes (x, y, z, ...) already lies in memory x fastest (its reversal C-contiguous)."""
    return bool(block.T.flags.c_contiguous)


def arrange(
    block: np.ndarray,
    out: np.ndarray | None = None,
    pool: Executor | None = None,
) -> np.ndarray:
    """`block` (file axes x, y, z, ...) as a C-contiguous array of the reversed shape: its bytes in file order."""
    src = block.T
    if src.flags.c_contiguous:
        return src
    if out is None:
        out = np.empty(src.shape, src.dtype)
    parts = _plane_parts(src.shape, src.nbytes, pool)
    jobs: list[Callable[[], None]] = [partial(_copy_blocked, src[s], out[s]) for s in parts]
    if pool is None or len(jobs) == 1:
        for job in jobs:
            job()
    else:
        for f in [pool.submit(job) for job in jobs]:
            f.result()
    return out


def _plane_parts(shape: Sequence[int], nbytes: int, pool: Executor | None) -> list[tuple[slice, ...]]:
    """Slices of the slowest axis longer than 1, one per worker, for boxes worth sharing out."""
    workers = getattr(pool, "_max_workers", 1) if pool is not None else 1
    axis = next((i for i, n in enumerate(shape) if n > 1), None)
    if axis is None or workers < 2 or nbytes < PARALLEL_BYTES or axis == len(shape) - 1:
        return [tuple(slice(None) for _ in shape)]
    n = shape[axis]
    step = -(-n // workers)
    lead = (slice(None),) * axis
    return [lead + (slice(a, min(a + step, n)),) for a in range(0, n, step)]


def _copy_blocked(src: np.ndarray, dst: np.ndarray) -> None:
    """dst[...] = src, a few x-rows at a time (the last axis is x; src's stride along it is large)."""
    n = src.shape[-1]
    for x0 in range(0, n, ARRANGE_BLOCK):
        dst[..., x0 : x0 + ARRANGE_BLOCK] = src[..., x0 : x0 + ARRANGE_BLOCK]


# ----------------------------------------------------------------------------------------------------
# presented layouts


# The axes as NIfTI numbers them (nibabel and FSL show a file's shape in this order).
FILE_AXES = ("x", "y", "z", "t", "c")
# The axes as the NIfTI reader presents them, by their count (a series leads with its volumes).
PRESENTED_AXES = {3: "x, y, z", 4: "x, y, z, c", 5: "t, x, y, z, c"}


def file_axes(ndim: int) -> str:
    """'x, y, z, t' for a 4-D file: the names of a NIfTI file's axes in its own order."""
    return ", ".join(FILE_AXES[:ndim])


def reader_axes(
    file_shape: tuple[int, ...], fourth_axis: str, in_channels: int | None, name: str, source: str
) -> tuple[list[int | None], str | None, str | None]:
    """(presented -> file axes, 'channels'/'series'/None, sentence saying why) for a reader."""
    nd = len(file_shape)
    if nd == 3:
        return [0, 1, 2], None, None
    if nd == 4:
        n = file_shape[3]
        if fourth_axis == "channels":
            mode, why = "channels", "as asked (--fourth-axis channels)"
        elif fourth_axis == "series":
            mode, why = "series", "as asked (--fourth-axis series)"
        elif in_channels is not None:
            if n == in_channels:
                mode, why = "channels", f"its length equals the layer's {in_channels} input channel(s)"
            else:
                mode, why = "series", f"its length differs from the layer's {in_channels} input channel(s)"
        elif n == 1:
            mode, why = "channels", "it has length 1"
        else:  # no layer's channel count to match (inspect, a preset, a resampling, a spec without one)
            mode, why = "series", "no channel count to match it against; --fourth-axis channels reads it as channels"
        if mode == "channels":
            return [0, 1, 2, 3], mode, f"4th axis of {name} ({n}) read as {n} channel(s): {why}"
        sentence = f"4th axis of {name} read as a series of {n} volume(s), each upsampled alone: {why}"
        return [3, 0, 1, 2, None], mode, sentence
    # 5-D: (x, y, z, t, c), vector components on the 5th axis as NIfTI defines them
    t, c = file_shape[3], file_shape[4]
    if t == 1:
        if fourth_axis == "series":
            raise InputError(
                f"shape {file_shape}: the 5th axis holds {c} components of one volume, not a series",
                source=source,
                param="fourth_axis",
            )
        return [0, 1, 2, 4], "channels", f"5th axis of {name} read as {c} channel(s) (NIfTI vector components)"
    if fourth_axis == "channels":
        raise InputError(
            f"shape {file_shape}: a series of {t} volumes of {c} components cannot be read as channels",
            source=source,
            param="fourth_axis",
        )
    sentence = f"{name} read as a series of {t} volume(s) of {c} channel(s) (NIfTI's 4th and 5th axes)"
    return [3, 0, 1, 2, 4], "series", sentence


def writer_axes(shape: tuple[int, ...], data_format: str) -> tuple[list[int | None], tuple[int, ...]]:
    """(presented -> file axes, file shape) for an output block layout.

    Several channels (filters) follow NIfTI's vector convention: 5-D, ``dim[4] = 1`` (or the series'
    length), components on ``dim[5]`` (ITK writes and reads vector images this way).
    """
    nd = len(shape)
    first = data_format == "channels_first"
    if nd == 3:
        return [0, 1, 2], tuple(shape)
    if nd == 4:
        if first:
            f, x, y, z = shape
        else:
            x, y, z, f = shape
        if f == 1:
            return ([3, 0, 1, 2] if first else [0, 1, 2, 3]), (x, y, z, 1)
        return ([4, 0, 1, 2] if first else [0, 1, 2, 4]), (x, y, z, 1, f)
    if nd == 5:
        if first:
            t, f, x, y, z = shape
            chan = 1
        else:
            t, x, y, z, f = shape
            chan = 4
        spatial = [2, 3, 4] if first else [1, 2, 3]
        axes: list[int | None] = [None] * 5
        axes[0] = 3
        for a, p in zip((0, 1, 2), spatial):
            axes[p] = a
        if f == 1:
            return axes, (x, y, z, t)
        axes[chan] = 4
        return axes, (x, y, z, t, f)
    raise InputError(f"cannot write a {nd}-D array as NIfTI; expected 3, 4 or 5 dimensions")


def normalise_shape(shape: tuple[int, ...], source: str) -> tuple[int, ...]:
    """Pad 1-D/2-D images to 3-D and drop trailing length-1 axes past the 5th."""
    shape = tuple(int(n) for n in shape)
    while len(shape) > 5 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 5:
        raise InputError(f"shape {shape}: NIfTI images of more than 5 dimensions are not supported", source=source)
    if any(n < 1 for n in shape):
        raise InputError(
            f"shape {shape} is empty (a dim entry is 0 or negative); every axis needs at least one voxel",
            source=source,
            field="dim",
        )
    return shape + (1,) * (3 - len(shape))
