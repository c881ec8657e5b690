"""The bytes of gzip members that are not complete yet: in memory, on a sparse spill file, or both.

gzip_stream keeps one `Pending` per member that has received some but not all of its bytes. `mem` and
`disk` are the ranges (absolute offsets in the uncompressed stream) held in `buf` and on the spill file
(written at their own offsets, so the spill is sparse and holds nothing twice).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import RunError
from . import space

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_LIBC: list[Any] = []


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Give a byte range's blocks back to the filesystem, the file keeping its size; False when unsupported."""
    if length <= 0:
        return True
    if not _LIBC:
        try:
            lib = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
            call = lib.fallocate64 if lib is not None else None
            if call is not None:
                call.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
                call.restype = ctypes.c_int
            _LIBC.append(call)
        except (OSError, AttributeError):
            _LIBC.append(None)
    call = _LIBC[0]
    return call is not None and call(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity, which cgroups and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


class Ranges:
    """Disjoint sorted [start, stop) ranges."""

    def __init__(self, items: Iterable[Sequence[int]] = ()) -> None:
        self.items: list[list[int]] = []
        for a, b in items:
            self.add(int(a), int(b))

    def add(self, a: int, b: int) -> None:
        if b <= a:
            return
        merged = [a, b]
        keep = []
        for r in self.items:
            if r[1] < merged[0] or r[0] > merged[1]:
                keep.append(r)
            else:
                merged = [min(r[0], merged[0]), max(r[1], merged[1])]
        keep.append(merged)
        self.items = sorted(keep)

    def total(self) -> int:
        return sum(b - a for a, b in self.items)

    def covers(self, a: int, b: int) -> bool:
        return any(r[0] <= a and b <= r[1] for r in self.items)

    def minus(self, other: Ranges) -> list[tuple[int, int]]:
        out = []
        for a, b in self.items:
            cur = a
            for c, d in other.items:
                if d <= cur or c >= b:
                    continue
                if c > cur:
                    out.append((cur, c))
                cur = max(cur, d)
            if cur < b:
                out.append((cur, b))
        return out


class Pending:
    """The arrived bytes of one incomplete member: in memory (`mem`) and/or on the spill (`disk`)."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop
        self.buf: bytearray | None = None
        self.mem = Ranges()
        self.disk = Ranges()

    def covered(self) -> bool:
        both = Ranges(self.mem.items + self.disk.items)
        return both.covers(self.start, self.stop)

    def copy_in(self, at: int, part: memoryview) -> None:
        if self.buf is None:
            self.buf = bytearray(self.stop - self.start)
        self.buf[at - self.start : at - self.start + len(part)] = part
        self.mem.add(at, at + len(part))

    def gather(self, fd: int, spill: Path) -> bytearray:
        """The whole member: spilled ranges read back under the ones in memory."""
        if self.buf is None:
            self.buf = bytearray(self.stop - self.start)
        for a, b in self.disk.minus(self.mem):
            got = os.preadv(fd, [memoryview(self.buf)[a - self.start : b - self.start]], a)
            if got != b - a:
                raise RunError(f"the spill file {spill.name} ended early", source=str(spill))
        return self.buf

    def spill_out(self, fd: int, spill: Path) -> None:
        """Write the ranges held only in memory to the spill file (durable after its fsync)."""
        if self.buf is None:
            return
        for a, b in self.mem.minus(self.disk):
            view = memoryview(self.buf)[a - self.start : b - self.start]
            try:
                at = a
                while view:
                    n = os.pwrite(fd, view, at)
                    view, at = view[n:], at + n
            except OSError as exc:
                raise space.disk_error(exc, spill) from None
            self.disk.add(a, b)
