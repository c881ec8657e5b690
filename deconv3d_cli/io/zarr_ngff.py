"""OME-NGFF metadata of Zarr stores: read into geometry (axes, scale, translation), written from it.

See io/zarr.py for what is read and written and why; this module holds the metadata forms only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..geometry.layout import CHANNELS_FIRST, Layout
from .base import VolumeMeta
from .spacing import SPACING_ATTRS, spacing_value

NGFF_VERSION = {2: "0.4", 3: "0.5"}
# Group attributes that describe the input store's structure, not the image: never copied.
STRUCTURAL_ATTRS = ("multiscales", "ome", "omero", "bioformats2raw.layout", "plate", "well", "labels", "image-label")
NIFTI_UNITS = {"mm": "millimeter", "micron": "micrometer", "meter": "meter"}


@dataclass
class ZarrHeader:
    """What a Zarr input says beyond its array: the store format, group attributes, NGFF axes."""

    zarr_format: int
    group_attrs: dict[str, Any] = field(default_factory=dict)
    axes: list[dict[str, Any]] | None = None
    name: str | None = None


def multiscales(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """The first `multiscales` entry: NGFF 0.5 nests it under "ome", 0.4 has it at the top."""
    ome = attrs.get("ome")
    found = ome.get("multiscales") if isinstance(ome, dict) else attrs.get("multiscales")
    if isinstance(found, list) and found and isinstance(found[0], dict):
        return found[0]
    return None


_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def axes_of(ms: dict[str, Any], ndim: int) -> list[dict[str, Any]] | None:
    """NGFF axes as dicts (0.3 gives bare names), or None when they do not describe `ndim` axes."""
    raw = ms.get("axes")
    if not isinstance(raw, list) or len(raw) != ndim:
        return None
    out = []
    for a in raw:
        if isinstance(a, str):
            a = {"name": a, "type": _AXIS_TYPES.get(a)}
        if not isinstance(a, dict):
            return None
        out.append({k: v for k, v in a.items() if v is not None})
    return out


def _compose(transforms: Any, ndim: int, scale: list[float], shift: list[float]) -> bool:
    """Apply NGFF scale/translation transforms (in order) to world = index * scale + shift."""
    if not isinstance(transforms, list):
        return True
    for t in transforms:
        if not isinstance(t, dict):
            return False
        kind = t.get("type")
        if kind == "identity":
            continue
        values = t.get(kind) if kind in ("scale", "translation") else None
        if not isinstance(values, list) or len(values) != ndim:
            return False  # a transform stored in a file ("path"), or malformed: no geometry
        try:
            v = [float(x) for x in values]
        except (TypeError, ValueError):
            return False
        if kind == "scale":
            for a in range(ndim):
                scale[a] *= v[a]
                shift[a] *= v[a]
        else:
            for a in range(ndim):
                shift[a] += v[a]
    return True


def ngff_geometry(ms: dict[str, Any], array_path: str, ndim: int) -> tuple[list[float], list[float]] | None:
    """Per-axis (scale, translation) of the dataset at `array_path`, multiscale-level ones applied after."""
    scale, shift = [1.0] * ndim, [0.0] * ndim
    for ds in ms.get("datasets") or []:
        if isinstance(ds, dict) and str(ds.get("path", "")).strip("/") == array_path.strip("/"):
            if not _compose(ds.get("coordinateTransformations"), ndim, scale, shift):
                return None
            break
    else:
        return None
    if not _compose(ms.get("coordinateTransformations"), ndim, scale, shift):
        return None
    return scale, shift


def axis_aligned(affine: np.ndarray) -> bool:
    """True when NGFF's scale + translation can say this affine: diagonal, positive voxel sizes."""
    linear = affine[:3, :3]
    return bool(np.array_equal(linear, np.diag(np.diag(linear))) and (np.diag(linear) > 0).all())


def jsonable(value: Any) -> Any:
    """Attribute values as JSON (numpy arrays and scalars converted); None when there is no JSON form."""
    import json

    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, (np.generic,)):
        value = value.item()
    elif isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    elif isinstance(value, (list, tuple)):
        value = [jsonable(v) for v in value]
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return value


