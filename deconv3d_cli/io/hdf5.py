"""HDF5 through h5py: one dataset in, one chunked, compressed dataset out, geometry kept in attributes.

HDF5 files often hold several arrays, so the input dataset is named with `--dataset` unless the file
holds exactly one volume. Spacing is not standardised in HDF5; the usual attribute names
(`SPACING_ATTRS`, io/spacing.py) are searched on the dataset, then on its parent groups, and each one
the input had is written back on the output with the new (stride-divided) spacing, in the same form.

Inputs are refused at open, with one line, when they cannot be read as a volume exactly: data kept
in other files (io/hdf5_outside.py; `allow_external` reads it), a filter this HDF5 cannot decode, a
null or scalar dataspace. Chunks never written read as the fill value, as HDF5 says; the reader counts
the distinct ones it meets in `missing_chunks`, and refuses to go on once the file has been cut short or
replaced (io/hdf5_watch.py: HDF5 would read zeros past its end). The writer is io/hdf5_writer.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import InputError
from .base import VolumeMeta
from .chunking import output_chunks
from .hdf5_outside import check_filters, check_outside, external_links
from .hdf5_watch import ChunkMap, FileWatch
from .hdf5_writer import DEFAULT_DATASET, Hdf5Writer, create_writer, errno_of, output_size, reason
from .spacing import SPACING_ATTRS, spacing_from, spacing_value

_LISTED = 20  # datasets named in an error message before "and N more"


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
    return ds.dtype.kind in "fiub" and ds.shape is not None and len(ds.shape) in (3, 4, 5)


def _pick_dataset(f: h5py.File, dataset: str | None, src: str, allow: bool) -> tuple[str, h5py.Dataset]:
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
        return _only_linked(f, src, allow)
    raise InputError(
        f"holds {len(datasets)} datasets: {_listing(datasets)}; pass --dataset PATH to choose one", source=src
    )


def _only_linked(f: h5py.File, src: str, allow: bool) -> tuple[str, h5py.Dataset]:
    """A file with no datasets of its own: its one external link, when external data is allowed."""
    links = external_links(f)
    if not links:
        raise InputError("holds no datasets", source=src)
    named = ", ".join(f"{name} -> {file}:{path}" for name, file, path in links[:_LISTED])
    if not allow:
        raise InputError(
            f"holds no datasets of its own, only external link(s) to other files ({named}); reading another "
            "file is refused unless external data is allowed",
            source=src,
            param="allow_external",
        )
    if len(links) > 1:
        raise InputError(f"holds {len(links)} external links ({named}); pass --dataset PATH to choose one", source=src)
    name = links[0][0].strip("/")
    try:
        obj = f.get(name)
    except (KeyError, OSError) as exc:
        raise InputError(f"external link {named} cannot be followed ({reason(exc)})", source=src) from None
    if not isinstance(obj, h5py.Dataset):
        raise InputError(f"external link {named} does not lead to a dataset", source=src)
    return name, obj


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

    def __init__(self, path: Path, dataset: str | None = None, allow_external: bool = False) -> None:
        self.path = Path(path)
        src = str(path)
        try:
            self._watch = FileWatch(self.path)
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise InputError(f"not a readable HDF5 file ({reason(exc)})", source=src) from None
        try:
            name, ds = _pick_dataset(self._file, dataset, src, allow_external)
            _refuse_shapeless(ds, name, src)
            if ds.dtype.kind not in "fiub":
                raise InputError(f"dataset /{name} has dtype {ds.dtype}, which is not numeric", source=src)
            check_outside(self._file, ds, name, src, allow_external)
            check_filters(ds, name, src)
            self.dataset = "/" + name
            self.shape = tuple(int(n) for n in ds.shape)
            self.dtype = ds.dtype.newbyteorder("=")
            self.chunks = None if ds.chunks is None else tuple(ds.chunks)
            self._raw = ds
            # Converting during the read lets HDF5 swap bytes in place; torch refuses big-endian arrays.
            self._ds = ds if ds.dtype == self.dtype else ds.astype(self.dtype)
            self._chunk_map: ChunkMap | None = None  # made at the first read: inspect never needs it
            attrs = _read_attrs(ds)
            spacing_name, spacing_attr, spacing = _find_spacing(ds)
            if spacing_name is not None and spacing_name not in attrs:
                attrs[spacing_name] = spacing_attr  # inherited from a group: the output dataset carries it
            affine = attrs.get("affine")
            affine = np.asarray(affine, dtype=np.float64) if _is_affine(affine) else None
            self.meta = VolumeMeta(spacing=spacing, affine=affine, attrs=attrs)
        except InputError:
            self._file.close()
            raise
        except (OSError, KeyError, RuntimeError, TypeError, ValueError) as exc:
            self._file.close()
            raise InputError(f"damaged HDF5 file ({reason(exc)})", source=src) from None

    @property
    def missing_chunks(self) -> int:
        """Distinct chunks that reads met unwritten (they read as the dataset's fill value)."""
        return 0 if self._chunk_map is None else self._chunk_map.missing

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        try:
            if self.chunks is not None:
                if self._chunk_map is None:
                    self._chunk_map = ChunkMap(self._raw, self.shape, self.chunks)
                self._chunk_map.meet(index)
            data = np.asarray(self._ds[index])
        except OSError as exc:
            self._watch.check()  # a file cut short is the cause to name, not HDF5's symptom
            raise InputError(f"cannot read {self.dataset} ({reason(exc)})", source=str(self.path)) from None
        self._watch.check()  # after the read: what it returned came from the whole file
        return data

    def close(self) -> None:
        if self._file is not None:
            self._ds = self._raw = None  # an external file closes with them
            self._file.close()
            self._file = None


def _refuse_shapeless(ds: h5py.Dataset, name: str, src: str) -> None:
    """A null dataspace holds no values at all, a scalar one a single value: neither is a volume."""
    if ds.shape is None:
        raise InputError(
            f"dataset /{name} has a null dataspace (an empty HDF5 dataset, no values at all); give a 3-D to "
            "5-D dataset",
            source=src,
            field="shape",
        )
    if len(ds.shape) == 0:
        raise InputError(
            f"dataset /{name} is a scalar (one value); give a 3-D to 5-D dataset", source=src, field="shape"
        )


def _is_affine(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.shape == (4, 4) and value.dtype.kind in "fiu"


def open_reader(path: Path, dataset: str | None = None, allow_external: bool = False) -> Hdf5Reader:
    return Hdf5Reader(path, dataset, allow_external=allow_external)


__all__ = [
    "DEFAULT_DATASET",
    "SPACING_ATTRS",
    "Hdf5Reader",
    "Hdf5Writer",
    "create_writer",
    "errno_of",
    "open_reader",
    "output_chunks",
    "output_size",
    "spacing_from",
    "spacing_value",
]
