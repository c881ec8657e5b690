"""HDF5 through h5py: one dataset in, one chunked, compressed dataset out, geometry kept in attributes.

HDF5 files often hold several arrays, so the input dataset is named with `--dataset` unless the file
holds exactly one volume. Spacing is not standardised in HDF5; the usual attribute names
(`SPACING_ATTRS`) are searched on the dataset, then on its parent groups, and each one the input had is
written back on the output with the new (stride-divided) spacing, in the same form.

Spacing attributes hold 3 numbers in the array's spatial axis order (D, H, W), or one number for
isotropic voxels. An attribute with one entry per array axis of a 4-D or 5-D dataset (4 or 5 entries)
is read as channels_last: entries 0-2 of 4 and 1-3 of 5 are spatial; the others are kept as they are.
Any other length is left alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import InputError
from ..geometry.layout import Layout
from .atomic import fsync_path
from .base import VolumeMeta, construct_writer

SPACING_ATTRS = ("element_size_um", "spacing", "voxel_size", "resolution")
DEFAULT_DATASET = "data"
CHUNK_BYTES = 1 << 20  # HDF5's chunk cache defaults to 1 MiB; larger chunks would bypass it
MAX_CHUNK = 64
_LISTED = 20  # datasets named in an error message before "and N more"


def _spatial_positions(n: int) -> tuple[int, ...] | None:
    """Which entries of an n-entry spacing attribute are spatial (channels_last rule, see module doc)."""
    return {1: (0, 0, 0), 3: (0, 1, 2), 4: (0, 1, 2), 5: (1, 2, 3)}.get(n)


def spacing_from(value: Any, ndim: int) -> tuple[float, float, float] | None:
    """Three positive spatial spacings from an attribute value, or None when it is not one."""
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    n = arr.size
    if n not in (1, 3) and n != ndim:
        return None
    pos = _spatial_positions(n)
    if pos is None:
        return None
    out = tuple(float(arr[p]) for p in pos)
    if not all(math.isfinite(v) and v > 0 for v in out):
        return None
    return out  # type: ignore[return-value]


def _copyable(value: Any) -> bool:
    """Object references and empty attributes mean nothing outside their file; everything else travels."""
    if isinstance(value, (h5py.Reference, h5py.RegionReference, h5py.Empty)):
        return False
    dtype = getattr(value, "dtype", None)
    return dtype is None or h5py.check_dtype(ref=dtype) is None


def _read_attrs(obj: h5py.HLObject) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in obj.attrs:
        try:
            value = obj.attrs[name]
        except (OSError, TypeError, ValueError, KeyError):
            continue  # a type h5py cannot read (e.g. some vlen or reference kinds)
        if _copyable(value):
            out[name] = value
    return out


def _describe(name: str, ds: h5py.Dataset) -> str:
    return f"/{name} {tuple(ds.shape)} {ds.dtype}"


def _listing(datasets: Sequence[tuple[str, h5py.Dataset]]) -> str:
    items = [_describe(n, d) for n, d in datasets[:_LISTED]]
    if len(datasets) > _LISTED:
        items.append(f"and {len(datasets) - _LISTED} more")
    return ", ".join(items) if items else "none"


def _all_datasets(f: h5py.File) -> list[tuple[str, h5py.Dataset]]:
    found: list[tuple[str, h5py.Dataset]] = []
    f.visititems(lambda name, obj: found.append((name, obj)) if isinstance(obj, h5py.Dataset) else None)
    return sorted(found, key=lambda item: item[0])


def _is_volume(ds: h5py.Dataset) -> bool:
    return ds.dtype.kind in "fiub" and ds.ndim in (3, 4, 5)


def _pick_dataset(f: h5py.File, dataset: str | None, src: str) -> tuple[str, h5py.Dataset]:
    """The dataset asked for, or the file's only volume; otherwise an error that lists the choices."""
    if dataset:
        key = dataset.strip("/") or "/"
        obj = f.get(key)
        if isinstance(obj, h5py.Dataset):
            return key, obj
        if isinstance(obj, h5py.Group):
            inside = [(f"{key}/{n}", d) for n, d in _all_datasets(obj)] if key != "/" else _all_datasets(f)
            raise InputError(
                f"{dataset!r} is a group, not a dataset; datasets: {_listing(inside)}", source=src, param="dataset"
            )
        raise InputError(
            f"no dataset {dataset!r}; available: {_listing(_all_datasets(f))}", source=src, param="dataset"
        )
    datasets = _all_datasets(f)
    if len(datasets) == 1:
        return datasets[0]
    volumes = [(n, d) for n, d in datasets if _is_volume(d)]
    if len(volumes) == 1:
        return volumes[0]
    if not datasets:
        raise InputError("holds no datasets", source=src)
    raise InputError(
        f"holds {len(datasets)} datasets: {_listing(datasets)}; pass --dataset PATH to choose one", source=src
    )


