"""Zarr stores (zarr-python 3; format v2 and v3), read and written a box at a time, OME-NGFF geometry kept.

Zarr is an optional extra (``pip install 'deconv3d-cli[dask]'``): zarr is imported on first use, and
a run that needs it without the extra is told what to install.

Reading
-------
A path ending in ``.zarr`` is a store: an array at its root, or a group. In a group the array is
``--dataset PATH``, else the first (full-resolution) dataset of its OME-NGFF ``multiscales``, else
its only array. OME-NGFF metadata (0.4 in v2 stores, 0.5 under ``"ome"`` in v3 stores) gives the
layout and the geometry:

- axes ``[t,] [c,] z, y, x`` (space axes last, as NGFF orders them) are read as channels_first
  ``(N, C, D, H, W)``: the reader declares ``data_format = "channels_first"``, as NIfTI declares its
  own order. A time axis without a channel axis is refused (there is no such layout here).
- the dataset's ``coordinateTransformations`` (then the multiscale's own, when present) give the
  spacing (the spatial ``scale``) and an affine ``diag(scale) + translation``.

An ``affine`` (4x4) array attribute, when present, is the affine (as for HDF5); a plain store without
NGFF metadata may give its spacing in the HDF5 attribute names (``spacing``, ``element_size_um``, ...).

Writing
-------
The output is a group with one array (``--output-dataset``, default ``0``), zstd-compressed
(``--compression-level``, 0 = none), chunked like the HDF5 writer (``--chunks``, default about 1 MiB of
whole-channel voxels); the tile planner aligns tiles to these chunks, so concurrent writers never
share one. Zarr format: the input store's, else v3 (``writer_options={"zarr_format": 2}`` in the API).

When the output's axis order is one NGFF allows (3-D, or channels_first), the group carries NGFF
``multiscales`` (one level) whose transformations are the output geometry of SEMANTICS.md, computed by
``geometry.output_affine`` / ``output_spacing`` (through ``io.output_meta``): spatial ``scale``
divided by the strides, ``translation`` moved by ``(crop - (K - 1) / 2) / stride`` input voxels times
the input spacing. Axis names and units come from the input's NGFF axes, or from a NIfTI header
(``x, y, z`` and its spatial unit), or HDF5's ``element_size_um`` (micrometer). An affine that is not
diagonal with positive entries (a NIfTI rotation or flip) cannot be said in NGFF 0.4/0.5: the scale
is then the voxel size, and the full affine is kept in the array's ``affine`` attribute, from which
it is read back. Other layouts (channels_last with channels) get ``spacing`` / ``affine`` array
attributes instead, as HDF5 outputs do. Array attributes of the input are copied, spacing attributes
rewritten with the new spacing.

Memory: boxes are read and written one chunk at a time (zarr itself would decode or encode up to
`async.concurrency` chunks at once, each with its buffers), so a tile costs its own size plus one chunk.

Durability: zarr's local store writes each chunk to a temporary file and renames it, so a chunk is
never half-written; ``flush`` fsyncs the chunk files written since the last flush (and their
folders), after which `pipeline` / `distributed` journal the tiles. ``close`` also removes temporary
files left by a writer that was killed mid-chunk.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..geometry.layout import CHANNELS_FIRST, Layout
from .atomic import PARTIAL_PREFIX, fsync_path
from .base import VolumeMeta, construct_writer

EXTRA = "pip install 'deconv3d-cli[dask]'"
DEFAULT_ARRAY = "0"
NGFF_VERSION = {2: "0.4", 3: "0.5"}
# Group attributes that describe the input store's structure, not the image: never copied.
STRUCTURAL_ATTRS = ("multiscales", "ome", "omero", "bioformats2raw.layout", "plate", "well", "labels", "image-label")
NIFTI_UNITS = {"mm": "millimeter", "micron": "micrometer", "meter": "meter"}
_METADATA_FILES = ("zarr.json", ".zarray", ".zattrs", ".zgroup")
# zarr's LocalStore writes `NAME.<32 hex>.partial` and renames it; a killed writer leaves one behind.
_TEMP = re.compile(r"\.[0-9a-f]{32}\.partial$")


def require_extra(module: str, purpose: str) -> Any:
    """Import `module` from the dask extra, or refuse with what to install."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise InputError(f"{purpose} needs the optional dask extra: {EXTRA}") from None
    if module == "zarr" and int(str(getattr(mod, "__version__", "0")).split(".")[0]) < 3:
        raise InputError(f"{purpose} needs zarr >= 3 (found {mod.__version__}): {EXTRA}")
    return mod


