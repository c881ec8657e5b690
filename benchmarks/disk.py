"""The disk's own speed: what a file-to-file run cannot beat however fast it computes.

`write_fresh` writes bytes into a new file and fsyncs it the way `dd oflag=direct conv=fsync` does
(O_DIRECT in 8 MiB blocks from a page-aligned buffer; buffered where the filesystem refuses O_DIRECT).
benchmarks/run.py (`disk` column) and stream_bench.py compare the streaming pipeline with it.
"""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path

BLOCK = 8 << 20


def write_fresh(path: Path, nbytes: int) -> float:
    """Seconds to write `nbytes` into a new file at `path` and make them durable (the file is kept)."""
    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT needs
    buf.write(os.urandom(4096) * (BLOCK // 4096))
    Path(path).unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_DIRECT", 0), 0o644)
    except OSError:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with memoryview(buf) as view:
            for offset in range(0, nbytes, BLOCK):
                os.pwrite(fd, view[: min(BLOCK, -(-(nbytes - offset) // 4096) * 4096)], offset)
        os.fsync(fd)
    finally:
        os.close(fd)
        buf.close()
    return time.perf_counter() - start
