"""The threaded local runner: read-ahead, compute, write-behind, checkpoints, atomic commit.

Three stages joined by bounded queues (their depth is what the plan counts in its memory estimate): a
reader thread fetches input slabs, the calling thread runs the engine, a writer thread stores the
tiles; a fourth thread makes written tiles durable and journals them every `checkpoint_every` seconds.
An error in any stage stops all of them and removes the partial output. A stop request (SIGTERM,
Ctrl-C: stop.py) stops them too, but between tiles: the tiles already computed are written, made
durable and journalled, the partial is kept, and `Interrupted` says how many tiles `--resume` will skip.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.activity import ActivityAccumulator
from ..engine.transfer import Transfers
from ..errors import RunError
from ..geometry.tiling import READ_AHEAD, WRITE_BEHIND
from ..io import DiskFault, PartialUnusable
from ..io.atomic import OutputTarget
from . import progress
from .engines import engine_for, settle
from .job import Job, LayerSource, missing_note, prepare
from .options import Options
from .pool import Pool, memory_axes
from .stop import STOP, Interrupted
from .tiles import Counts, compute_tile, read_tile, write_tile

READER_GRACE = 1.0  # seconds a stop waits for a read in progress before leaving it behind


class _Stop(Exception):
    """Raised in a stage when another stage has failed or the run is stopping."""


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue[Any], stop: threading.Event, also: threading.Event | None = None) -> Any:
    """The next item of `q`; `_Stop` once `stop` (or `also`, e.g. a signal's request) is set."""
    while True:
        if stop.is_set() or (also is not None and also.is_set()):
            raise _Stop
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue


class Pipeline:
    """One job's run: the partial target, its writer and the stage threads."""

    def __init__(self, job: Job, engine: Any, on_progress: Callable[[int], None] | None = None) -> None:
        self.job, self.engine, self.on_progress = job, engine, on_progress
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.counts = Counts()
        self.activity = ActivityAccumulator(job.activity_regularizer)
        self.transfers = Transfers(engine.device)
        self.q_in: queue.Queue[Any] = queue.Queue(maxsize=READ_AHEAD)
        self.q_out: queue.Queue[Any] = queue.Queue(maxsize=WRITE_BEHIND)
        self.written: list[int] = []
        self.written_lock = threading.Lock()
        self.writing_done = threading.Event()
        self.writer: Any = None
        self.target: OutputTarget | None = None
        self.busy = {"compute": 0.0, "write": 0.0}
        self.skipped: frozenset[int] = frozenset()
        self.sent_end = False  # the compute stage has told the writer there are no more tiles
        self.let_go = False  # stage threads left to the process's end (a second signal, a read that hangs)

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        job = self.job
        started = time.perf_counter()
        decision = settle(job, self.engine)
        job.timings["formulation"] = time.perf_counter() - started
        header = {**job.header(), "engine_path": decision["engine_path"]}
        write = job.options.write
        target = OutputTarget(
            job.output, header, overwrite=write.overwrite, resume=write.resume, directory=job.facts.directory
        )
        self.target = target
        resumed = target.open()
        computing = time.perf_counter()
        try:
            self.writer, resumed = self._open_writer(target, resumed)
            self.skipped = frozenset(target.done) if resumed else frozenset()
            todo = (t for t in job.plan.tiles() if t.index not in self.skipped)
            kept = sum(t.voxels for t in job.plan.tiles() if t.index in self.skipped)
            with progress.bar(job, job.options.progress, initial=kept) as bar:
                with STOP.listening():
                    self._stages(todo, bar)
                # the last flush, compression and rename can take seconds: the bar says so meanwhile
                bar.set_postfix_str("finishing: last writes, compression, commit")
                committing = time.perf_counter()
                self._finish(target)
        except Interrupted as stopped:
            if stopped.at_once:
                self._let_go(target)
            else:
                self._keep(target)
            stopped.kept, stopped.total, stopped.target = len(target.done), len(job.plan), job.output
            raise
        except DiskFault as fault:
            self._after_fault(target, fault)
            raise
        except BaseException:
            self._discard(target)
            raise
        finally:
            if not self.let_go:
                job.close()  # a reader thread let go may be inside HDF5, holding its lock: not touched
        now = time.perf_counter()
        job.timings.update(compute=self.busy["compute"], write=self.busy["write"], commit=now - committing)
        job.timings["run"] = now - computing
        return self._result(decision, now - started)

    def _finish(self, target: OutputTarget) -> None:
        """Every tile is in: make it durable, close the writer (a .nii.gz writer compresses its last
        members here), check that every voxel arrived, and rename the partial over the target."""
        self._checkpoint()
        self.job.timings.update(getattr(self.writer, "timings", {}))  # e.g. a .nii.gz writer's compression
        self.writer.close()
        complete = getattr(self.writer, "complete", True)  # a streaming writer knows if every byte came
        self.writer = None
        if not complete:
            raise RunError("the output is missing voxels after every tile was written", source=str(self.job.output))
        target.commit()

    def _open_writer(self, target: OutputTarget, resumed: bool) -> tuple[Any, bool]:
        """The writer on the partial; a partial that cannot be reopened is started over (noted)."""
        try:
            return self.job.open_writer(target.partial, resume=resumed), resumed
        except PartialUnusable as exc:
            if not resumed:
                raise
            target.restart(exc.message)
            return self.job.open_writer(target.partial, resume=False), False

    def _result(self, decision: dict[str, Any], seconds: float) -> dict[str, Any]:
        job, target = self.job, self.target
        assert target is not None
        voxels = sum(t.voxels for t in job.plan.tiles() if t.index not in self.skipped)
        stats = {
            "seconds": round(seconds, 4),
            "voxels_per_s": round(voxels / seconds, 1) if seconds > 0 else None,
            "resumed_tiles": len(self.skipped),
            **self.counts.as_dict(),
            "device": str(self.engine.device),
            **decision,
            "missing_chunks": int(getattr(job.reader, "missing_chunks", 0)),
            "notes": job.notes + list(target.notes) + missing_note(job),
        }
        return job.result(stats, self.activity, complete=self.activity.tiles == len(job.plan))

    # ------------------------------------------------------------------ stages
    def _stages(self, todo: Any, bar: Any) -> None:
        threads = [
            threading.Thread(target=self._read_stage, args=(todo,), daemon=True),
            threading.Thread(target=self._write_stage, args=(bar,), daemon=True),
            threading.Thread(target=self._sync_stage, daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            self._compute_stage()
        except (_Stop, Interrupted) as stopped:
            if getattr(stopped, "at_once", False):  # a second signal: nothing is waited for (`_let_go`)
                self.let_go = True
                raise
        except BaseException:
            self.stop.set()
            raise
        finally:
            if not self.let_go:
                self._join(threads)
        if self.errors:
            raise self.errors[0]
        STOP.check()

    def _join(self, threads: list[threading.Thread]) -> None:
        """Wait for the stages; on a stop request the writer first drains the tiles already computed.

        A stop does not wait for a read in progress: its slab would only be thrown away, and one read
        of a slow or damaged input can take minutes. After READER_GRACE the reader thread (a daemon)
        is left to end with the process, and the input is not closed under it. A second signal
        meanwhile ends the wait: its Interrupted leaves here (see `_let_go`).
        """
        if STOP.event.is_set() and not self.stop.is_set():
            self._drain()
        reader, *others = threads
        for t in others:
            while t.is_alive():
                t.join(timeout=0.2)
                if self.errors:
                    self.stop.set()
        waited = 0.0
        while reader.is_alive():
            reader.join(timeout=0.2)
            waited += 0.2
            if STOP.event.is_set() and waited >= READER_GRACE:
                self.let_go = True
                return

    def _drain(self) -> None:
        """Stopping between tiles: the reader stops (it watches STOP); computed tiles still reach the writer."""
        if not self.sent_end:
            try:
                self.q_out.put(None, timeout=30)
            except queue.Full:
                self.stop.set()
        self.writing_done.wait(timeout=60)
        self.stop.set()

    def _read_stage(self, todo: Any) -> None:
        job = self.job
        try:
            for tile in todo:
                if STOP.event.is_set():
                    break
                _put(self.q_in, (tile, self.transfers.upload(read_tile(job, job.reader, tile))), self.stop)
            _put(self.q_in, None, self.stop)
        except _Stop:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.errors.append(exc)
            self.stop.set()

    def _compute_stage(self) -> None:
        job, pool = self.job, self._pool()
        held: list[np.ndarray] = []
        phase_of = getattr(self.writer, "phase", None)
        index_of: list[tuple[slice, ...]] = []

        def recycled(shape: tuple[int, ...], y: Any) -> np.ndarray:
            held.append(_get(pool.free, self.stop))
            phase = phase_of(index_of[0]) if phase_of else None
            axes = memory_axes(self.writer, y, job.in_layout.squeeze_ncdhw(y, job.filters))
            return pool.view(held[-1], shape, job.out_dtype, phase, axes)

        self.pool = pool
        while True:
            STOP.check()
            item = _get(self.q_in, self.stop, STOP.event)  # a signal must not wait for a slow read
            if item is None:
                break
            tile, slab = item
            del item
            index_of[:] = [job.out_layout.region(tile.out, tile.batch)]
            t0 = time.perf_counter()
            data, counts = compute_tile(
                job, self.engine, self.transfers.ready(slab), tile, recycled, self.activity, self.transfers
            )
            self.busy["compute"] += time.perf_counter() - t0
            del slab
            self.counts.add(counts)
            _put(self.q_out, (tile, data, held.pop()), self.stop)
        _put(self.q_out, None, self.stop)
        self.sent_end = True

    def _pool(self) -> Pool:
        job = self.job
        plan = job.plan
        tile_bytes = plan.batch_step * job.filters * int(np.prod(plan.tile_shape)) * job.out_dtype.itemsize
        return Pool(WRITE_BEHIND + 2, tile_bytes, self.transfers.host_buffer)

    def _write_stage(self, bar: Any) -> None:
        try:
            while True:
                item = _get(self.q_out, self.stop)
                if item is None:
                    break
                tile, data, buf = item
                self.transfers.wait(data)  # the tile's own array: it starts inside `buf` (see Pool.view)
                t0 = time.perf_counter()
                write_tile(self.job, self.writer, tile, data)
                self.busy["write"] += time.perf_counter() - t0
                self.pool.free.put(buf)
                with self.written_lock:
                    self.written.append(tile.index)
                bar.update(tile.voxels)
                if self.on_progress:
                    self.on_progress(tile.voxels)
        except _Stop:
            pass
        except BaseException as exc:  # noqa: BLE001
            self.errors.append(exc)
            self.stop.set()
        finally:
            self.writing_done.set()

    def _sync_stage(self) -> None:
        # Off the writer's path: fsync waits for the disk while the next tiles are written.
        every = max(self.job.options.write.checkpoint_every, 0.001)
        last = time.monotonic()
        try:  # waits of at most a minute: a wait of `inf` or 1e308 s overflows the platform's time_t
            while not self.writing_done.wait(min(every, 60.0)):
                if self.stop.is_set():
                    return
                if every <= 60.0 or time.monotonic() - last >= every:
                    self._checkpoint()
                    last = time.monotonic()
        except BaseException as exc:  # noqa: BLE001
            self.errors.append(exc)
            self.stop.set()

    def _checkpoint(self) -> None:
        """Tiles whose writes returned, made durable, then journalled (in that order)."""
        with self.written_lock:
            batch = self.written[:]
            del self.written[:]
        if batch:
            self.writer.flush()
            assert self.target is not None
            self.target.record(batch)

    # ------------------------------------------------------------------ endings
    def _keep(self, target: OutputTarget) -> None:
        """A stop: what was written is made durable and journalled; partial and journal stay."""
        try:
            if self.writer is not None and not self.errors:
                self._checkpoint()
                self.writer.close()
                self.writer = None
        finally:
            if self.writer is not None:
                _abandon(self.writer)
            target.keep()

    def _let_go(self, target: OutputTarget) -> None:
        """A second signal: stop now. No stage thread is waited for and the writer and reader are left
        as they are (either may be inside HDF5, holding its lock); the journal already names every tile
        made durable, so `--resume` continues from there, as after a kill -9. Only the lock goes."""
        self.let_go = True
        self.stop.set()
        target.keep()

    def _after_fault(self, target: OutputTarget, fault: DiskFault) -> None:
        """A full or failing disk: tiles already journalled stay resumable (said in the error); with none,
        nothing is left behind."""
        self.stop.set()
        kept = bool(target.done) and os.path.lexists(target.partial)
        if self.writer is not None:
            _abandon(self.writer, keep=kept)
            self.writer = None
        if kept:
            target.keep()
            fault.message += f"; {len(target.done)} finished tile(s) kept: free some space and rerun with --resume"
            fault.args = (fault.line(),)
        else:
            target.abort()

    def _discard(self, target: OutputTarget) -> None:
        self.stop.set()
        if self.writer is not None:
            _abandon(self.writer)
        target.abort()


def _abandon(writer: Any, keep: bool = False) -> None:
    """Close a writer after a failure; one that can drop its work (a staged .nii.gz) does so, unless the
    journalled tiles are `keep`: then one with side files for resuming (a .nii.gz's index) keeps them."""
    how = (getattr(writer, "keep", None) if keep else None) or getattr(writer, "abort", None) or writer.close
    try:
        how()
    except Exception:  # noqa: BLE001 - the first error is the one to report
        pass


def execute(job: Job, engine: Any, opts: Options | None = None, on_progress: Callable[[int], None] | None = None):
    """Compute every tile of the plan into a partial file, then atomically move it onto the target.

    The engine keeps the formulation it came with: one fixed for this output is released afterwards,
    so the next file of a batch gets its own decision. `opts` is the job's own (kept for callers that
    pass it).
    """
    before = getattr(engine, "forced", None)
    try:
        return Pipeline(job, engine, on_progress).run()
    finally:
        if hasattr(engine, "forced"):
            engine.forced = before


def run_job(
    spec: LayerSource,
    input_path: Path,
    output_path: Path,
    opts: Options,
    engines: dict | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """prepare + execute one file; `on_start(plan)` is told the plan before anything is computed."""
    job = prepare(spec, input_path, output_path, opts)
    try:
        if on_start is not None:
            on_start(job.describe())
        engine = engine_for(job, {} if engines is None else engines)
    except BaseException:
        job.close()
        raise
    return execute(job, engine, opts, on_progress)
