"""HDF5 datasets whose values are not all in the file itself, and filters this h5py cannot decode.

A small HDF5 file may point anywhere: external raw storage (`H5Pset_external`: any byte range of any
file, the password database included), an external link to a dataset of another file, a virtual
dataset (VDS) assembled from other files. Reading such a file as a volume silently reads those files,
and a virtual dataset whose source is missing silently gives its fill value. So by default every one
of them is refused with one line; `allow_external=True` (the CLI's `--allow-external-data`) reads
them, and then a virtual dataset's missing source (file or dataset) is still an error naming it.

A dataset compressed with a filter that this HDF5 library has no plugin for (LZ4, Blosc, Zstd, ...)
fails at the first read with a message about plugin folders; it is refused at open instead, naming the
filter and what would work.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py

from ..errors import InputError

# Registered filter ids (https://github.com/HDFGroup/hdf5_plugins/blob/master/docs/RegisteredFilterPlugins.md)
FILTER_NAMES = {
    305: "LZO",
    307: "BZIP2",
    32000: "LZF",
    32001: "Blosc",
    32004: "LZ4",
    32008: "Bitshuffle",
    32013: "ZFP",
    32015: "Zstandard",
    32017: "SZ",
    32024: "SZ3",
    32026: "Blosc2",
}
ALLOW = "allow_external"  # the reader parameter that lets external data be read (--allow-external-data)


def external_links(f: h5py.File) -> list[tuple[str, str, str]]:
    """(link name, target file, target path) of every external link reachable by hard links."""
    found: list[tuple[str, str, str]] = []

    def visit(name: str, link: Any) -> None:
        if isinstance(link, h5py.ExternalLink):
            found.append(("/" + name, link.filename, link.path))

    f.visititems_links(visit)
    return sorted(found)


def _same_file(ds: h5py.Dataset, f: h5py.File) -> bool:
    return os.path.realpath(ds.file.filename) == os.path.realpath(f.filename)


def check_outside(f: h5py.File, ds: h5py.Dataset, name: str, src: str, allow: bool) -> None:
    """Refuse a dataset that reads other files (unless `allow`); with `allow`, refuse a VDS whose sources
    are missing instead of reading their fill value."""
    where = f"dataset /{name}"
    if not _same_file(ds, f):
        if not allow:
            raise InputError(
                f"{where} is an external link to {ds.file.filename}:{ds.name}; reading another file is "
                "refused unless external data is allowed",
                source=src,
                param=ALLOW,
            )
    external = ds.external
    if external and not allow:
        files = ", ".join(sorted({str(e[0]) for e in external}))
        raise InputError(
            f"{where} keeps its values in raw file(s) outside the HDF5 file ({files}); refused unless external "
            "data is allowed",
            source=src,
            param=ALLOW,
        )
    if ds.is_virtual:
        sources = ds.virtual_sources()
        outside = sorted({s.file_name for s in sources if s.file_name != "."})
        if outside and not allow:
            raise InputError(
                f"{where} is a virtual dataset assembled from other files ({', '.join(outside)}); refused "
                "unless external data is allowed",
                source=src,
                param=ALLOW,
            )
        for s in sources:
            _check_source(f, ds, s.file_name, s.dset_name, src, where)


def _check_source(f: h5py.File, ds: h5py.Dataset, file_name: str, dset_name: str, src: str, where: str) -> None:
    """A virtual dataset's source must exist: HDF5 would read a missing one as the fill value."""
    if file_name == "." or "%" in file_name:  # the same file; or a printf-style pattern HDF5 expands
        if file_name == "." and not isinstance(ds.file.get(dset_name), h5py.Dataset):
            raise InputError(f"{where}: its virtual source {dset_name} does not exist in the file", source=src)
        return
    base = Path(ds.file.filename).resolve().parent
    prefix = os.environ.get("HDF5_VDS_PREFIX")
    candidates = [Path(file_name)] if os.path.isabs(file_name) else [base / file_name, Path.cwd() / file_name]
    if prefix and not os.path.isabs(file_name):
        candidates.insert(0, Path(prefix) / file_name)
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise InputError(
            f"{where}: its virtual source file {file_name} is missing; it would read as the fill value. "
            "Restore the file or give the data without it",
            source=src,
        )
    try:
        with h5py.File(found, "r") as other:
            present = isinstance(other.get(dset_name), h5py.Dataset)
    except OSError:
        present = False
    if not present:
        raise InputError(
            f"{where}: its virtual source {file_name}:{dset_name} is missing or unreadable; it would read as "
            "the fill value",
            source=src,
        )


def check_filters(ds: h5py.Dataset, name: str, src: str) -> None:
    """Refuse a dataset compressed with a filter this HDF5 build cannot decode, naming it."""
    try:
        dcpl = ds.id.get_create_plist()
        codes = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]
    except Exception:  # noqa: BLE001 - a pipeline h5py cannot describe: the read will say
        return
    for fid in codes:
        if not h5py.h5z.filter_avail(fid):
            label = FILTER_NAMES.get(fid, "an unregistered filter")
            raise InputError(
                f"dataset /{name} is compressed with HDF5 filter {fid} ({label}), which this HDF5 library "
                "cannot decode; install that filter's HDF5 plugin (and set HDF5_PLUGIN_PATH to its folder), "
                "or rewrite the file with gzip (h5repack -f GZIP=4)",
                source=src,
            )
