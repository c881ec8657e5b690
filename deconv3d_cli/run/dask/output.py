"""One output produced by tile tasks: what may be split, its target and journal, its tasks, its commit.

Outputs that tasks share are Zarr (tiles aligned to its chunks, so no two tasks ever write the same
chunk) or .npy (disjoint byte ranges of one file, on a filesystem all workers see). The formulation
is decided once, on a worker (tasks.decide: the journal's on resume), so every task computes alike.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ...engine.activity import ActivityAccumulator
from ...errors import InputError
from ...io import PartialUnusable
from ...io.atomic import OutputTarget, partial_path
from ..job import Job, missing_note
from ..tiles import Counts
from . import tasks


def chunk_misalignment(job: Job, writer_options: dict[str, Any], chunks: Sequence[int] | None = None) -> str | None:
    """Why concurrent tasks could share an output chunk (tiles not on chunk boundaries), or None.

    `chunks`: those of an existing (partial) output; else the options' own, else the format's defaults.
    """
    if not (job.facts.chunked and job.facts.shared_writes):
        return None
    from ... import io

    chunks = chunks or writer_options.get("chunks")
    if chunks is None:
        chunks = io.output_chunks(job.facts.name, job.out_shape, job.out_dtype, job.out_layout, {})
    assert chunks is not None
    spatial = [chunks[a] for a in job.out_layout.spatial_axes] if len(chunks) == len(job.out_shape) else list(chunks)
    for axis, (t, c, n) in enumerate(zip(job.plan.tile_shape, spatial, job.plan.out_shape)):
        if t % c and t < n:
            return (
                f"tiles of {list(job.plan.tile_shape)} are not aligned to the output chunks {spatial} "
                f"(axis {axis}); give --chunks that divide the tile, or a larger --memory-limit"
            )
    if job.out_layout.has_batch and job.plan.batch_step != 1 and chunks[0] != 1:
        return "batch tiles are not aligned to the output chunks"
    return None


def can_split(job: Job) -> bool:
    """Whether the output can be made by one task per tile (else one task runs the whole file)."""
    return (
        len(job.plan) > 1
        and job.facts.shared_writes
        and job.in_facts.random_access
        and chunk_misalignment(job, {}, job.chunks) is None
    )


def refuse(job: Job) -> None:
    """A single output on the cluster must be split into tile tasks: refuse, saying how, what cannot."""
    if not job.facts.shared_writes:
        stem = job.output.name.split(".")[0]
        raise InputError(
            f"a --scheduler run writes Zarr (or .npy on a filesystem all workers share), not {job.facts.label}; "
            f"write {stem}.zarr, then convert it on one machine: deconv3d upsample {stem}.zarr -o {job.output.name} "
            "--preset nearest --scale 1 --output-dtype keep",
            source=str(job.output),
        )
    if len(job.plan) > 1 and not job.in_facts.random_access:
        raise InputError(
            f"a {job.in_facts.label} is decompressed from its start by every task that reads it; convert it to .zarr "
            "first "
            f"(deconv3d upsample IN{job.in_facts.extension} -o IN.zarr --preset nearest --scale 1) or fit it in one "
            "tile",
            source=str(job.input),
        )
    why = chunk_misalignment(job, {}, job.chunks)
    if why:
        raise InputError(why, source=str(job.output))


def refuse_output(job: Job, writer_options: dict[str, Any]) -> None:
    """`refuse` for this job written with `writer_options` (their chunks, else the job's)."""
    refuse(replace(job, chunks=writer_options.get("chunks", job.chunks)))


class TileOutput:
    """One output being produced by tile tasks: its target, journal, task context and pending tiles."""

    def __init__(self, job: Job, client: Any) -> None:
        """`job` is planned and its reader closed (its shape and format are still read from it)."""
        refuse(job)
        self.job, self.client = job, client
        self.token = uuid.uuid4().hex[:12]
        remote = replace(job, reader=None)
        self.decision = client.submit(tasks.decide, remote, key=f"deconv3d-path-{self.token}", pure=False).result()
        header = {**job.header(), "engine_path": self.decision["engine_path"]}
        write = job.options.write
        self.target = OutputTarget(
            job.output, header, overwrite=write.overwrite, resume=write.resume, directory=job.facts.directory
        )
        self.resumed = self.target.open()
        try:
            self._create_store()
            ctx = tasks.TaskContext(remote, partial_path(job.output), self.decision["engine_path"])
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
        self.voxels, self.tasks, self.task_seconds = 0, 0, 0.0
        self.counts = Counts()
        self.missing = 0
        self.devices: set[str] = set()
        self.threads: set[int] = set()
        self.activity = ActivityAccumulator(job.activity_regularizer)
        self.memory: dict[int, int] = {}

    def _create_store(self) -> None:
        """The store (or file) and its metadata, made once here; tasks reopen it to write their regions."""
        job = self.job
        try:
            writer = job.open_writer(self.target.partial, resume=self.resumed)
        except PartialUnusable as exc:
            if not self.resumed:
                raise
            self.target.restart(exc.message)
            self.resumed = False
            writer = job.open_writer(self.target.partial, resume=False)
        writer.close()
        why = chunk_misalignment(job, {}, writer.chunks) if self.resumed else None
        if why:
            raise InputError(
                f"the partial output cannot be resumed by concurrent tasks: {why}; resume it without --scheduler",
                source=str(job.output),
            )

    def next_future(self) -> Any | None:
        tile = next(self._tiles, None)
        if tile is None:
            self.exhausted = True
            return None
        fut = self.client.submit(
            tasks.run_tile, self.ctx_future, [tile], key=f"deconv3d-tile-{self.token}-{tile.index}", pure=False
        )
        self.outstanding.add(fut.key)
        self.tasks += 1
        return fut

    def completed(self, key: str, result: dict[str, Any]) -> None:
        self.outstanding.discard(key)
        self.pending.extend(result["tiles"])
        self.voxels += result["voxels"]
        self.counts.add(result["counts"])
        self.missing += result.get("missing_chunks", 0)
        self.task_seconds += result["seconds"]
        self.devices.add(result["device"])
        self.threads.add(result["torch_threads"])
        sum_abs, sum_sq, tiles = result["activity"]
        self.activity.sum_abs += sum_abs
        self.activity.sum_sq += sum_sq
        self.activity.tiles += tiles
        grew = max(0, result["rss_peak"] - result["rss_base"])
        self.memory[result["worker"]] = max(self.memory.get(result["worker"], 0), grew)
        if time.monotonic() - self.last_record >= self.job.options.write.checkpoint_every:
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
        self.checkpoint()
        job.open_writer(self.target.partial, resume=True).close()  # the only writer now: sweep, sync
        self.target.commit()
        seconds = time.perf_counter() - self.started
        stats = {
            "seconds": round(seconds, 4),
            "voxels_per_s": round(self.voxels / seconds, 1) if seconds > 0 else None,
            "resumed_tiles": self.resumed_tiles,
            **self.counts.as_dict(),
            "device": ",".join(sorted(self.devices)) or None,
            **self.decision,
            "torch_threads": min(self.threads) if len(self.threads) == 1 else sorted(self.threads),
            "missing_chunks": self.missing,
            "notes": job.notes + list(self.target.notes) + missing_note(job, self.missing),
            "scheduler": scheduler,
            "tasks": self.tasks,
            "window": window,
            "max_tasks_in_flight": max_in_flight,
            "task_seconds": round(self.task_seconds, 4),
            "worker_peak_memory_bytes": max(self.memory.values(), default=0),
            "worker_memory_bytes": {str(k): v for k, v in sorted(self.memory.items())},
        }
        complete = self.activity.tiles == len(job.plan)
        return job.result(stats, self.activity, complete=complete)

    def abort(self) -> None:
        self.target.abort()

    def release(self) -> None:
        try:
            self.ctx_future.release()
        except Exception:  # noqa: BLE001 - the cluster is going away
            pass


def _identity(value: Any) -> Any:
    return value
