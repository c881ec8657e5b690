"""A Zarr store as files on disk: what may be read from it, which chunks are there, whether it is still ours.

zarr's local store reads any path under the store as it finds it: a metadata file or chunk that is a
FIFO blocks the read forever, a symlink to /dev/zero never ends, a symlink to a file elsewhere puts
that file's bytes in the volume, and a chunk that is a directory (or absent) reads as the fill value
with no word. So the reader looks at each node and chunk first (`check_tree`, `chunk_state`): anything
but a regular file inside the store is refused with one line naming it (symlinks that stay inside the
store are followed; `allow_external` follows the others too), an absent chunk is counted, and a
chunk that does not decode is an error naming it.

The writer holds a `StoreGuard`: zarr creates missing folders on every write, so a store removed
mid-run would be silently re-created and half-filled. The guard remembers the store folder's
identity and refuses to go on (RunError) once it is gone or replaced.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from ..errors import InputError, RunError
from .base import kind_of

METADATA_FILES = ("zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata")
MAX_METADATA_BYTES = 16 << 20  # far more than any array or group document; a bigger one is not metadata
MAX_DEPTH = 32  # nested groups walked before giving up
# zarr's LocalStore writes `NAME.<32 hex>.partial` and renames it; a killed writer leaves one behind.
TEMP = re.compile(r"\.[0-9a-f]{32}\.partial$")


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def _regular(path: Path, root_real: str, src: str, what: str, allow_external: bool) -> os.stat_result | None:
    """stat of a store entry that must be a regular file inside the store; None when it is absent."""
    try:
        lst = os.lstat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    except OSError as exc:
        raise InputError(f"{what} cannot be read ({exc.strerror or exc})", source=src) from None
    if stat.S_ISLNK(lst.st_mode):
        real = os.path.realpath(path)
        if not allow_external and not _inside(real, root_real):
            raise InputError(
                f"{what} is a symbolic link to {real}, outside the store; refused unless external data is allowed",
                source=src,
                param="allow_external",
            )
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise InputError(f"{what} is a broken symbolic link", source=src) from None
    else:
        st = lst
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{what} is {kind_of(st.st_mode)}, not a file; the store is damaged", source=src)
    return st


def check_tree(root: Path, src: str, allow_external: bool = False) -> None:
    """Refuse a store whose metadata files (of every group and array in it) are not regular files."""
    root_real = os.path.realpath(root)
    todo = [(Path(root), 0)]
    while todo:
        folder, depth = todo.pop()
        is_array = False
        is_node = False
        for name in METADATA_FILES:
            rel = os.path.relpath(folder / name, root)
            st = _regular(folder / name, root_real, src, f"metadata file {rel}", allow_external)
            if st is None:
                continue
            is_node = True
            if st.st_size > MAX_METADATA_BYTES:
                raise InputError(f"metadata file {rel} is {st.st_size} bytes; not Zarr metadata", source=src)
            if name == ".zarray" or (name == "zarr.json" and _node_type(folder / name) == "array"):
                is_array = True
        if not is_node or is_array or depth >= MAX_DEPTH:
            continue  # arrays hold chunks, not nodes: their folders are not listed
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        todo += [(Path(e.path), depth + 1) for e in entries if e.is_dir(follow_symlinks=False)]


def _node_type(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(MAX_METADATA_BYTES))
    except (OSError, ValueError):
        return None  # zarr's own open will say what is wrong with it
    return doc.get("node_type") if isinstance(doc, dict) else None


def chunk_state(path: Path, root: Path, key: str, src: str, allow_external: bool = False) -> bool:
    """True when the chunk is stored, False when absent (it reads as the fill value); refuses the rest."""
    return _regular(path, os.path.realpath(root), src, f"chunk {key}", allow_external) is not None


def decode_error(key: str, exc: BaseException, src: str) -> InputError:
    text = " ".join(str(exc).split())[:200] or type(exc).__name__
    return InputError(
        f"chunk {key} cannot be decoded ({type(exc).__name__}: {text}); the store is damaged: restore that chunk "
        "or rewrite the store",
        source=src,
    )


class StoreGuard:
    """The identity of a store being written, checked before each write and sync: the folder's and
    its root metadata file's (device, inode). A folder removed and made again may get the same inode
    back; its metadata file is then missing, or another file."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.identity = self._identity()

    def _identity(self) -> tuple[tuple[int, int], ...] | None:
        try:
            found = [os.stat(self.root)]
            found += [os.stat(self.root / name) for name in METADATA_FILES if os.path.lexists(self.root / name)][:1]
        except OSError:
            return None
        return tuple((st.st_dev, st.st_ino) for st in found)

    def check(self, target: Path | str) -> None:
        now = self._identity()
        if now is None or now != self.identity:
            raise RunError(
                f"the output store {self.root.name} was removed or replaced while it was being written; "
                "nothing was committed: run again",
                source=str(target),
            )


def sweep(path: Path) -> int:
    """Remove zarr's temporary chunk files (`*.<hex>.partial`) under a store; returns how many."""
    removed = 0
    for folder, _, names in os.walk(path):
        for name in names:
            if TEMP.search(name):
                try:
                    os.unlink(os.path.join(folder, name))
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def describe_error(exc: BaseException) -> str:
    """`Type: message` on one line, for errors zarr raises on a store it cannot open."""
    text: Any = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
