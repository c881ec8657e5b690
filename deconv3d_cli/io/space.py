"""Disk space for outputs: reserve it before writing, and say plainly when a disk fault stops a write.

A file written through a memory map learns that the disk is full as SIGBUS, which kills the process
with no message and leaves the partial output behind. Writers here use plain writes (pwrite), so a full
disk is an OSError, and reserve the file's final size first with `posix_fallocate` wherever the
filesystem supports it, so that a run that cannot fit is refused before anything is computed.

`disk_error` turns ENOSPC / EDQUOT / EFBIG / EIO into a RunError (exit 1) of one line naming the file
and the free space there; other OSErrors pass through unchanged.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from pathlib import Path

from ..errors import RunError
from ..geometry.tiling import format_bytes

DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)
# Filesystems that cannot reserve space: the file is then only sized, and a full disk shows as the
# ordinary ENOSPC of a later write (no memory maps, so never SIGBUS).
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV)
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def free_bytes(path: Path | str) -> int | None:
    """Bytes free to this user on the filesystem holding `path` (its folder when it does not exist)."""
    p = Path(path)
    for candidate in (p, p.parent):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def disk_error(exc: OSError, path: Path | str, need: int | None = None) -> Exception:
    """The RunError to raise for a disk fault while writing `path`, else `exc` itself."""
    if exc.errno not in DISK_ERRNOS:
        return exc
    free = free_bytes(path)
    where = f"{format_bytes(free)} free there" if free is not None else "free space unknown"
    wanted = f", {format_bytes(need)} needed" if need else ""
    if exc.errno == errno.EFBIG:
        why = "file size limit reached (ulimit -f, or the filesystem's largest file)"
    elif exc.errno == errno.EIO:
        why = "input/output error from the disk"
    else:
        why = "no space left on the disk" if exc.errno == errno.ENOSPC else "disk quota exceeded"
    return RunError(f"cannot write: {why} ({where}{wanted}); free space or write elsewhere", source=str(path))


def reserve(fd: int, size: int, path: Path | str) -> bool:
    """Allocate `size` bytes for the open file `fd`; True when the filesystem reserved them.

    The file is at least `size` bytes long afterwards either way. Raises RunError (disk_error) when
    the space is not there.
    """
    try:
        os.posix_fallocate(fd, 0, size)
        return True
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise disk_error(exc, path, size) from None
    try:
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
    except OSError as exc:
        raise disk_error(exc, path, size) from None
    return False


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Give the blocks of a byte range back to the filesystem (the file keeps its size); False when unsupported."""
    if length <= 0:
        return True
    libc = _libc()
    if libc is None:
        return False
    rc = libc.fallocate(
        fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, ctypes.c_int64(offset), ctypes.c_int64(length)
    )
    return rc == 0


_LIBC: list[object] = []


def _libc() -> object | None:
    if not _LIBC:
        try:
            lib = ctypes.CDLL(None, use_errno=True)
            lib.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
            lib.fallocate.restype = ctypes.c_int
            _LIBC.append(lib)
        except (OSError, AttributeError):
            _LIBC.append(None)
    return _LIBC[0]  # type: ignore[return-value]
