"""Weights from an `.npz`: read member by member, each checked against what the spec can need first.

`numpy.load` would decompress a member whole before anyone could look at its shape, so a 1.4 MB
archive holding 1.46 GiB of zeros costs 1.46 GiB. Here each member's declared (uncompressed) size is
compared with the largest kernel (or bias) the spec allows before a byte is decompressed, then its
`.npy` header is read and its shape checked against the spec, then exactly the data the header
promises is read into a fresh array; a member whose declared size disagrees with its header, a bad
CRC and a truncated archive are each one line. Nothing is ever unpickled.
"""

from __future__ import annotations

import math
import os
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import SpecError
from .arguments import MAX_CHANNELS, MAX_KERNEL_WEIGHTS

MAX_HEADER = 1 << 16  # an .npy header is a few hundred bytes; numpy itself refuses over 10,000
ITEM_MAX = 8  # float64: the widest dtype a kernel is stored in

ShapeCheck = Callable[[tuple[int, ...]], None]


def _require_file(path: Path) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        raise SpecError("weights file not found", source=str(path), field="weights") from None
    if not stat.S_ISREG(mode):
        raise SpecError("weights must be a regular .npz file", source=str(path), field="weights")


def _read_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, check: ShapeCheck, src: str
) -> np.ndarray:
    name = info.filename
    if info.file_size > limit + MAX_HEADER:
        raise SpecError(
            f"archive member {name} declares {info.file_size} bytes, more than this spec's largest possible "
            f"{name[:-4]} ({limit} bytes); refused before decompressing",
            source=src,
        )
    with archive.open(info) as fh:
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh, max_header_size=MAX_HEADER)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh, max_header_size=MAX_HEADER)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except (ValueError, EOFError) as exc:
            raise SpecError(f"archive member {name} is not a readable .npy ({exc})", source=src) from None
        if dtype.hasobject:
            raise SpecError(
                f"archive member {name} holds pickled objects; only plain numeric arrays are read", source=src
            )
        if dtype.kind not in "biuf":
            raise SpecError(
                f"archive member {name} holds {dtype}; weights are real numbers (float32, float64, float16 or an "
                "integer type)",
                source=src,
                field=name[:-4],
            )
        check(tuple(int(n) for n in shape))
        nbytes = math.prod(shape) * dtype.itemsize
        if info.file_size != fh.tell() + nbytes:
            raise SpecError(
                f"archive member {name} declares {info.file_size} bytes but its header's shape {tuple(shape)} "
                f"{dtype} needs {fh.tell() + nbytes}; the archive is damaged",
                source=src,
            )
        out = np.empty(shape[::-1] if fortran else shape, dtype)
        view = memoryview(out).cast("B") if out.size else memoryview(b"")
        got = 0
        while got < nbytes:
            n = fh.readinto(view[got:])
            if not n:
                raise SpecError(f"archive member {name} is truncated", source=src)
            got += n
        if fh.read(1):  # also where zipfile checks the CRC
            raise SpecError(f"archive member {name} is longer than its header says", source=src)
    out = out.T if fortran else out
    return out.astype(out.dtype.newbyteorder("="), copy=False)  # big-endian files are valid: native from here


def _members(archive: zipfile.ZipFile, src: str) -> dict[str, zipfile.ZipInfo]:
    """The archive's members by name, refused unless they are `kernel` and optionally `bias`."""
    infos = {i.filename: i for i in archive.infolist()}
    names = {n[:-4] if n.endswith(".npy") else n for n in infos}
    if "kernel" not in names or "kernel.npy" not in infos:
        found = ", ".join(sorted(names)) or "none"
        raise SpecError(f"no 'kernel' array (found: {found})", source=src, field="kernel")
    unknown = sorted(names - {"kernel", "bias"})
    if unknown:
        raise SpecError(f"unexpected array {unknown[0]!r}; an .npz holds 'kernel' and optionally 'bias'", source=src)
    return infos


def load_npz(
    path: Path,
    layout: str = "keras",
    *,
    expect: tuple[int, ...] | None = None,
    in_channels: int | None = None,
    check: ShapeCheck | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """`kernel` (Keras layout) and `bias` from an `.npz`, never unpickling and never over-reading.

    `expect` is (kd, kh, kw, filters) from the spec, when known: the members' sizes and shapes are
    checked against it (and `in_channels`) before their data is decompressed. `check`, when given,
    sees the kernel's stored shape first (the spec's own shape error).
    """
    path = Path(path)
    src = str(path)
    _require_file(path)
    per_channel = math.prod(expect) if expect else 1
    max_in = in_channels or min(MAX_CHANNELS, max(1, MAX_KERNEL_WEIGHTS // per_channel))
    kernel_limit = (per_channel * max_in if expect else MAX_KERNEL_WEIGHTS) * ITEM_MAX
    bias_limit = (expect[3] if expect else MAX_CHANNELS) * ITEM_MAX

    def kernel_shape(shape: tuple[int, ...]) -> None:
        if layout == "torch" and len(shape) != 5:
            raise SpecError(
                f"torch layout needs a 5-D kernel (in, filters, kd, kh, kw), got shape {shape}",
                source=src,
                field="kernel",
            )
        keras = (*shape[2:], shape[1], shape[0]) if layout == "torch" else shape
        if check is not None:
            check(keras)
        if math.prod(shape) > MAX_KERNEL_WEIGHTS:
            raise SpecError(f"kernel shape {shape} is over {MAX_KERNEL_WEIGHTS} weights", source=src, field="kernel")

    def bias_shape(shape: tuple[int, ...]) -> None:
        if expect is not None and shape != (expect[3],):
            raise SpecError(
                f"bias has shape {shape} but filters={expect[3]} needs ({expect[3]},)", source=src, field="bias"
            )

    try:
        with zipfile.ZipFile(path) as archive:
            infos = _members(archive, src)
            kernel = _read_member(archive, infos["kernel.npy"], kernel_limit, kernel_shape, src)
            bias = None
            if "bias.npy" in infos:
                bias = _read_member(archive, infos["bias.npy"], bias_limit, bias_shape, src)
    except zipfile.BadZipFile as exc:
        raise SpecError(f"not a readable .npz ({exc}); the file is truncated or damaged", source=src) from None
    except (OSError, EOFError) as exc:
        raise SpecError(f"not a readable .npz: {exc}", source=src) from None
    if layout == "torch":
        kernel = kernel.transpose(2, 3, 4, 1, 0)
    return np.ascontiguousarray(kernel), bias
