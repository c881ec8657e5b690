"""`.npy`: memory-mapped in both directions, so neither side ever holds the whole array."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from .base import VolumeMeta


class NpyReader:
    format = "npy"
    chunks = None

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            msg = "holds pickled objects; only plain numeric arrays are read" if "pickle" in str(exc) else str(exc)
            raise InputError(f"not a readable .npy: {msg}", source=str(path)) from None
        except (OSError, EOFError) as exc:
            raise InputError(f"not a readable .npy: {exc}", source=str(path)) from None
        if self._array.dtype.kind not in "fiub":
            raise InputError(f"dtype {self._array.dtype} is not numeric", source=str(path))
        self.shape = tuple(self._array.shape)
        self.dtype = self._array.dtype
        self.meta = VolumeMeta()

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        return np.array(self._array[index])  # a real copy: the I/O happens in the read-ahead thread

    def close(self) -> None:
        self._array = None  # type: ignore[assignment]


class NpyWriter:
    chunks = None

    def __init__(
        self, path: Path, shape: tuple[int, ...], dtype: np.dtype, meta: VolumeMeta, resume: bool = False
    ) -> None:
        self.path = Path(path)
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        if resume:
            mm = np.load(self.path, mmap_mode="r+", allow_pickle=False)
            if mm.shape != self.shape or mm.dtype != self.dtype:
                raise InputError(
                    f"partial output has shape {mm.shape} {mm.dtype}, expected {self.shape} {self.dtype}",
                    source=str(path),
                )
            self._mm = mm
        else:
            self._mm = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype, shape=self.shape)

    def write(self, index: tuple[slice, ...], data: np.ndarray) -> None:
        self._mm[index] = data

    def flush(self) -> None:
        self._mm.flush()

    def close(self) -> None:
        if self._mm is not None:
            self._mm.flush()
            del self._mm
            self._mm = None
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def open_reader(path: Path, dataset: str | None = None) -> NpyReader:
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
