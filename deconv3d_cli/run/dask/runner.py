"""Runs jobs as Dask tasks: `--scheduler ADDRESS` (a running dask.distributed scheduler) or `local[:N]`.

The jobs, the plan, the tile steps and the writers are the local run's (job.py, tiles.py, io/); only
the scheduling differs. Each output is prepared once, here, before any cluster is started or reached,
so whatever a run would refuse is refused first.

- Bounded graph: tasks are submitted through a sliding window (`window`, default 4 per worker
  thread) fed lazily from `Plan.tiles()`, never one task per tile of the whole plan at once.
- Resume and faults: the client journals each finished tile (io.atomic.OutputTarget, the same journal
  as a local run), so `--resume` skips it; a worker that dies mid-task is replaced and its task rerun
  by Dask, which rewrites the same whole chunks, so the result is unchanged.
- Memory: `--memory-limit` is per task; local workers run one task at a time.
- Exactness: the plan is the local run's and every task uses one formulation, decided on a worker by
  the local run's policy, so the result equals a single-process run bit for bit.
- Batches: every input is a task of its own (the whole local pipeline, on a worker), or, when it
  needs several tiles and its output is Zarr or .npy, one task per tile; one JSON report either way.
"""

from __future__ import annotations

import contextlib
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...errors import Deconv3dError, RunError
from ..batch import FAILURES, FilePair, FileResult, Report, error_text, exit_code, skipped
from ..job import Job, LayerSource, prepare
from ..options import Options
from ..stop import Interrupted
from . import tasks
from .cluster import connect, local_torch_threads, local_workers, parse_scheduler, total_threads
from .output import TileOutput, can_split, chunk_misalignment, refuse

WINDOW_PER_THREAD = 4

__all__ = ["run_one", "run_many", "batch_runner", "cluster_options", "chunk_misalignment", "align_chunks"]


def cluster_options(opts: Options, threads: int | None = None, engine_path: str | None = None) -> Options:
    """The options tasks run with: `threads` (else each worker's own CPUs, which local:N workers share
    out where the formulation allows: engines.cpu_threads), an explicit formulation, no progress bar."""
    compute = opts.compute
    shared = None
    if threads is None and compute.threads is None and opts.cluster.scheduler:
        kind, value = parse_scheduler(opts.cluster.scheduler)
        if kind == "local":
            shared = local_torch_threads(local_workers(value))
    changed = replace(compute, threads=threads or compute.threads, worker_threads=shared,
                      engine_path=engine_path or compute.engine_path)  # fmt: skip
    return replace(opts, compute=changed)


def align_chunks(job: Job, opts: Options) -> Options:
    """`opts` with chunks that divide the plan's tiles, unless the user named chunks (never changed)."""
    if opts.write.chunks is not None or not job.facts.shared_writes or job.chunks is None:
        return opts
    return replace(opts, write=replace(opts.write, chunks=job.chunks))


