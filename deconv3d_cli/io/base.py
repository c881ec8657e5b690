"""The small protocol every format implements, so the pipeline never needs to know the format.

A reader exposes the stored array's shape and dtype and reads boxes of it; a writer receives boxes of
the output and makes them durable on `flush`. Geometry travels beside the data as `VolumeMeta`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import InputError


@dataclass
class VolumeMeta:
    """What a format knows about where the voxels are; all optional."""

    spacing: tuple[float, float, float] | None = None
    affine: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    header: Any = None
    # True when the input had no affine and this one was built from its spacing (formats that store
    # affines only by choice, like HDF5, then leave it out; NIfTI needs one regardless).
    affine_derived: bool = False


def construct_writer(
    cls: type, path: Path, shape: tuple[int, ...], dtype: Any, meta: VolumeMeta, resume: bool, options: dict
) -> Any:
    """A writer from the one options dict the pipeline hands every format.

    io.formats.check_output has already refused what the format cannot honour; here each writer takes
    the keywords its constructor names, and an option left unset (None) keeps the writer's default.
    """
    accepted = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in options.items() if k in accepted and v is not None}
    return cls(path, shape, dtype, meta, resume=resume, **kwargs)


class Reader(Protocol):
    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...] | None
    meta: VolumeMeta
    format: str

    def read(self, index: tuple[slice, ...]) -> np.ndarray: ...

    def close(self) -> None: ...


class Writer(Protocol):
    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...] | None

    def write(self, index: tuple[slice, ...], data: np.ndarray) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class PartialUnusable(InputError):
    """A partial output that cannot be reopened for `--resume` (killed before its format's metadata was
    durable, say): the run starts over instead, with a note."""
