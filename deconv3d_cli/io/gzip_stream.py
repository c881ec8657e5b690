"""A gzip file compressed while its bytes arrive: fixed members, several threads, resumable.

The uncompressed stream (``total`` bytes) is cut into *segments*, byte ranges that the writer's
callers fill front to back (for NIfTI: the header and the first component, then each further vector
component), and each segment into *members* of MEMBER_BYTES from its start (the last one shorter).
A member is compressed (gzip_members, on a thread pool) as soon as all of its bytes have arrived and
every member before it in its segment has been; compressed members are appended to the segment's
file: the first segment's is the output file itself, the others' are side files appended to it by
`close` (a copy of compressed bytes, only for outputs with several components).

Member boundaries therefore depend on the data layout only, never on timing, tile shape or thread
count: the same input gives the same bytes tiled or not, on 1 or 8 threads, resumed or not.

Bytes of a member that is not complete yet are *pending*: copied into a buffer of the member's size
(the caller's buffer is reused as soon as `write` returns), and moved to a sparse *spill* file at
their own offset when pending buffers pass PENDING_BYTES (tiles arriving out of order: a plan that is
not slabs) and at every `flush`. A member compressed from spilled bytes gives its blocks back
(FALLOC_FL_PUNCH_HOLE where the filesystem has it).

`flush` makes everything written so far durable: pending bytes spilled, every file fsynced, then a
small JSON *index* (segments' member counts and compressed lengths, the pending ranges on the spill)
replaced atomically. A killed writer is reopened with `resume=True`: files are cut back to the
index, pending ranges come back from the spill, and bytes that arrive again for members already
compressed are skipped (the run core recomputes tiles it had not journalled; they hold the same
values). Side files, spill and index are named after the output (``NAME.gzseg1``, ``NAME.gzspill``,
``NAME.gzindex``) and removed by `close` and `abort`; nothing but the output remains.
The index goes last (gzip_index says why): `close` removes it only once the caller's side files are
gone (`drop_index`); a failed run that keeps its tiles leaves every side file as flushed (`keep`).
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import InputError, RunError
from . import gzip_index, gzip_members, space
from .gzip_pending import Pending, Ranges, punch_hole, usable_cpus

MEMBER_BYTES = 4 << 20
PENDING_BYTES = 64 << 20
COMPRESSING_PER_THREAD = 2  # members in compression or awaiting their turn, per thread (io/buffers.py)
SUFFIXES = (".gzindex", ".gzspill", ".gzindex.tmp")


class _Segment:
    def __init__(self, number: int, start: int, stop: int, path: Path) -> None:
        self.number, self.start, self.stop, self.path = number, start, stop, path
        self.members = max(1, -(-(stop - start) // MEMBER_BYTES))
        self.next = 0  # members compressed and appended
        self.length = 0  # compressed bytes in `path`
        self.fd: int | None = None

    def bounds(self, j: int) -> tuple[int, int]:
        a = self.start + j * MEMBER_BYTES
        return a, min(a + MEMBER_BYTES, self.stop)


class GzipStreamWriter:
    """See the module docstring. Not for concurrent callers of `write` (one writer thread); `flush`
    may be called from another thread."""

    def __init__(
        self,
        path: Path,
        segments: Sequence[tuple[int, int]],
        level: int = 1,
        threads: int | None = None,
        resume: bool = False,
        key: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.level = gzip_members.check_level(level)
        self.library, self._deflate = gzip_members.codec(self.level)
        self.key = {"member_bytes": MEMBER_BYTES, "level": self.level, "library": self.library, **(key or {})}
        self.key["segments"] = [list(map(int, s)) for s in segments]
        self.total = int(segments[-1][1])
        self.index_path = self.sidecar(".gzindex")
        self.spill_path = self.sidecar(".gzspill")
        self._segments = [
            _Segment(i, int(a), int(b), self.path if i == 0 else self.sidecar(f".gzseg{i}"))
            for i, (a, b) in enumerate(segments)
        ]
        self._starts = [s.start for s in self._segments]
        self._pending: dict[tuple[int, int], Pending] = {}
        self._spill_fd: int | None = None
        self._punch: list[tuple[int, int]] = []  # spilled members compressed since the last index
        self.extra: dict[str, Any] = {}  # the caller's own state, saved with the index (JSON)
        self._lock = threading.RLock()
        self._closed = False
        self.finished = False  # every member compressed and appended: the output file is complete
        self._workers = max(1, int(threads or usable_cpus()))
        self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="gzip")
        try:
            if resume:
                self._reopen()
            else:
                self._create()
        except BaseException:
            self._shutdown()
            raise

    def sidecar(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

    @property
    def pool(self) -> ThreadPoolExecutor:
        return self._pool

    # ------------------------------------------------------------------------------------------ files

    def _open_segment(self, seg: _Segment, truncate_to: int | None) -> None:
        try:
            seg.fd = os.open(seg.path, os.O_RDWR | os.O_CREAT, 0o644)
            if truncate_to is not None:
                os.ftruncate(seg.fd, truncate_to)
        except OSError as exc:
            raise space.disk_error(exc, seg.path) from None

    def _create(self) -> None:
        for suffix in SUFFIXES:
            self.sidecar(suffix).unlink(missing_ok=True)
        for seg in self._segments:
            self._open_segment(seg, 0)

    def _reopen(self) -> None:
        state = gzip_index.load(self.index_path)
        if state is None:
            sides = any(seg.path.exists() for seg in self._segments[1:])  # side segments go before the index
            length = None if sides else gzip_index.whole_length(self.path, self.total)
            if length is not None:  # killed after the clean-up removed the index, its last step
                self._reopen_finished(length)
                return
            raise InputError(
                f"the partial output has no readable index ({self.index_path.name}); run without --resume",
                source=str(self.path),
            )
        if state.get("version") != gzip_index.VERSION or state.get("key") != self.key:
            raise InputError(
                "the partial output was written with another layout or compression; run without --resume",
                source=str(self.path),
            )
        self.extra = dict(state.get("extra") or {})
        if state.get("finished"):
            self._reopen_finished(int(state["length"]))
            return
        for seg, saved in zip(self._segments, state["segments"]):
            length = int(saved["length"])
            if not seg.path.exists() or seg.path.stat().st_size < length:
                raise InputError(
                    f"{seg.path.name} is shorter than its index says; run without --resume", source=str(self.path)
                )
            self._open_segment(seg, length)
            seg.next, seg.length = int(saved["next"]), length
        for s, j, ranges in state.get("pending", []):
            seg = self._segments[int(s)]
            p = Pending(*seg.bounds(int(j)))
            p.disk = Ranges(ranges)
            self._pending[(int(s), int(j))] = p
        if self._pending:
            self._spill_fd = os.open(self.spill_path, os.O_RDWR)

    def _reopen_finished(self, length: int) -> None:
        """A run killed while cleaning up after the output was complete: nothing to compress again."""
        first = self._segments[0]
        if not first.path.exists() or first.path.stat().st_size < length:
            raise InputError(
                f"{first.path.name} is shorter than its index says; run without --resume", source=str(self.path)
            )
        self._open_segment(first, length)
        first.length = length
        for seg in self._segments:
            seg.next = seg.members
        self.finished = True

    def _spill(self) -> int:
        if self._spill_fd is None:
            try:
                self._spill_fd = os.open(self.spill_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise space.disk_error(exc, self.spill_path) from None
        return self._spill_fd

    # ------------------------------------------------------------------------------------------ writing

    def write(self, pieces: Iterable[tuple[int, Any]]) -> None:
        """Take bytes at their offsets in the uncompressed stream; returns when the caller may reuse them."""
        with self._lock:
            if self._closed:
                raise RunError("gzip writer is closed", source=str(self.path))
            borrowed: dict[tuple[int, int], memoryview] = {}
            touched: set[int] = set()
            for offset, data in pieces:
                view = memoryview(data).cast("B")
                for at, part in self._split(int(offset), view):
                    self._take(at, part, borrowed, touched)
            try:
                self._compress_ready(touched, borrowed)
            finally:
                for key, view in borrowed.items():  # complete but waiting for an earlier member: keep a copy
                    if key not in self._pending:
                        continue
                    self._pending[key].copy_in(self._pending[key].start, view)
            self._bound_memory()

    def _split(self, offset: int, view: memoryview) -> Iterable[tuple[int, memoryview]]:
        """(offset, bytes) parts of a piece, one per member it touches."""
        if offset < 0 or offset + len(view) > self.total:
            raise ValueError(f"bytes {offset}..{offset + len(view)} are outside the stream of {self.total}")
        pos = 0
        while pos < len(view):
            at = offset + pos
            s = bisect.bisect_right(self._starts, at) - 1
            seg = self._segments[s]
            j = (at - seg.start) // MEMBER_BYTES
            stop = min(seg.bounds(j)[1], offset + len(view))
            yield at, view[pos : pos + stop - at]
            pos += stop - at

    def _locate(self, at: int) -> tuple[int, int]:
        s = bisect.bisect_right(self._starts, at) - 1
        return s, (at - self._segments[s].start) // MEMBER_BYTES

    def _take(self, at: int, part: memoryview, borrowed: dict, touched: set[int]) -> None:
        s, j = self._locate(at)
        seg = self._segments[s]
        if j < seg.next:
            return  # already compressed (bytes sent again after a resume)
        a, b = seg.bounds(j)
        touched.add(s)
        p = self._pending.get((s, j))
        if p is None:
            p = self._pending[(s, j)] = Pending(a, b)
            if at == a and len(part) == b - a:
                borrowed[(s, j)] = part  # the whole member in the caller's buffer: no copy if compressed now
                p.mem.add(a, b)
                return
        p.copy_in(at, part)

    def _compress_ready(self, touched: Iterable[int], borrowed: dict) -> None:
        """Compress every member that is complete and next in its segment, in parallel; append in order.

        At most 2 jobs per thread are in flight, so a plan whose last tile completes the whole file
        (tiles out of order) reads its spilled members back a few at a time.
        """
        in_flight: deque[tuple[_Segment, int, Pending, Any]] = deque()
        limit = COMPRESSING_PER_THREAD * self._workers
        try:
            for s in sorted(touched) or range(len(self._segments)):
                seg = self._segments[s]
                j = seg.next
                while j < seg.members:
                    p = self._pending.get((s, j))
                    if p is None or not p.covered():
                        break
                    data = borrowed.get((s, j))
                    if data is None:
                        data = p.gather(self._spill(), self.spill_path)
                    in_flight.append((seg, j, p, self._pool.submit(gzip_members.member, data, self._deflate)))
                    j += 1
                    while len(in_flight) >= limit:
                        self._finish(*in_flight.popleft())
            while in_flight:
                self._finish(*in_flight.popleft())
        finally:
            for *_, fut in in_flight:  # an error: let the rest finish before their buffers go
                fut.cancel()
                try:
                    fut.result()
                except BaseException:  # noqa: BLE001, S110 - the first error is the one raised
                    pass

    def _finish(self, seg: _Segment, j: int, p: Pending, fut: Any) -> None:
        blob = fut.result()
        if seg.next != j:
            raise RunError(f"gzip member {j} of segment {seg.number} out of order", source=str(self.path))
        self._append(seg, blob)
        seg.next = j + 1
        del self._pending[(seg.number, j)]
        if p.disk.items:
            self._punch.append((p.start, p.stop))  # only once an index no longer points there

    def _append(self, seg: _Segment, blob: bytes) -> None:
        assert seg.fd is not None
        view = memoryview(blob)
        at = seg.length
        try:
            while view:
                n = os.pwrite(seg.fd, view, at)
                view, at = view[n:], at + n
        except OSError as exc:
            raise space.disk_error(exc, seg.path) from None
        seg.length = at

    def _bound_memory(self) -> None:
        held = [p for p in self._pending.values() if p.buf is not None]
        total = sum(len(p.buf or b"") for p in held)
        if total <= PENDING_BYTES:
            return
        for p in sorted(held, key=lambda q: q.start, reverse=True):  # the farthest from being compressed first
            p.spill_out(self._spill(), self.spill_path)
            p.buf = None
            p.mem = Ranges()
            total -= p.stop - p.start
            if total <= PENDING_BYTES // 2:
                break

    # ------------------------------------------------------------------------------------------ durability

    def flush(self) -> None:
        """Everything written so far durable, and the index saying so."""
        with self._lock:
            if self._closed or self.finished:
                return  # a finished index stays as it is
            for p in self._pending.values():
                if p.buf is not None:
                    p.spill_out(self._spill(), self.spill_path)
            try:
                if self._spill_fd is not None:
                    os.fsync(self._spill_fd)
                for seg in self._segments:
                    if seg.fd is not None:
                        os.fsync(seg.fd)
                self._write_index()
                for a, b in self._punch:
                    punch_hole(self._spill(), a, b - a)
                self._punch = []
            except OSError as exc:
                raise space.disk_error(exc, self.path) from None

    def _write_index(self) -> None:
        state: dict[str, Any] = {"version": gzip_index.VERSION, "key": self.key, "extra": self.extra}
        if self.finished:
            state.update(finished=True, length=self._segments[0].length)
        else:
            state["segments"] = [{"next": s.next, "length": s.length} for s in self._segments]
            state["pending"] = [[s, j, p.disk.items] for (s, j), p in sorted(self._pending.items()) if p.disk.items]
        gzip_index.save(self.index_path, state)

    def received_beyond(self, offset: int) -> bool:
        """Whether any byte past `offset` has reached the stream (compressed or pending)."""
        with self._lock:
            if any(seg.next and seg.bounds(seg.next - 1)[1] > offset for seg in self._segments):
                return True
            return any(r[1] > offset for p in self._pending.values() for r in p.mem.items + p.disk.items)

    def missing(self) -> list[str]:
        return [f"segment {s.number} has {s.next} of {s.members} members" for s in self._segments if s.next < s.members]

    def close(self, keep_index: bool = False) -> bool:
        """Finish the file when every member has been compressed (side segments appended, sidecars removed):
        True. A stream still missing bytes (a stopped run) is flushed and left resumable instead: False.

        `keep_index`: the finished index stays until `drop_index`, for a caller with side files of its own
        to remove first (see the module docstring).
        """
        with self._lock:
            if self._closed:
                return not self.missing()
            try:
                self._compress_ready(range(len(self._segments)), {})
                if self.missing():
                    self.release()
                    return False
                if not self.finished:
                    self._finish_file()
            except OSError as exc:
                raise space.disk_error(exc, self.path) from None
            self._closed = True
            self._shutdown()
            self._remove_sidecars(keep_index=True)
            if not keep_index:
                self.drop_index()
            return True

    def _finish_file(self) -> None:
        """Side segments appended, the file made durable, then the finished index saying so."""
        first = self._segments[0]
        for seg in self._segments[1:]:
            self._concat(first, seg)
        assert first.fd is not None
        os.fsync(first.fd)
        self.finished = True
        self._write_index()

    def drop_index(self) -> None:
        """The last side file: after it, a kill leaves the complete output and the journal only."""
        self.index_path.unlink(missing_ok=True)

    def keep(self) -> None:
        """Files closed, every side file kept as the last `flush` left it (a failed run keeping its tiles)."""
        with self._lock:
            self._closed = True
            self._shutdown()

    def release(self) -> None:
        """Everything durable, files closed, sidecars kept: the state a later `resume=True` continues from."""
        with self._lock:
            if self._closed:
                return
            self.flush()
            self._closed = True
            self._shutdown()

    def _concat(self, first: _Segment, seg: _Segment) -> None:
        assert first.fd is not None and seg.fd is not None
        done = 0
        while done < seg.length:
            try:
                n = os.copy_file_range(seg.fd, first.fd, seg.length - done, done, first.length)
            except OSError:
                n = 0
            if n <= 0:  # no copy_file_range here: through user space
                chunk = os.pread(seg.fd, min(16 << 20, seg.length - done), done)
                self._append(first, chunk)
                done += len(chunk)
                continue
            done += n
            first.length += n

    def abort(self) -> None:
        """Drop everything but the output file itself (the run core removes that)."""
        with self._lock:
            self._closed = True
            self._shutdown()
            self._remove_sidecars()

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True)
        for seg in self._segments:
            if seg.fd is not None:
                os.close(seg.fd)
                seg.fd = None
        if self._spill_fd is not None:
            os.close(self._spill_fd)
            self._spill_fd = None

    def _remove_sidecars(self, keep_index: bool = False) -> None:
        for seg in self._segments[1:]:
            seg.path.unlink(missing_ok=True)
        for suffix in SUFFIXES[::-1]:  # the index last
            if not (keep_index and suffix == ".gzindex"):
                self.sidecar(suffix).unlink(missing_ok=True)
