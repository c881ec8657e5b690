"""The three steps of one tile, the only place they are written.

The threaded runner (local.py) runs them on its reader thread, the calling thread and its writer
thread; a Dask task (dask/tasks.py) runs `process_tile` in one go. `store` turns the engine's float
tile into the output's dtype: integers are rounded and clipped, and what that changed is counted
(clipped voxels, NaN voxels, which become 0, and the largest rounding error).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..geometry import boundary
from ..geometry.tiling import Tile

if TYPE_CHECKING:
    from ..engine.activity import ActivityAccumulator
    from .job import Job


@dataclass
class Counts:
    """What storing tiles in the output dtype changed, summed over tiles."""

    clipped: int = 0  # values outside the integer type's range, clipped to it
    nan: int = 0  # NaN values stored as 0 in an integer type
    rounding: float = 0.0  # largest |value - stored value| (integer outputs), in the output's units

    def add(self, other: Counts) -> None:
        self.clipped += other.clipped
        self.nan += other.nan
        self.rounding = max(self.rounding, other.rounding)

    def as_dict(self) -> dict[str, Any]:
        return {"clipped_voxels": self.clipped, "nan_voxels": self.nan, "max_rounding_error": self.rounding}


def read_tile(job: Job, reader: Any, tile: Tile) -> np.ndarray:
    """The input slab of `tile` as (N, C, D, H, W), boundary extension included."""
    raw = boundary.read_slab(reader.read, job.in_layout, tile.src, tile.batch, job.plan.axes, job.boundary)
    return job.in_layout.to_ncdhw(raw)


def store(y: Any, host: np.ndarray, transfers: Any = None, scaling: tuple[float, float] | None = None) -> Counts:
    """Copy the tile `y` (torch) into `host` in its dtype; integers are rounded and clipped, and counted.

    `scaling` (slope, intercept): the output stores (value - intercept) / slope, as NIfTI's scl_slope does.
    With CUDA `transfers`, a float tile's copy is started asynchronously (the writer waits for it).
    """
    import torch

    if transfers is not None and scaling is None and transfers.download(y, host):
        return Counts()
    if host.dtype.kind == "f" and scaling is None:
        torch.from_numpy(host).copy_(y)
        return Counts()
    from ..engine import to_numpy

    values = to_numpy(y)
    slope, intercept = scaling or (1.0, 0.0)
    if scaling is not None:  # in float64: a float32 quotient could round a voxel to the wrong integer
        values = (values.astype(np.float64) - intercept) / slope
    if host.dtype.kind == "f":
        np.copyto(host, values, casting="unsafe")
        return Counts()
    info = np.iinfo(host.dtype)
    nan = np.isnan(values)
    counts = Counts(nan=int(np.count_nonzero(nan)))
    if counts.nan:
        values = np.where(nan, 0, values)
    rounded = np.rint(values)
    outside = (rounded < info.min) | (rounded > info.max)
    counts.clipped = int(np.count_nonzero(outside))
    error = np.abs(rounded - values)
    if counts.clipped:
        error[outside] = 0
        np.clip(rounded, info.min, info.max, out=rounded)
    counts.rounding = float(error.max(initial=0.0)) * abs(slope)
    np.copyto(host, rounded, casting="unsafe")
    return counts


def compute_tile(
    job: Job,
    engine: Any,
    slab: Any,
    tile: Tile,
    alloc: Callable[[tuple[int, ...], Any], np.ndarray] | None = None,
    activity: ActivityAccumulator | None = None,
    transfers: Any = None,
) -> tuple[np.ndarray, Counts]:
    """The output tile in the stored dtype and axis order, and what storing it changed.

    `alloc(shape, y)` gives the host array to fill for the tile `y` (the local runner's recycled
    buffers, laid out like `y` when that is the writer's file order); a fresh C-ordered one by default.
    `activity` accumulates the spec's activity_regularizer over the computed tiles.
    """
    filters = job.filters
    y = engine.compute_tile(slab, tile).permute(job.in_layout.ncdhw_order(filters))
    if activity is not None:
        activity.add(y)
    # One compact array in the stored order (torch's copy is multi-threaded); the slab's uncropped
    # output is freed when this returns, before the next tile.
    host = np.empty(tuple(y.shape), job.out_dtype) if alloc is None else alloc(tuple(y.shape), y)
    counts = store(y, host, transfers, job.out_scaling)
    return job.in_layout.squeeze_ncdhw(host, filters), counts


def write_tile(job: Job, writer: Any, tile: Tile, data: np.ndarray) -> None:
    writer.write(job.out_layout.region(tile.out, tile.batch), data)


def process_tile(
    job: Job, reader: Any, writer: Any, engine: Any, tile: Tile, activity: ActivityAccumulator | None = None
) -> Counts:
    """Read, compute and write one tile in the calling thread."""
    slab = read_tile(job, reader, tile)
    data, counts = compute_tile(job, engine, slab, tile, activity=activity)
    del slab
    write_tile(job, writer, tile, data)
    return counts
