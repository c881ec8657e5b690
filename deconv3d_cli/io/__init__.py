"""Files: one module per format behind one reader/writer protocol, format facts, atomic output and journal.

io may import `geometry` and `errors`; never torch, the engine, the layer, run or the CLI, so that
reading and writing volumes is testable (and usable) without any of them.

Hostile inputs and faulty disks are refused here, each with one line: `open_reader` takes only
regular files (a directory for Zarr) and volumes with no zero-length axis, and each format refuses
what it cannot read exactly (HDF5 data outside the file unless `allow_external`; damaged Zarr chunks).
Readers count the chunks they met absent in `missing_chunks`. Before an output is created, the run
calls `check_space(path, *output_size(...))` (io/space.py); writers turn disk faults into DiskFault
(exit 1) and raise PartialUnusable when a partial cannot be resumed.
"""

from __future__ import annotations

import importlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..geometry import axis as geometry
from ..geometry.axis import Axis
from .base import Destination, PartialUnusable, Reader, VolumeMeta, Writer, kind_of, require_regular
from .space import DiskFault, check_space, disk_error

# Format modules are imported on first use, so a format's library (h5py, nibabel, zarr) costs nothing
# until a file of that format is touched; formats.py holds what each can do.


def _module(fmt: str) -> Any:
    return importlib.import_module(f".{fmt}", __name__)


def format_of(path: Path | str) -> str:
    """The format module's name for `path` (see formats.py for what each format can do)."""
    from .formats import facts_of

    return facts_of(path).name


def open_reader(path: Path | str, dataset: str | None = None, *, allow_external: bool = False, **hints: Any) -> Reader:
    """The reader for `path`. Hints help formats whose axes are ambiguous (NIfTI's 4th axis):
    `fourth_axis` ('auto', 'channels' or 'series') and `in_channels` (the layer's, when known).

    `allow_external` lets an HDF5 input read data kept in other files (external raw storage, external
    links, virtual datasets); by default such inputs are refused. Other formats ignore it.
    Refused at once, with one line: anything but a regular file (a directory for Zarr), which could
    block (a FIFO) or is not a volume, and volumes with a zero-length axis.
    """
    path = Path(path)
    fmt = format_of(path)
    _check_kind(path, fmt)
    if fmt == "nifti":
        reader = _module(fmt).open_reader(path, dataset, **hints)
    else:
        fourth_axis = hints.get("fourth_axis")
        if fourth_axis not in (None, "auto"):
            raise InputError("--fourth-axis applies to NIfTI inputs", source=str(path), param="fourth_axis")
        if fmt == "hdf5":
            reader = _module(fmt).open_reader(path, dataset, allow_external=allow_external)
        else:
            reader = _module(fmt).open_reader(path, dataset)
    if not hasattr(reader, "missing_chunks"):
        reader.missing_chunks = 0
    _refuse_empty(reader)
    return reader


_WHAT = {"npy": "an .npy file", "hdf5": "an HDF5 file", "nifti": "a NIfTI file"}


def _check_kind(path: Path, fmt: str) -> None:
    """A Zarr store must be a directory, every other input a regular file."""
    if fmt != "zarr":
        require_regular(path, _WHAT[fmt])
        return
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError("no such file", source=str(path)) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", source=str(path)) from None
    if not stat.S_ISDIR(mode):
        what = "a file" if stat.S_ISREG(mode) else kind_of(mode)
        raise InputError(f"is {what}; a Zarr store (.zarr) is a directory", source=str(path))


def _refuse_empty(reader: Reader) -> None:
    """A zero-length axis holds no voxels: every size and tile count would divide by it."""
    shape = tuple(reader.shape)
    if any(int(n) <= 0 for n in shape):
        axis = next(a for a, n in enumerate(shape) if int(n) <= 0)
        reader.close()
        raise InputError(
            f"{shape} has length {shape[axis]} on axis {axis}; a volume needs at least one voxel on every axis",
            source=str(reader.path),
            field="shape",
        )


def create_writer(
    path: Path,
    fmt: str,
    shape: tuple[int, ...],
    dtype: Any,
    meta: VolumeMeta,
    resume: bool = False,
    **options: Any,
) -> Writer:
    """The writer of format `fmt` (a module name, see format_of) for the output these describe; `options`
    are the pipeline's writer options, of which each format takes those it knows."""
    dest = Destination(Path(path), tuple(shape), np.dtype(dtype), meta, resume)
    return _module(fmt).create_writer(dest, **options)


def output_chunks(
    fmt: str, shape: tuple[int, ...], dtype: Any, layout: Any, options: dict[str, Any]
) -> tuple[int, ...] | None:
    """The output's chunk shape, when the format stores chunks (tiles are aligned to it)."""
    module = _module(fmt)
    chooser = getattr(module, "output_chunks", None)
    return None if chooser is None else chooser(shape, np.dtype(dtype), layout, options)


def output_size(
    path: Path | str, fmt: str, shape: tuple[int, ...], dtype: Any, layout: Any, options: dict[str, Any]
) -> tuple[int, bool]:
    """(bytes, compressed) for `check_space`: the output's size when it is certain, else (lower bound, True).

    Certain: `.npy` (header + data), `.nii` and uncompressed HDF5 (whole chunks). Compressed formats,
    and Zarr (which does not store chunks that hold only the fill value), are uncertain.
    """
    module = _module(fmt)
    if fmt == "nifti":  # .nii or .nii.gz: the suffix decides
        return module.output_size(tuple(int(n) for n in shape), np.dtype(dtype), layout, options, path=path)
    sizer = getattr(module, "output_size", None)
    if sizer is not None:
        return sizer(tuple(int(n) for n in shape), np.dtype(dtype), layout, options)
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize, False


def output_meta(meta: VolumeMeta, axes: Sequence[Axis]) -> VolumeMeta:
    """Input geometry carried to the output: spacing divided by the strides, affine per SEMANTICS.md."""
    affine_in = np.diag([*(meta.spacing or (1.0, 1.0, 1.0)), 1.0]) if meta.affine is None else meta.affine
    spacing = None if meta.spacing is None else geometry.output_spacing(meta.spacing, [ax.stride for ax in axes])
    return placed_meta(meta, geometry.output_affine(affine_in, axes), spacing)


def placed_meta(meta: VolumeMeta, affine: np.ndarray, spacing: Sequence[float] | None) -> VolumeMeta:
    """The input's geometry and attributes, placed on the output's grid (`affine`, `spacing`); the spacing
    only where the input had one, and the affine marked derived where the input had none."""
    return VolumeMeta(
        spacing=None if meta.spacing is None or spacing is None else tuple(float(v) for v in spacing),  # type: ignore[arg-type]
        affine=np.asarray(affine, dtype=np.float64),
        attrs=dict(meta.attrs),
        header=meta.header,
        affine_derived=meta.affine is None,
    )


__all__ = [
    "Destination",
    "DiskFault",
    "PartialUnusable",
    "Reader",
    "Writer",
    "VolumeMeta",
    "check_space",
    "create_writer",
    "disk_error",
    "format_of",
    "open_reader",
    "output_size",
]
