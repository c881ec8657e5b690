"""gzip members made deterministically: fixed header bytes, raw deflate of one block of data, CRC and size.

A gzip file may be several members one after the other (RFC 1952, 2.2); every reader (gzip, zlib,
nibabel, ITK/SimpleITK, indexed_gzip) reads the concatenation as one stream. Compressing fixed-size
blocks as separate members lets several threads compress at once, and makes the output bytes a
function of the data alone: the header has no time stamp (MTIME 0), no file name, OS 255 (unknown).

Libraries by level (`--compression-level`, 0-9 as gzip's; default 1 as nibabel's):

- 0: stored blocks, no compression (zlib);
- 1-3: ISA-L (python-isal), by far the fastest: its levels 1-3 are ISA-L's own 1-3, measured on a
  smooth int16 volume at 2.85-2.90x compression and 380-690 MB/s on one core of this machine;
- 4-9: zlib-ng (2.90x at 120-140 MB/s for 4-6, 38 MB/s for 9), else the standard library's zlib
  (about 4 times slower). Levels above 3 buy almost nothing on image data here; they are honoured
  because users ask for them.

A library that is missing falls back to the next (isal -> zlib-ng -> zlib), each giving valid gzip;
the bytes then differ from a machine that has it, never between runs on one machine.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any

MAGIC = b"\x1f\x8b"
# ID1 ID2, CM deflate, FLG none, MTIME 0, XFL 0, OS 255 (unknown): the same bytes on every machine
HEADER = MAGIC + b"\x08\x00" + b"\x00\x00\x00\x00" + b"\x00\xff"
LEVELS = range(0, 10)


def _isal() -> Any:
    try:
        from isal import isal_zlib
    except ImportError:
        return None
    return isal_zlib


def _zlib_ng() -> Any:
    try:
        from zlib_ng import zlib_ng
    except ImportError:
        return None
    return zlib_ng


def check_level(level: Any) -> int:
    from ..errors import InputError

    try:
        value = int(level)
    except (TypeError, ValueError):
        value = -1
    if value not in LEVELS:
        raise InputError(f"{level!r}: use 0 (none) to 9 for .nii.gz", param="compression_level")
    return value


def codec(level: int) -> tuple[str, Callable[[Any], bytes]]:
    """(library name, raw-deflate function) for a gzip level."""
    level = check_level(level)
    isal, zng = _isal(), _zlib_ng()
    if level == 0:
        return "zlib", lambda data: _zlib_raw(data, 0)
    if level <= 3 and isal is not None:
        return "isal", lambda data: isal.compress(data, level, -15)
    if zng is not None:
        return "zlib-ng", lambda data: zng.compress(data, level, -15)
    return "zlib", lambda data: _zlib_raw(data, level)


def _zlib_raw(data: Any, level: int) -> bytes:
    """Raw deflate with the standard library (its compress() takes wbits only from Python 3.11)."""
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def crc32(data: Any) -> int:
    isal = _isal()
    return (isal.crc32(data) if isal is not None else zlib.crc32(data)) & 0xFFFFFFFF


def member(data: Any, deflate: Callable[[Any], bytes]) -> bytes:
    """One complete gzip member holding `data` (bytes-like)."""
    body = deflate(data)
    return HEADER + body + struct.pack("<II", crc32(data), len(memoryview(data).cast("B")) & 0xFFFFFFFF)
