"""Where a preview PNG may be written, and writing it there atomically.

A preview follows the rules of every output: it never replaces a file without `overwrite=True`
(`--overwrite`), never replaces the files of the command it draws (its input, its output: the same
path, a symlink or hard link to it, or a path inside a directory store), even with `overwrite`, and
never a directory or anything but a regular file. The PNG is written to a temporary file beside the
target, flushed to disk, and then linked into place (which fails if a file appeared meanwhile) or,
with `overwrite`, renamed over it: the target is either the old file or the whole new picture. A
symlink at the target is itself replaced; what it points to is never written.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError, RunError
from ..geometry.sizes import format_bytes
from ..io.atomic import PARTIAL_PREFIX, fsync_path, same_file

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".npy", ".h5", ".hdf5", ".zarr", ".png")


def suggested_name(path: Path) -> str:
    """A preview name beside a volume: scan.nii.gz -> scan_preview.png."""
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return str(path.with_name((name or "volume") + "_preview.png"))


def _inside(path: Path, folder: Path) -> bool:
    try:
        return folder.is_dir() and path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def check_target(png: Path | str, protected: Mapping[str, Path | str] | None = None, overwrite: bool = False) -> Path:
    """`png` as a Path when a preview may be written there; else InputError naming it and what would work.

    `protected` maps a role ('input', 'output') to a path this command reads or writes.
    """
    png = Path(png)
    src = str(png)
    for role, path in (protected or {}).items():
        path = Path(path)
        if same_file(png, path) or _inside(png, path):
            raise InputError(
                f"is the {role} of this command ({path}); a preview never replaces it, even with --overwrite: "
                f"give the preview its own name, e.g. {suggested_name(path)}",
                source=src,
            )
    if png.is_dir():
        raise InputError(f"is a directory; give the preview a file name, e.g. {png / 'preview.png'}", source=src)
    if not png.parent.is_dir():
        raise InputError("preview directory does not exist; create it or choose another path", source=str(png.parent))
    if os.path.lexists(png):
        mode = os.lstat(png).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            raise InputError("exists and is not a regular file; choose another path for the preview", source=src)
        if not overwrite:
            raise InputError("exists; pass --overwrite to replace it, or choose another path", source=src)
    return png


def umask() -> int:
    """The process umask, read without changing it (os.umask would, for every thread, for a moment)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _write_error(exc: OSError, png: Path) -> Exception:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return InputError(f"cannot write the preview here: {reason}", source=str(png))
    try:
        free = f" ({format_bytes(shutil.disk_usage(png.parent).free)} free)"
    except OSError:
        free = ""
    return RunError(f"cannot write the preview: {reason}{free}", source=str(png))


def write_png(image: Any, png: Path | str, overwrite: bool = False) -> Path:
    """Save the PIL `image` as PNG at `png` atomically (the checks of `check_target` already made)."""
    png = Path(png)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f"{PARTIAL_PREFIX}{png.name}.", suffix=".tmp", dir=png.parent)
    except OSError as exc:
        raise _write_error(exc, png) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format="PNG")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~umask())
        if overwrite:
            os.replace(tmp, png)
        else:
            _link_new(tmp, png)
        fsync_path(png.parent)
    except OSError as exc:
        raise _write_error(exc, png) from None
    finally:
        tmp.unlink(missing_ok=True)
    return png


def _link_new(tmp: Path, png: Path) -> None:
    """Put `tmp` at `png` only if nothing is there: a hard link fails on an existing name."""
    try:
        os.link(tmp, png)
    except FileExistsError:
        raise InputError("exists; pass --overwrite to replace it, or choose another path", source=str(png)) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(png):  # a filesystem without hard links: check, then rename
            raise InputError(
                "exists; pass --overwrite to replace it, or choose another path", source=str(png)
            ) from None
        os.rename(tmp, png)
