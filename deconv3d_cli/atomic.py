"""Safe output: a partial file beside the target, a journal of finished tiles, and an atomic rename.

The target is never touched until the output is complete: the data goes to `.partial-NAME` in the
same directory (same filesystem, so the final `os.replace` is atomic), and `.partial-NAME.journal`
records which tiles are durably on disk, so a killed run can be resumed. A lock on the journal keeps
two processes from writing the same output.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import InputError

PARTIAL_PREFIX = ".partial-"


def partial_path(target: Path) -> Path:
    return target.with_name(PARTIAL_PREFIX + target.name)


def journal_path(target: Path) -> Path:
    return target.with_name(PARTIAL_PREFIX + target.name + ".journal")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class OutputTarget:
    """One output file being produced: partial data, journal, lock, final commit or clean-up."""

    def __init__(self, target: Path, header: dict[str, Any], *, overwrite: bool = False, resume: bool = False) -> None:
        self.target = Path(target)
        self.partial = partial_path(self.target)
        self.journal = journal_path(self.target)
        self.header = header
        self.resume = resume
        self.done: set[int] = set()
        self.resumed = False
        if self.target.exists() and not overwrite:
            raise InputError("output exists; pass --overwrite to replace it", source=str(self.target))
        if not self.target.parent.is_dir():
            raise InputError("output directory does not exist", source=str(self.target.parent))
        self._journal_fd: int | None = None

    def open(self) -> bool:
        """Take the lock and decide: fresh start (False) or resume from the journal (True)."""
        try:
            fd = os.open(self.journal, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"cannot write beside the output: {exc.strerror}", source=str(self.target)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError("another deconv3d process is writing this output", source=str(self.target)) from None
        self._journal_fd = fd
        if self.resume and self.partial.exists():
            header, done = _read_journal(fd)
            if header is None:
                pass  # no usable journal: start over
            elif header != self.header:
                diff = sorted(k for k in set(header) | set(self.header) if header.get(k) != self.header.get(k))
                self.release()
                raise InputError(
                    f"the partial output was made with another {', '.join(diff)}; run without --resume to start over",
                    source=str(self.target),
                )
            else:
                self.done = done
                self.resumed = True
                return True
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(self.header, sort_keys=True) + "\n").encode())
        os.fsync(fd)
        if self.partial.exists():
            self.partial.unlink()
        return False

    def record(self, tiles: Iterable[int]) -> None:
        """Append finished tiles; call only after their data has been flushed to disk."""
        tiles = list(tiles)
        if not tiles or self._journal_fd is None:
            return
        os.write(self._journal_fd, (" ".join(map(str, tiles)) + "\n").encode())
        os.fsync(self._journal_fd)
        self.done.update(tiles)

    def commit(self) -> None:
        os.replace(self.partial, self.target)
        fsync_dir(self.target.parent)
        self._remove_journal()

    def abort(self) -> None:
        """Remove the partial output and the journal; the target stays as it was."""
        try:
            self.partial.unlink()
        except FileNotFoundError:
            pass
        self._remove_journal()

    def _remove_journal(self) -> None:
        try:
            self.journal.unlink()
        except FileNotFoundError:
            pass
        self.release()

    def release(self) -> None:
        if self._journal_fd is not None:
            os.close(self._journal_fd)
            self._journal_fd = None


def _read_journal(fd: int) -> tuple[dict[str, Any] | None, set[int]]:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        block = os.read(fd, 1 << 20)
        if not block:
            break
        chunks.append(block)
    lines = b"".join(chunks).split(b"\n")
    try:
        header = json.loads(lines[0])
    except (ValueError, IndexError):
        return None, set()
    done: set[int] = set()
    # Only newline-terminated lines count: a line cut short by a kill is ignored.
    for line in lines[1:-1]:
        try:
            done.update(int(v) for v in line.split())
        except ValueError:
            break
    os.lseek(fd, 0, os.SEEK_END)
    return header, done