def _zarr(path: Path | str | None = None) -> Any:
    name = None if path is None else Path(path).name.removeprefix(PARTIAL_PREFIX)  # the target, not its partial
    return require_extra("zarr", "Zarr" if name is None else f"{name}: Zarr")


# ----------------------------------------------------------------------------------------- NGFF


@dataclass
class ZarrHeader:
    """What a Zarr input says beyond its array: the store format, group attributes, NGFF axes."""

    zarr_format: int
    group_attrs: dict[str, Any] = field(default_factory=dict)
    axes: list[dict[str, Any]] | None = None
    name: str | None = None


def _multiscales(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """The first `multiscales` entry: NGFF 0.5 nests it under "ome", 0.4 has it at the top."""
    ome = attrs.get("ome")
    found = ome.get("multiscales") if isinstance(ome, dict) else attrs.get("multiscales")
    if isinstance(found, list) and found and isinstance(found[0], dict):
        return found[0]
    return None


_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def _axes(ms: dict[str, Any], ndim: int) -> list[dict[str, Any]] | None:
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


def _ngff_geometry(ms: dict[str, Any], array_path: str, ndim: int) -> tuple[list[float], list[float]] | None:
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


def _axis_aligned(affine: np.ndarray) -> bool:
    """True when NGFF's scale + translation can say this affine: diagonal, positive voxel sizes."""
    linear = affine[:3, :3]
    return bool(np.array_equal(linear, np.diag(np.diag(linear))) and (np.diag(linear) > 0).all())


def _jsonable(value: Any) -> Any:
    """Attribute values as JSON (numpy arrays and scalars converted); None when there is no JSON form."""
    import json

    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, (np.generic,)):
        value = value.item()
    elif isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    elif isinstance(value, (list, tuple)):
        value = [_jsonable(v) for v in value]
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return value


# ----------------------------------------------------------------------------------------- reading


def _is_array(node: Any) -> bool:
    return hasattr(node, "shape") and hasattr(node, "dtype") and hasattr(node, "chunks")


def _listing(arrays: Sequence[tuple[str, Any]]) -> str:
    items = [f"/{name} {tuple(a.shape)} {a.dtype}" for name, a in arrays[:20]]
    if len(arrays) > 20:
        items.append(f"and {len(arrays) - 20} more")
    return ", ".join(items) or "none"


def _pick_array(root: Any, dataset: str | None, ms: dict[str, Any] | None, src: str) -> tuple[str, Any]:
    if _is_array(root):
        if dataset and dataset.strip("/"):
            raise InputError(f"the store is a single array; it has no dataset {dataset!r}", source=src)
        return "", root
    arrays = sorted(((n, a) for n, a in root.members(max_depth=None) if _is_array(a)), key=lambda item: item[0])
    if dataset:
        key = dataset.strip("/")
        for name, arr in arrays:
            if name == key:
                return name, arr
        raise InputError(f"no array {dataset!r}; available: {_listing(arrays)}", source=src, param="dataset")
    if ms is not None:
        datasets = ms.get("datasets") or []
        first = datasets[0].get("path") if datasets and isinstance(datasets[0], dict) else None
        for name, arr in arrays:
            if first is not None and name == str(first).strip("/"):
                return name, arr
    if len(arrays) == 1:
        return arrays[0]
    volumes = [(n, a) for n, a in arrays if len(a.shape) in (3, 4, 5)]
    if len(volumes) == 1:
        return volumes[0]
    if not arrays:
        raise InputError("holds no arrays", source=src)
    raise InputError(f"holds {len(arrays)} arrays: {_listing(arrays)}; pass --dataset PATH to choose one", source=src)


