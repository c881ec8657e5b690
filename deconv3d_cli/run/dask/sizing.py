"""Size a cluster run before there is a cluster: tasks, bytes per task, memory per worker, estimated time.

`--dry-run` with `--scheduler` (or `--input-shape` alone) plans the job exactly as the run would (the
same `prepare`, the same refusals), then times one full tile on this machine. The input may be
virtual (`--input-shape D,H,W[,C][:dtype]`): reads give zeros, and INPUT need not exist.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError
from ...io.base import VolumeMeta
from ..job import Job, LayerSource, prepare
from ..options import Options
from .cluster import parse_scheduler
from .output import refuse

# Scheduling cost of one task beyond its own work (submit, dispatch, result, journal), measured by
# benchmarks/dask_bench.py on a LocalCluster (1.2-1.6 ms); added to the time estimate.
TASK_OVERHEAD_S = 0.0015


class VirtualReader:
    """An input that exists only as a shape and dtype (`--input-shape`): reads give zeros."""

    format = "virtual"
    virtual = True  # no file behind it: prepare does not check the output's disk for a virtual plan
    chunks = None
    data_format = None
    missing_chunks = 0

    def __init__(self, path: Path, shape: Sequence[int], dtype: Any = "float32") -> None:
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.meta = VolumeMeta()

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        shape = [len(range(*s.indices(n))) for s, n in zip(index, self.shape)]
        return np.zeros(shape, self.dtype)

    def close(self) -> None:
        pass


def parse_input_shape(text: str) -> tuple[tuple[int, ...], str]:
    """'16384,16384,8192,1' or '512,512,512:uint16' -> (shape, dtype name)."""
    value, _, dtype = str(text).partition(":")
    try:
        shape = tuple(int(v) for v in value.replace("x", ",").split(",") if v.strip())
    except ValueError:
        shape = ()
    if len(shape) not in (3, 4, 5) or any(n < 1 for n in shape):
        raise InputError(f"{text!r}: give 3 to 5 positive lengths, e.g. 16384,16384,8192,1", param="input_shape")
    dtype = dtype.strip() or "float32"
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.kind not in "fiub":
        raise InputError(f"{text!r}: dtype {dtype!r} is not numeric (float32, uint16, ...)", param="input_shape")
    return shape, dt.name


def axis_slabs(plan: Any) -> list[list[int]]:
    """Per spatial axis, the input rows each tile position reads (tiles are a product of these)."""
    out = []
    for ax, t in zip(plan.axes, plan.tile_shape):
        out.append([ax.input_range(a, min(a + t, ax.out)).size for a in range(0, ax.out, t)])
    return out


def measure_tile(job: Job, repeats: int = 2) -> dict[str, Any]:
    """Seconds for one full tile on this machine (engine and copy to the output dtype; no storage I/O)."""
    import torch

    from ..engines import engine_for, settle
    from ..tiles import compute_tile

    before = torch.get_num_threads()
    engine = engine_for(job)
    try:
        settle(job, engine)
        plan = job.plan
        first = next(iter(plan.tiles()))
        # The largest tile (the first one is full-size unless the volume is smaller than a tile).
        sizes = [min(t, n) for t, n in zip(plan.tile_shape, plan.out_shape)]
        slabs = axis_slabs(plan)
        shape = (first.batch.stop - first.batch.start, job.channels, *(max(s) for s in slabs))
        slab = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        offsets = [ax.input_range(0, n).offset for ax, n in zip(plan.axes, sizes)]
        d, h, w = sizes
        tile = replace(first, out=(slice(0, d), slice(0, h), slice(0, w)), offsets=(offsets[0], offsets[1], offsets[2]))
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            compute_tile(job, engine, slab, tile)
            times.append(time.perf_counter() - t0)
        return {
            "seconds_per_tile": min(times[1:]),
            "torch_threads": torch.get_num_threads(),
            "engine_path": engine.path,
            "device": str(engine.device),
        }
    finally:
        torch.set_num_threads(before)


def dry_run(
    layer: LayerSource,
    input_path: Path,
    output_path: Path,
    opts: Options,
    input_shape: str | None = None,
    measure: bool = True,
) -> dict[str, Any]:
    """The plan and the cluster's sizing, without one."""
    workers = None
    if opts.cluster.scheduler:
        kind, value = parse_scheduler(opts.cluster.scheduler)
        workers = value if kind == "local" else None
    reader = None
    if input_shape is not None:
        shape, dtype = parse_input_shape(input_shape)
        reader = VirtualReader(Path(input_path), shape, dtype)
    job = prepare(layer, input_path, output_path, opts, reader=reader)
    try:
        if opts.cluster.scheduler:
            refuse(job)
        report = job.describe()
        report.update(status="planned", input_virtual=input_shape is not None)
        sizing = _sizing(job, opts, workers)
        if measure:
            timing = measure_tile(job)
            one = (timing["seconds_per_tile"] + TASK_OVERHEAD_S) * len(job.plan)
            sizing.update(timing)
            sizing["scheduler_overhead_s_per_task"] = TASK_OVERHEAD_S
            sizing["tile_voxels_per_s"] = round(sizing.pop("_write_voxels") / timing["seconds_per_tile"], 1)
            sizing["estimated_seconds_one_worker"] = round(one, 3)
            sizing["estimated_seconds"] = round(one / (workers or 1), 3)
        sizing.pop("_write_voxels", None)
        report["distributed"] = sizing
        return report
    finally:
        job.close()


def _sizing(job: Job, opts: Options, workers: int | None) -> dict[str, Any]:
    plan = job.plan
    slabs = axis_slabs(plan)
    batches = [min(b + plan.batch_step, plan.batch) - b for b in range(0, plan.batch, plan.batch_step)]
    in_item, out_item = job.reader.dtype.itemsize, job.out_dtype.itemsize
    read_task = max(batches) * job.channels * math.prod(max(s) for s in slabs) * in_item
    write_task = max(batches) * job.filters * math.prod(min(t, n) for t, n in zip(plan.tile_shape, plan.out_shape))
    read_total = plan.batch * job.channels * math.prod(sum(s) for s in slabs) * in_item
    return {
        "scheduler": opts.cluster.scheduler,
        "workers": workers,
        "threads_per_worker": 1,
        "tasks": len(plan),
        "bytes_read_per_task": int(read_task),
        "bytes_written_per_task": int(write_task * out_item),
        "bytes_read_total": int(read_total),
        "bytes_written_total": job.output_bytes,
        "peak_memory_per_worker_bytes": int(plan.tile_bytes()),
        "memory_limit_per_worker_bytes": int(opts.compute.memory_limit),
        "_write_voxels": write_task,
    }
