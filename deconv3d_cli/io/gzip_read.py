"""A gzip file read as byte ranges of its uncompressed stream: streamed in order, bounded by what it promises.

Plans read their input slab by slab, and for NIfTI slabs along z are long contiguous ranges that
follow each other (with a few planes of overlap, the halo). `GzipSource.span(a, b)` serves such reads
from a forward-only stream: one decompressing thread of ours runs a few blocks ahead (python-isal's
igzip, about 1 GB/s on this machine, zlib's gzip when isal is missing), and the bytes of the last
range are kept so that the next range's overlap costs nothing. Nothing is written to disk.

A range that starts before the kept bytes (reads out of file order) or that is far larger than the box
the caller needs from it (a box cutting the x or y axis spans most of the file) switches the source to
*staged*: the stream is decompressed once, from the start, into an anonymous temporary file in the
system temp directory (unlinked from the start, so it goes when the process does), and every range is
then read from that file. Measured for the record: indexed_gzip (random access from seek points
about 1 MiB apart) decompressed at 480 MB/s against isal's 1 GB/s here, and a box of short runs
would restart it at a seek point per run, so it is not used.

Bounds: a stream never produces more than the size the header promises plus one byte. Reaching that
size, the source asks for one byte more: a stream that holds more is refused (a small file whose header
says 24x20x16 but whose stream holds 2 GiB of zeros costs no more than its header says), one that ends
early is refused as truncated, and a corrupt stream or CRC is refused naming the offset. Before any of
that, a header promising more than deflate can produce from the file's size (1032:1 at most) is
refused at open.
"""

from __future__ import annotations

import gzip
import queue
import shutil
import tempfile
import threading
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import InputError, RunError

BLOCK = 4 << 20
AHEAD = 3  # blocks decompressed ahead of the reader
MAX_RATIO = 1032  # deflate's largest expansion (a run of one byte value)


def _open_gzip(path: Path) -> BinaryIO:
    try:
        from isal import igzip
    except ImportError:  # pragma: no cover - isal is a dependency, but the stdlib fallback must work
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return igzip.open(path, "rb")


def _decompress_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile]
    try:
        from isal import isal_zlib

        errors.append(isal_zlib.error)  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


