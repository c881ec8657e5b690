"""The volumes a preview draws: which planes, in which orientation, in which units, aligned how.

A `Volume` wraps an open reader with what the picture needs: the layout of its array, a voxel-to-
physical map (the affine when the file has one, else a diagonal of its spacing, else of ones), the unit
that map is in, and whether its axes are anatomical. Only NIfTI's affine is a scanner's world
(RAS+ by the NIfTI convention), so only NIfTI panels are drawn in world orientation with R/L, A/P, S/I
letters; HDF5, Zarr and .npy panels are drawn on their array axes (the first of the two axes shown
runs down, the second across, as `array[i]` looks in any image viewer) and say so.

Slices are read through the format readers one plane at a time, so a preview of a large file reads
three planes, never the whole volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..geometry.layout import Layout

_WORLD = ("RL", "AP", "SI")  # (positive, negative) direction letters of world axes x, y, z
# Spelled in ASCII: the preview's font has no micro sign.
UNIT_NAMES = {
    "mm": "mm",
    "millimeter": "mm",
    "millimetre": "mm",
    "micron": "um",
    "micrometer": "um",
    "micrometre": "um",
    "um": "um",
    "nanometer": "nm",
    "nanometre": "nm",
    "nm": "nm",
    "centimeter": "cm",
    "cm": "cm",
    "meter": "m",
    "metre": "m",
    "m": "m",
    "angstrom": "angstrom",
}
VOXELS = "voxels"


@dataclass
class Plane:
    """One panel's plane: the voxel axis held fixed and the two drawn, with their direction on screen."""

    name: str
    normal: int  # voxel axis held fixed
    h: int  # voxel axis drawn left to right
    v: int  # voxel axis drawn top to bottom
    h_desc: bool = False  # index increases to the left
    v_desc: bool = False  # index increases upwards
    letters: tuple[str, str, str, str] | None = None  # anatomical: left, right, top, bottom


@dataclass
class Volume:
    """One volume to draw: its reader, the layout of the reader's array, and its voxel-to-physical map."""

    role: str
    reader: Any
    layout: Layout
    affine: np.ndarray  # 4x4, spatial voxel axes (in layout order) -> physical (`units`)
    has_affine: bool  # the file gave an affine (not only spacing): alignment between files is exact
    anatomical: bool  # the affine is a NIfTI world (RAS+): planes are axial, coronal, sagittal
    spacing_known: bool = True
    units: str = VOXELS  # 'mm', 'um', ... ; '' for a spacing in an unknown unit; VOXELS for none
    notes: list[str] = field(default_factory=list)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return self.layout.spatial_shape(self.reader.shape)

    @property
    def zooms(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))


def volume_from_reader(role: str, reader: Any, data_format: str = "channels_last") -> Volume:
    """A Volume for `reader`: its affine when it has one, else a diagonal from its spacing (or 1)."""
    if len(reader.shape) not in (3, 4, 5):
        raise InputError(
            f"shape {tuple(reader.shape)}: a preview needs a 3-, 4- or 5-D volume", source=str(reader.path)
        )
    layout = Layout(len(reader.shape), getattr(reader, "data_format", None) or data_format)
    meta = reader.meta
    has_affine = meta.affine is not None
    if has_affine:
        affine = np.asarray(meta.affine, dtype=np.float64)
    else:
        spacing = meta.spacing if meta.spacing is not None else (1.0, 1.0, 1.0)
        affine = np.diag([*map(float, spacing), 1.0])
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        affine, has_affine = np.eye(4), False  # geometry that cannot be drawn: the voxel grid instead
    spacing_known = has_affine or meta.spacing is not None
    anatomical = has_affine and reader.format == "nifti"
    units = units_of(reader) if spacing_known else VOXELS
    vol = Volume(role, reader, layout, affine, has_affine, anatomical, spacing_known, units)
    shape = tuple(reader.shape)
    channels = layout.channels(shape)
    if channels > 1:
        vol.notes.append(f"channel 0 of {channels}")
    if layout.has_batch and layout.batch(shape) > 1:
        vol.notes.append(f"volume 0 of {layout.batch(shape)}")
    return vol


def _unit_name(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple, np.ndarray)):
        names = {_unit_name(v) for v in list(value)[-3:]}
        return names.pop() if len(names) == 1 else None
    return UNIT_NAMES.get(str(value).strip().lower()) if isinstance(value, str) else None