class ZarrReader:
    """Reads boxes of one Zarr array; NGFF axes decide the layout, NGFF transforms the geometry."""

    format = "zarr"

    def __init__(self, path: Path, dataset: str | None = None) -> None:
        zarr = _zarr(path)
        self.path = Path(path)
        src = str(path)
        try:
            root = zarr.open(store=str(self.path), mode="r")
        except (FileNotFoundError, ValueError, KeyError, OSError) as exc:
            raise InputError(f"not a readable Zarr store ({type(exc).__name__}: {exc})", source=src) from None
        group_attrs = {} if _is_array(root) else dict(root.attrs)
        ms = _multiscales(group_attrs)
        name, arr = _pick_array(root, dataset, ms, src)
        dtype = np.dtype(arr.dtype)
        if dtype.kind not in "fiub":
            raise InputError(f"array /{name} has dtype {dtype}, which is not numeric", source=src)
        self._arr = arr
        self.dataset = "/" + name if name else None
        self.shape = tuple(int(n) for n in arr.shape)
        self.dtype = dtype.newbyteorder("=")
        self.chunks = tuple(int(c) for c in arr.chunks)
        self.data_format: str | None = None
        attrs = {k: v for k, v in dict(arr.attrs).items()}
        axes = _axes(ms, len(self.shape)) if ms is not None else None
        spacing, affine = None, None
        if axes is not None:
            self.data_format = self._declared_layout(axes, src)
            geometry = _ngff_geometry(ms, name, len(self.shape))  # type: ignore[arg-type]
            if geometry is not None:
                scale, shift = (v[-3:] for v in geometry)
                if all(math.isfinite(v) and v > 0 for v in scale) and all(math.isfinite(v) for v in shift):
                    spacing = tuple(scale)
                    affine = np.eye(4)
                    affine[[0, 1, 2], [0, 1, 2]] = scale
                    affine[:3, 3] = shift
        if spacing is None:
            from .hdf5 import SPACING_ATTRS, spacing_from

            for key in SPACING_ATTRS:
                if key in attrs:
                    spacing = spacing_from(attrs[key], len(self.shape))
                    if spacing is not None:
                        break
        given = np.asarray(attrs.get("affine", []), dtype=np.float64) if "affine" in attrs else None
        if given is not None and given.shape == (4, 4) and np.isfinite(given).all():
            affine = given
        header = ZarrHeader(
            zarr_format=int(arr.metadata.zarr_format),
            group_attrs=group_attrs,
            axes=axes,
            name=ms.get("name") if ms else None,
        )
        self.meta = VolumeMeta(spacing=spacing, affine=affine, attrs=attrs, header=header)

    @staticmethod
    def _declared_layout(axes: list[dict[str, Any]], src: str) -> str:
        types = [a.get("type") for a in axes]
        lead = types[:-3]
        if any(t != "space" for t in types[-3:]) and None not in types[-3:]:
            raise InputError(f"OME-NGFF axes {[a.get('name') for a in axes]}: the last three must be space", source=src)
        if lead and lead[-1] == "time":
            raise InputError(
                f"OME-NGFF axes {[a.get('name') for a in axes]}: a time axis without a channel axis; "
                "add a channel axis of length 1 (t, c, z, y, x)",
                source=src,
            )
        return CHANNELS_FIRST

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        """The box, one chunk at a time: zarr would decode up to `async.concurrency` chunks at once."""
        boxes = chunk_boxes(index, self.shape, self.chunks)
        if len(boxes) <= 1:
            data = np.asarray(self._arr[index])
            return data if data.dtype == self.dtype else data.astype(self.dtype)
        out = np.empty([len(range(*s.indices(n))) for s, n in zip(index, self.shape)], self.dtype)
        for box, sub in boxes:
            out[sub] = self._arr[box]
        return out

    def close(self) -> None:
        self._arr = None


def open_reader(path: Path, dataset: str | None = None, **hints: object) -> ZarrReader:
    return ZarrReader(path, dataset)


# ----------------------------------------------------------------------------------------- writing


def output_chunks(
    shape: tuple[int, ...], dtype: np.dtype, layout: Layout | str | None, options: dict[str, Any]
) -> tuple[int, ...]:
    """Chunks as the HDF5 writer chooses them: whole channels, one batch entry, about 1 MiB, or `--chunks`."""
    from .hdf5 import output_chunks as hdf5_chunks

    return hdf5_chunks(shape, dtype, layout, options)


