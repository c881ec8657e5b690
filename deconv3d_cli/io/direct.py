"""Writing long contiguous runs of a file around the page cache (O_DIRECT).

On this kind of machine (virtual disks, memory that the host reclaims) a buffered write of a fresh
file first-touches a page-cache page for every 4 KiB and then writes it back: 0.3-0.5 GB/s, several
times slower than the engine produces output. O_DIRECT hands the tile's own pages to the disk
(1.5 GB/s here, measured by benchmarks/run.py's `disk` column) and leaves the page cache, and the
memory it would take from the rest of the machine, alone.

O_DIRECT needs the file offset, the length and the memory address aligned to the device's block;
4096 covers every common device. A run is split into an unaligned head and tail (written through the
page cache, a few KiB at most) and an aligned middle written directly, from the caller's buffer when
it is aligned like the file offset (the pipeline arranges that, see `phase`) or through a small
aligned bounce buffer when not. Filesystems without O_DIRECT (tmpfs, some network mounts) and
DECONV3D_DIRECT_IO=0 get plain buffered writes; durability still comes from the writer's fsync.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

ALIGN = 4096
BOUNCE = 8 << 20
# Shorter runs are not worth a system call each: the caller writes them through a memory map.
MIN_RUN = 256 << 10


def enabled() -> bool:
    return os.environ.get("DECONV3D_DIRECT_IO", "1").lower() not in ("0", "false", "no", "off")


def phase(file_offset: int) -> int:
    """Where in an ALIGN-aligned buffer data must start so that it can go to `file_offset` directly."""
    return file_offset % ALIGN


def address(view: memoryview) -> int:
    return int(np.frombuffer(view, np.uint8).ctypes.data) if len(view) else 0


class RunWriter:
    """pwrite of byte runs into one open file, directly where the alignment allows."""

    def __init__(self, path: os.PathLike[str] | str, fd: int) -> None:
        self.fd = fd  # the buffered descriptor (owned by the caller)
        self.direct_fd: int | None = None
        self._bounce: mmap.mmap | None = None
        if enabled() and hasattr(os, "O_DIRECT"):
            try:
                self.direct_fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
            except OSError:
                self.direct_fd = None

    def write(self, file_offset: int, data: memoryview) -> None:
        """Write `data` (bytes, C-contiguous) at `file_offset`."""
        data = data.cast("B") if data.format != "B" or data.ndim != 1 else data
        n = len(data)
        if self.direct_fd is None or n < 2 * ALIGN:
            _pwrite_all(self.fd, data, file_offset)
            return
        head = (-file_offset) % ALIGN
        middle = (n - head) // ALIGN * ALIGN
        if head:
            _pwrite_all(self.fd, data[:head], file_offset)
        try:
            self._direct(file_offset + head, data[head : head + middle])
        except OSError:
            # The filesystem took the descriptor but refuses the write (alignment rules of its own):
            # the rest of this run and every later one go through the page cache.
            os.close(self.direct_fd)
            self.direct_fd = None
            _pwrite_all(self.fd, data[head : head + middle], file_offset + head)
        if head + middle < n:
            _pwrite_all(self.fd, data[head + middle :], file_offset + head + middle)

    def _direct(self, offset: int, middle: memoryview) -> None:
        assert self.direct_fd is not None
        if address(middle) % ALIGN == 0:
            _pwrite_all(self.direct_fd, middle, offset)
            return
        if self._bounce is None:
            self._bounce = mmap.mmap(-1, BOUNCE)  # anonymous maps are page-aligned
        with memoryview(self._bounce) as bounce:
            for start in range(0, len(middle), BOUNCE):
                part = middle[start : start + BOUNCE]
                bounce[: len(part)] = part
                _pwrite_all(self.direct_fd, bounce[: len(part)], offset + start)

    def close(self) -> None:
        if self.direct_fd is not None:
            os.close(self.direct_fd)
            self.direct_fd = None
        if self._bounce is not None:
            self._bounce.close()
            self._bounce = None


def write_at(fd: int, data: memoryview, offset: int) -> None:
    """pwrite all of `data` at `offset` through the page cache (short writes continued)."""
    _pwrite_all(fd, data, offset)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written
