"""`.npy`: read through short-lived memory maps, written in long runs or through maps, one per tile.

A map held for the whole run would keep every page it ever touched resident (and counted in the
process's memory), so a 4 GiB output would cost 4 GiB of RSS however small the tiles. Mapping the file
afresh for each box and dropping the map right after keeps the resident set at one tile.

A tile that spans whole rows of the trailing axes (the pipeline plans slabs for .npy outputs) is a few
long contiguous byte runs of the file: those go out with pwrite, around the page cache where the
filesystem allows (io/direct.py), which is several times faster than filling fresh page-cache pages.
New files get a header padded to 4096 bytes (a valid .npy header; numpy pads to 64) so that the data,
and with it every slab boundary that falls on a page, is aligned for direct writes.
`flush` makes everything durable with one fsync.
"""

from __future__ import annotations

import os
from itertools import product
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import direct
from .base import VolumeMeta

WRITES_SLABS = True  # whole-plane tiles are contiguous runs of the file (see NpyWriter.runs)


def _header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Shape, Fortran order, dtype and data offset of an .npy file, refusing object arrays."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            shape, fortran, dtype = np.lib.format._read_array_header(f, version)  # noqa: SLF001 - v3.0
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError("holds pickled objects; only plain numeric arrays are read")
    return tuple(shape), bool(fortran), dtype, offset


class _Mapped:
    def __init__(self, path: Path, shape: tuple[int, ...], fortran: bool, dtype: np.dtype, offset: int) -> None:
        self.path, self.shape, self.fortran, self.dtype, self.offset = path, shape, fortran, dtype, offset

    def map(self, mode: str) -> np.memmap | np.ndarray:
        if 0 in self.shape:
            return np.zeros(self.shape, self.dtype)
        order = "F" if self.fortran else "C"
        return np.memmap(self.path, dtype=self.dtype, mode=mode, offset=self.offset, shape=self.shape, order=order)


class NpyReader:
    format = "npy"
    chunks = None

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            shape, fortran, dtype, offset = _header(self.path)
        except ValueError as exc:
            raise InputError(f"not a readable .npy: {exc}", source=str(path)) from None
        except (OSError, EOFError) as exc:
            raise InputError(f"not a readable .npy: {exc}", source=str(path)) from None
        if dtype.kind not in "fiub":
            raise InputError(f"dtype {dtype} is not numeric", source=str(path))
        need = offset + int(np.prod(shape)) * dtype.itemsize
        if self.path.stat().st_size < need:
            raise InputError(
                f"file is truncated: {self.path.stat().st_size} bytes, the header promises {need}", source=str(path)
            )
        self._file = _Mapped(self.path, shape, fortran, dtype, offset)
        self.shape = shape
        self.dtype = dtype
        self.meta = VolumeMeta()

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        mm = self._file.map("r")
        try:
            return np.array(mm[index])  # a real copy: the I/O happens in the read-ahead thread
        finally:
            del mm

    def close(self) -> None:
        pass


class NpyWriter:
    chunks = None

    def __init__(
        self, path: Path, shape: tuple[int, ...], dtype: np.dtype, meta: VolumeMeta, resume: bool = False
    ) -> None:
        self.path = Path(path)
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        if resume:
            old_shape, fortran, old_dtype, offset = _header(self.path)
            if old_shape != self.shape or old_dtype != self.dtype or fortran:
                raise InputError(
                    f"partial output has shape {old_shape} {old_dtype}, expected {self.shape} {self.dtype}",
                    source=str(path),
                )
        else:
            header = aligned_header(self.shape, self.dtype)
            with open(self.path, "wb") as f:
                f.write(header)
                offset = f.tell()
                f.truncate(offset + int(np.prod(self.shape)) * self.dtype.itemsize)
        self._file = _Mapped(self.path, self.shape, False, self.dtype, offset)
        self.offset = offset
        self._fd: int | None = os.open(self.path, os.O_RDWR)
        self._runs = direct.RunWriter(self.path, self._fd)
        self._dirty = False

    def runs(self, index: tuple[slice, ...]) -> tuple[list[int], int] | None:
        """File offsets of a box's contiguous byte runs and their length, when the runs are long.

        A box is contiguous from its innermost partial axis on; the runs follow each other in the
        box's compact C-order copy, so run i of the copy goes to offsets[i].
        """
        box = [s.indices(n) for s, n in zip(index, self.shape)]
        if len(box) != len(self.shape) or any(step != 1 or stop <= start for start, stop, step in box):
            return None
        strides = [int(v) * self.dtype.itemsize for v in np.cumprod((1, *self.shape[:0:-1]))[::-1]]
        k = max([a for a, (start, stop, _) in enumerate(box) if stop - start != self.shape[a]], default=0)
        run = (box[k][1] - box[k][0]) * strides[k]
        if run < direct.MIN_RUN:
            return None
        first = self.offset + sum(start * st for (start, _, _), st in zip(box, strides))
        outer = [range(start, stop) for start, stop, _ in box[:k]]
        offsets = [first + sum((p - r.start) * st for p, r, st in zip(pos, outer, strides)) for pos in product(*outer)]
        return offsets, run

    def phase(self, index: tuple[slice, ...]) -> int | None:
        """Where a box's data should start in a page-aligned buffer to be written without a copy."""
        runs = self.runs(index)
        return None if runs is None else direct.phase(runs[0][0])

    def write(self, index: tuple[slice, ...], data: np.ndarray) -> None:
        runs = self.runs(index)
        if runs is not None and data.dtype == self.dtype and data.flags.c_contiguous:
            offsets, run = runs
            raw = memoryview(data.reshape(-1).view(np.uint8))
            for i, at in enumerate(offsets):
                self._runs.write(at, raw[i * run : (i + 1) * run])
        else:
            mm = self._file.map("r+")
            try:
                mm[index] = data
            finally:
                del mm
        # Only now: a flush from the sync thread while this write ran must not take the fsync it needs.
        self._dirty = True

    def flush(self) -> None:
        if self._fd is not None and self._dirty:
            self._dirty = False  # before the fsync: a write finishing during it sets it again
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            self.flush()
            self._runs.close()
            os.close(self._fd)
            self._fd = None


def aligned_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """An .npy header (version 1.0, or 2.0 when the shape needs it) padded to a multiple of 4096 bytes."""
    shape = tuple(int(n) for n in shape)  # numpy 2's repr of np.int64(3) is not a valid header
    fields = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    text = "{" + "".join(f"{k!r}: {fields[k]!r}, " for k in sorted(fields)) + "}"
    version, size_bytes = ((1, 0), 2) if len(text) < 60000 else ((2, 0), 4)
    prefix = 6 + 2 + size_bytes
    total = -(-(prefix + len(text) + 1) // direct.ALIGN) * direct.ALIGN
    body = (text + " " * (total - prefix - len(text) - 1) + "\n").encode("latin1")
    return np.lib.format.magic(*version) + len(body).to_bytes(size_bytes, "little") + body


def open_reader(path: Path, dataset: str | None = None, **hints: object) -> NpyReader:
    if dataset:
        raise InputError("--dataset applies to HDF5 inputs, not .npy", source=str(path), param="dataset")
    return NpyReader(path)


def create_writer(
    path: Path, shape: tuple[int, ...], dtype: np.dtype, meta: VolumeMeta, resume: bool = False, **options: object
) -> NpyWriter:
    dataset = options.pop("dataset", None)
    if dataset:
        raise InputError(
            "--output-dataset applies to HDF5 outputs, not .npy", source=str(path), param="output_dataset"
        )
    return NpyWriter(path, shape, dtype, meta, resume=resume)
