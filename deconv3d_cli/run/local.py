"""Runs a tile plan: read-ahead, compute, write-behind, progress, journal, atomic commit.

Three stages joined by bounded queues (their depth is what tiling.py counts in the memory estimate):
a reader thread fetches input slabs, the calling thread runs the engine, a writer thread stores the
tiles and, every `flush_every` seconds, makes them durable and records them in the journal. Any error
or interrupt in any stage stops all three and removes the partial output.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import io as vio
from ..engine.activity import ActivityAccumulator
from ..engine.transfer import Transfers
from ..errors import InputError
from ..geometry import boundary
from ..geometry.layout import Layout
from ..geometry.tiling import READ_AHEAD, WRITE_BEHIND, Costs, Plan, PlanError, Tile, make_plan
from ..io.atomic import OutputTarget, journal_header, same_file
from ..io.direct import ALIGN
from ..layer import regularizers
from ..layer.spec import LayerSpec

FLOAT_DTYPES = ("float32", "float64", "float16")


@dataclass
class Options:
    device: str = "cpu"
    precision: str = "fp32"
    memory_limit: int = 1 << 30
    tile: tuple[int, int, int] | None = None
    dataset: str | None = None
    output_dataset: str | None = None
    output_dtype: str = "float32"
    overwrite: bool = False
    resume: bool = False
    progress: bool = True
    flush_every: float = 2.0
    boundary: str = "zeros"
    fourth_axis: str = "auto"  # NIfTI's 4th axis: auto, channels or series (see io/nifti.py)
    writer_options: dict[str, Any] = field(default_factory=dict)
    # A Dask scheduler address or local[:N]: distributed.py runs the plan as Dask tasks (None: threads here).
    scheduler: str | None = None
    # auto: time the formulations on the first slab; or one of engine.paths.PATHS.
    engine_path: str = "auto"


@dataclass
class Prepared:
    """Everything known about one job before any voxel is computed."""

    spec: LayerSpec
    input: Path
    output: Path
    reader: Any
    in_layout: Layout
    out_layout: Layout
    out_shape: tuple[int, ...]
    out_dtype: np.dtype
    plan: Plan
    out_format: str
    meta: vio.VolumeMeta
    boundary: str = "zeros"
    dataset: list[str | None] | None = None

    def header(self) -> dict[str, Any]:
        """What must match for `--resume` to continue a partial output."""
        st = self.input.stat()
        return {
            "input": str(self.input.resolve()),
            "input_size": st.st_size,
            "input_mtime_ns": st.st_mtime_ns,
            "spec": self.spec.fingerprint(),
            "out_shape": list(self.out_shape),
            "out_dtype": self.out_dtype.str,
            "tile_shape": list(self.plan.tile_shape),
            "batch_step": self.plan.batch_step,
            "boundary": self.boundary,
            "dataset": self.dataset,
        }

    def describe(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "input": str(self.input),
            "output": str(self.output),
            "input_shape": list(self.reader.shape),
            "input_dtype": str(self.reader.dtype),
            "output_shape": list(self.out_shape),
            "output_dtype": str(self.out_dtype),
            "layer": self.spec.describe(),
            "boundary": self.boundary,
            "tile_shape": list(plan.tile_shape),
            "batch_per_tile": plan.batch_step,
            "tile_grid": list(plan.grid),
            "tiles": len(plan),
            "halo": list(plan.halo),
            "memory_estimate_bytes": plan.tile_bytes(),
            "output_bytes": int(np.prod(self.out_shape)) * self.out_dtype.itemsize,
            "spacing_in": _floats(self.reader.meta.spacing),
            "spacing_out": _floats(self.meta.spacing),
            "fourth_axis": getattr(self.reader, "fourth_axis_choice", None),
        }


def _floats(values: Any) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def resolve_output_dtype(name: str, input_dtype: np.dtype) -> np.dtype:
    key = (name or "float32").lower()
    if key == "keep":
        return np.dtype(input_dtype) if np.dtype(input_dtype).kind != "b" else np.dtype(np.uint8)
    try:
        dt = np.dtype(key)
    except TypeError:
        dt = None
    if dt is None or dt.kind not in "fiu":
        raise InputError(
            f"{name!r}; use float32, float64, float16, keep or an integer type such as int16", param="output_dtype"
        )
    return dt


SpecSource = LayerSpec | Callable[[int], LayerSpec]


def prepare(spec: SpecSource, input_path: Path, output_path: Path, opts: Options, reader: Any = None) -> Prepared:
    """Open the input and plan the job. `spec` may be a factory of the input's channel count (presets).

    `reader` replaces opening `input_path` (distributed.py's virtual input for `--dry-run --input-shape`).
    """
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.exists() and same_file(input_path, output_path) or input_path.resolve() == output_path.resolve():
        raise InputError("output is the input file; choose another output path", source=str(output_path))
    out_format = vio.format_of(output_path)
    vio.check_writer_options(out_format, opts.writer_options, output_path)
    in_channels = None  # a preset (a factory of the channel count) takes any number of channels
    if isinstance(spec, LayerSpec):
        in_channels = spec.kernel.shape[4] if spec.kernel is not None else spec.in_channels
    if reader is None:
        reader = vio.open_reader(input_path, opts.dataset, fourth_axis=opts.fourth_axis, in_channels=in_channels)
    try:
        if len(reader.shape) not in (3, 4, 5):
            raise InputError(
                f"shape {reader.shape}: expected 3 (D, H, W), 4 (with channels) or 5 (with batch) dimensions",
                source=str(input_path),
            )
        # Formats with a fixed axis order (NIfTI: x, y, z, channels) say so; others follow the spec.
        spec_format = spec.data_format if isinstance(spec, LayerSpec) else "channels_last"
        layout = Layout(len(reader.shape), getattr(reader, "data_format", None) or spec_format)
        channels = layout.channels(reader.shape)
        if not isinstance(spec, LayerSpec):
            spec = spec(channels)
        expected = spec.kernel.shape[4] if spec.kernel is not None else spec.in_channels
        if expected is not None and channels != expected:
            raise InputError(
                f"shape {reader.shape} has {channels} channel(s) ({spec.data_format}) but the layer expects "
                f"{expected}; check data_format in the spec",
                source=str(input_path),
            )
        try:
            axes = boundary.extend_axes(spec.axes(layout.spatial_shape(reader.shape)), opts.boundary)
        except ValueError as exc:
            raise InputError(str(exc), param="boundary") from None
        out_shape = layout.output_shape(reader.shape, [ax.out for ax in axes], spec.filters)
        out_layout = layout.output_layout(spec.filters)
        out_dtype = resolve_output_dtype(opts.output_dtype, reader.dtype)
        compute_item = 8 if opts.precision == "fp64" else 4
        costs = Costs(
            in_item=reader.dtype.itemsize,
            compute_item=compute_item,
            out_item=out_dtype.itemsize,
            unfold=opts.precision == "fp64",
        )
        chunks = vio.output_chunks(out_format, out_shape, out_dtype, out_layout, opts.writer_options)
        spatial_chunks = None if chunks is None else [chunks[a] for a in out_layout.spatial_axes]
        try:
            plan = make_plan(
                axes,
                layout.batch(reader.shape),
                channels,
                spec.filters,
                spec.kernel_size,
                memory_limit=opts.memory_limit,
                tile_shape=opts.tile,
                chunks=spatial_chunks,
                full_width=spec.mixes_width,
                costs=costs,
                slabs=vio.writes_slabs(out_format),
            )
        except PlanError as exc:
            raise InputError(exc.message, param=exc.param) from None
        meta = vio.output_meta(reader.meta, axes)
    except BaseException:
        reader.close()
        raise
    return Prepared(
        spec,
        input_path,
        output_path,
        reader,
        layout,
        out_layout,
        out_shape,
        out_dtype,
        plan,
        out_format,
        meta,
        boundary=opts.boundary,
        dataset=[opts.dataset, opts.output_dataset],
    )


class _Stop(Exception):
    pass


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue[Any], stop: threading.Event) -> Any:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue


class _Pool:
    """Host buffers for output tiles, recycled by the writer thread.

    Fresh pages cost a page fault each (slow on virtual machines) and freed ones linger in the
    allocator's heap; a fixed set of buffers avoids both and bounds the tiles in flight.
    """

    def __init__(self, count: int, nbytes: int, make: Callable[[int], np.ndarray] | None = None) -> None:
        self.free: queue.Queue[np.ndarray] = queue.Queue()
        nbytes += ALIGN  # room to place a tile at any phase within a page (see `view`)
        for _ in range(count):
            self.free.put(make(nbytes) if make else np.empty(max(nbytes, 1), np.uint8))

    def view(self, buf: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, phase: int | None = None) -> np.ndarray:
        """A `shape` array in `buf`, starting `phase` bytes past a page boundary when a phase is given.

        A writer that sends tiles to disk directly (io/direct.py) wants the data aligned in memory like
        its place in the file; then the disk reads the tile's own pages and nothing is copied.
        """
        start = 0 if phase is None else (phase - buf.ctypes.data) % ALIGN
        return buf[start : start + int(np.prod(shape)) * dtype.itemsize].view(dtype).reshape(shape)


def _store(y: Any, host: np.ndarray, transfers: Any = None) -> int:
    """Copy the tile into `host` in its dtype; integers are rounded and clipped, clipped voxels counted.

    With CUDA `transfers`, a float tile's copy is started asynchronously (the writer waits for it).
    """
    import torch

    if transfers is not None and transfers.download(y, host):
        return 0
    if host.dtype.kind == "f":
        torch.from_numpy(host).copy_(y)
        return 0
    from ..engine.core import to_numpy

    info = np.iinfo(host.dtype)
    rounded = np.rint(to_numpy(y))
    clipped = int(np.count_nonzero((rounded < info.min) | (rounded > info.max)))
    np.copyto(host, np.clip(rounded, info.min, info.max), casting="unsafe")
    return clipped


# ------------------------------------------------------------------------------------- one tile
# The three steps of one tile, the only place they are written: execute() below runs them on its
# reader thread, the calling thread and its writer thread; distributed.py runs process_tile() as one
# Dask task (with `job.reader` None: each task opens its own reader and writer).


def read_tile(job: Prepared, reader: Any, tile: Tile) -> np.ndarray:
    """The input slab of `tile` as (N, C, D, H, W), boundary extension included."""
    raw = boundary.read_slab(reader.read, job.in_layout, tile.src, tile.batch, job.plan.axes, job.boundary)
    return job.in_layout.to_ncdhw(raw)


def compute_tile(
    job: Prepared,
    engine: Any,
    slab: Any,
    tile: Tile,
    alloc: Callable[[tuple[int, ...]], np.ndarray] | None = None,
    activity: ActivityAccumulator | None = None,
    transfers: Any = None,
) -> tuple[np.ndarray, int]:
    """The output tile in the stored dtype and axis order, and how many voxels were clipped to it.

    `alloc(shape)` gives the host array to fill (execute's recycled buffers); a fresh one by default.
    `activity` accumulates the spec's activity_regularizer over the computed tiles (regularizers.py).
    """
    filters = job.spec.filters
    y = engine.tile(slab, tile.offsets, tile.sizes).permute(job.in_layout.ncdhw_order(filters))
    if activity is not None:
        activity.add(y)
    # One compact array in the stored order (torch's copy is multi-threaded); the slab's uncropped
    # output is freed when this returns, before the next tile.
    host = np.empty(tuple(y.shape), job.out_dtype) if alloc is None else alloc(tuple(y.shape))
    clipped = _store(y, host, transfers)
    return job.in_layout.squeeze_ncdhw(host, filters), clipped


def write_tile(job: Prepared, writer: Any, tile: Tile, data: np.ndarray) -> None:
    writer.write(job.out_layout.region(tile.out, tile.batch), data)


def process_tile(
    job: Prepared,
    reader: Any,
    writer: Any,
    engine: Any,
    tile: Tile,
    activity: ActivityAccumulator | None = None,
) -> int:
    """Read, compute and write one tile in the calling thread; returns the clipped voxel count."""
    slab = read_tile(job, reader, tile)
    data, clipped = compute_tile(job, engine, slab, tile, activity=activity)
    del slab
    write_tile(job, writer, tile, data)
    return clipped


def first_slab_shape(job: Prepared, channels: int) -> tuple[int, ...]:
    """(N, C, D, H, W) of the plan's first input slab: what the engine's formulation is timed on."""
    first = next(iter(job.plan.tiles()))
    return (first.batch.stop - first.batch.start, channels, *(max(s.stop - s.start, 1) for s in first.src))


def settle_engine(job: Prepared, engine: Any, opts: Options) -> dict[str, Any]:
    """Fix the engine's formulation and thread count for this output; they go in the resume journal.

    Formulations (and oneDNN's thread count) differ in float rounding, so a resumed output takes the
    ones recorded by the interrupted run, and the finished file equals an uninterrupted one bit for bit.
    """
    import torch

    earlier = journal_header(job.output) if opts.resume else None
    if earlier and earlier.get("engine_path") in engine.available_paths():
        engine.force_path(earlier["engine_path"])
        if earlier.get("torch_threads") and engine.device.type == "cpu":
            torch.set_num_threads(int(earlier["torch_threads"]))
    elif opts.engine_path != "auto":
        engine.force_path(opts.engine_path)
    elif engine.forced is None:  # every tile of this output with the formulation timed for its first slab
        engine.force_path(engine.choose_path(first_slab_shape(job, engine.in_channels)))
    return {"engine_path": engine.path, "torch_threads": torch.get_num_threads()}


def execute(
    job: Prepared,
    engine: Any,
    opts: Options,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Compute every tile of the plan into a partial file, then atomically move it onto the target.

    The engine keeps the formulation it came with: one fixed for this output (settle_engine) is
    released afterwards, so the next file of a batch is timed for its own shape.
    """
    before = getattr(engine, "forced", None)
    try:
        return _execute(job, engine, opts, on_progress)
    finally:
        if hasattr(engine, "forced"):
            engine.forced = before


def _execute(
    job: Prepared,
    engine: Any,
    opts: Options,
    on_progress: Callable[[int], None] | None,
) -> dict[str, Any]:
    header = {**job.header(), **settle_engine(job, engine, opts)}
    target = OutputTarget(job.output, header, overwrite=opts.overwrite, resume=opts.resume)
    resumed = target.open()
    writer = None
    stop = threading.Event()
    errors: list[BaseException] = []
    clipped = [0]
    plan, out_layout = job.plan, job.out_layout
    filters = job.spec.filters
    todo = [t for t in plan.tiles() if t.index not in target.done]
    skipped_voxels = sum(t.voxels for t in plan.tiles() if t.index in target.done) if resumed else 0
    started = time.perf_counter()
    bar = _progress_bar(job, opts, initial=skipped_voxels)
    activity = ActivityAccumulator(job.spec.activity_regularizer)
    try:
        writer = vio.create_writer(
            target.partial,
            job.out_format,
            job.out_shape,
            job.out_dtype,
            job.meta,
            resume=resumed,
            dataset=opts.output_dataset,
            layout=out_layout,
            **opts.writer_options,
        )
        q_in: queue.Queue[Any] = queue.Queue(maxsize=READ_AHEAD)
        q_out: queue.Queue[Any] = queue.Queue(maxsize=WRITE_BEHIND)
        tile_bytes = plan.batch_step * filters * int(np.prod(plan.tile_shape)) * job.out_dtype.itemsize
        transfers = Transfers(engine.device)
        pool = _Pool(WRITE_BEHIND + 2, tile_bytes, transfers.host_buffer)

        def read_stage() -> None:
            try:
                for tile in todo:
                    _put(q_in, (tile, transfers.upload(read_tile(job, job.reader, tile))), stop)
                _put(q_in, None, stop)
            except _Stop:
                pass
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                errors.append(exc)
                stop.set()

        written: list[int] = []
        written_lock = threading.Lock()
        writing_done = threading.Event()

        def write_stage() -> None:
            try:
                while True:
                    item = _get(q_out, stop)
                    if item is None:
                        break
                    tile, data, buf = item
                    transfers.wait(data)  # the tile's own array: it starts inside `buf` (see _Pool.view)
                    write_tile(job, writer, tile, data)
                    pool.free.put(buf)
                    with written_lock:
                        written.append(tile.index)
                    bar.update(tile.voxels)
                    if on_progress:
                        on_progress(tile.voxels)
            except _Stop:
                pass
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                stop.set()
            finally:
                writing_done.set()

        def checkpoint() -> None:
            """Tiles whose writes returned, made durable, then journalled (in that order)."""
            with written_lock:
                batch = written[:]
                del written[:]
            if batch:
                writer.flush()
                target.record(batch)

        def sync_stage() -> None:
            # Off the writer's path: fsync waits for the disk while the next tiles are written.
            try:
                while not writing_done.wait(max(opts.flush_every, 0.001)):
                    if stop.is_set():
                        return
                    checkpoint()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                stop.set()

        threads = [
            threading.Thread(target=read_stage, daemon=True),
            threading.Thread(target=write_stage, daemon=True),
            threading.Thread(target=sync_stage, daemon=True),
        ]
        for t in threads:
            t.start()
        held: list[np.ndarray] = []
        phase_of = getattr(writer, "phase", None)
        index_of: list[tuple[slice, ...]] = []

        def recycled(shape: tuple[int, ...]) -> np.ndarray:
            held.append(_get(pool.free, stop))
            return pool.view(held[-1], shape, job.out_dtype, phase_of(index_of[0]) if phase_of else None)

        try:
            while True:
                item = _get(q_in, stop)
                if item is None:
                    break
                tile, slab = item
                del item
                index_of[:] = [out_layout.region(tile.out, tile.batch)]
                data, n_clipped = compute_tile(job, engine, transfers.ready(slab), tile, recycled, activity, transfers)
                del slab
                clipped[0] += n_clipped
                _put(q_out, (tile, data, held.pop()), stop)
            _put(q_out, None, stop)
        except _Stop:
            pass
        except BaseException:
            stop.set()
            raise
        finally:
            for t in threads:
                while t.is_alive():
                    t.join(timeout=0.2)
                    if errors or stop.is_set():
                        stop.set()
        if errors:
            raise errors[0]
        checkpoint()
        writer.close()
        writer = None
        target.commit()
    except BaseException:
        stop.set()
        if writer is not None:
            try:
                # A writer that can drop its work (a .nii.gz that would otherwise be compressed) does so.
                (getattr(writer, "abort", None) or writer.close)()
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
        target.abort()
        raise
    finally:
        bar.close()
        job.reader.close()
    seconds = time.perf_counter() - started
    voxels = sum(t.voxels for t in todo)
    result = job.describe()
    result.update(
        status="done",
        seconds=round(seconds, 4),
        voxels_per_s=round(voxels / seconds, 1) if seconds > 0 else None,
        resumed_tiles=len(target.done) - len(todo) if resumed else 0,
        clipped_voxels=clipped[0],
        device=str(engine.device),
        engine_path=engine.path,
    )
    result.update(run_report_for(job, engine, activity))  # {} unless the spec names any
    return result


def _progress_bar(job: Prepared, opts: Options, initial: int = 0) -> Any:
    from tqdm import tqdm

    disabled = (
        not opts.progress
        or not sys.stderr.isatty()
        or os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false")
    )
    return tqdm(
        total=int(np.prod(job.out_shape)) // job.spec.filters,
        initial=initial,
        unit="vox",
        unit_scale=True,
        desc=job.output.name,
        disable=disabled,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )


def engine_for(job: Prepared, opts: Options, engines: dict) -> Any:
    """The engine for this job's channel count, built once per run and shared by every file."""
    from ..engine.core import Engine

    channels = job.in_layout.channels(job.reader.shape)
    key = (channels, job.spec.fingerprint())
    if key not in engines:
        engines[key] = Engine(job.spec, channels, opts.device, opts.precision)
    return engines[key]


def run_job(
    spec: SpecSource, input_path: Path, output_path: Path, opts: Options, engines: dict | None = None
) -> dict[str, Any]:
    """prepare + execute one file."""
    job = prepare(spec, input_path, output_path, opts)
    try:
        engine = engine_for(job, opts, {} if engines is None else engines)
    except BaseException:
        job.reader.close()
        raise
    return execute(job, engine, opts)


def run_report_for(job: Any, engine: Any, activity: ActivityAccumulator | None) -> dict[str, Any]:
    """`run_report` for one pipeline job: the spec's loaded weights (else the engine's), its batch size,
    and whether every tile of the plan was computed in this run."""
    spec = job.spec
    if spec.kernel is not None:
        kernel, bias = spec.kernel, spec.bias
    else:  # drawn by an initializer inside the engine: the sums do not depend on its layout
        kernel, bias = (_host(getattr(engine, name, None)) for name in ("weight", "bias"))
    complete = activity is not None and activity.tiles == len(job.plan)
    return regularizers.run_report(spec, kernel, bias, activity, batch=job.plan.batch, complete=complete)


def _host(w: Any) -> Any:
    """A torch weight as a float64 numpy array (None stays None; numpy passes through)."""
    if w is None or isinstance(w, np.ndarray):
        return w
    return w.detach().to("cpu").double().numpy()
