"""Runs tile plans as Dask tasks: `--scheduler ADDRESS` (a running dask.distributed scheduler) or `local[:N]`.

The plan, the tile steps and the writers are the streaming pipeline's (tiling.py, pipeline.read_tile /
compute_tile / write_tile, io/); only the scheduling differs. Each task opens the input itself
(read-only, so HDF5 files are safe to share between processes), reads its slab, computes, writes its
own output region into the partial store, makes it durable and returns. Outputs that tasks share are
Zarr (tiles aligned to its chunks, so no two tasks ever write the same chunk) or .npy (disjoint byte
ranges of one file, on a filesystem all workers see).

- Bounded graph: tasks are submitted through a sliding window (`window`, default 4 per worker
  thread) fed lazily from `Plan.tiles()`, never one task per tile of the whole plan at once.
- Resume and faults: the client journals each finished tile (atomic.OutputTarget, the same journal as
  the threaded pipeline), so `--resume` skips it; a worker that dies mid-task is replaced and its task
  rerun by Dask, which rewrites the same whole chunks, so the result is unchanged.
- Memory: `--memory-limit` is per worker; the plan is sized so that every thread of a worker can hold
  one tile. Tasks report their worker's peak resident memory above its footprint before the first tile.
- Exactness: all tasks use one engine formulation (chosen once, on a worker, or taken from the
  journal on resume), so results equal a single-process run with that formulation bit for bit.
- Batches: every input is a task of its own (the whole streaming pipeline, on a worker), or, when it
  needs several tiles and its output is Zarr or .npy, one task per tile; one JSON report either way.

dask, distributed and zarr are the optional extra `pip install 'deconv3d-cli[dask]'`; nothing here
imports them until a scheduler is asked for.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ... import io as vio
from ...errors import Deconv3dError, InputError, RunError
from ...io.atomic import OutputTarget, journal_header, partial_path
from ...io.base import VolumeMeta
from ...io.zarr import require_extra

SHARED_FORMATS = ("zarr", "npy")
WINDOW_PER_THREAD = 4
# Scheduling cost of one task beyond its own work (submit, dispatch, result, journal), measured by
# benchmarks/dask_bench.py on a LocalCluster (1.2-1.6 ms); added to --dry-run's time estimate.
TASK_OVERHEAD_S = 0.0015
_ENGINES: dict[tuple, Any] = {}  # per worker process: engines by layer, channels, device, precision, path
_ENGINE_CACHE = 4


# ------------------------------------------------------------------------------------- scheduler


def parse_scheduler(text: str) -> tuple[str, Any]:
    """('local', N) for local / local:N, ('file', path) for a scheduler JSON file, else ('address', text)."""
    value = (text or "").strip()
    if value.lower() == "local" or value.lower().startswith("local:") or value.lower().startswith("local["):
        rest = value[5:].strip(":[]")
        if not rest:
            return "local", max(1, min(os.cpu_count() or 1, 4))
        try:
            n = int(rest)
        except ValueError:
            n = 0
        if n < 1:
            raise InputError(
                f"{text!r}: use local, local:N (N >= 1 worker processes) or an address", param="scheduler"
            )
        return "local", n
    if not value:
        raise InputError("give a scheduler address (tcp://host:8786) or local:N", param="scheduler")
    if value.endswith(".json"):
        return "file", value
    return "address", value


def local_torch_threads(workers: int) -> int:
    """CPU threads for each of `workers` local worker processes: the cores shared out."""
    return max(1, (os.cpu_count() or 1) // max(workers, 1))


@contextlib.contextmanager
def connect(scheduler: str) -> Iterator[Any]:
    """A dask.distributed Client: a LocalCluster of N one-thread worker processes, or a running scheduler."""
    require_extra("dask", "--scheduler")
    distributed = require_extra("distributed", "--scheduler")
    require_extra("zarr", "--scheduler")
    import logging

    kind, value = parse_scheduler(scheduler)
    if kind == "local":
        cluster = distributed.LocalCluster(
            n_workers=value,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )
        try:
            with distributed.Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    try:
        client = (
            distributed.Client(scheduler_file=value, timeout=30)
            if kind == "file"
            else distributed.Client(value, timeout=30)
        )
    except (OSError, TimeoutError) as exc:
        raise RunError(f"cannot reach the Dask scheduler at {value} ({exc})") from None
    with client:
        yield client


def _threads_per_worker(client: Any) -> int:
    """The most threads any worker runs at once (each runs one tile per thread)."""
    client.wait_for_workers(1, timeout=120)
    return max([int(n) for n in client.nthreads().values()] or [1])


def _total_threads(client: Any) -> int:
    return max(1, sum(client.nthreads().values()))


# ------------------------------------------------------------------------------------- planning


def _plan_options(opts: Any, threads: int) -> Any:
    """The budget of one task: a worker's --memory-limit shared by the tasks its threads run at once."""
    return replace(opts, memory_limit=max(1, opts.memory_limit // max(threads, 1)), progress=False)


def chunk_misalignment(job: Any, writer_options: dict[str, Any], chunks: Sequence[int] | None = None) -> str | None:
    """Why concurrent tasks could share an output chunk (tiles not on chunk boundaries), or None.

    `chunks`: those of an existing (partial) output; by default the ones a new output would get.
    """
    if job.out_format != "zarr":
        return None
    if chunks is None:
        chunks = vio.output_chunks(job.out_format, job.out_shape, job.out_dtype, job.out_layout, writer_options)
    spatial = [chunks[a] for a in job.out_layout.spatial_axes]
    for axis, (t, c, n) in enumerate(zip(job.plan.tile_shape, spatial, job.plan.out_shape)):
        if t % c and t < n:
            return (
                f"tiles of {list(job.plan.tile_shape)} are not aligned to the output chunks {spatial} "
                f"(axis {axis}); give --chunks that divide the tile, or a larger --memory-limit"
            )
    if job.out_layout.has_batch and job.plan.batch_step != 1 and chunks[0] != 1:
        return "batch tiles are not aligned to the output chunks"
    return None


def align_chunks(job: Any, opts: Any) -> Any:
    """`opts` with Zarr chunks that divide the plan's tiles, when the default ones do not and the user
    gave none (a budget too small for a chunk-aligned tile made the planner fall back to the strides)."""
    if job.out_format != "zarr" or "chunks" in opts.writer_options or not chunk_misalignment(job, opts.writer_options):
        return opts
    default = vio.output_chunks(job.out_format, job.out_shape, job.out_dtype, job.out_layout, opts.writer_options)
    chunks = []
    for t, c in zip(job.plan.tile_shape, [default[a] for a in job.out_layout.spatial_axes]):
        d = max(d for d in range(1, min(t, c) + 1) if t % d == 0)
        chunks.append(d if 4 * d >= min(t, c) else t)  # a tiny divisor would make tiny chunks: one per tile
    return replace(opts, writer_options={**opts.writer_options, "chunks": tuple(chunks)})


def refuse_output(job: Any, writer_options: dict[str, Any]) -> None:
    """Tile tasks share one output: Zarr or .npy; another format is refused with how to get it."""
    if job.out_format not in SHARED_FORMATS:
        stem = job.output.name.split(".")[0]
        raise InputError(
            f"a --scheduler run writes Zarr (or .npy on a filesystem all workers share), not {job.out_format}; "
            f"write {stem}.zarr, then convert it on one machine: deconv3d upsample {stem}.zarr -o {job.output.name} "
            "--preset nearest --scale 1 --output-dtype keep",
            source=str(job.output),
        )
    why = chunk_misalignment(job, writer_options)
    if why:
        raise InputError(why, source=str(job.output))


# ------------------------------------------------------------------------------------- tasks


@dataclass
class TaskContext:
    """What every tile task of one output needs; pickled once per run (a task the others depend on)."""

    job: Any  # pipeline.Prepared without its reader
    partial: Path
    opts: Any  # pipeline.Options
    channels: int
    engine_path: str | None = None
    torch_threads: int | None = None
    open_hints: dict[str, Any] = field(default_factory=dict)
    in_format: str = ""


def _rss() -> tuple[int, int]:
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


_BASE: list[int] = []  # this worker's resident memory before its first tile (imports, engine, open files)


def _base_rss() -> int:
    """The footprint tiles add to: measured once per worker process, just before its first tile.

    The engine keeps freed memory for reuse (allocator.py), so resident memory never shrinks after a
    tile; the worker's lifetime peak above this base is the most any of its tiles needed at once.
    """
    if not _BASE:
        _BASE.append(_rss()[0])
    return _BASE[0]


def _engine(ctx: TaskContext) -> Any:
    """This worker's engine for the context's layer, built once and kept (a few layers at most)."""
    from ...engine.core import Engine

    job, opts = ctx.job, ctx.opts
    channels = ctx.channels
    key = (job.spec.fingerprint(), channels, opts.device, opts.precision, ctx.engine_path, ctx.torch_threads)
    engine = _ENGINES.get(key)
    if engine is None:
        if ctx.torch_threads:
            import torch

            torch.set_num_threads(ctx.torch_threads)
        kwargs = {"path": ctx.engine_path} if ctx.engine_path else {}
        engine = Engine(job.spec, channels, opts.device, opts.precision, **kwargs)
        if ctx.engine_path:
            # One-time set-up (thread pools, primitive caches) before tasks measure their memory.
            engine.tile(np.zeros((1, channels, 2, 2, 2), np.float32), (0, 0, 0), (1, 1, 1))
        while len(_ENGINES) >= _ENGINE_CACHE:
            _ENGINES.pop(next(iter(_ENGINES)))
        _ENGINES[key] = engine
    return engine


def _choose_path(ctx: TaskContext) -> str | None:
    """On a worker: the engine formulation every task of this output will use (None: the engine has one)."""
    engine = _engine(replace(ctx, engine_path=None))
    choose = getattr(engine, "choose_path", None)
    if choose is None:
        return None
    from ..local import first_slab_shape

    return choose(first_slab_shape(ctx.job, engine.in_channels))


def _identity(value: Any) -> Any:
    return value


def _one_zarr_thread() -> None:
    """In a worker process: zarr's codec thread pool with one thread. Each pool thread keeps its own
    malloc arena of chunk buffers (a few MiB each, one thread per core by default); the worker's task
    threads are its parallelism. Takes effect when zarr first starts its pool in this process."""
    import zarr

    if zarr.config.get("threading.max_workers") is None:
        zarr.config.set({"threading.max_workers": 1})


def _open_reader(ctx: TaskContext) -> Any:
    job = ctx.job
    return vio.open_reader(job.input, ctx.opts.dataset, **ctx.open_hints)


def run_tile(ctx: TaskContext, tiles: Sequence[Any]) -> dict[str, Any]:
    """A Dask task: read, compute and write `tiles` of the plan into the partial output, durably."""
    from ...engine.activity import ActivityAccumulator
    from .. import local as pipeline

    job, opts = ctx.job, ctx.opts
    started = time.perf_counter()
    activity = ActivityAccumulator(job.spec.activity_regularizer)
    engine = _engine(ctx)
    if "zarr" in (job.out_format, ctx.in_format):
        _one_zarr_thread()
    reader = _open_reader(ctx)
    clipped = 0
    try:
        writer = vio.create_writer(
            ctx.partial,
            job.out_format,
            job.out_shape,
            job.out_dtype,
            job.meta,
            resume=True,
            dataset=opts.output_dataset,
            layout=job.out_layout,
            **opts.writer_options,
        )
        base = _base_rss()
        try:
            for tile in tiles:
                clipped += pipeline.process_tile(job, reader, writer, engine, tile, activity)
        finally:
            # Only this task's chunks: other tasks are writing theirs into the same store.
            getattr(writer, "release", writer.close)()
    finally:
        reader.close()
    _, peak = _rss()
    return {
        "tiles": [t.index for t in tiles],
        "voxels": sum(t.voxels for t in tiles),
        "clipped": clipped,
        "seconds": time.perf_counter() - started,
        "worker": os.getpid(),
        "rss_base": base,
        "rss_peak": peak,
        "device": str(engine.device),
        "torch_threads": _torch_threads_now(),
        "activity": (activity.sum_abs, activity.sum_sq, activity.tiles),
    }


def run_file(spec: Any, input_path: Path, output_path: Path, opts: Any, torch_threads: int | None) -> dict[str, Any]:
    """A Dask task: one whole input through the streaming pipeline on this worker (small batch files)."""
    from .. import local as pipeline

    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    base = _base_rss()
    engines = _ENGINES.setdefault(("files",), {})
    result = pipeline.run_job(spec, input_path, output_path, opts, engines)
    _, peak = _rss()
    result.update(worker=os.getpid(), rss_base=base, rss_peak=peak)
    return result


# ------------------------------------------------------------------------------------- one output


class _Output:
    """One output being produced by tile tasks: its target, journal, context and pending tiles."""

    def __init__(
        self, job: Any, opts: Any, client: Any, torch_threads: int | None, engine_path: str | None = None
    ) -> None:
        """`job` is planned and its reader closed (its shape and format are still read from it)."""
        refuse_output(job, opts.writer_options)
        if _gzip_input(job) and len(job.plan) > 1:
            raise InputError(
                "a .nii.gz is decompressed whole by every task that reads it; convert it to .zarr first "
                "(deconv3d upsample IN.nii.gz -o IN.zarr --preset nearest --scale 1) or fit it in one tile",
                source=str(job.input),
            )
        self.job, self.opts, self.client = job, opts, client
        self.token = uuid.uuid4().hex[:12]
        hints: dict[str, Any] = {}
        if job.reader.format == "nifti":
            in_channels = job.spec.kernel.shape[4] if job.spec.kernel is not None else job.spec.in_channels
            hints = {"fourth_axis": opts.fourth_axis, "in_channels": in_channels}
        channels = job.in_layout.channels(job.reader.shape)
        ctx = TaskContext(
            replace(job, reader=None),
            partial_path(job.output),
            opts,
            channels,
            None,
            torch_threads,
            hints,
            job.reader.format,
        )
        earlier = journal_header(job.output) if opts.resume else None
        if earlier and earlier.get("engine_path"):
            ctx.engine_path = earlier["engine_path"]
        elif engine_path:
            ctx.engine_path = engine_path
        elif opts.engine_path != "auto":
            ctx.engine_path = opts.engine_path
        else:
            ctx.engine_path = client.submit(_choose_path, ctx, key=f"deconv3d-path-{self.token}", pure=False).result()
        if earlier and earlier.get("torch_threads"):  # the interrupted run's rounding, as pipeline.settle_engine
            ctx.torch_threads = int(earlier["torch_threads"])
        header = {**job.header(), "engine_path": ctx.engine_path, "torch_threads": ctx.torch_threads}
        self.target = OutputTarget(job.output, header, overwrite=opts.overwrite, resume=opts.resume)
        self.resumed = self.target.open()
        try:
            # The store (or file) and its metadata, made once here; tasks reopen it to write their regions.
            writer = vio.create_writer(
                self.target.partial,
                job.out_format,
                job.out_shape,
                job.out_dtype,
                job.meta,
                resume=self.resumed,
                dataset=opts.output_dataset,
                layout=job.out_layout,
                **opts.writer_options,
            )
            writer.close()
            why = chunk_misalignment(job, opts.writer_options, writer.chunks) if self.resumed else None
            if why:
                raise InputError(
                    f"the partial output cannot be resumed by concurrent tasks: {why}; resume it without --scheduler",
                    source=str(job.output),
                )
            self.ctx = ctx
            self.ctx_future = client.submit(_identity, ctx, key=f"deconv3d-ctx-{self.token}", pure=False)
        except BaseException:
            self.target.abort()
            raise
        done = self.target.done
        self.skipped_voxels = sum(t.voxels for t in job.plan.tiles() if t.index in done) if self.resumed else 0
        self.resumed_tiles = len(done) if self.resumed else 0
        self._tiles = (t for t in job.plan.tiles() if t.index not in done)
        self.outstanding: set[str] = set()
        self.exhausted = False
        self.pending: list[int] = []
        self.last_record = time.monotonic()
        self.started = time.perf_counter()
        self.voxels = 0
        self.clipped = 0
        self.tasks = 0
        self.devices: set[str] = set()
        self.threads: set[int] = set()
        from ...engine.activity import ActivityAccumulator

        self.activity = ActivityAccumulator(job.spec.activity_regularizer)
        self.memory: dict[int, int] = {}
        self.task_seconds = 0.0

    def next_future(self) -> Any | None:
        tile = next(self._tiles, None)
        if tile is None:
            self.exhausted = True
            return None
        fut = self.client.submit(
            run_tile, self.ctx_future, [tile], key=f"deconv3d-tile-{self.token}-{tile.index}", pure=False
        )
        self.outstanding.add(fut.key)
        self.tasks += 1
        return fut

    def completed(self, key: str, result: dict[str, Any]) -> None:
        self.outstanding.discard(key)
        self.pending.extend(result["tiles"])
        self.voxels += result["voxels"]
        self.clipped += result["clipped"]
        self.task_seconds += result["seconds"]
        self.devices.add(result["device"])
        self.threads.add(result["torch_threads"])
        sum_abs, sum_sq, tiles = result["activity"]
        self.activity.sum_abs += sum_abs
        self.activity.sum_sq += sum_sq
        self.activity.tiles += tiles
        grew = max(0, result["rss_peak"] - result["rss_base"])
        self.memory[result["worker"]] = max(self.memory.get(result["worker"], 0), grew)
        if time.monotonic() - self.last_record >= self.opts.flush_every:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Journal the finished tiles (each task made its region durable before it returned)."""
        if self.pending:
            self.target.record(self.pending)
            self.pending = []
        self.last_record = time.monotonic()

    @property
    def finished(self) -> bool:
        return self.exhausted and not self.outstanding

    def commit(self, scheduler: str, window: int, max_in_flight: int) -> dict[str, Any]:
        job = self.job
        writer = vio.create_writer(
            self.target.partial,
            job.out_format,
            job.out_shape,
            job.out_dtype,
            job.meta,
            resume=True,
            dataset=self.opts.output_dataset,
            layout=job.out_layout,
            **self.opts.writer_options,
        )
        writer.close()  # the only writer now: leftovers of killed tasks are swept, everything synced
        self.target.commit()
        seconds = time.perf_counter() - self.started
        result = job.describe()
        result.update(
            status="done",
            seconds=round(seconds, 4),
            voxels_per_s=round(self.voxels / seconds, 1) if seconds > 0 else None,
            resumed_tiles=self.resumed_tiles,
            clipped_voxels=self.clipped,
            device=",".join(sorted(self.devices)) or None,
            engine_path=self.ctx.engine_path,
            # oneDNN's forward convolution (the phase paths) sums in an order that depends on the thread
            # count: a single process matches bit for bit with the same engine_path and threads.
            torch_threads=min(self.threads) if len(self.threads) == 1 else sorted(self.threads),
            scheduler=scheduler,
            tasks=self.tasks,
            window=window,
            max_tasks_in_flight=max_in_flight,
            task_seconds=round(self.task_seconds, 4),
            worker_peak_memory_bytes=max(self.memory.values(), default=0),
            worker_memory_bytes={str(k): v for k, v in sorted(self.memory.items())},
        )
        from types import SimpleNamespace

        from ..local import run_report_for

        kernel, bias = (None, None) if job.spec.kernel is not None else job.spec.materialise(self.ctx.channels)
        result.update(run_report_for(job, SimpleNamespace(weight=kernel, bias=bias), self.activity))
        return result

    def abort(self) -> None:
        self.target.abort()


def _drain(client: Any, futures: Sequence[Any], timeout: float = 30.0) -> None:
    """Cancel tasks and wait until none of them still runs (so none writes into a removed partial)."""
    if not futures:
        return
    keys = {f.key for f in futures}
    with contextlib.suppress(Exception):
        client.cancel(list(futures))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            running = {k for tasks in client.processing().values() for k in tasks}
        except Exception:  # noqa: BLE001 - the cluster is going away
            return
        if not keys & running:
            return
        time.sleep(0.05)


def _remote_error(fut: Any) -> BaseException:
    exc = fut.exception()
    name = type(exc).__name__
    if name == "KilledWorker":
        return RunError(f"a task kept killing its workers (out of memory?): {exc}")
    if name == "FutureCancelledError" or fut.status == "cancelled":
        return RunError("the cluster cancelled a task (lost scheduler?)")
    return exc


def _progress(job: Any, opts: Any, initial: int) -> Any:
    from ..local import _progress_bar

    return _progress_bar(job, opts, initial=initial)


def run_one(
    spec: Any,
    input_path: Path,
    output_path: Path,
    opts: Any,
    *,
    client: Any = None,
    window: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    threads: int | None = None,
    engine_path: str | None = None,
) -> dict[str, Any]:
    """Upsample one volume on a Dask cluster (`opts.scheduler`, or an existing `client`).

    `threads`: CPU threads of each task's engine (default: for local:N the cores shared out).
    `engine_path`: the engine formulation every task uses (default: measured on a worker; on --resume,
    the partial output's).
    """
    if client is None:
        from .. import local as pipeline

        # Refuse a bad input, layer or output before a cluster is started or reached.
        check = pipeline.prepare(spec, input_path, output_path, _plan_options(opts, 1))
        check.reader.close()
        refuse_output(check, align_chunks(check, opts).writer_options)
        with connect(opts.scheduler) as own:
            return run_one(
                spec,
                input_path,
                output_path,
                opts,
                client=own,
                window=window,
                on_progress=on_progress,
                threads=threads,
                engine_path=engine_path,
            )
    from .. import local as pipeline

    torch_threads = _torch_threads(opts, threads)
    threads = _threads_per_worker(client)
    job = pipeline.prepare(spec, input_path, output_path, _plan_options(opts, threads))
    job.reader.close()
    opts = align_chunks(job, opts)
    out = _Output(job, opts, client, torch_threads, engine_path)
    window = window or WINDOW_PER_THREAD * _total_threads(client)
    bar = _progress(job, opts, out.skipped_voxels)
    in_flight: dict[str, Any] = {}
    peak = 0
    ac = _as_completed()
    try:
        while True:
            while len(in_flight) < window and not out.exhausted:
                fut = out.next_future()
                if fut is not None:
                    in_flight[fut.key] = fut
                    ac.add(fut)
            peak = max(peak, len(in_flight))
            if not in_flight:
                break
            fut = next(ac)
            in_flight.pop(fut.key, None)
            if fut.status != "finished":
                raise _remote_error(fut)
            result = fut.result()
            fut.release()
            out.completed(fut.key, result)
            bar.update(result["voxels"])
            if on_progress:
                on_progress(result["voxels"])
        report = out.commit(opts.scheduler or str(client.scheduler.address), window, peak)
    except BaseException:
        _drain(client, list(in_flight.values()))
        out.abort()
        raise
    finally:
        bar.close()
        with contextlib.suppress(Exception):
            out.ctx_future.release()
    return report


def _torch_threads(opts: Any, threads: int | None = None) -> int | None:
    """--threads, else for local:N the cores shared out (workers start with OMP_NUM_THREADS=1)."""
    if threads:
        return int(threads)
    kind, value = parse_scheduler(opts.scheduler) if opts.scheduler else ("address", None)
    return local_torch_threads(value) if kind == "local" else None


def _gzip_input(job: Any) -> bool:
    return job.reader.format == "nifti" and job.input.name.lower().endswith(".gz")


def _as_completed() -> Any:
    from distributed import as_completed

    return as_completed()


# ------------------------------------------------------------------------------------- many files


def batch_runner(spec: Any, opts: Any, threads: int | None = None) -> Callable[..., Any]:
    """A drop-in for batch.run_batch that runs the files on `opts.scheduler` (same report, same exit codes)."""

    def run(jobs: Sequence[Any], prepare: Any, execute: Any, describe: Any, close: Any, **kwargs: Any) -> Any:
        from .. import batch
        from .. import local as pipeline

        if kwargs.get("dry_run"):
            return batch.run_batch(jobs, prepare, execute, describe, close, **kwargs)
        with connect(opts.scheduler) as client:
            threads = _threads_per_worker(client)
            plan_opts = _plan_options(opts, threads)
            return run_many(
                jobs,
                prepare=lambda job: pipeline.prepare(spec, job.input, job.output, plan_opts),
                opts=opts,
                client=client,
                threads=threads,
                **kwargs,
            )

    return run


def run_many(
    jobs: Sequence[Any],
    prepare: Callable[[Any], Any],
    opts: Any,
    client: Any,
    *,
    skip_existing: bool = False,
    fail_fast: bool = False,
    dry_run: bool = False,
    on_file: Callable[[Any], None] | None = None,
    debug: bool = False,
    window: int | None = None,
    threads: int | None = None,
) -> Any:
    """Every input as Dask tasks through one window: a task per small file, a task per tile of a large one.

    A file is split into tile tasks when it needs several tiles, its output is Zarr or .npy and its
    input can be read in parts (not .nii.gz); otherwise one task runs the streaming pipeline on it, so
    any output format works. Files are planned only as the window needs more tasks.
    """
    from .. import batch

    report = batch.Report()
    torch_threads = _torch_threads(opts, threads)
    threads = _threads_per_worker(client)
    window = window or WINDOW_PER_THREAD * _total_threads(client)
    file_opts = replace(_plan_options(opts, threads), scheduler=None)
    todo: list[Any] = []
    for job in jobs:
        if skip_existing and job.output.exists():
            batch._note(report, batch.FileResult(str(job.input), str(job.output), "skipped"), on_file)
        else:
            todo.append(job)
    queue = iter(todo)
    ac = _as_completed()
    in_flight: dict[str, tuple[Any, Any, _Output | None]] = {}  # key -> (future, batch job, tile output)
    outputs: list[tuple[Any, _Output]] = []
    failed = False

    def note(job: Any, status: str, error: BaseException | str | None = None, details: Any = None) -> None:
        if isinstance(error, BaseException):
            if debug:
                import traceback

                traceback.print_exception(error, file=sys.stderr)
            error = error.line() if isinstance(error, Deconv3dError) else f"{type(error).__name__}: {error}"
        result = batch.FileResult(str(job.input), str(job.output), status, error, details or {})
        batch._note(report, result, on_file if status != "not_run" else None)

    def submit(fut: Any, job: Any, out: _Output | None) -> None:
        in_flight[fut.key] = (fut, job, out)
        ac.add(fut)

    def start(job: Any) -> None:
        """Plan one file and submit its whole-file task, or register it for tile tasks."""
        nonlocal failed
        try:
            prep = prepare(job)
            prep.reader.close()
            aligned = align_chunks(prep, opts)
            per_tile = (
                len(prep.plan) > 1
                and prep.out_format in SHARED_FORMATS
                and chunk_misalignment(prep, aligned.writer_options) is None
                and not _gzip_input(prep)
            )
            if per_tile:
                outputs.append((job, _Output(prep, aligned, client, torch_threads)))
                return
            key = f"deconv3d-file-{uuid.uuid4().hex[:12]}"
            submit(
                client.submit(run_file, prep.spec, job.input, job.output, file_opts, torch_threads, key=key), job, None
            )
        except (Deconv3dError, OSError, RuntimeError, ValueError, MemoryError) as exc:
            note(job, "failed", exc)
            failed = True

    def finish(job: Any, out: _Output) -> None:
        outputs.remove((job, out))
        try:
            details = out.commit(opts.scheduler or "", window, window)
        except (Deconv3dError, OSError, RuntimeError, ValueError) as exc:
            out.abort()
            note(job, "failed", exc)
            return
        note(job, "done", details=details)

    def fill() -> None:
        while len(in_flight) < window and not (failed and fail_fast):
            for job, out in list(outputs):
                while len(in_flight) < window and not out.exhausted:
                    fut = out.next_future()
                    if fut is not None:
                        submit(fut, job, out)
                if out.finished:  # nothing left to run (all tiles were done before a resume)
                    finish(job, out)
            if len(in_flight) >= window:
                return
            job = next(queue, None)
            if job is None:
                return
            start(job)

    def stop_all() -> None:
        _drain(client, [f for f, _, _ in in_flight.values()])
        for _, out in outputs:
            out.abort()

    try:
        fill()
        while in_flight and not (failed and fail_fast):
            fut = next(ac)
            _, job, out = in_flight.pop(fut.key)
            if out is not None and all(out is not o for _, o in outputs):
                continue  # a task of an output that has already failed
            if fut.status != "finished":
                exc = _remote_error(fut)
                if out is not None:
                    mine = [k for k, (_, _, o) in in_flight.items() if o is out]
                    _drain(client, [in_flight.pop(k)[0] for k in mine])
                    outputs.remove((job, out))
                    out.abort()
                note(job, "failed", exc)
                failed = True
            else:
                result = fut.result()
                fut.release()
                if out is None:
                    note(job, "done", details=result)
                else:
                    out.completed(fut.key, result)
                    if out.finished:
                        finish(job, out)
            fill()
        if failed and fail_fast:
            stop_all()
            noted = {r.input for r in report.files}
            rest = [j for _, j, _ in in_flight.values()] + [j for j, _ in outputs] + list(queue)
            for job in rest:
                if str(job.input) not in noted:
                    noted.add(str(job.input))
                    note(job, "not_run", "skipped by --fail-fast")
    except BaseException:
        stop_all()
        raise
    order = {str(j.input): k for k, j in enumerate(jobs)}
    report.files.sort(key=lambda f: order.get(f.input, len(order)))  # the input order, as a local run
    return report


# ------------------------------------------------------------------------------------- dry run


class VirtualReader:
    """An input that exists only as a shape and dtype (`--input-shape`): reads give zeros."""

    format = "virtual"
    chunks = None
    data_format = None

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


def _axis_slabs(plan: Any) -> list[list[int]]:
    """Per spatial axis, the input rows each tile position reads (tiles are a product of these)."""
    out = []
    for ax, t in zip(plan.axes, plan.tile_shape):
        out.append([ax.input_range(a, min(a + t, ax.out)).size for a in range(0, ax.out, t)])
    return out


def measure_tile(job: Any, opts: Any, torch_threads: int | None = None, repeats: int = 2) -> dict[str, Any]:
    """Seconds for one full tile on this machine (engine and copy to the output dtype; no storage I/O)."""
    from ...engine.core import Engine
    from .. import local as pipeline

    if torch_threads:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(torch_threads)
    try:
        channels = job.in_layout.channels(job.reader.shape)
        engine = Engine(job.spec, channels, opts.device, opts.precision)
        plan = job.plan
        first = next(iter(plan.tiles()))
        # The largest tile (the first one is full-size unless the volume is smaller than a tile).
        sizes = [min(t, n) for t, n in zip(plan.tile_shape, plan.out_shape)]
        slabs = _axis_slabs(plan)
        shape = (first.batch.stop - first.batch.start, channels, *(max(s) for s in slabs))
        rng = np.random.default_rng(0)
        slab = rng.standard_normal(shape, dtype=np.float32)
        offsets = [ax.input_range(0, n).offset for ax, n in zip(plan.axes, sizes)]
        tile = replace(first, out=tuple(slice(0, n) for n in sizes), offsets=tuple(offsets))
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            pipeline.compute_tile(job, engine, slab, tile)
            times.append(time.perf_counter() - t0)
        return {
            "seconds_per_tile": min(times[1:]),
            "torch_threads": torch_threads or _torch_threads_now(),
            "engine_path": getattr(engine, "path", None),
            "device": str(engine.device),
        }
    finally:
        if torch_threads:
            torch.set_num_threads(before)


def _torch_threads_now() -> int:
    import torch

    return torch.get_num_threads()


def dry_run(
    spec: Any,
    input_path: Path,
    output_path: Path,
    opts: Any,
    input_shape: str | None = None,
    measure: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Size a cluster run without one: tasks, bytes per task, memory per worker, estimated time."""
    from .. import local as pipeline

    workers, per_worker = None, 1  # local workers run one thread; for an address, per worker thread
    if opts.scheduler:
        kind, value = parse_scheduler(opts.scheduler)
        if kind == "local":
            workers = value
    reader = None
    if input_shape is not None:
        shape, dtype = parse_input_shape(input_shape)
        reader = VirtualReader(Path(input_path), shape, dtype)
    job = pipeline.prepare(spec, input_path, output_path, _plan_options(opts, per_worker), reader=reader)
    try:
        if opts.scheduler:
            opts = align_chunks(job, opts)
            refuse_output(job, opts.writer_options)
        report = job.describe()
        report["status"] = "planned"
        report["input_virtual"] = input_shape is not None
        plan = job.plan
        channels = job.in_layout.channels(job.reader.shape)
        slabs = _axis_slabs(plan)
        batches = [min(b + plan.batch_step, plan.batch) - b for b in range(0, plan.batch, plan.batch_step)]
        in_item, out_item = job.reader.dtype.itemsize, job.out_dtype.itemsize
        read_task = max(batches) * channels * math.prod(max(s) for s in slabs) * in_item
        write_task = (
            max(batches) * job.spec.filters * math.prod(min(t, n) for t, n in zip(plan.tile_shape, plan.out_shape))
        )
        read_total = plan.batch * channels * math.prod(sum(s) for s in slabs) * in_item
        sizing: dict[str, Any] = {
            "scheduler": opts.scheduler,
            "workers": workers,
            "threads_per_worker": per_worker,
            "tasks": len(plan),
            "bytes_read_per_task": int(read_task),
            "bytes_written_per_task": int(write_task * out_item),
            "bytes_read_total": int(read_total),
            "bytes_written_total": int(report["output_bytes"]),
            "peak_memory_per_worker_bytes": int(plan.tile_bytes() * per_worker),
            "memory_limit_per_worker_bytes": int(opts.memory_limit),
        }
        if measure:
            torch_threads = _torch_threads(opts, threads) if opts.scheduler else threads
            timing = measure_tile(job, opts, torch_threads)
            one = (timing["seconds_per_tile"] + TASK_OVERHEAD_S) * len(plan)
            sizing.update(timing)
            sizing["scheduler_overhead_s_per_task"] = TASK_OVERHEAD_S
            sizing["tile_voxels_per_s"] = round(write_task / timing["seconds_per_tile"], 1)
            sizing["estimated_seconds_one_worker"] = round(one, 3)
            sizing["estimated_seconds"] = round(one / (workers or 1), 3)
        report["distributed"] = sizing
        return report
    finally:
        job.reader.close()


def describe_lines(report: dict[str, Any]) -> list[str]:
    """Text lines for a dry run's sizing or a finished cluster run (added under the plan's lines)."""
    from ...geometry.tiling import format_bytes

    d = report.get("distributed")
    if d is None:
        if "tasks" not in report:
            return []
        return [
            f"  cluster: {report['tasks']} task(s) on {report['scheduler']}, at most {report['max_tasks_in_flight']} "
            f"in flight; worker peak memory {format_bytes(report['worker_peak_memory_bytes'])} above its base"
        ]
    lines = [
        f"  tasks: {d['tasks']:,}; per task {format_bytes(d['bytes_read_per_task'])} read, "
        f"{format_bytes(d['bytes_written_per_task'])} written (in all {format_bytes(d['bytes_read_total'])} read, "
        f"{format_bytes(d['bytes_written_total'])} written)",
        f"  peak memory per worker: {format_bytes(d['peak_memory_per_worker_bytes'])} "
        f"(--memory-limit {format_bytes(d['memory_limit_per_worker_bytes'])}, {d['threads_per_worker']} thread(s))",
    ]
    if "seconds_per_tile" in d:
        one = d["estimated_seconds_one_worker"]
        text = (
            f"  estimated time: {_duration(one)} on one worker like this machine "
            f"({d['seconds_per_tile']:.3g} s per tile with {d['torch_threads']} CPU thread(s) on {d['device']} "
            f"+ {1000 * d['scheduler_overhead_s_per_task']:.1f} ms scheduling per task; storage I/O not included)"
        )
        if d.get("workers"):
            text += f"; {_duration(d['estimated_seconds'])} on {d['workers']}"
        lines.append(text)
    return lines


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
