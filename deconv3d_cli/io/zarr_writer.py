"""Zarr output: a group with one chunked array, created whole or not at all, written a chunk at a time.

Creation is atomic: the group, the array and their attributes are written into `NAME.new` beside the
partial, made durable, and renamed onto the partial. A run killed at any moment therefore leaves no
partial (the run starts over) or a complete, reopenable one; before, a kill between the group and
the array left a group without its array, and `--resume` failed with a KeyError. A partial that
cannot be reopened raises PartialUnusable, which the run core takes as "start over".

Durability: zarr's local store writes each chunk to a temporary file and renames it, so a chunk is
never half-written; `flush` fsyncs the chunk files written since the last flush (and their folders),
after which the run journals the tiles. `close` also removes temporary files left by a writer that
was killed mid-chunk. A StoreGuard (io/zarr_store.py) refuses to go on once the store folder is gone
or replaced (zarr would re-create it), and disk faults are one RunError naming the target.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, RunError
from ..geometry.layout import Layout
from . import space
from .atomic import fsync_path, remove
from .base import Destination, PartialUnusable, VolumeMeta, construct_writer
from .chunking import chunk_boxes, chunk_ranges, layout_of, output_chunks
from .formats import DEFAULT_COMPRESSION_LEVEL
from .zarr import zarr_module
from .zarr_ngff import STRUCTURAL_ATTRS, ZarrHeader, array_attrs, ngff_attrs
from .zarr_store import METADATA_FILES, StoreGuard, describe_error, sweep

DEFAULT_ARRAY = "0"
NEW_SUFFIX = ".new"  # the store being created, renamed onto the partial once complete


class ZarrWriter:
    """Writes boxes into one chunked array of a new (or, on resume, the partial) store."""

    def __init__(
        self,
        dest: Destination,
        *,
        zarr_format: int | None = None,
        dataset: str | None = None,
        compression_level: int = DEFAULT_COMPRESSION_LEVEL,
        chunks: Any = None,
        layout: Layout | str | None = None,
    ) -> None:
        zarr = zarr_module(dest.path)
        self.path = Path(dest.path)
        self.shape = tuple(int(n) for n in dest.shape)
        self.dtype = np.dtype(dest.dtype)
        self.array_path = (dataset or DEFAULT_ARRAY).strip("/") or DEFAULT_ARRAY
        src = str(dest.path)
        if self.dtype.kind not in "fiu":
            raise InputError(f"cannot write {self.dtype} as Zarr", source=src, param="output_dtype")
        if not dest.resume:
            fmt = zarr_format or (dest.meta.header.zarr_format if isinstance(dest.meta.header, ZarrHeader) else 3)
            if int(fmt) not in (2, 3):
                raise InputError(f"zarr_format {fmt!r}: use 2 or 3", source=src)
            level = int(compression_level)
            if not 0 <= level <= 22:
                raise InputError(f"{compression_level!r}: use 0 (none) to 22", param="compression_level")
            try:
                self._create(zarr, dest.meta, int(fmt), level, layout_of(self.shape, layout), chunks)
            except OSError as exc:
                raise space.disk_error(exc, self.path) from None
        root, arr = self._reopen(zarr, src)
        self._root = root
        self._arr = arr
        self.chunks = tuple(int(c) for c in arr.chunks)
        self._store_root = Path(str(arr.store.root))
        self._guard = StoreGuard(self._store_root)
        self._pending: set[tuple[int, ...]] = set()
        self._lock = threading.Lock()  # the pipeline's sync thread flushes while its writer thread writes

    def _create(self, zarr: Any, meta: VolumeMeta, fmt: int, level: int, lay: Layout, chunks: Any) -> None:
        """The whole store (group, array, attributes) in `NAME.new`, made durable, renamed onto the partial."""
        chunk_shape = output_chunks(self.shape, self.dtype, lay, {"chunks": chunks})
        group_attrs, names = ngff_attrs(meta, lay, self.array_path, fmt)
        if isinstance(meta.header, ZarrHeader):
            kept = {k: v for k, v in meta.header.group_attrs.items() if k not in STRUCTURAL_ATTRS}
            group_attrs = {**kept, **group_attrs}
        new = self.path.with_name(self.path.name + NEW_SUFFIX)
        remove(new)
        try:
            root = zarr.open_group(store=str(new), mode="w", zarr_format=fmt)
            if level == 0:
                compressors = None
            elif fmt == 3:
                compressors = zarr.codecs.ZstdCodec(level=level)
            else:
                import numcodecs

                compressors = numcodecs.Zstd(level=level)
            extra = {"dimension_names": names} if fmt == 3 and names else {}
            root.create_array(
                self.array_path,
                shape=self.shape,
                dtype=self.dtype,
                chunks=chunk_shape,
                compressors=compressors,
                fill_value=0,
                attributes=array_attrs(meta, bool(group_attrs.get("ome") or group_attrs.get("multiscales"))),
                config={"write_empty_chunks": False},
                **extra,
            )
            root.attrs.update(group_attrs)
            for folder in (new, new / self.array_path):
                for name in METADATA_FILES:
                    fsync_path(folder / name, missing_ok=True)
                fsync_path(folder)
            remove(self.path)
            os.rename(new, self.path)
            fsync_path(self.path.parent)
        except BaseException:
            remove(new)
            raise

    def _reopen(self, zarr: Any, src: str) -> tuple[Any, Any]:
        try:
            root = zarr.open_group(store=str(self.path), mode="r+")
            arr = root.get(self.array_path)
            found = (tuple(arr.shape), np.dtype(arr.dtype)) if hasattr(arr, "chunks") else None
        except Exception as exc:  # noqa: BLE001 - zarr raises many types for a torn store
            raise PartialUnusable(
                f"partial output cannot be reopened ({describe_error(exc)}); run without --resume to start over",
                source=src,
            ) from None
        if found != (self.shape, self.dtype):
            what = "no such array" if found is None else f"{found[0]} {found[1]}"
            raise PartialUnusable(
                f"partial output /{self.array_path} has {what}, expected {self.shape} {self.dtype}", source=src
            )
        return root, arr

    def _failed(self, exc: OSError) -> RunError:
        """A removed store first (its writes fail as missing files), then disk faults, then anything else."""
        self._guard.check(space.target_of(self.path))
        if space.is_disk_fault(exc):
            return space.disk_error(exc, self.path)
        return RunError(f"writing failed ({exc.strerror or exc})", source=str(space.target_of(self.path)))

    def write(self, index: tuple[slice, ...], data: np.ndarray) -> None:
        """One chunk at a time, so encoding buffers stay at one chunk (zarr would encode many at once)."""
        if self._arr is None:
            raise RunError("the output was closed", source=str(space.target_of(self.path)))
        self._guard.check(space.target_of(self.path))
        boxes = chunk_boxes(index, self.shape, self.chunks)
        try:
            if len(boxes) <= 1:
                self._arr[index] = data
            else:
                for _, box, sub in boxes:
                    self._arr[box] = data[sub]
        except OSError as exc:
            raise self._failed(exc) from None
        with self._lock:
            self._pending.update(product(*chunk_ranges(index, self.shape, self.chunks)))

    def _chunk_file(self, coords: Iterable[int]) -> Path:
        return self._store_root / self._arr.path / self._arr.metadata.encode_chunk_key(tuple(coords))

    def flush(self) -> None:
        """fsync the chunk files written since the last flush and their folders, once the store is known
        to be still there (fsync of a missing chunk is no error: an all-zero chunk is not stored)."""
        if self._arr is None:
            return
        self._guard.check(space.target_of(self.path))
        with self._lock:  # chunks written from now on belong to the next flush
            pending, self._pending = self._pending, set()
        folders: set[Path] = set()
        try:
            for f in [self._chunk_file(c) for c in pending]:
                if fsync_path(f, missing_ok=True):
                    folders.add(f.parent)
            for folder in folders:
                fsync_path(folder, missing_ok=True)
        except OSError as exc:
            with self._lock:
                self._pending |= pending
            raise self._failed(exc) from None

    def release(self) -> None:
        """Make this writer's chunks durable without touching others' (one of several concurrent writers)."""
        self.flush()

    def close(self) -> None:
        """Flush, and remove temporary chunk files left by a writer killed mid-write (the only writer)."""
        if self._arr is None:
            return
        self.flush()
        sweep(self.path)
        self._guard.check(space.target_of(self.path))
        self._arr = None

    def abort(self) -> None:
        self._arr = None


def create_writer(dest: Destination, **options: Any) -> ZarrWriter:
    """Options: dataset, compression_level, chunks, layout, zarr_format."""
    return construct_writer(ZarrWriter, dest, options)