def units_of(reader: Any) -> str:
    """The unit of a reader's spacing, spelled short ('mm', 'um'); '' when the file does not say.

    NIfTI: `xyzt_units` (an unset unit is read as mm, the NIfTI convention nibabel and FSL follow).
    Zarr: the NGFF `unit` of the three space axes, when they agree. HDF5 (and plain Zarr): micrometres
    for `element_size_um`, else a `unit`/`units`/`spacing_units` attribute.
    """
    meta = reader.meta
    header = getattr(meta, "header", None)
    if reader.format == "nifti" and header is not None and hasattr(header, "get_xyzt_units"):
        space = header.get_xyzt_units()[0]
        return UNIT_NAMES.get(space, "mm")
    axes = getattr(header, "axes", None)
    if axes:
        found = _unit_name([a.get("unit") for a in axes[-3:] if isinstance(a, dict)])
        if found:
            return found
    attrs = meta.attrs or {}
    if "element_size_um" in attrs:
        return "um"
    for key in ("spacing_units", "units", "unit"):
        if key in attrs and _unit_name(attrs[key]):
            return _unit_name(attrs[key])  # type: ignore[return-value]
    return ""


def planes_for(vol: Volume) -> list[Plane]:
    """Axial, coronal and sagittal planes from a NIfTI affine's nearest axes (as nibabel's
    `aff2axcodes` reads them); the three array axes otherwise (`axis 0` shows axis 1 down, 2 across)."""
    if not vol.anatomical:
        return [Plane("axis 0", 0, 2, 1), Plane("axis 1", 1, 2, 0), Plane("axis 2", 2, 1, 0)]
    from nibabel.orientations import io_orientation

    ornt = io_orientation(vol.affine)
    vox_of = {int(w): i for i, (w, _) in enumerate(ornt)}
    sign = {int(w): float(s) for w, s in ornt}

    def plane(name: str, normal_w: int, h_w: int, v_w: int) -> Plane:
        letters = (_WORLD[h_w][1], _WORLD[h_w][0], _WORLD[v_w][0], _WORLD[v_w][1])
        return Plane(name, vox_of[normal_w], vox_of[h_w], vox_of[v_w], sign[h_w] < 0, sign[v_w] > 0, letters)

    return [plane("axial", 2, 0, 1), plane("coronal", 1, 0, 2), plane("sagittal", 0, 1, 2)]


def frame(ref: Volume, vol: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Scale and shift per axis taking `vol`'s voxel indices to `ref`'s voxel coordinates.

    Exact when both have an affine (an output's is the input's composed with the layer's geometry);
    from the spacings, centres aligned, when both know their spacing; otherwise the two grids are assumed
    to cover the same field of view (an .npy input has no geometry to compare with).
    """
    if vol is ref:
        return np.ones(3), np.zeros(3)
    n_ref, n_vol = np.array(ref.spatial_shape, float), np.array(vol.spatial_shape, float)
    m = np.linalg.solve(ref.affine, vol.affine)
    scale, shift = np.diag(m)[:3].copy(), m[:3, 3].copy()
    diagonal = np.all(np.abs(scale) > 1e-9) and np.allclose(m[:3, :3], np.diag(scale), atol=1e-3 * np.abs(scale).max())
    if diagonal and vol.has_affine and ref.has_affine:
        return scale, shift
    if not (diagonal and ref.spacing_known and vol.spacing_known):
        scale = n_ref / n_vol
    return scale, (n_ref - 1) / 2 - scale * (n_vol - 1) / 2


def read_slice(vol: Volume, plane: Plane, index: int) -> np.ndarray:
    """The 2-D slice (rows = plane.v, columns = plane.h) of batch 0, channel 0, as float64."""
    spatial = [slice(None)] * 3
    spatial[plane.normal] = slice(index, index + 1)
    region = vol.layout.region(spatial, slice(0, 1))
    data = vol.layout.to_ncdhw(np.asarray(vol.reader.read(region)))[0, 0]
    data = np.take(data, 0, axis=plane.normal).astype(np.float64)
    rest = [a for a in range(3) if a != plane.normal]  # the remaining axes, in order
    return data if rest == [plane.v, plane.h] else data.T


def shared_window(slices: Sequence[np.ndarray], percentiles: tuple[float, float]) -> tuple[float, float]:
    """One grey-level window for every slice given (all rows): their finite values' percentiles."""
    finite = [s[np.isfinite(s)].ravel() for s in slices]
    values = np.concatenate(finite) if finite else np.zeros(0)
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, percentiles))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def to_grey(data: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Grey levels 0..255 of `data` through the window [lo, hi] (NaN drawn as lo)."""
    scaled = (np.nan_to_num(data, nan=lo) - lo) / (hi - lo)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
