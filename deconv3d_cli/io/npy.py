"""`.npy`: read and written through short-lived memory maps, one per tile.

A map held for the whole run would keep every page it ever touched resident (and counted in the
process's memory), so a 4 GiB output would cost 4 GiB of RSS however small the tiles. Mapping the file
afresh for each box and dropping the map right after keeps the resident set at one tile; the page
cache still absorbs the I/O, and `flush` makes written pages durable with one fsync.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from .base import VolumeMeta


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
            header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
            with open(self.path, "wb") as f:
                fmt = np.lib.format
                (fmt.write_array_header_2_0 if _needs_v2(header) else fmt.write_array_header_1_0)(f, header)
                offset = f.tell()
                f.truncate(offset + int(np.prod(self.shape)) * self.dtype.itemsize)
        self._file = _Mapped(self.path, self.shape, False, self.dtype, offset)
        self._fd: int | None = os.open(self.path, os.O_RDWR)

    def write(self, index: tuple[slice, ...], data: np.ndarray) -> None:
        mm = self._file.map("r+")
        try:
            mm[index] = data
        finally:
            del mm

    def flush(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None


def _needs_v2(header: dict) -> bool:
    return len(repr(header)) > 65000


def open_reader(path: Path, dataset: str | None = None, **hints: object) -> NpyReader:
    if dataset:
        raise InputError("--dataset applies to HDF5 inputs, not .npy", source=str(path), field="--dataset")
    return NpyReader(path)


def create_writer(
    path: Path, shape: tuple[int, ...], dtype: np.dtype, meta: VolumeMeta, resume: bool = False, **options: object
) -> NpyWriter:
    dataset = options.pop("dataset", None)
    if dataset:
        raise InputError(
            "--output-dataset applies to HDF5 outputs, not .npy", source=str(path), field="--output-dataset"
        )
    return NpyWriter(path, shape, dtype, meta, resume=resume)
