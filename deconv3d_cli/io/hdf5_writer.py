"""HDF5 output: one chunked, compressed dataset, geometry kept in attributes, safe on a failing disk.

Why a failed write must be handled with care: when HDF5 cannot write (ENOSPC, EFBIG, EIO), a later
`H5Fclose` tries to write the file's dirty metadata again, fails again, and leaves the file half
closed; the next touch of it (a second close, or the library's own clean-up at exit) dereferences
freed state and the process dies with SIGSEGV after printing its message. So after any failed write
the writer `abandon`s the file: its descriptor is pointed at /dev/null, so that HDF5's close writes
there and succeeds, and the file on disk stays exactly as the last successful write left it (what a
kill at that moment would have left). The failure is reported as one
RunError naming the target and the free space (io/space.py).

Resume: the file is flushed right after it is created, so a run killed at any later moment leaves a
partial HDF5 can reopen; one that cannot be reopened (killed while being created, or its metadata
torn by a kill mid-flush) raises PartialUnusable, and the run core starts the output over.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import InputError, RunError
from ..geometry.layout import Layout
from . import space
from .atomic import fsync_path
from .base import Destination, PartialUnusable, VolumeMeta, construct_writer
from .chunking import output_chunks
from .formats import DEFAULT_COMPRESSION_LEVEL
from .hdf5_chunks import ChunkEncoder, worth_it
from .spacing import SPACING_ATTRS, spacing_value

DEFAULT_DATASET = "data"
_ERRNO = re.compile(r"errno = (\d+)")


def reason(exc: BaseException) -> str:
    """h5py's messages wrap HDF5's in boilerplate ('Unable to synchronously open file (file signature
    not found)'); keep the part in the outer parentheses, which a user can act on."""
    text = str(exc).strip()
    if "(" in text and text.endswith(")"):
        text = text[text.index("(") + 1 : -1]
    return " ".join(text.split()) or type(exc).__name__


def errno_of(exc: BaseException) -> int | None:
    """The OS error number behind an h5py error: its errno, or the one HDF5 wrote into the message."""
    number = getattr(exc, "errno", None)
    if isinstance(number, int):
        return number
    found = _ERRNO.search(str(exc))
    return int(found.group(1)) if found else None


def abandon(f: h5py.File | None) -> None:
    """Close a file whose writes failed, without letting HDF5 write to it (or crash) again."""
    if f is None:
        return
    try:
        fd = f.id.get_vfd_handle()
    except Exception:  # noqa: BLE001 - already closed, or a driver without a descriptor
        fd = None
    if isinstance(fd, int) and fd >= 0:
        # /dev/null takes any write at any offset and ignores the file-size limit (an in-memory file
        # would not: under `ulimit -f` the close would fail with EFBIG again).
        try:
            sink = os.open(os.devnull, os.O_RDWR)
        except OSError:
            sink = os.memfd_create("deconv3d-abandoned")
        os.dup2(sink, fd)
        os.close(sink)
    try:
        f.close()
    except Exception:  # noqa: BLE001 - nothing more can be done for a file being dropped
        pass


def _set_attr(attrs: h5py.AttributeManager, name: str, value: Any) -> bool:
    """Store one attribute; numpy unicode strings need HDF5's string type. False when HDF5 refuses it."""
    try:
        if isinstance(value, np.str_):
            value = str(value)
        if not isinstance(value, (str, bytes)):
            arr = np.asarray(value)
            if arr.dtype.kind == "U" or (arr.dtype.kind == "O" and all(isinstance(v, str) for v in arr.flat)):
                attrs.create(name, arr.astype(object), dtype=h5py.string_dtype())
                return True
        attrs[name] = value
        return True
    except (TypeError, ValueError, OSError, RuntimeError):
        return False  # e.g. an object HDF5 has no type for, or an attribute over 64 KiB


