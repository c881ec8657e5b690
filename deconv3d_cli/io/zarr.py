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

Hostile or damaged stores (io/zarr_store.py): metadata files and chunks must be regular files inside
the store (a FIFO would block, a symlink could read another file), a chunk that does not decode is an
error naming it, and absent chunks, which read as the fill value as the Zarr spec says, are counted in
the reader's `missing_chunks`. Chunk shapes with a zero extent are refused at open.

Memory: boxes are read and written one chunk at a time (zarr itself would decode or encode up to
`async.concurrency` chunks at once, each with its buffers), so a tile costs its own size plus one chunk.

Durability: see io/zarr_writer.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..geometry.layout import CHANNELS_FIRST
from .atomic import PARTIAL_PREFIX
from .base import Destination, VolumeMeta
from .chunking import chunk_boxes, output_chunks
from .spacing import SPACING_ATTRS, spacing_from
from .zarr_ngff import ZarrHeader, axes_of, multiscales, ngff_geometry
from .zarr_store import check_tree, chunk_state, decode_error, describe_error, sweep

EXTRA = "pip install 'deconv3d-cli[dask]'"


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


def zarr_module(path: Path | str | None = None) -> Any:
    """zarr itself, or the refusal naming the file that needed it (the target, not its partial)."""
    name = None if path is None else Path(path).name.removeprefix(PARTIAL_PREFIX)
    return require_extra("zarr", "Zarr" if name is None else f"{name}: Zarr")


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


def _geometry(
    ms: dict[str, Any] | None, name: str, ndim: int, attrs: dict[str, Any]
) -> tuple[tuple[float, float, float] | None, np.ndarray | None]:
    """(spacing, affine): NGFF scale and translation first, then a spacing attribute, then an `affine` one."""
    spacing: tuple[float, float, float] | None = None
    affine: np.ndarray | None = None
    geometry = ngff_geometry(ms, name, ndim) if ms is not None else None
    if geometry is not None:
        scale, shift = (v[-3:] for v in geometry)
        if all(math.isfinite(v) and v > 0 for v in scale) and all(math.isfinite(v) for v in shift):
            spacing = (float(scale[0]), float(scale[1]), float(scale[2]))
            affine = np.eye(4)
            affine[[0, 1, 2], [0, 1, 2]] = scale
            affine[:3, 3] = shift
    if spacing is None:
        for key in SPACING_ATTRS:
            if key in attrs:
                spacing = spacing_from(attrs[key], ndim)
                if spacing is not None:
                    break
    given = np.asarray(attrs.get("affine", []), dtype=np.float64) if "affine" in attrs else None
    if given is not None and given.shape == (4, 4) and np.isfinite(given).all():
        affine = given
    return spacing, affine


class ZarrReader:
    """Reads boxes of one Zarr array; NGFF axes decide the layout, NGFF transforms the geometry."""

    format = "zarr"

    def __init__(self, path: Path, dataset: str | None = None, allow_external: bool = False) -> None:
        zarr = zarr_module(path)
        self.path = Path(path)
        self.allow_external = allow_external
        src = str(path)
        check_tree(self.path, src, allow_external)
        try:
            root = zarr.open(store=str(self.path), mode="r")
            group_attrs = {} if _is_array(root) else dict(root.attrs)
            ms = multiscales(group_attrs)
            name, arr = _pick_array(root, dataset, ms, src)
            dtype = np.dtype(arr.dtype)
            shards = getattr(arr, "shards", None)
            chunks, grid = tuple(int(c) for c in arr.chunks), tuple(int(c) for c in (shards or arr.chunks))
            attrs = {k: v for k, v in dict(arr.attrs).items()}
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - zarr raises many types for a store it cannot parse
            raise InputError(f"not a readable Zarr store ({describe_error(exc)})", source=src) from None
        if dtype.kind not in "fiub":
            raise InputError(f"array /{name} has dtype {dtype}, which is not numeric", source=src)
        if any(c < 1 for c in chunks + grid):
            raise InputError(
                f"array /{name} has chunk shape {chunks}: every extent must be >= 1; the metadata is damaged",
                source=src,
                field="chunks",
            )
        self._arr = arr
        self.dataset = "/" + name if name else None
        self.shape = tuple(int(n) for n in arr.shape)
        self.dtype = dtype.newbyteorder("=")
        self.chunks = chunks
        self._grid = grid  # the stored unit: a shard when the array is sharded, else the chunk
        self._store_root = Path(str(arr.store.root))
        self._missing: set[tuple[int, ...]] = set()
        self.data_format: str | None = None
        axes = axes_of(ms, len(self.shape)) if ms is not None else None
        if axes is not None:
            self.data_format = self._declared_layout(axes, src)
        spacing, affine = _geometry(ms if axes is not None else None, name, len(self.shape), attrs)
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

    @property
    def missing_chunks(self) -> int:
        """Distinct stored chunks (shards, when sharded) that reads met absent: they read as the fill value."""
        return len(self._missing)

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        """The box, one chunk at a time: zarr would decode up to `async.concurrency` chunks at once.

        Each chunk's file is looked at first: absent ones are counted, anything but a regular file
        is refused, and one that does not decode is an error naming it.
        """
        boxes = chunk_boxes(index, self.shape, self.chunks)
        out = np.empty([len(range(*s.indices(n))) for s, n in zip(index, self.shape)], self.dtype)
        for coords, box, sub in boxes:
            stored = tuple(k * c // g for k, c, g in zip(coords, self.chunks, self._grid))
            key = self._arr.metadata.encode_chunk_key(stored)
            path = self._store_root / self._arr.path / key if self._arr.path else self._store_root / key
            if not chunk_state(path, self._store_root, key, str(self.path), self.allow_external):
                self._missing.add(stored)
            try:
                out[sub] = self._arr[box]
            except Exception as exc:  # noqa: BLE001 - codecs raise RuntimeError, ValueError, ...
                raise decode_error(key, exc, str(self.path)) from None
        return out

    def close(self) -> None:
        self._arr = None


def open_reader(path: Path, dataset: str | None = None, allow_external: bool = False, **hints: object) -> ZarrReader:
    return ZarrReader(path, dataset, allow_external=allow_external)


def create_writer(dest: Destination, **options: Any) -> Any:
    """The Zarr writer (io/zarr_writer.py); options: dataset, compression_level, chunks, layout, zarr_format."""
    from .zarr_writer import create_writer as create

    return create(dest, **options)


def output_size(shape: tuple[int, ...], dtype: np.dtype, layout: Any, options: dict[str, Any]) -> tuple[int, bool]:
    """Zarr does not store chunks that hold only the fill value: no size is certain (io.check_space)."""
    return 0, True


__all__ = ["ZarrHeader", "ZarrReader", "create_writer", "open_reader", "output_chunks", "require_extra", "sweep"]
