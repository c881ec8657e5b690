"""Reading untrusted model files without executing or extracting anything.

- Zip archives (`.keras`) are read member by member, in memory or through a seekable member stream;
  nothing is extracted to disk, and an archive holding a member name that could escape a directory
  (absolute, `..`, backslashes, drive letters) is refused as a whole.
- HDF5 groups are walked through hard links only: soft and external links and datasets with external
  or virtual storage (which would read other files) are refused.
- JSON and YAML are read by layer/textconfig.py: no tags (so no Python objects), aliases and nesting
  bounded.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SpecError
from ..layer import filekind, textconfig

# A config or metadata member larger than this is not a Keras config.
MAX_TEXT_BYTES = textconfig.MAX_TEXT_BYTES
# An archive's members may declare at most this many times the file's size (plus the slack) uncompressed.
EXPANSION_FACTOR = 2
EXPANSION_SLACK = 64 << 20
# Arrays larger than this (elements; 1 GiB of float32) are refused before they are read: no real kernel is.
MAX_ARRAY_ELEMENTS = 1 << 28


def sniff(path: Path) -> str:
    """'zip', 'hdf5', 'pickle', 'text' or 'unknown', from the first bytes of the file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except IsADirectoryError:
        return "directory"
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror or exc}", source=str(path)) from None
    kind = filekind.magic(head)
    if kind in ("hdf5", "zip", "pickle"):
        return kind
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"[") or _looks_like_text(head):
        return "text"
    return "unknown"


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return bool(text) and all(ch.isprintable() or ch in "\t\r\n" for ch in text)


_BAD_MEMBER = re.compile(r"(^/|^\\|^[A-Za-z]:|(^|/)\.\.(/|$)|\\|\x00)")


def check_members(archive: zipfile.ZipFile, source: str) -> list[str]:
    """Member names, after refusing any that could escape a directory if someone extracted them."""
    names = archive.namelist()
    for name in names:
        if _BAD_MEMBER.search(name):
            raise SpecError(
                f"archive member {name!r} has an unsafe path (absolute, '..' or backslash); refused",
                source=source,
            )
    return names


@contextmanager
def archive_errors(source: str) -> Iterator[None]:
    """Damage met while a member is streamed (h5py reading model.weights.h5 from the zip) as one line."""
    try:
        yield
    except (zipfile.BadZipFile, zlib.error) as exc:
        raise SpecError(f"an archive member is damaged ({exc}); the archive is corrupt", source=source) from None


def check_expansion(archive: zipfile.ZipFile, source: str, file_size: int) -> None:
    """Refuse an archive whose members declare more than EXPANSION_FACTOR times the file's size (plus
    EXPANSION_SLACK) before any of them is decompressed: model files are stored or barely compressible
    (float weights), so a larger ratio is a decompression bomb (1.4 MB of zip reaching 1.46 GiB)."""
    infos = archive.infolist()
    declared = sum(info.file_size for info in infos)
    allowed = EXPANSION_FACTOR * file_size + EXPANSION_SLACK
    if declared > allowed:
        largest = max(infos, key=lambda info: info.file_size)
        raise SpecError(
            f"archive member {largest.filename!r} declares {largest.file_size} bytes and all members "
            f"{declared}, more than {EXPANSION_FACTOR}x the file's {file_size} bytes plus "
            f"{EXPANSION_SLACK >> 20} MiB; refused before decompressing (a zip bomb?)",
            source=source,
        )


def read_member(archive: zipfile.ZipFile, name: str, source: str, limit: int = MAX_TEXT_BYTES) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise SpecError(f"archive member {name!r} is {info.file_size} bytes, over {limit}; refused", source=source)
    try:
        with archive.open(info) as fh:
            data = fh.read(limit + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise SpecError(f"archive member {name!r} is damaged ({exc}); the archive is corrupt", source=source) from None
    if len(data) > limit:
        raise SpecError(f"archive member {name!r} is larger than it claims; refused", source=source)
    return data


def load_json_bytes(data: bytes, source: str, what: str) -> Any:
    """A JSON member or attribute, depth-bounded (layer/textconfig.py)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{what} is not valid JSON: {exc}", source=source) from None
    return textconfig.loads_json(text, source, what)


def load_text_config(path: Path) -> Any:
    """A JSON or YAML document, read with the one bounded safe reader (layer/textconfig.py)."""
    return textconfig.load_file(path)


# --------------------------------------------------------------------------------------------- HDF5
def h5_child(group: Any, name: str, source: str) -> Any:
    """`group[name]` for a '/'-separated relative name, following hard links only."""
    import h5py

    node = group
    for part in [p for p in name.split("/") if p]:
        link = node.get(part, getlink=True)
        if link is None:
            return None
        if not isinstance(link, h5py.HardLink):
            kind = type(link).__name__
            raise SpecError(f"HDF5 entry {node.name}/{part} is a {kind}; only plain entries are read", source=source)
        node = node[part]
    return node


def h5_children(group: Any, source: str) -> Iterator[tuple[str, Any]]:
    """(name, object) of a group's members, hard links only (others refused)."""
    for name in group:
        yield name, h5_child(group, name, source)


def h5_array(dataset: Any, source: str, what: str) -> np.ndarray:
    """A numeric dataset's values, refusing external or virtual storage and oversized arrays."""
    import h5py

    if not isinstance(dataset, h5py.Dataset):
        raise SpecError(f"{what}: HDF5 entry {getattr(dataset, 'name', '?')} is not a dataset", source=source)
    if dataset.is_virtual or dataset.external:
        raise SpecError(f"{what}: dataset {dataset.name} stores its data in other files; refused", source=source)
    if dataset.dtype.kind not in "fiu":
        raise SpecError(f"{what}: dataset {dataset.name} has dtype {dataset.dtype}, not numbers", source=source)
    if dataset.size > MAX_ARRAY_ELEMENTS:
        raise SpecError(f"{what}: dataset {dataset.name} is too large ({dataset.shape})", source=source)
    return np.asarray(dataset[()])


def h5_attr_text(obj: Any, key: str) -> str | None:
    value = obj.attrs.get(key)
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return str(value)


def h5_attr_list(obj: Any, key: str) -> list[str]:
    value = obj.attrs.get(key)
    if value is None:
        return []
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in np.asarray(value).ravel()]


def open_h5(fileobj: Any, source: str) -> Any:
    import h5py

    try:
        return h5py.File(fileobj, "r")
    except (OSError, ValueError) as exc:
        raise SpecError(f"not a readable HDF5 file: {exc}", source=source) from None
