"""Facts about each file format, as records: the one place the rest of the tool learns what a format can do.

Runs check an output against these facts when the job is prepared, so `--dry-run` refuses exactly what
the run would refuse, before any engine or cluster starts, and names the target (never a partial file).
Nothing here imports a format's library: reading the facts costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

# Option names a writer takes, and the parameter that sets each (errors name it; the CLI shows its flag).
OPTION_PARAMS = {"compression_level": "compression_level", "chunks": "chunks", "zarr_format": "zarr_format"}
# The compression level of .h5, .nii.gz and .zarr output when none is given (gzip 1 as nibabel: most of
# the size saved at a fraction of level 6's time).
DEFAULT_COMPRESSION_LEVEL = 1


@dataclass(frozen=True)
class FormatFacts:
    name: str  # the format's module under io/ (npy, hdf5, nifti, zarr)
    label: str  # what a person calls it
    suffixes: tuple[str, ...]
    writer_options: tuple[str, ...]  # options its writer honours (others are refused, never ignored)
    float16: bool = True  # whether it can store float16 (NIfTI-1/2 have no code for it)
    datasets: bool = False  # holds named arrays (--dataset / --output-dataset)
    shared_writes: bool = False  # concurrent processes may write disjoint regions of one output (Dask tiles)
    random_access: bool = True  # any box can be read without decompressing the whole file
    compressed: bool = False  # the output's size on disk is not known before it is written
    directory: bool = False  # the output is a folder (a store)
    chunked: bool = False  # stores chunks (tiles are aligned to them; concurrent writers must not share one)
    extra: str | None = None  # the pip extra its library comes from, when optional
    order: tuple[int, int, int] = (0, 1, 2)  # spatial axes of the array, slowest to fastest in the file

    @property
    def extension(self) -> str:
        return self.suffixes[0]


NPY = FormatFacts("npy", ".npy", (".npy",), (), shared_writes=True)
HDF5 = FormatFacts("hdf5", "HDF5", (".h5", ".hdf5", ".hdf", ".he5"), ("compression_level", "chunks"), datasets=True,
                   compressed=True, chunked=True)  # fmt: skip
# NIfTI arrays are (x, y, z[, c]) with x varying fastest in the file.
NIFTI = FormatFacts("nifti", "NIfTI", (".nii",), (), float16=False, order=(2, 1, 0))
NIFTI_GZ = FormatFacts("nifti", "gzipped NIfTI", (".nii.gz",), ("compression_level",), float16=False,
                       random_access=False, compressed=True, order=(2, 1, 0))  # fmt: skip
ZARR = FormatFacts("zarr", "Zarr", (".zarr",), ("compression_level", "chunks", "zarr_format"), datasets=True,
                   shared_writes=True, compressed=True, directory=True, chunked=True, extra="zarr")  # fmt: skip
ALL = (NPY, HDF5, NIFTI_GZ, NIFTI, ZARR)  # .nii.gz before .nii: the longer suffix decides

# --output-format names (with -O) and the suffix each gives.
OUTPUT_FORMATS = {"npy": ".npy", "h5": ".h5", "hdf5": ".h5", "nii": ".nii", "nii.gz": ".nii.gz", "zarr": ".zarr"}


def suffixes() -> list[str]:
    return [s for f in ALL for s in f.suffixes]


def split_name(path: Path | str) -> tuple[str, str]:
    """('scan', '.nii.gz') for scan.nii.gz: a format's whole suffix counts as one."""
    name = Path(path).name
    for suffix in sorted(suffixes(), key=len, reverse=True):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix) :]
    return Path(name).stem, Path(name).suffix


def facts_of(path: Path | str) -> FormatFacts:
    """The format of `path`, by its name (contents are checked by the reader)."""
    name = str(path).lower().rstrip("/")
    for facts in ALL:
        if name.endswith(facts.suffixes):
            return facts
    raise InputError(f"unknown file type; supported: {', '.join(suffixes())}", source=str(path))


def extension_for(output_format: str) -> str:
    key = output_format.lower().lstrip(".")
    if key not in OUTPUT_FORMATS:
        raise InputError(f"{output_format!r}; use one of {', '.join(OUTPUT_FORMATS)}", param="output_format")
    return OUTPUT_FORMATS[key]


def check_output(
    facts: FormatFacts, target: Path, dtype: np.dtype, options: dict[str, Any], dataset: str | None
) -> None:
    """Refuse, naming the target, what this format's writer would refuse or silently ignore."""
    for key in options:
        if key not in facts.writer_options:
            takers = [f.label for f in ALL if key in f.writer_options]
            raise InputError(
                f"{key} applies to {' and '.join(_unique(takers))} outputs, not {facts.label}",
                source=str(target),
                param=OPTION_PARAMS.get(key, key),
            )
    if dataset and not facts.datasets:
        raise InputError(
            f"a {facts.label} file holds one array: the output dataset applies to HDF5 and Zarr outputs",
            source=str(target),
            param="output_dataset",
        )
    if dtype.kind not in "fiu":
        raise InputError(f"{facts.label} outputs hold numbers, not {dtype}", source=str(target), param="output_dtype")
    if dtype == np.float16 and not facts.float16:
        raise InputError(
            f"{facts.label} has no float16 type; use float32, float64 or an integer type",
            source=str(target),
            param="output_dtype",
        )


def check_input_dataset(facts: FormatFacts, source: Path, dataset: str | None) -> None:
    if dataset and not facts.datasets:
        raise InputError(
            f"a {facts.label} file holds one array: the dataset option applies to HDF5 and Zarr inputs",
            source=str(source),
            param="dataset",
        )


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