def _find_spacing(ds: h5py.Dataset) -> tuple[str | None, Any, tuple[float, float, float] | None]:
    """The first spacing attribute on the dataset, then on each parent group up to the root."""
    obj: h5py.HLObject = ds
    while True:
        for name in SPACING_ATTRS:
            if name in obj.attrs:
                try:
                    value = obj.attrs[name]
                except (OSError, TypeError, ValueError):
                    continue
                spacing = spacing_from(value, ds.ndim)
                if spacing is not None:
                    return name, value, spacing
        if obj.name == "/":
            return None, None, None
        obj = obj.parent


class Hdf5Reader:
    """Reads boxes of one dataset; the file stays open (read-only) until `close`."""

    format = "hdf5"

    def __init__(self, path: Path, dataset: str | None = None) -> None:
        self.path = Path(path)
        src = str(path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise InputError(f"not a readable HDF5 file ({_reason(exc)})", source=src) from None
        try:
            name, ds = _pick_dataset(self._file, dataset, src)
            if ds.dtype.kind not in "fiub":
                raise InputError(f"dataset /{name} has dtype {ds.dtype}, which is not numeric", source=src)
            self.dataset = "/" + name
            self.shape = tuple(int(n) for n in ds.shape)
            self.dtype = ds.dtype.newbyteorder("=")
            self.chunks = None if ds.chunks is None else tuple(ds.chunks)
            # Converting during the read lets HDF5 swap bytes in place; torch refuses big-endian arrays.
            self._ds = ds if ds.dtype == self.dtype else ds.astype(self.dtype)
            attrs = _read_attrs(ds)
            spacing_name, spacing_value, spacing = _find_spacing(ds)
            if spacing_name is not None and spacing_name not in attrs:
                attrs[spacing_name] = spacing_value  # inherited from a group: the output dataset carries it
            affine = attrs.get("affine")
            affine = np.asarray(affine, dtype=np.float64) if _is_affine(affine) else None
            self.meta = VolumeMeta(spacing=spacing, affine=affine, attrs=attrs)
        except InputError:
            self._file.close()
            raise
        except (OSError, KeyError, RuntimeError) as exc:
            self._file.close()
            raise InputError(f"damaged HDF5 file ({_reason(exc)})", source=src) from None

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        try:
            return np.asarray(self._ds[index])
        except OSError as exc:
            raise InputError(f"cannot read {self.dataset} ({_reason(exc)})", source=str(self.path)) from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None  # type: ignore[assignment]


def _is_affine(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.shape == (4, 4) and value.dtype.kind in "fiu"


def _reason(exc: BaseException) -> str:
    """h5py's messages wrap HDF5's in boilerplate; keep the part a user can act on."""
    text = str(exc)
    if "(" in text and text.endswith(")"):
        text = text[text.rindex("(") + 1 : -1]
    return text or type(exc).__name__


def open_reader(path: Path, dataset: str | None = None) -> Hdf5Reader:
    return Hdf5Reader(path, dataset)


# ----------------------------------------------------------------------------------------- writing


def _layout_of(shape: Sequence[int], layout: Layout | str | None) -> Layout:
    if isinstance(layout, Layout):
        return layout
    return Layout(len(shape), layout or "channels_last")


def output_chunks(
    shape: tuple[int, ...], dtype: np.dtype, layout: Layout | str | None, options: dict[str, Any]
) -> tuple[int, ...]:
    """The output's chunk shape: `options["chunks"]` (D, H, W) or about 1 MiB of whole-channel voxels.

    Batch chunks hold one entry and channel chunks all channels, so a tile (all channels, one spatial
    box) maps onto whole chunks. Spatial extents are powers of two (<= 64) clipped to the shape.
    """
    lay = _layout_of(shape, layout)
    chunks = [1] * len(shape)
    if lay.channel_axis is not None:
        chunks[lay.channel_axis] = int(shape[lay.channel_axis])
    asked = options.get("chunks")
    if asked is not None:
        spatial = _parse_chunks(asked, len(shape))
        if len(spatial) == len(shape):
            return tuple(max(1, min(int(c), int(n))) for c, n in zip(spatial, shape))
    else:
        per_voxel = max(1, np.dtype(dtype).itemsize * lay.channels(shape))
        extents = lay.spatial_shape(shape)
        spatial, grew = [1, 1, 1], True
        while grew:
            grew = False
            for a in (2, 1, 0):  # width first: the contiguous axis in C order
                bigger = spatial[a] * 2
                if bigger > MAX_CHUNK or spatial[a] >= extents[a]:
                    continue
                trial = [min(c, n) for c, n in zip(spatial, extents)]
                trial[a] = min(bigger, extents[a])
                if math.prod(trial) * per_voxel <= CHUNK_BYTES:
                    spatial[a], grew = bigger, True
    for a, c in zip(lay.spatial_axes, spatial):
        chunks[a] = c
    return tuple(max(1, min(int(c), int(n))) for c, n in zip(chunks, shape))


def _parse_chunks(value: Any, ndim: int) -> tuple[int, ...]:
    """Three spatial extents (or one per array axis); one number means a cube."""
    if isinstance(value, str):
        value = value.replace("x", ",").split(",")
    items = [value] if isinstance(value, (int, np.integer)) else list(value)
    if len(items) == 1:
        items *= 3
    try:
        nums = tuple(int(v) for v in items)
    except (TypeError, ValueError):
        nums = ()
    if len(nums) not in (3, ndim) or any(n < 1 for n in nums):
        raise InputError(f"{value!r}: give three positive integers D,H,W", param="chunks")
    return nums


def spacing_value(original: Any, spacing: Sequence[float]) -> Any:
    """`spacing` in the form of `original`: same length, dtype and non-spatial entries."""
    arr = np.array(original).reshape(-1)
    pos = _spatial_positions(arr.size)
    if pos is None or arr.dtype.kind not in "fiu":
        return original  # not a form the reader understands: left as it was
    dtype = arr.dtype if arr.dtype.kind == "f" else np.float64
    if arr.size == 1:
        if len(set(spacing)) == 1:
            return np.asarray(spacing[0], dtype=dtype).reshape(np.shape(original))
        return np.asarray(spacing, dtype=dtype)  # no longer isotropic: one value per axis
    out = arr.astype(dtype)
    for p, v in zip(pos, spacing):
        out[p] = v
    return out


def _set_attr(attrs: h5py.AttributeManager, name: str, value: Any) -> bool:
    """Store one attribute; numpy unicode strings need HDF5's string type. False when HDF5 refuses it."""
    try:
        if isinstance(value, np.str_):
            value = str(value)
        if not isinstance(value, (str, bytes)):
            arr = np.asarray(value)
            if arr.dtype.kind == "U" or (arr.dtype.kind == "O" and all(isinstance(v, str) for v in arr.flat)):
                attrs.create(name, arr.astype(object), dtype=h5py.string_dtype())
                return True
        attrs[name] = value
        return True
    except (TypeError, ValueError, OSError, RuntimeError):
        return False  # e.g. an object HDF5 has no type for, or an attribute over 64 KiB


class Hdf5Writer:
    """Writes boxes into one chunked dataset; `flush` makes them durable (HDF5 flush, then fsync)."""

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
    ) -> None:
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.dataset = (dataset or DEFAULT_DATASET).strip("/") or DEFAULT_DATASET
        src = str(path)
        if resume:
            self._file, self._ds = self._reopen(src)
        else:
            level = int(compression_level)
            if not 0 <= level <= 9:
                raise InputError(f"{compression_level!r}: use 0 (none) to 9", param="compression_level")
            chunk_shape = output_chunks(self.shape, self.dtype, layout, {"chunks": chunks})
            try:
                self._file = h5py.File(self.path, "w")
            except OSError as exc:
                raise InputError(f"cannot create HDF5 file ({_reason(exc)})", source=src) from None
            try:
                self._ds = self._file.create_dataset(
                    self.dataset,
                    shape=self.shape,
                    dtype=self.dtype,
                    chunks=chunk_shape,
                    compression="gzip" if level else None,
                    compression_opts=level if level else None,
                    shuffle=bool(level),
                )
                self._write_meta(meta)
            except BaseException:
                self._file.close()
                raise
        self.chunks = tuple(self._ds.chunks) if self._ds.chunks else None

    def _reopen(self, src: str) -> tuple[h5py.File, h5py.Dataset]:
        try:
            f = h5py.File(self.path, "r+")
        except OSError as exc:
            raise InputError(
                f"partial output cannot be reopened ({_reason(exc)}); run without --resume to start over", source=src
            ) from None
        ds = f.get(self.dataset)
        if not isinstance(ds, h5py.Dataset) or ds.shape != self.shape or ds.dtype != self.dtype:
            found = f"{ds.shape} {ds.dtype}" if isinstance(ds, h5py.Dataset) else "no such dataset"
            f.close()
            raise InputError(
                f"partial output /{self.dataset} has {found}, expected {self.shape} {self.dtype}", source=src
            )
        return f, ds

    def _write_meta(self, meta: VolumeMeta) -> None:
        """Input attributes, then each spacing attribute rewritten with the new spacing, then the affine."""
        attrs = self._ds.attrs
        for name, value in meta.attrs.items():
            if name in SPACING_ATTRS and meta.spacing is not None:
                value = spacing_value(value, meta.spacing)
            _set_attr(attrs, name, value)
        if meta.spacing is not None and not any(name in meta.attrs for name in SPACING_ATTRS):
            attrs["spacing"] = np.asarray(meta.spacing, dtype=np.float64)
        if meta.affine is not None and not meta.affine_derived:
            attrs["affine"] = np.asarray(meta.affine, dtype=np.float64).reshape(4, 4)

    def write(self, index: tuple[slice, ...], data: np.ndarray) -> None:
        self._ds[index] = data

    def flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.id.get_vfd_handle())

    def close(self) -> None:
        """Close, then fsync: closing writes final metadata that must be on disk before the rename."""
        if self._file is None:
            return
        self._file.close()
        self._file = None  # type: ignore[assignment]
        fsync_path(self.path)


def create_writer(
    path: Path, shape: tuple[int, ...], dtype: np.dtype, meta: VolumeMeta, resume: bool = False, **options: Any
) -> Hdf5Writer:
    """Options: dataset, compression_level, chunks, layout (places channel and batch axes in the chunks)."""
    return construct_writer(Hdf5Writer, path, shape, dtype, meta, resume, options)