def _layout_of(shape: Sequence[int], layout: Layout | str | None) -> Layout:
    if isinstance(layout, Layout):
        return layout
    return Layout(len(shape), layout or "channels_last")


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


def _ngff_attrs(meta: VolumeMeta, layout: Layout, array_path: str, zarr_format: int) -> tuple[dict, list | None]:
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
        if _axis_aligned(affine):
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


def _array_attrs(meta: VolumeMeta, ngff: bool) -> dict[str, Any]:
    """Input attributes (JSON-able ones), spacing attributes rewritten; spacing/affine when NGFF cannot say them."""
    from .hdf5 import SPACING_ATTRS, spacing_value

    out: dict[str, Any] = {}
    for name, value in meta.attrs.items():
        if name in SPACING_ATTRS and meta.spacing is not None:
            value = spacing_value(value, meta.spacing)
        if name == "affine" and meta.affine is not None:
            value = np.asarray(meta.affine, dtype=np.float64)
        converted = _jsonable(value)
        if converted is not None:
            out[str(name)] = converted
    affine = None if meta.affine is None else np.asarray(meta.affine, dtype=np.float64)
    if affine is not None and not meta.affine_derived and "affine" not in out:
        if not ngff or not _axis_aligned(affine):
            out["affine"] = affine.tolist()
    if not ngff and meta.spacing is not None and not any(name in out for name in SPACING_ATTRS):
        out["spacing"] = [float(v) for v in meta.spacing]
    if meta.header is not None and type(meta.header).__name__.startswith("Nifti"):
        from .nifti_header import CARRIED_ATTR, carried_fields  # units, codes, descrip for a later NIfTI

        out[CARRIED_ATTR] = carried_fields(meta.header)
    return out


