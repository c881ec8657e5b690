"""Format dispatch: one reader and one writer per format, chosen by file name."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import geometry
from ..errors import InputError
from ..geometry import Axis
from . import npy
from .base import Reader, VolumeMeta, Writer

_FORMATS = {npy.FORMAT: npy}


def format_of(path: Path | str) -> str:
    name = str(path).lower()
    for fmt, module in _FORMATS.items():
        if name.endswith(module.SUFFIXES):
            return fmt
    supported = ", ".join(s for m in _FORMATS.values() for s in m.SUFFIXES)
    raise InputError(f"unknown file type; supported: {supported}", source=str(path))


def open_reader(path: Path | str, dataset: str | None = None) -> Reader:
    path = Path(path)
    fmt = format_of(path)
    if not path.exists():
        raise InputError("no such file", source=str(path))
    return _FORMATS[fmt].open_reader(path, dataset)


def create_writer(
    path: Path,
    fmt: str,
    shape: tuple[int, ...],
    dtype: Any,
    meta: VolumeMeta,
    resume: bool = False,
    **options: Any,
) -> Writer:
    module = _FORMATS[fmt]
    if fmt == npy.FORMAT:
        return npy.NpyWriter(path, shape, np.dtype(dtype), meta, resume=resume)
    return module.create_writer(path, shape, np.dtype(dtype), meta, resume=resume, **options)


def output_chunks(
    fmt: str, shape: tuple[int, ...], dtype: Any, layout: Any, options: dict[str, Any]
) -> tuple[int, ...] | None:
    """The output's chunk shape, when the format stores chunks (tiles are aligned to it)."""
    module = _FORMATS[fmt]
    chooser = getattr(module, "output_chunks", None)
    return None if chooser is None else chooser(shape, np.dtype(dtype), layout, options)


def output_meta(meta: VolumeMeta, axes: Sequence[Axis]) -> VolumeMeta:
    """Input geometry carried to the output: spacing divided by the strides, affine per SEMANTICS.md."""
    return VolumeMeta(
        spacing=None if meta.spacing is None else geometry.output_spacing(meta.spacing, [ax.stride for ax in axes]),
        affine=None if meta.affine is None else geometry.output_affine(meta.affine, axes),
        attrs=dict(meta.attrs),
        header=meta.header,
    )


__all__ = ["Reader", "Writer", "VolumeMeta", "open_reader", "create_writer", "format_of"]
