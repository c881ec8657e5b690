"""NIfTI-1 and NIfTI-2 (`.nii`, `.nii.gz`), read and written a box at a time.

The parts: nifti_header (headers read and checked, geometry with fallbacks, the output header,
`fit_scaling`), nifti_layout (presented axes <-> file axes, boxes as byte runs in file order),
nifti_write (the `.nii` and `.nii.gz` writers), gzip_read / gzip_stream / gzip_members (gzip in and
out). This module holds the reader and the two entry points the io registry calls.

Reading
-------
nibabel parses the header (either NIfTI version, either byte order); a `.nii`'s voxels are read
through a short-lived `numpy.memmap` of the data block at `vox_offset`, in the file's own Fortran
order, so a tile costs only the bytes of its box. A `.nii.gz` is read as ranges of its uncompressed
stream (gzip_read): streamed in file order with nothing written to disk when boxes come as slabs along
z, decompressed once into an anonymous temporary file when they do not; either way bounded by the
size the header promises. `scl_slope`/`scl_inter` are applied on read (the reader then reports
float32, or float64 for float64 data); without scaling the stored dtype is reported, in native byte
order. Geometry follows the NIfTI rules with fallbacks for unusable transforms; `notes` says what was
set aside.

Array layout
------------
The reader declares ``data_format = "channels_last"`` and presents:

- 3-D ``(x, y, z)`` as it is;
- 4-D ``(x, y, z, n)`` as channels ``(X, Y, Z, C)`` when ``n`` equals the layer's input channels
  (hint ``in_channels``; when that is unknown, only ``n == 1`` counts as channels), else as a series
  ``(T, X, Y, Z, 1)``: a batch of one-channel volumes, each upsampled on its own;
  ``fourth_axis="channels"`` or ``"series"`` forces the choice;
- 5-D ``(x, y, z, t, c)`` (NIfTI's vector convention, components on the 5th axis) as
  ``(X, Y, Z, C)`` when ``t == 1``, else ``(T, X, Y, Z, C)``.

`fourth_axis_choice` holds a sentence saying what was chosen and why (None for 3-D files).

Writing
-------
Writers take boxes in the same layout and store them in file order, without memory maps (see
nifti_write). Several output channels are written as NIfTI vectors: 5-D, ``dim[4] = 1`` (or the
series' length), components on ``dim[5]``, intent ``NIFTI_INTENT_VECTOR``. Plans cut slabs along z,
the array axis slowest in the file (`formats.NIFTI.order`), and send them in file order: each is then
one long run of the file per component, written directly or compressed as it arrives.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, RunError
from .base import Destination, VolumeMeta
from .formats import DEFAULT_COMPRESSION_LEVEL
from .gzip_members import MAGIC
from .gzip_read import BLOCK, GzipSource
from .nifti_header import (
    NIFTI1_MAX_DIM,
    carried_fields,
    data_offset,
    fit_scaling,
    geometry,
    nib,
    read_header,
    scaling,
    xform_name,
)
from .nifti_layout import AxisMap, FileOrder, normalise_shape, reader_axes, writer_axes
from .nifti_write import NiftiGzWriter, NiftiWriter

FOURTH_AXIS_CHOICES = ("auto", "channels", "series")
STAGING_SUFFIX = ".gzstage"  # the only file a .nii.gz writer may stage to (removed on close and abort)

__all__ = [
    "NiftiReader",
    "NiftiWriter",
    "NiftiGzWriter",
    "carried_fields",
    "create_writer",
    "fit_scaling",
    "open_reader",
    "xform_name",
]


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == MAGIC


class NiftiReader:
    """One NIfTI file, read a box at a time (see the module docstring for the layout rules)."""

    format = "nifti"
    data_format = "channels_last"
    chunks = None

    def __init__(self, path: Path, fourth_axis: str | None = "auto", in_channels: int | None = None) -> None:
        self.path = Path(path)
        src = str(self.path)
        fourth_axis = (fourth_axis or "auto").lower()
        if fourth_axis not in FOURTH_AXIS_CHOICES:
            raise InputError(f"{fourth_axis!r}; use auto, channels or series", param="fourth_axis")
        if not self.path.is_file():
            raise InputError("not a regular file", source=src)
        self.compressed = is_gzip(self.path)
        header = read_header(self.path, self.compressed)
        self.header = header
        self.nifti_version = 2 if isinstance(header, nib().Nifti2Header) else 1
        try:
            stored = header.get_data_dtype()
        except Exception:  # noqa: BLE001 - nibabel: an unknown datatype code
            raise InputError(
                f"datatype code {int(header['datatype'])} is not a NIfTI type", source=src, field="datatype"
            ) from None
        if stored.kind not in "fiub" or stored.fields is not None:
            raise InputError(
                f"data type {header.get_value_label('datatype')} is not a real number type",
                source=src,
                field="datatype",
            )
        self.stored_dtype = stored
        self.stored_shape = tuple(int(n) for n in header.get_data_shape())
        self.offset = data_offset(header, self.path)
        self.scaling = scaling(header, self.path)
        if self.scaling is not None:
            self.dtype = np.dtype(np.float64 if stored == np.float64 else np.float32)
        else:
            self.dtype = stored.newbyteorder("=")
        self._file_shape = normalise_shape(self.stored_shape, src)
        axes, self.fourth_axis, self.fourth_axis_choice = reader_axes(
            self._file_shape, fourth_axis, in_channels, self.path.name, src
        )
        self._map = AxisMap(axes, self._file_shape)
        self.shape = self._map.shape
        self._order = FileOrder(self._file_shape, stored.itemsize, self.offset)
        g = geometry(header, self.path.name)
        self.notes = g.notes
        self.meta = VolumeMeta(spacing=g.spacing, affine=g.affine, header=header)
        self._lock = threading.Lock()
        self._closed = False
        self._source: GzipSource | None = None
        need = self.offset + self.nbytes
        if self.compressed:
            self._source = GzipSource(self.path, need)
        elif self.path.stat().st_size < need:
            raise InputError(f"truncated: {self.path.stat().st_size} bytes, the header needs {need}", source=src)

    @property
    def nbytes(self) -> int:
        return math.prod(self._file_shape) * self.stored_dtype.itemsize

    @property
    def staged(self) -> bool:
        """Whether a .nii.gz had to be decompressed to a temporary file (reads out of file order)."""
        return self._source is not None and self._source.staged

    def _block(self, index: tuple[slice, ...]) -> tuple[np.ndarray, Any]:
        """The box as a view with file axes, and what keeps its memory alive."""
        franges = self._map.file_ranges(index)
        if self._source is None:
            # A file cut short since it was opened (another process rewriting it): one line, as for .npy,
            # not numpy's "mmap length is greater than file size" (nor a SIGBUS from a map past its end).
            truncated = InputError("the file was truncated while it was being read", source=str(self.path))
            if os.stat(self.path).st_size < self.offset + self.nbytes:
                raise truncated
            try:
                mm = np.memmap(
                    self.path, dtype=self.stored_dtype, mode="r", offset=self.offset, shape=self._file_shape, order="F"
                )
            except ValueError:
                raise truncated from None
            return mm[tuple(slice(a, b) for a, b in franges)], mm
        a, b = self._order.span(franges)
        box = math.prod(b - a for a, b in franges) * self.stored_dtype.itemsize
        buffer, start = self._source.span(a, b, stream_ok=b - a <= 2 * box + BLOCK)
        return self._order.view(buffer, start, franges, self.stored_dtype), buffer

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        """A copy of the box, in the file's memory order (Fortran); scaled when the header says so."""
        with self._lock:
            if self._closed:
                raise RunError("reader is closed", source=str(self.path))
            block, keep = self._block(index)
            try:
                view = self._map.present(block, index)
                if self.scaling is None:
                    return np.array(view, dtype=self.dtype, order="K")
                out = np.array(view, dtype=np.float64, order="K")
            finally:
                del block, keep
        slope, inter = self.scaling
        out *= slope
        out += inter
        return out.astype(self.dtype, copy=False)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._source is not None:
                self._source.close()

    def __enter__(self) -> NiftiReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def output_size(
    shape: tuple[int, ...], dtype: np.dtype, layout: Any, options: dict[str, Any], path: Path | str = ""
) -> tuple[int, bool]:
    """(header + data bytes, False) for a `.nii` of this output (NIfTI-2 and vectors too); for a `.nii.gz`
    (header bytes, True): only a lower bound is certain. For io.check_space."""
    data_format = str(getattr(layout, "data_format", None) or "channels_last")
    _, file_shape = writer_axes(tuple(int(n) for n in shape), data_format)
    header = 540 + 4 if max(file_shape) > NIFTI1_MAX_DIM else 348 + 4
    if str(path).lower().endswith(".gz"):
        return header, True
    return header + math.prod(file_shape) * np.dtype(dtype).itemsize, False


