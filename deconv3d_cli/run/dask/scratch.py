"""The scratch folder of a local Dask cluster, and the removal of those that killed runs left behind.

A local cluster's workers spill and unpack into `$TMPDIR/deconv3d-dask-*`, removed when the run ends.
A client killed with kill -9 (or the OOM killer) never removes it, and no later run did: each such
run left one more. The folder's name now says whose it is, `deconv3d-dask-PID-START-XXXXXX`, START
being the process's start time in clock ticks since boot (/proc/PID/stat), so a pid reused by another
process is not taken for the owner; the name is made atomically by mkdtemp, so no other run ever sees
a folder without its owner. Each new scratch folder first removes those of this user whose owner is
gone. Folders named otherwise (older versions) are left alone: whose they are cannot be known.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

PREFIX = "deconv3d-dask-"
_NAME = re.compile(rf"^{re.escape(PREFIX)}(\d+)-(\d+)-[^-/]+$")


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot; None when it does not exist (or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: count from the last ')'
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def _alive(pid: int, start: int) -> bool:
    """Whether the process that made a folder still runs (the same pid *and* the same start time)."""
    if Path("/proc/self/stat").exists():
        return start_time(pid) == start
    try:  # pragma: no cover - without /proc only the pid can be checked (start is then 0)
        os.kill(pid, 0)
    except ProcessLookupError:  # pragma: no cover
        return False
    except PermissionError:  # pragma: no cover - another user's process: alive
        return True
    return True  # pragma: no cover


def sweep(parent: Path) -> list[Path]:
    """Remove this user's scratch folders in `parent` whose owner process is gone; returns them."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        found = _NAME.match(entry.name)
        if found is None or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
        except OSError:
            continue
        if not _alive(int(found.group(1)), int(found.group(2))):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
    return removed


def make_scratch() -> Path:
    """A new scratch folder named for this process, after removing the ones dead runs left."""
    parent = Path(tempfile.gettempdir())
    sweep(parent)
    pid = os.getpid()
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{pid}-{start_time(pid) or 0}-", dir=parent))
