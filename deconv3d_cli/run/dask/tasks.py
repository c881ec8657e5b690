"""What runs on a Dask worker: the formulation decision, one tile task, one whole-file task.

Each task opens the input itself (read-only, so HDF5 files are safe to share between processes),
reads its slab, computes, writes its own region into the partial output, makes it durable and
returns; the client journals it. Engines are built once per worker process and kept (a few layers).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...io import formats
from ..engines import cpu_threads, engine_for, set_threads, settle
from ..job import Job
from ..tiles import Counts, process_tile

_ENGINES: dict[tuple, Any] = {}  # per worker process: engines by layer, channels, device, precision
_ENGINE_CACHE = 4
_WARM: set[int] = set()
_BASE: list[int] = []  # this worker's resident memory before its first tile (imports, engine, open files)


@dataclass
class TaskContext:
    """What every tile task of one output needs; sent to the workers once per output."""

    job: Job  # planned, without its reader
    partial: Path
    engine_path: str  # the formulation every task uses (decided once, see decide)


def rss() -> tuple[int, int]:
    """(resident, peak resident) bytes of this process; Linux's VmRSS/VmHWM, else ru_maxrss for both."""
    try:
        with open("/proc/self/status") as f:
            values = {
                k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f) if k in ("VmRSS", "VmHWM")
            }
        return values["VmRSS"], values["VmHWM"]
    except (OSError, KeyError, ValueError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        return peak, peak


def base_rss() -> int:
    """The footprint tiles add to: measured once per worker process, just before its first tile.

    The engine keeps freed memory for reuse (engine/allocator.py), so resident memory never shrinks
    after a tile; the worker's lifetime peak above this base is the most any of its tiles needed at once.
    """
    if not _BASE:
        _BASE.append(rss()[0])
    return _BASE[0]


def _engine(job: Job) -> Any:
    while len(_ENGINES) >= _ENGINE_CACHE:
        _ENGINES.pop(next(iter(_ENGINES)))
    return engine_for(job, _ENGINES)


def decide(job: Job) -> dict[str, Any]:
    """On a worker: the formulation and thread count every task of this output uses (engines.settle,
    the same policy as a local run: the journal's, the named one, or the machine's recorded decision)."""
    engine = _engine(job)
    decision = settle(job, engine)
    if hasattr(engine, "forced"):
        engine.forced = None
    return decision


def _one_zarr_thread() -> None:
    """In a worker process: zarr's codec thread pool with one thread. Each pool thread keeps its own
    malloc arena of chunk buffers (a few MiB each, one thread per core by default); the worker's task
    threads are its parallelism. Takes effect when zarr first starts its pool in this process."""
    import zarr

    if zarr.config.get("threading.max_workers") is None:
        zarr.config.set({"threading.max_workers": 1})


def run_tile(ctx: TaskContext, tiles: Sequence[Any]) -> dict[str, Any]:
    """A Dask task: read, compute and write `tiles` of the plan into the partial output, durably."""
    import torch

    from ...engine.activity import ActivityAccumulator

    job = ctx.job
    started = time.perf_counter()
    activity = ActivityAccumulator(job.activity_regularizer)
    engine = _engine(job)
    if engine.device.type == "cpu":
        set_threads(cpu_threads(job, ctx.engine_path))
    if hasattr(engine, "force_path") and engine.forced != ctx.engine_path:
        engine.force_path(ctx.engine_path, "cluster")
    if hasattr(engine, "force_path") and id(engine) not in _WARM:  # one-time set-up before memory is measured
        import numpy as np

        engine.tile(np.zeros((1, job.channels, 2, 2, 2), np.float32), (0, 0, 0), (1, 1, 1))
        _WARM.add(id(engine))
    if formats.ZARR in (job.facts, job.in_facts):
        _one_zarr_thread()
    reader = job.open_input()
    counts = Counts()
    try:
        writer = job.open_writer(ctx.partial, resume=True)
        base = base_rss()
        try:
            for tile in tiles:
                counts.add(process_tile(job, reader, writer, engine, tile, activity))
        finally:
            # Only this task's chunks: other tasks are writing theirs into the same store.
            getattr(writer, "release", writer.close)()
    finally:
        reader.close()
    missing = int(getattr(reader, "missing_chunks", 0))
    _, peak = rss()
    return {
        "tiles": [t.index for t in tiles],
        "voxels": sum(t.voxels for t in tiles),
        "counts": counts,
        "seconds": time.perf_counter() - started,
        "worker": os.getpid(),
        "rss_base": base,
        "rss_peak": peak,
        "device": str(engine.device),
        "torch_threads": torch.get_num_threads(),
        "activity": (activity.sum_abs, activity.sum_sq, activity.tiles),
        "missing_chunks": missing,  # as this task's reads met them (tiles' halos may meet one twice)
    }


def run_file(job: Job) -> dict[str, Any]:
    """A Dask task: one whole input through the threaded pipeline on this worker (small batch files)."""
    from ..local import execute

    base = base_rss()
    job.reader = job.open_input()
    try:
        engine = _engine(job)
    except BaseException:
        job.close()
        raise
    result = execute(job, engine)
    _, peak = rss()
    result.update(worker=os.getpid(), rss_base=base, rss_peak=peak)
    return result
