"""The index of a resumable gzip stream (gzip_stream): saved atomically, read back, or done without.

The index says how far a `.nii.gz` being written has got (segments' member counts and compressed
lengths, pending ranges on the spill); the run journals tiles only after an index covering them is
durable. A *finished* index (the output's length, nothing pending) replaces it once the file is
complete, before the other side files go; the index itself goes last. A run killed after that has
only the complete file left: `whole_length` recognises it (every member's CRC and length checked),
so `--resume` still holds for the tiles the journal calls kept.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any

from .atomic import fsync_path

VERSION = 1


def save(path: Path, state: dict[str, Any]) -> None:
    """Write `state` beside `path` (.tmp), make it durable, and rename it over `path` (a kill leaves the
    old index or the new one, whole). Every byte is written: a nearly full disk may take only some."""
    tmp = path.with_name(path.name + ".tmp")
    view = memoryview(json.dumps(state, sort_keys=True).encode())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_path(path.parent)


def load(path: Path) -> dict[str, Any] | None:
    """The saved state, or None where there is no readable index."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def whole_length(path: Path, total: int) -> int | None:
    """The file's length when it alone is a whole gzip stream of `total` bytes (every member's CRC and
    length checked), else None. Reads the whole file: only for a missing index."""
    d, fed, size = zlib.decompressobj(31), False, 0
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                while block:
                    size += len(d.decompress(block))
                    fed = True
                    if size > total:
                        return None
                    block = d.unused_data if d.eof else b""
                    if d.eof:
                        d, fed = zlib.decompressobj(31), False
        return path.stat().st_size if size == total and not fed else None
    except (OSError, zlib.error):
        return None
