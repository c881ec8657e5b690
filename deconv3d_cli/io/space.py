"""Disk space: refuse an output that cannot fit, reserve a file's blocks, and name a disk fault in one line.

A full disk must be an ordinary error, never a signal. A file written through a memory map whose pages
find no free block gets SIGBUS (the process dies with no message and leaves its partial behind), and
HDF5 crashes later if a failed write is followed by a close (see hdf5_writer.abandon). So:

- `check_space` runs before an output is created: an uncompressed output whose size is known exactly
  is refused when it cannot fit the free space (or the process's file-size limit, `ulimit -f`);
  a compressed one only when nothing at all can be written, the one thing that is certain about it.
- `reserve` allocates a file's blocks at creation (fallocate(2)), so that later writes, through maps
  or not, cannot run out of space; filesystems that cannot reserve say so and the caller then writes
  without maps.
- `disk_error` turns ENOSPC / EDQUOT / EFBIG / EIO / EROFS into a `RunError` (exit 1) naming the
  target (not its `.partial-` file) and the space left on its disk.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import sys
from pathlib import Path
from typing import Any

from ..errors import RunError
from ..geometry.tiling import format_bytes
from .atomic import PARTIAL_PREFIX

# errno -> what it means for the user, and whether the free space is worth naming.
_FAULTS = {
    errno.ENOSPC: ("no space left on the device", True),
    errno.EDQUOT: ("disk quota exceeded", True),
    errno.EFBIG: ("file too large for this filesystem or for the file-size limit (ulimit -f)", False),
    errno.EIO: ("input/output error on the device", False),
    errno.EROFS: ("the filesystem is read-only", False),
}
DISK_ERRNOS = frozenset(_FAULTS)
# A compressed output holds at least its metadata: with less than this free nothing can be written.
MIN_FREE = 64 << 10


class DiskFault(RunError):
    """A write failed because of the disk (full, over the file-size limit, I/O error, read-only).

    A RunError (exit 1). The partial output is as the last successful write left it: what was made
    durable and journalled before the fault can be resumed once there is room.
    """


def target_of(path: Path | str) -> Path:
    """The output a partial file or store stands for (`.partial-out.h5` -> `out.h5`)."""
    path = Path(path)
    return path.with_name(path.name.removeprefix(PARTIAL_PREFIX))


def _existing(path: Path) -> Path:
    """`path` or its nearest existing ancestor (the folder an output will be created in)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path | str) -> int:
    """Bytes this process may still write on the filesystem holding `path`.

    root may use the blocks reserved for it (statvfs f_bfree); others only f_bavail (what
    `shutil.disk_usage(...).free` reports).
    """
    st = os.statvfs(_existing(Path(path)))
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return int(blocks) * int(st.f_frsize)


def file_size_limit() -> int | None:
    """The process's file-size limit (RLIMIT_FSIZE) in bytes, or None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def allocated_bytes(path: Path | str) -> int:
    """Bytes already allocated to a file (a partial being resumed holds them): 0 when absent."""
    try:
        return int(os.stat(path).st_blocks) * 512
    except OSError:
        return 0


def check_space(path: Path | str, nbytes: int, compressed: bool = False, *, reusing: Path | str | None = None) -> None:
    """Refuse, before anything is created, an output at `path` that cannot fit its disk.

    `nbytes` is the output's size (for an uncompressed output: exactly its data plus header);
    `compressed` outputs are refused only when less than MIN_FREE is free, since their size is not
    known. `reusing` names a partial file being resumed, whose allocated blocks count as available.
    Raises DiskFault (a RunError, exit 1) naming the target, the bytes needed and the bytes free.
    """
    target = target_of(path)
    nbytes = int(nbytes)
    limit = file_size_limit()
    if not compressed and limit is not None and nbytes > limit:
        raise DiskFault(
            f"needs {format_bytes(nbytes)} ({nbytes} bytes) but the file-size limit (ulimit -f) is "
            f"{format_bytes(limit)} ({limit} bytes); raise the limit or write a compressed format",
            source=str(target),
        )
    free = free_bytes(path)
    have = free + (allocated_bytes(reusing) if reusing is not None else 0)
    need = MIN_FREE if compressed else nbytes
    if need > have:
        what = "at least" if compressed else ""
        raise DiskFault(
            f"needs {what + ' ' if what else ''}{format_bytes(need)} ({need} bytes) but "
            f"{format_bytes(free)} ({free} bytes) are free on its disk; free some space or write elsewhere",
            source=str(target),
        )


_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)})


def _linux_fallocate() -> Any:
    """glibc's fallocate(2) wrapper, or None. posix_fallocate would instead emulate an unsupported
    fallocate by writing a byte into every block of the file: minutes for a large output on NFS."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.fallocate64
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    call.restype = ctypes.c_int
    return call


def _allocate(fd: int, nbytes: int) -> None:
    call = _linux_fallocate()
    if call is None:
        os.posix_fallocate(fd, 0, nbytes)
        return
    if call(fd, 0, 0, nbytes) != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


def reserve(fd: int, nbytes: int, path: Path | str) -> bool:
    """Allocate `nbytes` of blocks for an open file; False when the filesystem cannot reserve space.

    A disk that cannot hold them raises the DiskFault of `disk_error` now, before any data is written.
    """
    if nbytes <= 0:
        return True
    if not hasattr(os, "posix_fallocate") and not sys.platform.startswith("linux"):
        return False
    try:
        _allocate(fd, int(nbytes))
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return False
        raise disk_error(exc, path, nbytes) from None
    return True


def is_disk_fault(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def disk_error(exc: OSError, path: Path | str, nbytes: int | None = None) -> RunError:
    """DiskFault for the errnos of DISK_ERRNOS, else a plain RunError: one line naming the target."""
    target = target_of(path)
    what, with_free = _FAULTS.get(exc.errno or 0, (exc.strerror or str(exc), False))
    parts = [f"writing failed: {what}"]
    if nbytes is not None:
        parts.append(f"the output needs {format_bytes(nbytes)} ({nbytes} bytes)")
    if with_free:
        try:
            free = free_bytes(target.parent)
            parts.append(f"{format_bytes(free)} ({free} bytes) free on its disk")
        except OSError:
            pass
    hint = "; free some space or write elsewhere" if with_free else ""
    kind = DiskFault if exc.errno in DISK_ERRNOS else RunError
    return kind("; ".join(parts) + hint, source=str(target))


__all__ = [
    "DISK_ERRNOS",
    "DiskFault",
    "check_space",
    "disk_error",
    "free_bytes",
    "is_disk_fault",
    "reserve",
    "target_of",
]