def _chunk_ranges(index: tuple[slice, ...], shape: Sequence[int], chunks: Sequence[int]) -> list[range]:
    out = []
    for s, n, c in zip(index, shape, chunks):
        start, stop, _ = s.indices(n)
        out.append(range(start // c, -(-stop // c)) if stop > start else range(0))
    return out


def chunk_boxes(
    index: tuple[slice, ...], shape: Sequence[int], chunks: Sequence[int]
) -> list[tuple[tuple[slice, ...], tuple[slice, ...]]]:
    """For each chunk a box touches: (its part of the box in array coordinates, the same in box coordinates)."""
    bounds = [s.indices(n)[:2] for s, n in zip(index, shape)]
    per_axis = []
    for (start, stop), c, r in zip(bounds, chunks, _chunk_ranges(index, shape, chunks)):
        per_axis.append([(max(start, k * c), min(stop, (k + 1) * c), start) for k in r])
    return [
        (tuple(slice(a, b) for a, b, _ in combo), tuple(slice(a - o, b - o) for a, b, o in combo))
        for combo in product(*per_axis)
    ]


class ZarrWriter:
    """Writes boxes into one chunked array of a new (or, on resume, the partial) store."""

    def __init__(
        self,
        path: Path,
        shape: tuple[int, ...],
        dtype: np.dtype,
        meta: VolumeMeta,
        resume: bool = False,
        dataset: str | None = None,
        compression_level: int = 1,
        chunks: Any = None,
        layout: Layout | str | None = None,
        zarr_format: int | None = None,
    ) -> None:
        zarr = _zarr(path)
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.array_path = (dataset or DEFAULT_ARRAY).strip("/") or DEFAULT_ARRAY
        src = str(path)
        if self.dtype.kind not in "fiu":
            raise InputError(f"cannot write {self.dtype} as Zarr", source=src, param="output_dtype")
        if resume:
            try:
                root = zarr.open_group(store=str(self.path), mode="r+")
                arr = root[self.array_path]
            except (FileNotFoundError, KeyError, ValueError, OSError) as exc:
                raise InputError(
                    f"partial output cannot be reopened ({type(exc).__name__}); run without --resume to start over",
                    source=src,
                ) from None
            if tuple(arr.shape) != self.shape or np.dtype(arr.dtype) != self.dtype:
                raise InputError(
                    f"partial output /{self.array_path} has {tuple(arr.shape)} {arr.dtype}, "
                    f"expected {self.shape} {self.dtype}",
                    source=src,
                )
        else:
            fmt = zarr_format or (meta.header.zarr_format if isinstance(meta.header, ZarrHeader) else 3)
            if int(fmt) not in (2, 3):
                raise InputError(f"zarr_format {fmt!r}: use 2 or 3", source=src)
            fmt = int(fmt)
            level = int(compression_level)
            if not 0 <= level <= 22:
                raise InputError(f"{compression_level!r}: use 0 (none) to 22", param="compression_level")
            lay = _layout_of(self.shape, layout)
            chunk_shape = output_chunks(self.shape, self.dtype, lay, {"chunks": chunks})
            group_attrs, names = _ngff_attrs(meta, lay, self.array_path, fmt)
            if isinstance(meta.header, ZarrHeader):
                kept = {k: v for k, v in meta.header.group_attrs.items() if k not in STRUCTURAL_ATTRS}
                group_attrs = {**kept, **group_attrs}
            root = zarr.open_group(store=str(self.path), mode="w", zarr_format=fmt)
            if level == 0:
                compressors = None
            elif fmt == 3:
                compressors = zarr.codecs.ZstdCodec(level=level)
            else:
                import numcodecs

                compressors = numcodecs.Zstd(level=level)
            extra = {"dimension_names": names} if fmt == 3 and names else {}
            arr = root.create_array(
                self.array_path,
                shape=self.shape,
                dtype=self.dtype,
                chunks=chunk_shape,
                compressors=compressors,
                fill_value=0,
                attributes=_array_attrs(meta, bool(group_attrs.get("ome") or group_attrs.get("multiscales"))),
                config={"write_empty_chunks": False},
                **extra,
            )
            root.attrs.update(group_attrs)
        self._root = root
        self._arr = arr
        self.chunks = tuple(int(c) for c in arr.chunks)
        self._store_root = Path(str(arr.store.root))
        self._pending: set[tuple[int, ...]] = set()
        self._synced_meta = resume

    def write(self, index: tuple[slice, ...], data: np.ndarray) -> None:
        """One chunk at a time, so encoding buffers stay at one chunk (zarr would encode many at once)."""
        boxes = chunk_boxes(index, self.shape, self.chunks)
        if len(boxes) <= 1:
            self._arr[index] = data
        else:
            for box, sub in boxes:
                self._arr[box] = data[sub]
        self._pending.update(product(*_chunk_ranges(index, self.shape, self.chunks)))

    def _chunk_file(self, coords: Iterable[int]) -> Path:
        return self._store_root / self._arr.path / self._arr.metadata.encode_chunk_key(tuple(coords))

    def flush(self) -> None:
        """fsync the chunk files written since the last flush, their folders, and the metadata once."""
        folders: set[Path] = set()
        files = [self._chunk_file(c) for c in self._pending]
        if not self._synced_meta:
            for folder in (self._store_root, self._store_root / self._arr.path):
                files += [folder / name for name in _METADATA_FILES]
            folders.add(self._store_root.parent)
        for f in files:
            # an all-zero chunk is not stored (it reads as the fill value)
            if fsync_path(f, missing_ok=True):
                folders.add(f.parent)
        for folder in folders:
            fsync_path(folder, missing_ok=True)
        self._pending.clear()
        self._synced_meta = True

    def release(self) -> None:
        """Make this writer's chunks durable without touching others' (one of several concurrent writers)."""
        self.flush()

    def close(self) -> None:
        """Flush, and remove temporary chunk files left by a writer killed mid-write (the only writer)."""
        if self._arr is None:
            return
        self.flush()
        sweep(self.path)
        self._arr = None

    def abort(self) -> None:
        self._arr = None


def sweep(path: Path) -> int:
    """Remove zarr's temporary chunk files (`*.<hex>.partial`) under a store; returns how many."""
    removed = 0
    for folder, _, names in os.walk(path):
        for name in names:
            if _TEMP.search(name):
                try:
                    os.unlink(os.path.join(folder, name))
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def create_writer(
    path: Path, shape: tuple[int, ...], dtype: np.dtype, meta: VolumeMeta, resume: bool = False, **options: Any
) -> ZarrWriter:
    """Options: dataset, compression_level, chunks, layout, zarr_format."""
    return construct_writer(ZarrWriter, path, shape, dtype, meta, resume, options)
