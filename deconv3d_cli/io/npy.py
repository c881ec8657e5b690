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

A full disk must not kill the process: a page of a map that finds no free block is a SIGBUS. So the
writer reserves the whole file's blocks when it creates (or resumes) it (io/space.reserve); where the
filesystem cannot reserve, no box goes through a map: short runs are written with pwrite too. Disk
faults (ENOSPC, EFBIG, EIO) become one RunError naming the target and the space left.
"""

from __future__ import annotations

import math
import os
from itertools import product
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import direct, space
from .base import Destination, PartialUnusable, VolumeMeta

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
            read = getattr(np.lib.format, "_read_array_header")  # noqa: B009 - numpy's own, for the v3.0 header
            shape, fortran, dtype = read(f, version)
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
        return np.memmap(self.path, dtype=self.dtype, mode=mode, offset=self.offset, shape=self.shape, order=order)  # type: ignore[call-overload]


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
        if any(int(n) < 0 for n in shape):
            raise InputError(
                f"the header's shape {tuple(shape)} has a negative length; every length must be >= 1 (the header "
                "is damaged)",
                source=str(path),
                field="shape",
            )
        need = offset + math.prod(int(n) for n in shape) * dtype.itemsize
        size = self.path.stat().st_size
        if size < need:
            raise InputError(
                f"file is truncated: {size} bytes, but the header's shape {tuple(shape)} {dtype} needs {need}",
                source=str(path),
                field="shape",
            )
        self._file = _Mapped(self.path, shape, fortran, dtype, offset)
        self._need = need
        self.shape = shape
        self.dtype = dtype
        self.meta = VolumeMeta()
        self.missing_chunks = 0

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        # A map of a file cut short since it was opened (another process rewriting it) is a SIGBUS.
        if os.stat(self.path).st_size < self._need:
            raise InputError("the file was truncated while it was being read", source=str(self.path))
        mm = self._file.map("r")
        try:
            return np.array(mm[index])  # a real copy: the I/O happens in the read-ahead thread
        finally:
            del mm

    def close(self) -> None:
        pass


class NpyWriter:
    chunks = None

    def __init__(self, dest: Destination) -> None:
        self.path = Path(dest.path)
        self.shape = tuple(dest.shape)
        self.dtype = np.dtype(dest.dtype)
        self.nbytes = math.prod(self.shape) * self.dtype.itemsize
        try:
            if dest.resume:
                old_shape, fortran, old_dtype, offset = self._partial_header()
                if old_shape != self.shape or old_dtype != self.dtype or fortran:
                    raise PartialUnusable(
                        f"partial output has shape {old_shape} {old_dtype}, expected {self.shape} {self.dtype}",
                        source=str(dest.path),
                    )
            else:
                header = aligned_header(self.shape, self.dtype)
                with open(self.path, "wb") as f:
                    f.write(header)
                    offset = f.tell()
                    f.truncate(offset + self.nbytes)
            self._fd: int | None = os.open(self.path, os.O_RDWR)
        except OSError as exc:
            raise space.disk_error(exc, self.path, self.nbytes) from None
        try:
            # Blocks reserved now cannot run out later: maps are safe only then (a full disk is a SIGBUS).
            self.mapped = space.reserve(self._fd, offset + self.nbytes, self.path) and _maps_enabled()
        except BaseException:
            os.close(self._fd)
            raise
        self._file = _Mapped(self.path, self.shape, False, self.dtype, offset)
        self.offset = offset
        self._runs = direct.RunWriter(self.path, self._fd)
        self._dirty = False

    def _partial_header(self) -> tuple[tuple[int, ...], bool, np.dtype, int]:
        try:
            return _header(self.path)
        except (ValueError, EOFError, OSError) as exc:
            raise PartialUnusable(f"partial output cannot be reopened ({exc})", source=str(self.path)) from None

    def runs(self, index: tuple[slice, ...], min_run: int = direct.MIN_RUN) -> tuple[list[int], int] | None:
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
        if run < min_run:
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
        try:
            self._write(index, data)
        except OSError as exc:
            raise space.disk_error(exc, self.path, self.nbytes) from None
        # Only now: a flush from the sync thread while this write ran must not take the fsync it needs.
        self._dirty = True

    def _write(self, index: tuple[slice, ...], data: np.ndarray) -> None:
        runs = self.runs(index)
        whole = runs is not None and data.size * data.itemsize == len(runs[0]) * runs[1]  # not one to broadcast
        if whole and data.dtype == self.dtype and data.flags.c_contiguous:
            offsets, run = runs  # type: ignore[misc]
            raw = memoryview(data.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
            for i, at in enumerate(offsets):
                self._runs.write(at, raw[i * run : (i + 1) * run])
        elif self.mapped:
            mm = self._file.map("r+")
            try:
                mm[index] = data
            finally:
                del mm
        else:
            self._write_runs(index, data)

    def _write_runs(self, index: tuple[slice, ...], data: np.ndarray) -> None:
        """A box of any shape with pwrite, one contiguous run at a time (no map: nothing can SIGBUS)."""
        index = tuple(index) + (slice(None),) * (len(self.shape) - len(index))
        runs = self.runs(index, min_run=0)
        if runs is None:  # an empty box, or one with steps (which the pipeline never writes)
            if any(len(range(*s.indices(n))) == 0 for s, n in zip(index, self.shape)):
                return
            mm = self._file.map("r+")
            try:
                mm[index] = data
            finally:
                del mm
            return
        box_shape = tuple(len(range(*s.indices(n))) for s, n in zip(index, self.shape))
        compact = np.ascontiguousarray(np.broadcast_to(np.asarray(data).astype(self.dtype, copy=False), box_shape))
        raw = memoryview(compact.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        offsets, run = runs
        assert self._fd is not None
        for i, at in enumerate(offsets):
            direct.write_at(self._fd, raw[i * run : (i + 1) * run], at)

    def flush(self) -> None:
        if self._fd is not None and self._dirty:
            self._dirty = False  # before the fsync: a write finishing during it sets it again
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise space.disk_error(exc, self.path, self.nbytes) from None

    def close(self) -> None:
        if self._fd is not None:
            try:
                self.flush()
            finally:
                self._runs.close()
                os.close(self._fd)
                self._fd = None

    def abort(self) -> None:
        """Close without the final fsync: the run failed (a full disk would fail the fsync again)."""
        if self._fd is not None:
            self._runs.close()
            os.close(self._fd)
            self._fd = None


def _maps_enabled() -> bool:
    """Tests (and a user who distrusts maps) can send every box through pwrite: DECONV3D_NPY_MAPS=0."""
    return os.environ.get("DECONV3D_NPY_MAPS", "1").lower() not in ("0", "false", "no", "off")


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


def output_size(shape: tuple[int, ...], dtype: np.dtype, layout: object, options: object) -> tuple[int, bool]:
    """(the file's exact size: aligned header + data, False: not compressed), for io.check_space."""
    return len(aligned_header(shape, dtype)) + math.prod(shape) * np.dtype(dtype).itemsize, False


def open_reader(path: Path, dataset: str | None = None, **hints: object) -> NpyReader:
    if dataset:
        raise InputError("--dataset applies to HDF5 inputs, not .npy", source=str(path), param="dataset")
    return NpyReader(path)


def create_writer(dest: Destination, **options: object) -> NpyWriter:
    dataset = options.pop("dataset", None)
    if dataset:
        raise InputError(
            "--output-dataset applies to HDF5 outputs, not .npy", source=str(dest.path), param="output_dataset"
        )
    return NpyWriter(dest)