def _spatial_axes_meta(meta: VolumeMeta) -> list[dict[str, Any]]:
    """Names and units of the three spatial axes, from the input's NGFF axes, NIfTI header or HDF5 attrs."""
    header = meta.header
    if isinstance(header, ZarrHeader) and header.axes is not None:
        return [dict(a) for a in header.axes[-3:]]
    axes = [{"name": n, "type": "space"} for n in ("z", "y", "x")]
    unit = None
    if header is not None and type(header).__name__.startswith("Nifti"):
        axes = [{"name": n, "type": "space"} for n in ("x", "y", "z")]
        try:
            unit = NIFTI_UNITS.get(header.get_xyzt_units()[0])
        except Exception:  # noqa: BLE001 - a header without units
            unit = None
    elif "element_size_um" in meta.attrs:
        unit = "micrometer"
    if unit:
        for a in axes:
            a["unit"] = unit
    return axes


def ngff_attrs(meta: VolumeMeta, layout: Layout, array_path: str, zarr_format: int) -> tuple[dict, list | None]:
    """Group attributes with NGFF multiscales for this output, and the axis names; ({}, None) when the
    output's axis order is not one NGFF allows (channels after space)."""
    if layout.channel_axis is not None and layout.data_format != CHANNELS_FIRST:
        return {}, None
    header = meta.header if isinstance(meta.header, ZarrHeader) else None
    axes: list[dict[str, Any]] = []
    if layout.has_batch:
        known = header.axes[0] if header and header.axes and len(header.axes) == 5 else None
        axes.append(dict(known) if known else {"name": "t", "type": "time"})
    if layout.has_channels:
        known = header.axes[-4] if header and header.axes and len(header.axes) >= 4 else None
        axes.append(dict(known) if known else {"name": "c", "type": "channel"})
    axes += _spatial_axes_meta(meta)
    ndim = layout.ndim
    scale, shift = [1.0] * ndim, [0.0] * ndim
    affine = None if meta.affine is None else np.asarray(meta.affine, dtype=np.float64)
    spatial = list(layout.spatial_axes)
    if affine is not None:
        linear = affine[:3, :3]
        if axis_aligned(affine):
            for a, d in zip(spatial, range(3)):
                scale[a], shift[a] = float(linear[d, d]), float(affine[d, 3])
        else:
            for a, d in zip(spatial, range(3)):
                scale[a] = float(np.linalg.norm(linear[:, d]))
    elif meta.spacing is not None:
        for a, v in zip(spatial, meta.spacing):
            scale[a] = float(v)
    transforms: list[dict[str, Any]] = [{"type": "scale", "scale": scale}]
    if any(shift):
        transforms.append({"type": "translation", "translation": shift})
    multiscale: dict[str, Any] = {
        "axes": axes,
        "datasets": [{"path": array_path, "coordinateTransformations": transforms}],
    }
    if header is not None and header.name:
        multiscale["name"] = header.name
    version = NGFF_VERSION[zarr_format]
    if zarr_format == 2:
        return {"multiscales": [{"version": version, **multiscale}]}, [a["name"] for a in axes]
    return {"ome": {"version": version, "multiscales": [multiscale]}}, [a["name"] for a in axes]


def array_attrs(meta: VolumeMeta, ngff: bool) -> dict[str, Any]:
    """Input attributes (JSON-able ones), spacing attributes rewritten; spacing/affine when NGFF cannot say them."""
    out: dict[str, Any] = {}
    for name, value in meta.attrs.items():
        if name in SPACING_ATTRS and meta.spacing is not None:
            value = spacing_value(value, meta.spacing)
        if name == "affine" and meta.affine is not None:
            value = np.asarray(meta.affine, dtype=np.float64)
        converted = jsonable(value)
        if converted is not None:
            out[str(name)] = converted
    affine = None if meta.affine is None else np.asarray(meta.affine, dtype=np.float64)
    if affine is not None and not meta.affine_derived and "affine" not in out:
        if not ngff or not axis_aligned(affine):
            out["affine"] = affine.tolist()
    if not ngff and meta.spacing is not None and not any(name in out for name in SPACING_ATTRS):
        out["spacing"] = [float(v) for v in meta.spacing]
    if meta.header is not None and type(meta.header).__name__.startswith("Nifti"):
        from .nifti_header import CARRIED_ATTR, carried_fields  # units, codes, descrip for a later NIfTI

        out[CARRIED_ATTR] = carried_fields(meta.header)
    return out
