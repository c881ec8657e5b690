"""NIfTI outputs: `.nii` written in file order around the page cache, `.nii.gz` compressed as tiles arrive.

Both take boxes in the presented layout (3-D ``(X, Y, Z)``, ``(X, Y, Z, F)`` or a series
``(T, X, Y, Z, F)``, channels_first too), put each box's bytes into file order (nifti_layout.arrange;
no copy when the tile already is) and hand the file's byte runs on. No memory maps: a full disk is an
ordinary error (io/space.py), never SIGBUS; the one exception is below, and safe for the same reason.

`.nii`: the file's size is reserved at creation (posix_fallocate; a run that cannot fit is refused
before anything is computed), and runs of at least direct.MIN_RUN bytes (a box spanning whole x-y
planes is one run per component) are written by direct.RunWriter, O_DIRECT for their page-aligned
middles. Boxes of many shorter runs (tiles that cut the x or y axis: plans that are not slabs) are
stored through a short-lived memory map of the reserved file (its blocks exist, so a full disk cannot
fault the map; this is as fast as the old writer was for such plans), or, where the filesystem cannot
reserve space, a plane span at a time: read, filled in, written back. `flush` is one fsync.

`.nii.gz`: the bytes go to gzip_stream.GzipStreamWriter (fixed members compressed on threads,
deterministic, resumable from its index). Components of a vector output are its segments, so that
tiles holding all components still fill every segment front to back. A first box made of many short
runs (a plan that is not slabs) switches the writer to *staged* mode: boxes are written uncompressed
into ``NAME.gzstage`` (reserved like a `.nii`) and the whole stream is compressed from it, on the same
threads and into the same members (so into the same bytes), when the writer closes. The stage file is
removed on close and abort.
"""

from __future__ import annotations

import hashlib
import io
import math
import mmap
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, RunError
from . import direct, space
from .base import Destination
from .formats import DEFAULT_COMPRESSION_LEVEL
from .gzip_pending import usable_cpus
from .gzip_stream import GzipStreamWriter
from .nifti_header import output_header, read_header
from .nifti_layout import AxisMap, FileOrder, arrange, writer_axes

STAGE_SUFFIX = ".gzstage"
# A first box of more runs than this, each shorter than direct.MIN_RUN, makes a .nii.gz writer staged.
STREAM_MAX_RUNS = 64
_STAGE_READ = 16 << 20


def header_bytes(hdr: Any) -> bytes:
    """The header as written before the data (348 or 540 bytes, the extension flag, padding to vox_offset)."""
    buf = io.BytesIO()
    hdr.write_to(buf)
    raw = buf.getvalue()
    return raw + b"\x00" * (int(hdr["vox_offset"]) - len(raw))