class Hdf5Writer:
    """Writes boxes into one chunked dataset; `flush` makes them durable (HDF5 flush, then fsync)."""

    def __init__(
        self,
        dest: Destination,
        *,
        dataset: str | None = None,
        compression_level: int = DEFAULT_COMPRESSION_LEVEL,
        chunks: Any = None,
        layout: Layout | str | None = None,
    ) -> None:
        self.path = Path(dest.path)
        self.shape = tuple(int(n) for n in dest.shape)
        self.dtype = np.dtype(dest.dtype)
        self.dataset = (dataset or DEFAULT_DATASET).strip("/") or DEFAULT_DATASET
        self._file: h5py.File | None = None
        if dest.resume:
            self._file, self._ds = self._reopen(str(dest.path))
        else:
            level = int(compression_level)
            if not 0 <= level <= 9:
                raise InputError(f"{compression_level!r}: use 0 (none) to 9", param="compression_level")
            self._create(dest.meta, level, output_chunks(self.shape, self.dtype, layout, {"chunks": chunks}))
        self.chunks = tuple(self._ds.chunks) if self._ds.chunks else None
        self._encoder = ChunkEncoder.of(self._ds, len(os.sched_getaffinity(0)))  # deflate on threads

    def _create(self, meta: VolumeMeta, level: int, chunk_shape: tuple[int, ...]) -> None:
        try:
            self._file = h5py.File(self.path, "w")
        except OSError as exc:
            if errno_of(exc) in space.DISK_ERRNOS:
                raise self._fault(exc) from None
            raise InputError(f"cannot create HDF5 file ({reason(exc)})", source=str(self.path)) from None
        try:
            self._ds = self._file.create_dataset(
                self.dataset,
                shape=self.shape,
                dtype=self.dtype,
                chunks=chunk_shape,
                compression="gzip" if level else None,
                compression_opts=level if level else None,
                shuffle=bool(level),
            )
            self._write_meta(meta)
            self._sync()  # from here on a kill leaves a file that reopens
        except (OSError, RuntimeError) as exc:
            abandon(self._file)
            self._file = None
            raise self._fault(exc) from None
        except BaseException:
            abandon(self._file)
            self._file = None
            raise

    def _reopen(self, src: str) -> tuple[h5py.File, h5py.Dataset]:
        try:
            f = h5py.File(self.path, "r+")
        except (OSError, RuntimeError) as exc:
            raise PartialUnusable(
                f"partial output cannot be reopened ({reason(exc)}); run without --resume to start over", source=src
            ) from None
        try:
            ds = f.get(self.dataset)
            if not isinstance(ds, h5py.Dataset) or ds.shape != self.shape or ds.dtype != self.dtype:
                found = f"{ds.shape} {ds.dtype}" if isinstance(ds, h5py.Dataset) else "no such dataset"
                raise PartialUnusable(
                    f"partial output /{self.dataset} has {found}, expected {self.shape} {self.dtype}", source=src
                )
            _check_chunk_index(ds, os.path.getsize(self.path), src)
        except PartialUnusable:
            abandon(f)
            raise
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            abandon(f)
            raise PartialUnusable(f"partial output is damaged ({reason(exc)}); start over", source=src) from None
        return f, ds

    def _write_meta(self, meta: VolumeMeta) -> None:
        """Input attributes, then each spacing attribute rewritten with the new spacing, then the affine."""
        attrs = self._ds.attrs
        for name, value in meta.attrs.items():
            if name in SPACING_ATTRS and meta.spacing is not None:
                value = spacing_value(value, meta.spacing)
            _set_attr(attrs, name, value)
        if meta.spacing is not None and not any(name in meta.attrs for name in SPACING_ATTRS):
            attrs["spacing"] = np.asarray(meta.spacing, dtype=np.float64)
        if meta.affine is not None and not meta.affine_derived:
            attrs["affine"] = np.asarray(meta.affine, dtype=np.float64).reshape(4, 4)

    def _fault(self, exc: BaseException) -> RunError:
        """The one-line error for a failed write (callers abandon the file first)."""
        number = errno_of(exc)
        if number is not None:
            return space.disk_error(OSError(number, os.strerror(number)), self.path)
        return RunError(f"writing failed ({reason(exc)})", source=str(space.target_of(self.path)))

    def _sync(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.id.get_vfd_handle())

    def write(self, index: tuple[slice, ...], data: np.ndarray) -> None:
        if self._file is None:
            raise RunError("the output was closed after a failed write", source=str(space.target_of(self.path)))
        try:
            if self._encoder is not None and self._encoder.covers(index) and worth_it(data, index, self.shape):
                self._encoder.write(self._ds, index, data)
            else:
                self._ds[index] = data
        except (OSError, RuntimeError) as exc:
            self.abort()
            raise self._fault(exc) from None

    def flush(self) -> None:
        if self._file is None:
            return
        try:
            self._sync()
        except (OSError, RuntimeError) as exc:
            self.abort()
            raise self._fault(exc) from None

    def close(self) -> None:
        """Flush, close, then fsync: closing writes final metadata that must be on disk before the rename.

        The flush comes first so that a disk fault is met while the file can still be abandoned safely.
        """
        if self._file is None:
            return
        self._stop_encoder()
        self.flush()
        f, self._file = self._file, None
        try:
            f.close()
        except (OSError, RuntimeError) as exc:
            raise self._fault(exc) from None
        fsync_path(self.path)

    def abort(self) -> None:
        """Drop the file as it is on disk (as a kill now would leave it), writing nothing more."""
        f, self._file = self._file, None
        abandon(f)  # first: dropping the dataset would flush its chunk cache to the failing disk
        self._ds = None
        self._stop_encoder()

    def _stop_encoder(self) -> None:
        encoder, self._encoder = getattr(self, "_encoder", None), None
        if encoder is not None:
            encoder.close()


def _check_chunk_index(ds: h5py.Dataset, file_size: int, src: str) -> None:
    """Every stored chunk of a reopened partial must lie inside the file: a torn index points past it."""
    dsid = ds.id
    if ds.chunks is None or not hasattr(dsid, "get_num_chunks"):
        return
    for i in range(dsid.get_num_chunks()):
        info = dsid.get_chunk_info(i)
        if info.byte_offset is None or info.byte_offset + info.size > file_size:
            raise PartialUnusable(
                f"partial output has a chunk index entry past the end of the file (chunk {info.chunk_offset}); "
                "start over",
                source=src,
            )


def output_size(
    shape: tuple[int, ...], dtype: np.dtype, layout: Layout | str | None, options: dict[str, Any]
) -> tuple[int, bool]:
    """(bytes the output takes at least, whether its size is uncertain (compressed)).

    Uncompressed, HDF5 stores every written chunk whole, edge chunks included: that is the size.
    """
    level = options.get("compression_level")
    if level is None or int(level) != 0:  # the default level is 1
        return 0, True
    chunks = output_chunks(shape, dtype, layout, options)
    count = int(np.prod([-(-int(n) // int(c)) for n, c in zip(shape, chunks)], dtype=np.int64))
    return count * int(np.prod(chunks, dtype=np.int64)) * np.dtype(dtype).itemsize, False


def create_writer(dest: Destination, **options: Any) -> Hdf5Writer:
    """Options: dataset, compression_level, chunks, layout (places channel and batch axes in the chunks)."""
    return construct_writer(Hdf5Writer, dest, options)