def run_one(
    spec: LayerSource,
    input_path: Path,
    output_path: Path,
    opts: Options,
    *,
    client: Any = None,
    window: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    threads: int | None = None,
    engine_path: str | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Upsample one volume on a Dask cluster (`opts.cluster.scheduler`, or an existing `client`)."""
    job = prepare(spec, input_path, output_path, cluster_options(opts, threads, engine_path))
    job.close()
    refuse(job)  # before a cluster is started or reached
    if on_start is not None:
        on_start(job.describe())
    if client is None:
        with connect(opts.cluster.scheduler or "") as own:
            return _run_tiles(job, own, window, on_progress)
    return _run_tiles(job, client, window, on_progress)


def _run_tiles(job: Job, client: Any, window: int | None, on_progress: Callable[[int], None] | None) -> dict:
    from .. import progress

    out = TileOutput(job, client)
    window = window or WINDOW_PER_THREAD * total_threads(client)
    in_flight: dict[str, Any] = {}
    peak = 0
    ac = _as_completed()
    try:
        with progress.bar(job, job.options.progress, out.skipped_voxels) as bar:
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
        return out.commit(job.options.cluster.scheduler or str(client.scheduler.address), window, peak)
    except BaseException:
        _drain(client, list(in_flight.values()))
        out.abort()
        raise
    finally:
        out.release()


class _Many:
    """Every input through one window of tasks: a task per small file, a task per tile of a large one."""

    def __init__(self, client: Any, report: Report, fail_fast: bool, debug: bool, window: int | None) -> None:
        self.client, self.report, self.fail_fast, self.debug = client, report, fail_fast, debug
        self.window = window or WINDOW_PER_THREAD * total_threads(client)
        self.ac = _as_completed()
        self.in_flight: dict[str, tuple[Any, FilePair, TileOutput | None]] = {}
        self.outputs: list[tuple[FilePair, TileOutput]] = []
        self.failed = False

    def note(self, pair: FilePair, status: str, error: BaseException | str | None = None, details: Any = None):
        code = 0
        if isinstance(error, BaseException):
            if self.debug:
                import traceback

                traceback.print_exception(error, file=sys.stderr)
            code = exit_code(error)
            error = error_text(error)
        self.report.add(FileResult(str(pair.input), str(pair.output), status, error, details or {}, code))

    def submit(self, fut: Any, pair: FilePair, out: TileOutput | None) -> None:
        self.in_flight[fut.key] = (fut, pair, out)
        self.ac.add(fut)

    def start(self, pair: FilePair, prepare_one: Callable[[FilePair], Job]) -> None:
        """Plan one file; register it for tile tasks, or submit its whole-file task."""
        try:
            job = prepare_one(pair)
            job.close()
            if can_split(job):
                self.outputs.append((pair, TileOutput(job, self.client)))
                return
            key = f"deconv3d-file-{uuid.uuid4().hex[:12]}"
            self.submit(self.client.submit(tasks.run_file, replace(job, reader=None), key=key), pair, None)
        except FAILURES as exc:
            self.note(pair, "failed", exc)
            self.failed = True

    def finish(self, pair: FilePair, out: TileOutput) -> None:
        self.outputs.remove((pair, out))
        try:
            details = out.commit(out.job.options.cluster.scheduler or "", self.window, self.window)
        except FAILURES as exc:
            out.abort()
            self.note(pair, "failed", exc)
            return
        self.note(pair, "done", details=details)

    def fill(self, queue: Any, prepare_one: Callable[[FilePair], Job]) -> None:
        while len(self.in_flight) < self.window and not (self.failed and self.fail_fast):
            for pair, out in list(self.outputs):
                while len(self.in_flight) < self.window and not out.exhausted:
                    fut = out.next_future()
                    if fut is not None:
                        self.submit(fut, pair, out)
                if out.finished:  # nothing left to run (all tiles were done before a resume)
                    self.finish(pair, out)
            if len(self.in_flight) >= self.window:
                return
            upcoming: FilePair | None = next(queue, None)
            if upcoming is None:
                return
            self.start(upcoming, prepare_one)

    def take(self) -> None:
        fut = next(self.ac)
        _, pair, out = self.in_flight.pop(fut.key)
        if out is not None and all(out is not o for _, o in self.outputs):
            return  # a task of an output that has already failed
        if fut.status != "finished":
            exc = _remote_error(fut)
            if out is not None:
                mine = [k for k, (_, _, o) in self.in_flight.items() if o is out]
                _drain(self.client, [self.in_flight.pop(k)[0] for k in mine])
                self.outputs.remove((pair, out))
                out.abort()
            self.note(pair, "failed", exc)
            self.failed = True
            return
        result = fut.result()
        fut.release()
        if out is None:
            self.note(pair, "done", details=result)
        else:
            out.completed(fut.key, result)
            if out.finished:
                self.finish(pair, out)

    def stop_all(self) -> None:
        _drain(self.client, [f for f, _, _ in self.in_flight.values()])
        for _, out in self.outputs:
            out.abort()


def run_many(
    jobs: Sequence[FilePair],
    prepare: Callable[[FilePair], Job],
    opts: Options,
    client: Any,
    *,
    skip_existing: bool = False,
    fail_fast: bool = False,
    dry_run: bool = False,
    on_file: Callable[[FileResult], None] | None = None,
    debug: bool = False,
    window: int | None = None,
    error_line: Any = None,
) -> Report:
    """Every input as Dask tasks; files are planned only as the window needs more tasks."""
    report = Report(on_file=on_file)
    queue = iter(skipped(jobs, skip_existing, report))
    many = _Many(client, report, fail_fast, debug, window)
    try:
        many.fill(queue, prepare)
        while many.in_flight and not (many.failed and fail_fast):
            many.take()
            many.fill(queue, prepare)
        if many.failed and fail_fast:
            many.stop_all()
            noted = {r.input for r in report.files}
            rest = [p for _, p, _ in many.in_flight.values()] + [p for p, _ in many.outputs] + list(queue)
            report.not_run([p for p in dict.fromkeys(rest) if str(p.input) not in noted], "skipped by --fail-fast")
    except Interrupted as stopped:
        many.stop_all()  # outputs in progress are discarded: a continuation computes them again
        stopped.report = report  # type: ignore[attr-defined]  # what each file became, for the continue line
        raise
    except BaseException:
        many.stop_all()
        raise
    order = {str(j.input): k for k, j in enumerate(jobs)}
    report.files.sort(key=lambda f: order.get(f.input, len(order)))  # the input order, as a local run
    return report


def batch_runner(layer: LayerSource, opts: Options) -> Callable[..., Report]:
    """A drop-in for batch.run_batch that runs the files on `opts.cluster.scheduler` (same report)."""
    from ..batch import run_batch

    def run(jobs: Sequence[FilePair], prepare_: Any, execute: Any, describe: Any, close: Any, **kwargs: Any) -> Report:
        if kwargs.get("dry_run"):
            return run_batch(jobs, prepare_, execute, describe, close, **kwargs)
        task_opts = cluster_options(opts)
        with connect(opts.cluster.scheduler or "") as client:
            return run_many(
                jobs, lambda pair: prepare(layer, pair.input, pair.output, task_opts), task_opts, client, **kwargs
            )

    return run


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
            running = {k for keys_ in client.processing().values() for k in keys_}
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
    return exc if isinstance(exc, (Deconv3dError, Exception)) else RunError(str(exc))


def _as_completed() -> Any:
    from distributed import as_completed

    return as_completed()