def open_reader(
    path: Path, dataset: str | None = None, fourth_axis: str | None = "auto", in_channels: int | None = None
) -> NiftiReader:
    if dataset:
        raise InputError("--dataset applies to HDF5 inputs, not NIfTI", source=str(path), param="dataset")
    return NiftiReader(path, fourth_axis=fourth_axis, in_channels=in_channels)


def create_writer(dest: Destination, **options: Any) -> NiftiWriter | NiftiGzWriter:
    """A `.nii` or `.nii.gz` writer (by the name's suffix).

    options: `compression_level` (gzip level 0-9 for .nii.gz, default 1 as nibabel); `layout` (a Layout)
    or `data_format` of the boxes (default channels_last, the layout NiftiReader presents);
    `scaling` ``(scl_slope, scl_inter)`` for an integer output holding scaled values (see fit_scaling);
    `threads` (compression threads, default the usable CPUs; the bytes do not depend on it).
    """
    if options.pop("dataset", None):
        raise InputError(
            "--output-dataset applies to HDF5 outputs, not NIfTI", source=str(dest.path), param="output_dataset"
        )
    data_format = str(
        getattr(options.get("layout"), "data_format", None) or options.get("data_format") or "channels_last"
    )
    scale = options.get("scaling")
    scale = None if scale is None else (float(scale[0]), float(scale[1]))
    if Path(dest.path).name.lower().endswith(".gz"):
        level = options.get("compression_level")
        return NiftiGzWriter(
            dest,
            compression_level=DEFAULT_COMPRESSION_LEVEL if level is None else level,
            data_format=data_format,
            scaling=scale,
            threads=options.get("threads"),
        )
    return NiftiWriter(dest, data_format=data_format, scaling=scale, threads=options.get("threads"))
