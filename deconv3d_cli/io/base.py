"""The small protocol every format implements, so the pipeline never needs to know the format.

A reader exposes the stored array's shape and dtype and reads boxes of it; a writer receives boxes of
the output and makes them durable on `flush`. Geometry travels beside the data as `VolumeMeta`.
"""

from __future__ import annotations

import inspect
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import InputError


class PartialUnusable(InputError):
    """A partial output left by a killed run cannot be reopened for `resume`: start it over.

    Raised by `create_writer(..., resume=True)` only, so a run core can catch exactly this (and not a
    refusal of the user's input) and begin the output afresh.
    """


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def kind_of(mode: int) -> str:
    """'a directory', 'a FIFO (named pipe)', ... for a stat mode that is not a regular file."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def require_regular(path: Path, what: str) -> os.stat_result:
    """The file's stat, after refusing anything but a regular file (a FIFO would block the read forever)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError("no such file", source=str(path)) from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", source=str(path)) from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"is {kind_of(st.st_mode)}, not {what}; give a regular file", source=str(path))
    return st


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


@dataclass(frozen=True)
class Destination:
    """The output a writer makes: where, of what shape and type, with what geometry, fresh or resumed.

    Every format's writer needs these same five facts; they are gathered here once, by
    `io.create_writer`, and handed on whole, so that no writer, format module or `construct_writer`
    repeats the list. Each writer's own options (dataset, compression, chunks, ...) stay its keywords.
    """

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    meta: VolumeMeta
    resume: bool = False  # reopen the partial a killed run left, instead of creating the output afresh


def construct_writer(cls: type, dest: Destination, options: dict) -> Any:
    """A writer from the one options dict the pipeline hands every format.

    io.formats.check_output has already refused what the format cannot honour; here each writer takes
    the keywords its constructor names, and an option left unset (None) keeps the writer's default.
    """
    accepted = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in options.items() if k in accepted and v is not None}
    return cls(dest, **kwargs)


class Reader(Protocol):
    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...] | None
    meta: VolumeMeta
    format: str
    # Distinct stored chunks that reads met absent (they read as the fill value, as the format says);
    # always 0 for formats without chunks. Grows as reads go on: read it after the last read.
    missing_chunks: int

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