class _Producer:
    """Decompresses the stream in a thread of its own, BLOCK bytes at a time, never past `limit` bytes."""

    def __init__(self, path: Path, limit: int) -> None:
        self.queue: queue.Queue[bytes | BaseException | None] = queue.Queue(AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(path, limit), daemon=True, name="gunzip")
        self._thread.start()

    def _run(self, path: Path, limit: int) -> None:
        try:
            with _open_gzip(path) as f:
                done = 0
                while done < limit and not self._stop.is_set():
                    block = f.read(min(BLOCK, limit - done))
                    if not block:
                        break
                    done += len(block)
                    self._put(block)
            self._put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            self._put(exc)

    def _put(self, item: bytes | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self.queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def get(self) -> bytes | BaseException | None:
        return self.queue.get()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class GzipSource:
    """The uncompressed bytes [0, total) of a gzip file, served as ranges (see the module docstring)."""

    def __init__(self, path: Path, total: int) -> None:
        self.path = Path(path)
        self.total = int(total)
        size = self.path.stat().st_size
        if self.total > MAX_RATIO * size + (1 << 16):
            raise InputError(
                f"the header promises {self.total} bytes but a gzip file of {size} bytes holds at most "
                f"{MAX_RATIO * size}; the dim entries are wrong",
                source=str(path),
                field="dim",
            )
        self._producer: _Producer | None = None
        self._pending = b""  # decompressed, not yet in the window
        self._pos = 0  # stream bytes consumed into the window
        self._win = np.empty(0, np.uint8)
        self._win_start = 0
        self._staged: BinaryIO | None = None
        self._staged_map: np.memmap | None = None
        self.staged = False
        self._errors = _decompress_errors()

    # ------------------------------------------------------------------------------------------ stream

    def _next_block(self) -> bytes:
        if self._producer is None:
            self._producer = _Producer(self.path, self.total + 1)
        item = self._producer.get()
        if isinstance(item, BaseException):
            if isinstance(item, self._errors):
                raise InputError(f"cannot decompress after byte {self._pos}: {item}", source=str(self.path)) from None
            raise item
        if item is None:
            raise InputError(
                f"truncated: the stream ends after {self._pos + len(self._pending)} bytes, the header promises "
                f"{self.total}",
                source=str(self.path),
            )
        return item

    def _consume(self, n: int, into: memoryview | None) -> None:
        """Move the next n stream bytes into `into` (or drop them)."""
        done = 0
        while done < n:
            if not self._pending:
                self._pending = self._next_block()
            take = min(n - done, len(self._pending))
            if into is not None:
                into[done : done + take] = self._pending[:take]
            self._pending = self._pending[take:]
            done += take
        self._pos += n
        if self._pos == self.total:
            self._check_end()

    def _check_end(self) -> None:
        """At the promised size: nothing may follow (and reading on checks the last CRC)."""
        extra = len(self._pending)
        if not extra:
            try:
                self._pending = self._next_block()
                extra = len(self._pending)
            except InputError as exc:
                if "truncated" not in exc.message:
                    raise
                extra = 0
        if extra:
            raise InputError(
                f"the stream holds more than the {self.total} bytes the header promises; the dim entries or the "
                "file are wrong",
                source=str(self.path),
                field="dim",
            )

    def _stop_stream(self) -> None:
        if self._producer is not None:
            self._producer.close()
            self._producer = None
        self._pending = b""

    # ------------------------------------------------------------------------------------------ ranges

    def span(self, a: int, b: int, stream_ok: bool = True) -> tuple[Any, int]:
        """(buffer, start): bytes a..b of the stream are buffer[a - start : b - start]."""
        if not 0 <= a <= b <= self.total:
            raise ValueError(f"range {a}..{b} outside 0..{self.total}")
        if not self.staged and (not stream_ok or a < self._win_start):
            self._stage()
        if self.staged:
            return self._staged_view(b), 0
        if b <= self._pos:
            return self._win, self._win_start  # inside the kept bytes
        keep_from = max(a, self._win_start)
        win = np.empty(b - a, np.uint8)
        have = max(0, self._pos - keep_from)
        if have:
            old = keep_from - self._win_start
            win[keep_from - a : keep_from - a + have] = self._win[old : old + have]
        if a > self._pos:
            self._consume(a - self._pos, None)  # a gap: skipped
        start = max(self._pos, a)
        if b > start:
            self._consume(b - start, memoryview(win)[start - a :])  # type: ignore[arg-type]
        self._win, self._win_start = win, a
        return win, a

    def _stage(self) -> None:
        """Decompress everything into an anonymous temporary file (see the module docstring)."""
        self._stop_stream()
        self._win = np.empty(0, np.uint8)
        self._win_start = self._pos = 0
        tmpdir = tempfile.gettempdir()
        free = shutil.disk_usage(tmpdir).free
        if free < self.total + (64 << 20):
            raise InputError(
                f"reading this .nii.gz out of order needs {self.total / 2**20:.0f} MiB in {tmpdir} but "
                f"{free / 2**20:.0f} MiB are free; set TMPDIR to a larger disk or decompress the file first",
                source=str(self.path),
            )
        tmp = tempfile.TemporaryFile(prefix="deconv3d-", suffix=".nii")
        try:
            buf = bytearray(BLOCK)
            while self._pos < self.total:
                n = min(BLOCK, self.total - self._pos)
                self._consume(n, memoryview(buf)[:n])
                tmp.write(memoryview(buf)[:n])
            tmp.flush()
        except OSError as exc:
            tmp.close()
            raise RunError(
                f"cannot stage the decompressed input in {tmpdir}: {exc.strerror}", source=str(self.path)
            ) from None
        except BaseException:
            tmp.close()
            raise
        finally:
            self._stop_stream()
        self._staged = tmp
        self.staged = True

    def _staged_view(self, b: int) -> np.ndarray:
        if self._staged_map is None:
            self._staged_map = np.memmap(self._staged, dtype=np.uint8, mode="r", shape=(self.total,))  # type: ignore[call-overload]
        return self._staged_map

    def close(self) -> None:
        self._stop_stream()
        self._win = np.empty(0, np.uint8)
        self._staged_map = None
        if self._staged is not None:
            self._staged.close()
            self._staged = None
