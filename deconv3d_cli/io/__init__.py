"""Format dispatch: one reader and one writer per format, chosen by file name."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import geometry
from ..errors import InputError
from ..geometry import Axis
from .base import Reader, VolumeMeta, Writer

# format -> (module, file suffixes). Modules are imported on first use, so a format's library
# (h5py, nibabel) costs nothing until a file of that format is touched.
_REGISTRY: dict[str, tuple[str, tuple[str, ...]]] = {
    "npy": ("npy", (".npy",)),
    "hdf5": ("hdf5", (".h5", ".hdf5", ".hdf", ".he5")),
    "nifti": ("nifti", (".nii", ".nii.gz")),
}


def _module(fmt: str) -> Any:
    return importlib.import_module(f".{_REGISTRY[fmt][0]}", __name__)


def format_of(path: Path | str) -> str:
    name = str(path).lower()
    for fmt, (_, suffixes) in _REGISTRY.items():
        if name.endswith(suffixes):
            return fmt
    supported = ", ".join(s for _, suffixes in _REGISTRY.values() for s in suffixes)
    raise InputError(f"unknown file type; supported: {supported}", source=str(path))


def open_reader(path: Path | str, dataset: str | None = None) -> Reader:
    path = Path(path)
    fmt = format_of(path)
    if not path.exists():
        raise InputError("no such file", source=str(path))
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


def output_meta(meta: VolumeMeta, axes: Sequence[Axis]) -> VolumeMeta:
    """Input geometry carried to the output: spacing divided by the strides, affine per SEMANTICS.md."""
    return VolumeMeta(
        spacing=None if meta.spacing is None else geometry.output_spacing(meta.spacing, [ax.stride for ax in axes]),
        affine=None if meta.affine is None else geometry.output_affine(meta.affine, axes),
        attrs=dict(meta.attrs),
        header=meta.header,
    )


__all__ = ["Reader", "Writer", "VolumeMeta", "open_reader", "create_writer", "format_of"]
