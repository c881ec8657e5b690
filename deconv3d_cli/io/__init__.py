"""Files: one module per format behind one reader/writer protocol, format facts, atomic output and journal.

io may import `geometry` and `errors`; never torch, the engine, the layer, run or the CLI, so that
reading and writing volumes is testable (and usable) without any of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..geometry import axis as geometry
from ..geometry.axis import Axis
from .base import PartialUnusable, Reader, VolumeMeta, Writer

# Format modules are imported on first use, so a format's library (h5py, nibabel, zarr) costs nothing
# until a file of that format is touched; formats.py holds what each can do.


def _module(fmt: str) -> Any:
    return importlib.import_module(f".{fmt}", __name__)


def format_of(path: Path | str) -> str:
    """The format module's name for `path` (see formats.py for what each format can do)."""
    from .formats import facts_of

    return facts_of(path).name


def open_reader(path: Path | str, dataset: str | None = None, **hints: Any) -> Reader:
    """The reader for `path`. Hints help formats whose axes are ambiguous (NIfTI's 4th axis):
    `fourth_axis` ('auto', 'channels' or 'series') and `in_channels` (the layer's, when known)."""
    path = Path(path)
    fmt = format_of(path)
    if not path.exists():
        raise InputError("no such file", source=str(path))
    if fmt == "nifti":
        return _module(fmt).open_reader(path, dataset, **hints)
    fourth_axis = hints.get("fourth_axis")
    if fourth_axis not in (None, "auto"):
        raise InputError("--fourth-axis applies to NIfTI inputs", source=str(path), param="fourth_axis")
    return _module(fmt).open_reader(path, dataset)


def create_writer(
    path: Path,
    fmt: str,
    shape: tuple[int, ...],
    dtype: Any,
    meta: VolumeMeta,
    resume: bool = False,
    **options: Any,
) -> Writer:
    return _module(fmt).create_writer(path, shape, np.dtype(dtype), meta, resume=resume, **options)


def output_chunks(
    fmt: str, shape: tuple[int, ...], dtype: Any, layout: Any, options: dict[str, Any]
) -> tuple[int, ...] | None:
    """The output's chunk shape, when the format stores chunks (tiles are aligned to it)."""
    module = _module(fmt)
    chooser = getattr(module, "output_chunks", None)
    return None if chooser is None else chooser(shape, np.dtype(dtype), layout, options)


def writes_slabs(fmt: str) -> bool:
    """Whether the format writes slabs cut along array axis 0 as long contiguous runs (then plans prefer them).

    A format whose slabs run along another axis (NIfTI: `slab_axis` 2, z) answers False until plans can
    cut along that axis: slabs along axis 0 would be its worst case (short runs, out of file order).
    """
    module = _module(fmt)
    return bool(getattr(module, "WRITES_SLABS", False)) and slab_axis(fmt) == 0


def slab_axis(fmt: str) -> int:
    """The spatial array axis slowest in the format's files: slabs cut along it are contiguous (.npy 0, NIfTI 2)."""
    return int(getattr(_module(fmt), "SLAB_AXIS", 0))


def output_meta(meta: VolumeMeta, axes: Sequence[Axis]) -> VolumeMeta:
    """Input geometry carried to the output: spacing divided by the strides, affine per SEMANTICS.md."""
    derived = meta.affine is None
    affine_in = np.diag([*(meta.spacing or (1.0, 1.0, 1.0)), 1.0]) if derived else meta.affine
    return VolumeMeta(
        spacing=None if meta.spacing is None else geometry.output_spacing(meta.spacing, [ax.stride for ax in axes]),
        affine=geometry.output_affine(affine_in, axes),
        attrs=dict(meta.attrs),
        header=meta.header,
        affine_derived=derived,
    )


__all__ = ["PartialUnusable", "Reader", "Writer", "VolumeMeta", "open_reader", "create_writer", "format_of"]