class _Scratch:
    """A reusable page-aligned buffer, so arranged boxes can start at the page phase of their file offset."""

    def __init__(self) -> None:
        self._map: mmap.mmap | None = None

    def array(self, shape: tuple[int, ...], dtype: np.dtype, phase: int) -> np.ndarray:
        need = math.prod(shape) * dtype.itemsize + direct.ALIGN
        if self._map is None or len(self._map) < need:
            self.close()
            self._map = mmap.mmap(-1, -(-need // direct.ALIGN) * direct.ALIGN)
        return np.frombuffer(self._map, np.uint8, math.prod(shape) * dtype.itemsize, phase).view(dtype).reshape(shape)

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view still alive (an error mid-write): left to the garbage collector
                pass
            self._map = None


class BlockFile:
    """An open file holding the data block of `order` uncompressed; boxes written by runs or plane spans.

    Long runs go out by direct.RunWriter from the box's file-ordered copy. A box of many short runs
    (a plan that cuts x or y) is stored through a short-lived memory map when the file's space was
    reserved (its blocks exist, so a full disk cannot fault the map; the strided copy into the map is
    the transposition), else a plane span at a time by pread, fill and pwrite.
    """

    def __init__(self, path: Path, order: FileOrder, fd: int, reserved: bool, dtype: np.dtype) -> None:
        self.path, self.order, self.fd, self.reserved, self.dtype = path, order, fd, reserved, dtype
        self.runs = direct.RunWriter(path, fd)
        self.dirty = False

    def write(self, franges: list[tuple[int, int]], block: np.ndarray, arrange: Callable[[], np.ndarray]) -> None:
        """Store `block` (file axes x, y, z, ...) at `franges`; `arrange()` gives its file-ordered copy."""
        offsets, run = self.order.runs(franges)
        try:
            if run >= direct.MIN_RUN or len(offsets) <= STREAM_MAX_RUNS:
                raw = memoryview(arrange().reshape(-1).view(np.uint8))  # type: ignore[arg-type]
                for i, at in enumerate(offsets):
                    self.runs.write(at, raw[i * run : (i + 1) * run])
            elif self.reserved:
                mm = np.memmap(
                    self.path, self.dtype, "r+", offset=self.order.offset, shape=self.order.file_shape, order="F"
                )
                try:
                    mm[tuple(slice(a, b) for a, b in franges)] = block  # durable at the fd's fsync (flush)
                finally:
                    del mm
            else:
                self._write_spans(franges, arrange())
        except OSError as exc:
            raise space.disk_error(exc, self.path) from None
        self.dirty = True

    def _write_spans(self, franges: list[tuple[int, int]], arranged: np.ndarray) -> None:
        """Short runs: per plane span (slow axes fixed, the rest from first to last byte), read, fill, write."""
        rev = self.order.rev(franges)
        n = len(rev)
        j = n - 1
        while j > 0 and self._span_bytes(rev, j) < direct.MIN_RUN:
            j -= 1
        outer = [range(a, b) for a, b in rev[:j]]
        for pos in product(*outer):
            sub_rev = [(p, p + 1) for p in pos] + rev[j:]
            sub = sub_rev[::-1]
            a, b = self.order.span(sub)
            buf = bytearray(b - a)
            got = os.preadv(self.fd, [buf], a)
            if got < len(buf):
                buf[got:] = bytes(len(buf) - got)
            view = self.order.view(buf, a, sub, arranged.dtype)
            part = arranged[tuple(slice(p - r[0], p - r[0] + 1) for p, r in zip(pos, rev))]
            view[...] = part.T
            direct_write_all(self.fd, memoryview(buf), a)

    def _span_bytes(self, rev: list[tuple[int, int]], j: int) -> int:
        sub = [(r[0], r[0] + 1) for r in rev[:j]] + rev[j:]
        a, b = self.order.span(sub[::-1])
        return b - a

    def flush(self) -> None:
        if self.dirty:
            self.dirty = False  # before the fsync: a write finishing during it sets it again
            try:
                os.fsync(self.fd)
            except OSError as exc:
                raise space.disk_error(exc, self.path) from None

    def close(self) -> None:
        self.runs.close()


def direct_write_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


class _NiftiOutput:
    """What both writers share: layout, header, arrangement of boxes."""

    chunks = None

    def __init__(self, dest: Destination, data_format: str, scaling: tuple[float, float] | None) -> None:
        self.path = Path(dest.path)
        self.shape = tuple(int(n) for n in dest.shape)
        self.dtype = np.dtype(dest.dtype)
        if self.dtype.kind not in "fiu":
            raise InputError(f"cannot write {self.dtype} as NIfTI", source=str(dest.path), param="output_dtype")
        axes, file_shape = writer_axes(self.shape, data_format)
        self.axis_map = AxisMap(axes, file_shape)
        self.file_shape = tuple(int(n) for n in file_shape)
        self.file_axes = self.axis_map.file_axes
        self.disk_dtype = self.dtype.newbyteorder("<")
        self.header = output_header(self.file_shape, self.dtype, dest.meta, scaling=scaling)
        self.header_bytes = header_bytes(self.header)
        self.offset = len(self.header_bytes)
        self.order = FileOrder(self.file_shape, self.dtype.itemsize, self.offset)
        self.total = self.offset + self.order.nbytes
        self._scratch = _Scratch()

    @property
    def nbytes(self) -> int:
        return self.order.nbytes

    def runs(self, index: tuple[slice, ...]) -> tuple[list[int], int] | None:
        """File offsets of a box's contiguous runs (in its file-ordered copy) and their length, when long."""
        offsets, run = self.order.runs(self.axis_map.file_ranges(index))
        return (offsets, run) if offsets and run >= direct.MIN_RUN else None

    def phase(self, index: tuple[slice, ...]) -> int | None:
        """Where a file-ordered box should start in a page-aligned buffer to go to disk without a copy."""
        runs = self.runs(index)
        return None if runs is None else direct.phase(runs[0][0])

    def block(self, index: tuple[slice, ...], data: np.ndarray) -> tuple[list[tuple[int, int]], np.ndarray]:
        """The box's ranges on the file axes and the data as a view with those axes."""
        franges = self.axis_map.file_ranges(index)
        block = self.axis_map.to_file_axes(np.asarray(data))
        if block.shape != tuple(b - a for a, b in franges):
            raise ValueError(f"block of shape {np.shape(data)} does not fit the box {index}")
        return franges, block

    def arrange(self, franges: list[tuple[int, int]], block: np.ndarray, pool: Any = None) -> np.ndarray:
        """The block's bytes in file order: a view when it already is, else a copy placed at the page phase."""
        if block.dtype == self.disk_dtype and block.T.flags.c_contiguous:
            return block.T
        offsets, _ = self.order.runs(franges)
        out = self._scratch.array(block.shape[::-1], self.disk_dtype, direct.phase(offsets[0]) if offsets else 0)
        return arrange(block.astype(self.disk_dtype, copy=False), out, pool)

    def _check_partial(self, path: Path) -> None:
        if not path.exists():
            raise InputError(
                f"no partial data to resume ({path.name} is missing); run without --resume", source=str(path)
            )
        hdr = read_header(path, compressed=False)
        if header_bytes(hdr) != self.header_bytes:
            raise InputError(
                f"partial output holds {tuple(hdr.get_data_shape())} {hdr.get_data_dtype()} with another header; "
                "run without --resume",
                source=str(self.path),
            )


def _open_block(path: Path, size: int, head: bytes, fresh: bool) -> tuple[int, bool]:
    """The file opened (created when fresh) with its size reserved; (fd, whether the space is reserved)."""
    flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if fresh else 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise space.disk_error(exc, path) from None
    try:
        reserved = space.reserve(fd, size, path)
        if fresh:
            direct_write_all(fd, memoryview(head), 0)
    except OSError as exc:
        os.close(fd)
        raise space.disk_error(exc, path, size) from None
    except BaseException:
        os.close(fd)
        raise
    return fd, reserved


class NiftiWriter(_NiftiOutput):
    """An uncompressed `.nii`, written in file order (see the module docstring)."""

    def __init__(
        self,
        dest: Destination,
        *,
        data_format: str = "channels_last",
        scaling: tuple[float, float] | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__(dest, data_format, scaling)
        # threads that put tiles into file order (the copy is the slow part of writing, see nifti_layout)
        self._pool = ThreadPoolExecutor(max_workers=max(1, int(threads or usable_cpus())), thread_name_prefix="nii")
        if dest.resume:
            self._check_partial(self.path)
        fd, reserved = _open_block(self.path, self.total, self.header_bytes, fresh=not dest.resume)
        self._fd: int | None = fd
        self._file = BlockFile(self.path, self.order, fd, reserved, self.disk_dtype)

    def write(self, index: tuple[slice, ...], data: np.ndarray) -> None:
        if self._fd is None:
            raise RunError("writer is closed", source=str(self.path))
        franges, block = self.block(index, data)
        self._file.write(franges, block, lambda: self.arrange(franges, block, self._pool))

    def flush(self) -> None:
        if self._fd is not None:
            self._file.flush()

    def close(self) -> None:
        if self._fd is None:
            return
        self.flush()
        self._release()

    def abort(self) -> None:
        self._release()

    def _release(self) -> None:
        self._pool.shutdown(wait=True)
        if self._fd is not None:
            self._file.close()
            os.close(self._fd)
            self._fd = None
        self._scratch.close()


class NiftiGzWriter(_NiftiOutput):
    """A `.nii.gz` compressed while the tiles arrive (see the module docstring)."""

    def __init__(
        self,
        dest: Destination,
        *,
        compression_level: int = DEFAULT_COMPRESSION_LEVEL,
        data_format: str = "channels_last",
        scaling: tuple[float, float] | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__(dest, data_format, scaling)
        key = {
            "file_shape": list(self.file_shape),
            "dtype": self.disk_dtype.str,
            "header": hashlib.sha256(self.header_bytes).hexdigest(),
        }
        self.stage_path = self.path.with_name(self.path.name + STAGE_SUFFIX)
        if not dest.resume:
            self.stage_path.unlink(missing_ok=True)
        self.stream = GzipStreamWriter(self.path, self._segments(), compression_level, threads, dest.resume, key)
        self._stage: BlockFile | None = None
        self._stage_fd: int | None = None
        self._closed = False
        self._boxes: set[tuple[tuple[int, int], ...]] = set()  # staged mode: the boxes the stage holds
        try:
            if self.stream.finished:
                self.stage_path.unlink(missing_ok=True)  # a run killed while cleaning up: the output is done
            elif dest.resume and self.stage_path.exists():
                self._open_stage(fresh=False)
                self._boxes = {tuple(map(tuple, box)) for box in self.stream.extra.get("staged_boxes", [])}
            self.stream.write([(0, self.header_bytes)])  # on resume again: skipped where already compressed
        except BaseException:
            self.abort()
            raise

    def _segments(self) -> list[tuple[int, int]]:
        """The header and first component, then one segment per further vector component."""
        if len(self.file_shape) < 5 or self.file_shape[4] == 1:
            return [(0, self.total)]
        part = math.prod(self.file_shape[:4]) * self.dtype.itemsize
        bounds = [self.offset + c * part for c in range(self.file_shape[4] + 1)]
        bounds[0] = 0
        return list(zip(bounds[:-1], bounds[1:]))

    def _open_stage(self, fresh: bool) -> None:
        self._stage_fd, reserved = _open_block(self.stage_path, self.total, self.header_bytes, fresh)
        self._stage = BlockFile(self.stage_path, self.order, self._stage_fd, reserved, self.disk_dtype)

    def write(self, index: tuple[slice, ...], data: np.ndarray) -> None:
        if self._closed:
            raise RunError("writer is closed", source=str(self.path))
        franges, block = self.block(index, data)
        offsets, run = self.order.runs(franges)
        if self._stage is None and run < direct.MIN_RUN and len(offsets) > STREAM_MAX_RUNS and self._fresh():
            self._open_stage(fresh=True)
        if self._stage is not None:
            self._stage.write(franges, block, lambda: self.arrange(franges, block, self.stream.pool))
            self._boxes.add(tuple(franges))
            return
        arranged = self.arrange(franges, block, self.stream.pool)
        raw = memoryview(arranged.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        self.stream.write((at, raw[i * run : (i + 1) * run]) for i, at in enumerate(offsets))

    def _fresh(self) -> bool:
        """Nothing but the header has reached the stream (the mode can still be chosen)."""
        return not self.stream.received_beyond(self.offset)

    def flush(self) -> None:
        if self._stage is not None:
            self._stage.flush()
            self.stream.extra["staged_boxes"] = sorted(self._boxes)
        self.stream.flush()

    @property
    def complete(self) -> bool:
        if self._stage is None or self.stream.finished:
            return not self.stream.missing()
        # plans' boxes are disjoint: the stage is complete when their voxels add up to the file's
        return sum(math.prod(b - a for a, b in box) for box in self._boxes) == math.prod(self.file_shape)

    def close(self) -> None:
        """Finish the `.nii.gz` when every voxel has arrived. A stopped run's writer (not every tile written)
        is made durable and left resumable instead: the partial, its index, spill and stage stay."""
        if self._closed:
            return
        self._closed = True
        if not self.complete:
            if self._stage is not None:
                self._stage.flush()
                self.stream.extra["staged_boxes"] = sorted(self._boxes)
                self._stage.close()
                os.close(self._stage_fd)  # type: ignore[arg-type]
                self._stage, self._stage_fd = None, None
            self.stream.release()
            self._scratch.close()
            return
        if self._stage is not None:
            self._stage.flush()
            self._compress_stage()
        self.stream.close(keep_index=True)
        self._drop_stage()
        self.stream.drop_index()  # the last side file (gzip_stream's docstring says why)
        self._scratch.close()

    def _compress_stage(self) -> None:
        """Staged mode: the whole uncompressed file through the stream, in order."""
        assert self._stage_fd is not None
        for at in range(0, self.total, _STAGE_READ):
            chunk = os.pread(self._stage_fd, min(_STAGE_READ, self.total - at), at)
            if not chunk:
                raise RunError(f"{self.stage_path.name} ended early", source=str(self.path))
            self.stream.write([(at, chunk)])

    def keep(self) -> None:
        """A failed run (a full disk) whose journalled tiles stay resumable: every file closed as the last
        `flush` left it, nothing removed, nothing written."""
        self._closed = True
        self.stream.keep()
        self._close_stage()
        self._scratch.close()

    def abort(self) -> None:
        self._closed = True
        self.stream.abort()
        self._drop_stage()
        self._scratch.close()

    def _close_stage(self) -> None:
        if self._stage is not None:
            self._stage.close()
            self._stage = None
        if self._stage_fd is not None:
            os.close(self._stage_fd)
            self._stage_fd = None

    def _drop_stage(self) -> None:
        self._close_stage()
        self.stage_path.unlink(missing_ok=True)
