"""Safe output: a partial file beside the target, a journal of finished tiles, and an atomic rename.

The target is never touched until the output is complete: the data goes to `.partial-NAME` in the
same directory (same filesystem, so the final `os.replace` is atomic), and `.partial-NAME.journal`
records which tiles are durably on disk, so a killed run can be resumed. A lock on the journal keeps
two processes from writing the same output.

An output may be a directory (a Zarr store): the partial is then a directory, removed as a tree, and
the commit renames it onto the target; an existing target (`--overwrite`) is first renamed aside and
removed only after the new one is in place, so the target is never half-written (a kill between the
two renames leaves no target: the next check of that output path finishes the commit, see
`finish_interrupted_commit`). Only a directory
that is itself a store of the output's format is ever replaced: a folder of the user's at an output's
path is refused, `--overwrite` or not. A symlink at an output's path, whatever the format and whatever
it points to, is replaced itself with `--overwrite`; what it points to is never written.

A run that is stopped (SIGTERM, Ctrl-C) keeps its partial and journal (`keep`); a later run without
`--resume` that finds tiles in a partial refuses, offering `--resume` or `--overwrite`, so an
interrupted run's work is never thrown away by accident.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import InputError

PARTIAL_PREFIX = ".partial-"
REPLACED_PREFIX = ".replaced-"
STORE_MARKERS = ("zarr.json", ".zgroup", ".zarray")  # what makes a folder a Zarr store (ours to replace)


def partial_path(target: Path) -> Path:
    return target.with_name(PARTIAL_PREFIX + target.name)


def journal_path(target: Path) -> Path:
    return target.with_name(PARTIAL_PREFIX + target.name + ".journal")


def fsync_path(path: Path, missing_ok: bool = False) -> bool:
    """fsync a file or directory by path (a directory, so that renames and new entries in it last).

    Returns False when `missing_ok` and the path does not exist.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        if missing_ok:
            return False
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def remove(path: Path) -> None:
    """Remove a file or a directory tree (a Zarr store); nothing if it is not there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():  # a file appeared while removing (a straggling writer): once more
            shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def replaced_path(target: Path) -> Path:
    """Where a directory commit sets the old target aside while it renames the new one in."""
    return target.with_name(REPLACED_PREFIX + target.name)


def replace(src: Path, dst: Path) -> None:
    """Move `src` onto `dst` atomically for files; for directories, rename the old one aside first.

    Directories cannot be swapped in one step: a kill between the two renames leaves `dst` missing,
    the old one at `.replaced-NAME` and the complete new one at `src`; `finish_interrupted_commit`
    completes that commit on the next run.
    """
    if not (src.is_dir() or (dst.is_dir() and not dst.is_symlink())):
        os.replace(src, dst)
        return
    if not os.path.lexists(dst):
        os.rename(src, dst)
        return
    aside = replaced_path(dst)
    remove(aside)
    os.rename(dst, aside)
    try:
        os.rename(src, dst)
    except BaseException:
        os.rename(aside, dst)
        raise
    remove(aside)


def same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def disk_error(exc: OSError, path: Path) -> Exception:
    """ENOSPC, EFBIG, EIO, ... as the writers' one line (io/space.py): a DiskFault, on which the run keeps
    the tiles already journalled (before, a full disk met by the journal was a plain RunError, and the
    run threw those tiles away)."""
    from .space import disk_error as fault  # space imports this module

    return fault(exc, path)


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is out (a write to a nearly full disk may take only some)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def is_store(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in STORE_MARKERS)


def check_target(target: Path, *, directory: bool, overwrite: bool, resume: bool = False) -> None:
    """Refuse, before anything is computed, an output path the run may not write (the run checks again).

    `directory`: the output format is a folder (a Zarr store).
    """
    target = Path(target)
    if not target.parent.is_dir():
        raise InputError("output directory does not exist", source=str(target.parent))
    finish_interrupted_commit(target)
    if os.path.lexists(target):
        if target.is_dir() and not target.is_symlink():
            if not directory:
                raise InputError("is a folder; remove it yourself or choose another output file", source=str(target))
            if not is_store(target):
                raise InputError(
                    "is a folder that is not a Zarr store; it is never replaced: remove it yourself or choose "
                    "another output",
                    source=str(target),
                )
        elif directory and not target.is_symlink() and target.exists():
            raise InputError(
                "is a file, not a Zarr store; remove it yourself or choose another output", source=str(target)
            )
        if not overwrite:
            raise InputError(f"output exists; pass --overwrite to replace {_what(target)}", source=str(target))
    if os.path.lexists(journal_path(target)) and not os.path.lexists(partial_path(target)):
        _remove_stale_journal(target)
    kept = kept_tiles(target)
    if kept and not resume and not overwrite:
        raise InputError(
            f"an interrupted run left {kept} finished tile(s) in {partial_path(target).name}; add --resume to "
            "continue it, or --overwrite to start over",
            source=str(target),
        )


def _what(target: Path) -> str:
    """What --overwrite replaces: a symlink at an output path is itself replaced (as a preview's is),
    whatever it points to; the file or store at the other end is never written nor removed."""
    if target.is_symlink():
        return "the link (what it points to is never written)"
    return "it"


def finish_interrupted_commit(target: Path) -> None:
    """Complete a directory commit that a kill cut between its two renames, or after them.

    `.replaced-NAME` exists only while `replace` swaps a directory in, after the partial is complete:
    with the target missing, the partial is the finished new output and goes in (the commit the killed
    run was making); with the target back in place (or no partial to put there), what was set aside
    goes, after the old target is put back if nothing else can be; then the journal, as the commit
    would have. The journal's lock decides who may do it: a live process holding it is committing now.
    Run by every check of an output path, so a dry run sees what the run will.
    """
    target = Path(target)
    aside = replaced_path(target)
    if not os.path.lexists(aside):
        return
    try:
        fd: int | None = os.open(journal_path(target), os.O_RDWR)
    except FileNotFoundError:
        fd = None
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # that process finishes (or undoes) its own commit
        partial = partial_path(target)
        if not os.path.lexists(target):
            os.rename(partial if os.path.lexists(partial) else aside, target)
            fsync_path(target.parent)
        remove(aside)
        fsync_path(target.parent)
        if not os.path.lexists(partial):
            journal_path(target).unlink(missing_ok=True)
    finally:
        if fd is not None:
            os.close(fd)


def _remove_stale_journal(target: Path) -> None:
    """A journal without its partial: the run committed and was stopped before removing it (or a partial
    was removed by hand). Nothing of it is usable; unless a live process holds it, it goes."""
    try:
        fd = os.open(journal_path(target), os.O_RDWR)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another process is writing this output right now: its own check decides
    finally:
        os.close(fd)
    journal_path(target).unlink(missing_ok=True)


def kept_tiles(target: Path) -> int:
    """How many tiles a partial output's journal records as finished (0 without a usable partial)."""
    if not os.path.lexists(partial_path(Path(target))):
        return 0
    try:
        with open(journal_path(Path(target)), "rb") as f:
            lines = f.read().split(b"\n")
    except OSError:
        return 0
    return sum(len(line.split()) for line in lines[1:-1])


class OutputTarget:
    """One output file being produced: partial data, journal, lock, final commit or clean-up."""

    def __init__(
        self,
        target: Path,
        header: dict[str, Any],
        *,
        overwrite: bool = False,
        resume: bool = False,
        directory: bool = False,
    ) -> None:
        self.target = Path(target)
        self.partial = partial_path(self.target)
        self.journal = journal_path(self.target)
        self.header = header
        self.resume = resume
        self.done: set[int] = set()
        self.resumed = False
        self.overwrite = overwrite
        self.notes: list[str] = []
        check_target(self.target, directory=directory, overwrite=overwrite, resume=True)
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
        if os.path.lexists(self.partial):
            header, done = _read_journal(fd)
            if not self.resume:
                if done and not self.overwrite:
                    self.release()
                    raise InputError(
                        f"an interrupted run left {len(done)} finished tile(s) in {self.partial.name}; add --resume "
                        "to continue it, or --overwrite to start over",
                        source=str(self.target),
                    )
            elif header is None or not done:
                self.notes.append("the partial output had no finished tile: started over")
            elif header != self.header:
                diff = sorted(k for k in set(header) | set(self.header) if header.get(k) != self.header.get(k))
                self.release()
                raise InputError(
                    f"the partial output was made with another {', '.join(diff)}; use --overwrite instead of --resume "
                    "to start over",
                    source=str(self.target),
                )
            else:
                self.done = done
                self.resumed = True
                return True
        self._start_journal()
        return False

    def _start_journal(self) -> None:
        """A journal holding only the header, and no partial: a fresh start (a full disk leaves neither)."""
        fd = self._journal_fd
        assert fd is not None
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            _write_all(fd, (json.dumps(self.header, sort_keys=True) + "\n").encode())
            os.fsync(fd)
        except OSError as exc:
            self._remove_journal()
            raise disk_error(exc, self.target) from None
        remove(self.partial)

    def record(self, tiles: Iterable[int]) -> None:
        """Append finished tiles; call only after their data has been flushed to disk."""
        tiles = list(tiles)
        if not tiles or self._journal_fd is None:
            return
        try:
            _write_all(self._journal_fd, (" ".join(map(str, tiles)) + "\n").encode())
            os.fsync(self._journal_fd)
        except OSError as exc:
            raise disk_error(exc, self.journal) from None
        self.done.update(tiles)

    def restart(self, why: str) -> None:
        """Start over after all (the partial could not be reopened for resume), noting why."""
        self.notes.append(f"the partial output could not be resumed ({why}): started over")
        self.done = set()
        self.resumed = False
        self._start_journal()

    def keep(self) -> None:
        """Leave the partial and its journal for `--resume` (a stopped run): only the lock is released."""
        self.release()

    def commit(self) -> None:
        replace(self.partial, self.target)
        fsync_path(self.target.parent)
        self._remove_journal()

    def abort(self) -> None:
        """Remove the partial output and the journal; the target stays as it was."""
        remove(self.partial)
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


def journal_header(target: Path) -> dict[str, Any] | None:
    """The header of a partial output's journal, if there is a readable one."""
    try:
        with open(journal_path(Path(target)), "rb") as f:
            return json.loads(f.readline())
    except (OSError, ValueError):
        return None


def _read_journal(fd: int) -> tuple[dict[str, Any] | None, set[int]]:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        block = os.read(fd, 1 << 20)
        if not block:
            break
        chunks.append(block)
    data = b"".join(chunks)
    whole = data.rfind(b"\n") + 1
    if whole < len(data):  # a line cut short (a kill, a full disk): gone, so the next one starts afresh
        os.ftruncate(fd, whole)
    lines = data[:whole].split(b"\n")
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
