"""One output's job: every decision about it made once, before any voxel is computed.

`prepare` opens the input, works out the layer's channels, plans the tiles and the output's shape,
dtype and geometry, and checks the output against the format's facts (io.formats) and the target's
state (an existing file, a folder that is not ours, an interrupted run's partial). Every refusal a run
would make happens here, so `--dry-run` refuses exactly what the run would refuse, before any engine
or cluster starts. The local runner, the batch runner and the Dask runner all start from a `Job`:
they open its writer through `Job.open_writer`, and build their report through `Job.result`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import io
from ..errors import InputError
from ..geometry import boundary
from ..geometry.layout import Layout
from ..geometry.tiling import Plan
from ..io import formats
from ..io.atomic import check_target, partial_path, same_file
from ..io.base import VolumeMeta
from ..io.formats import FormatFacts
from ..layer import regularizers
from ..layer.resample import ResampleSpec
from ..layer.spec import LayerSpec
from .options import Options
from .planning import plan_job
from .resources import check_threads

# What to compute: a Conv3DTranspose layer, a preset (a factory of the input's channel count), or a
# resampling to another grid (each channel alone).
LayerSource = LayerSpec | Callable[[int], LayerSpec] | ResampleSpec


def reference_grid(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """(spatial shape, voxel-to-world affine) of a reference file (`--like`): its affine, else diag(spacing)."""
    reader = io.open_reader(Path(path))
    try:
        layout = Layout(len(reader.shape), getattr(reader, "data_format", None) or "channels_last")
        meta = reader.meta
        affine = meta.affine if meta.affine is not None else np.diag([*(meta.spacing or (1.0, 1.0, 1.0)), 1.0])
        return layout.spatial_shape(reader.shape), np.asarray(affine, dtype=np.float64)
    finally:
        reader.close()


def layer_channels(layer: LayerSource) -> int | None:
    """The input channels a layer takes (its kernel's, or its spec's `in_channels`); None: any (presets)."""
    if not isinstance(layer, LayerSpec):
        return None
    return int(layer.kernel.shape[4]) if layer.kernel is not None else layer.in_channels


@dataclass
class Job:
    """Everything known about one output before any voxel is computed."""

    spec: LayerSpec | ResampleSpec
    input: Path
    output: Path
    reader: Any  # open while the job runs locally; None inside a Dask task (see open_input)
    in_layout: Layout
    out_layout: Layout
    out_shape: tuple[int, ...]
    out_dtype: np.dtype
    plan: Plan
    facts: FormatFacts  # the output format's
    in_facts: FormatFacts
    meta: VolumeMeta
    options: Options
    channels: int
    filters: int  # output channels (a resampling keeps the input's)
    grid: Any = None  # a resampling's output grid (geometry.grid.Grid); None for a layer
    out_scaling: tuple[float, float] | None = None  # (slope, intercept) an integer output is stored with
    chunks: tuple[int, ...] | None = None  # a chunked output's chunks: the user's, or defaults dividing the tiles
    notes: list[str] = field(default_factory=list)  # said with the report (geometry fallbacks, dtype choices)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def out_format(self) -> str:
        return self.facts.name

    @property
    def boundary(self) -> str:
        return self.spec.boundary if isinstance(self.spec, ResampleSpec) else self.options.compute.boundary

    @property
    def activity_regularizer(self) -> Any:
        return getattr(self.spec, "activity_regularizer", None)

    def fingerprint(self) -> str:
        """What the output was computed with: the layer's weights and arguments, or the resampling asked for."""
        if isinstance(self.spec, ResampleSpec):
            import json

            return json.dumps(self.spec.to_config(), sort_keys=True)
        return self.spec.fingerprint()

    @property
    def output_bytes(self) -> int:
        return int(np.prod(self.out_shape)) * self.out_dtype.itemsize

    def header(self) -> dict[str, Any]:
        """What must match for `--resume` to continue a partial output."""
        st = self.input.stat()
        return {
            "input": str(self.input.resolve()),
            "input_size": st.st_size,
            "input_mtime_ns": st.st_mtime_ns,
            "spec": self.fingerprint(),
            "out_shape": list(self.out_shape),
            "out_dtype": self.out_dtype.str,
            "out_scaling": None if self.out_scaling is None else list(self.out_scaling),
            "tile_shape": list(self.plan.tile_shape),
            "batch_step": self.plan.batch_step,
            "boundary": self.boundary,
            "dataset": [self.options.read.dataset, self.options.write.dataset],
        }

    def describe(self) -> dict[str, Any]:
        """The plan, as the dry run and the start of every report show it."""
        plan = self.plan
        shape = self.reader.shape if self.reader is not None else None
        return {
            "input": str(self.input),
            "output": str(self.output),
            "input_shape": None if shape is None else list(shape),
            "input_file_shape": None if shape is None else list(getattr(self.reader, "stored_shape", shape)),
            "input_dtype": None if self.reader is None else str(self.reader.dtype),
            "output_shape": list(self.out_shape),
            "output_file_shape": list(self.out_file_shape()),
            "output_dtype": str(self.out_dtype),
            "layer": self.spec.describe(),
            "boundary": self.boundary,
            "tile_shape": list(plan.tile_shape),
            "batch_per_tile": plan.batch_step,
            "tile_grid": list(plan.grid),
            "tiles": len(plan),
            "halo": list(plan.halo),
            "memory_estimate_bytes": plan.tile_bytes(),
            "output_bytes": self.output_bytes,
            "spacing_in": _floats(None if self.reader is None else self.reader.meta.spacing),
            "spacing_out": _floats(self.meta.spacing),
            "fourth_axis": getattr(self.reader, "fourth_axis_choice", None),
            **({} if self.grid is None else {"grid": self.grid.describe()}),
        }

    def out_file_shape(self) -> tuple[int, ...]:
        """The output's shape in its file's own order (a NIfTI's x, y, z, t, c, as nibabel shows it)."""
        if self.facts.name != "nifti":
            return tuple(self.out_shape)
        from ..io.nifti_layout import writer_axes

        return writer_axes(tuple(int(n) for n in self.out_shape), self.out_layout.data_format)[1]

    def open_input(self) -> Any:
        """The input opened again (a Dask task opens its own reader)."""
        return io.open_reader(self.input, self.options.read.dataset, **self.options.read.hints(self.channels))

    def open_writer(self, path: Path, resume: bool) -> Any:
        """The output's writer on `path` (the partial), fresh or reopened: the only call of io.create_writer."""
        write = self.options.write
        options = dict(write.writer_options)
        if self.chunks is not None:
            options["chunks"] = self.chunks
        if self.out_scaling is not None:
            options["scaling"] = self.out_scaling
        return io.create_writer(
            path,
            self.facts.name,
            self.out_shape,
            self.out_dtype,
            self.meta,
            resume=resume,
            dataset=write.dataset,
            layout=self.out_layout,
            **options,
        )

    def first_slab_shape(self) -> tuple[int, ...]:
        """(N, C, D, H, W) of the plan's first input slab: what the formulation is chosen for."""
        first = next(iter(self.plan.tiles()))
        return (first.batch.stop - first.batch.start, self.channels, *(max(s.stop - s.start, 1) for s in first.src))

    def weights(self) -> tuple[Any, Any]:
        """The kernel and bias the run uses (drawn from the initializers when the spec has none)."""
        if isinstance(self.spec, ResampleSpec):
            return None, None
        if self.spec.kernel is not None:
            return self.spec.kernel, self.spec.bias
        return self.spec.materialise(self.channels)

    def result(self, stats: dict[str, Any], activity: Any = None, complete: bool = True) -> dict[str, Any]:
        """The report of a finished output: the plan, the run's `stats`, and the regularization values."""
        kernel, bias = self.weights()
        record = self.describe()
        record.update(status="done", **stats)
        record["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        record.update(regularizers.run_report(self.spec, kernel, bias, activity, self.plan.batch, complete))
        return record

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


def _floats(values: Any) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def resolve_output_dtype(name: str, input_dtype: np.dtype, target: Path | None = None) -> np.dtype:
    key = (name or "float32").lower()
    if key == "keep":
        return np.dtype(input_dtype) if np.dtype(input_dtype).kind != "b" else np.dtype(np.uint8)
    try:
        dt = np.dtype(key)
    except TypeError:
        dt = None
    if dt is None or dt.kind not in "fiu":
        raise InputError(
            f"{name!r}; use float32, float64, float16, keep or an integer type such as int16",
            source=None if target is None else str(target),
            param="output_dtype",
        )
    return dt


def check_paths(input_path: Path, output_path: Path, options: Options) -> tuple[FormatFacts, FormatFacts]:
    """The checks that need no file opened: formats, input == output, the target's state."""
    in_facts = formats.facts_of(input_path)  # the input first: a batch's stray file is named as given
    out_facts = formats.facts_of(output_path)
    if input_path.resolve() == output_path.resolve() or (output_path.exists() and same_file(input_path, output_path)):
        raise InputError("output is the input file; choose another output path", source=str(output_path))
    formats.check_input_dataset(in_facts, input_path, options.read.dataset)
    write = options.write
    check_target(output_path, directory=out_facts.directory, overwrite=write.overwrite, resume=write.resume)
    return in_facts, out_facts


def prepare(layer: LayerSource, input_path: Path, output_path: Path, options: Options, reader: Any = None) -> Job:
    """Open the input and plan the output; refuse here whatever the run would refuse.

    `reader` replaces opening `input_path` (a virtual input for `--dry-run --input-shape`: its output is
    meant for another machine's disk, so the free space here is not checked).
    """
    started = time.perf_counter()
    check_threads(options.compute.threads)
    input_path, output_path = Path(input_path), Path(output_path)
    in_facts, out_facts = check_paths(input_path, output_path, options)
    if reader is None:
        reader = io.open_reader(input_path, options.read.dataset, **options.read.hints(layer_channels(layer)))
    opened = time.perf_counter()
    try:
        job = _plan(layer, input_path, output_path, options, reader, in_facts, out_facts)
        if not getattr(reader, "virtual", False):
            check_room(job)
    except BaseException:
        reader.close()
        raise
    job.timings.update(open=opened - started, plan=time.perf_counter() - opened)
    return job


def _plan(
    layer: LayerSource,
    input_path: Path,
    output_path: Path,
    options: Options,
    reader: Any,
    in_facts: FormatFacts,
    out_facts: FormatFacts,
) -> Job:
    shape = tuple(reader.shape)
    if len(shape) not in (3, 4, 5) or any(n < 1 for n in shape):
        raise InputError(
            f"shape {shape}: expected 3 (D, H, W), 4 (with channels) or 5 (with batch) positive lengths",
            source=str(input_path),
        )
    # Formats with a fixed axis order (NIfTI: x, y, z, channels) say so; others follow the spec.
    spec_format = layer.data_format if isinstance(layer, (LayerSpec, ResampleSpec)) else "channels_last"
    layout = Layout(len(shape), getattr(reader, "data_format", None) or spec_format)
    channels = layout.channels(shape)
    grid = None
    if isinstance(layer, ResampleSpec):
        spec: LayerSpec | ResampleSpec = layer
        grid = _grid(layer, layout.spatial_shape(shape), reader, input_path)
        axes: Any = layer.axes(grid)
        filters = channels
    else:
        spec = layer if isinstance(layer, LayerSpec) else layer(channels)
        axes = _layer_axes(spec, layout, shape, channels, input_path, options)
        filters = spec.filters
    out_shape = layout.output_shape(shape, [ax.out for ax in axes], filters)
    out_layout = layout.output_layout(filters)
    out_dtype = resolve_output_dtype(options.write.dtype, reader.dtype, output_path)
    scaling, notes = None, list(getattr(reader, "notes", None) or ())
    if options.write.dtype.lower() == "keep":
        out_dtype, scaling = kept_type(spec, reader, out_facts, out_dtype, notes)
    formats.check_output(out_facts, output_path, out_dtype, options.write.writer_options, options.write.dataset)
    plan = plan_job(layer, spec, reader, layout, out_layout, out_shape, out_dtype, axes, channels, filters, options,
                    out_facts)  # fmt: skip
    meta = io.output_meta(reader.meta, axes) if grid is None else io.placed_meta(reader.meta, grid.affine, grid.spacing)
    job = Job(
        spec, input_path, output_path, reader, layout, out_layout, out_shape, out_dtype, plan, out_facts, in_facts,
        meta, options, channels, filters, grid,
    )  # fmt: skip
    job.chunks = options.write.chunks or aligned_chunks(job)
    job.out_scaling, job.notes = scaling, notes
    return job


def kept_type(
    spec: LayerSpec | ResampleSpec, reader: Any, facts: FormatFacts, dtype: np.dtype, notes: list[str]
) -> tuple[np.dtype, tuple[float, float] | None]:
    """`--output-dtype keep` on an input stored as scaled integers: the stored type with a slope and
    intercept that hold every value the computation can produce (layer/gain.py), where the output can
    store them (NIfTI); floats otherwise, said in a note."""
    scaling = getattr(reader, "scaling", None)
    stored = np.dtype(getattr(reader, "stored_dtype", dtype))
    if scaling is None or stored.kind not in "iu":
        return dtype, None
    if facts.name != "nifti":
        notes.append(f"keep: a {facts.label} output cannot store NIfTI's slope and intercept; written as {dtype}")
        return dtype, None
    from ..io.nifti_header import fit_scaling
    from ..layer.gain import integer_range, value_range

    slope, inter = float(scaling[0]), float(scaling[1])
    reach = value_range(spec, *integer_range(stored, slope, inter))
    if reach is None:
        notes.append(f"keep: this layer's activation is not bounded for a scaled {stored} output; written as {dtype}")
        return dtype, None
    (lo, hi), convex = reach
    if convex:
        return stored.newbyteorder("="), (slope, inter)
    fitted = fit_scaling(stored, lo, hi)
    notes.append(f"keep: {stored} with slope {fitted[0]:.6g} and intercept {fitted[1]:.6g} (the input's: {slope:.6g}, "
                 f"{inter:.6g}), to hold every value the layer can produce")  # fmt: skip
    return stored.newbyteorder("="), fitted


def missing_note(job: Job, count: int | None = None) -> list[str]:
    """A note when the input had absent chunks (read as the fill value, as the Zarr and HDF5 specs say)."""
    n = int(getattr(job.reader, "missing_chunks", 0) if count is None else count)
    if not n:
        return []
    return [f"{n} chunk(s) of {job.input} are absent and were read as the fill value"]


def check_room(job: Job) -> None:
    """Refuse an output its disk cannot hold (exactly, for uncompressed formats), before anything is written;
    a partial being resumed counts with the blocks it already has."""
    options = dict(job.options.write.writer_options)
    if job.chunks is not None:
        options["chunks"] = job.chunks
    nbytes, compressed = io.output_size(
        job.output, job.facts.name, job.out_shape, job.out_dtype, job.out_layout, options
    )
    reusing = partial_path(job.output) if job.options.write.resume and partial_path(job.output).is_file() else None
    io.check_space(partial_path(job.output), nbytes, compressed, reusing=reusing)


def aligned_chunks(job: Job) -> tuple[int, ...] | None:
    """A chunked output's default chunks, each spatial one shrunk to divide the plan's tiles (None: the
    format has no chunks). Tiles on chunk boundaries never share a chunk: no chunk is written twice,
    and concurrent Dask tasks can write their tiles side by side."""
    default = io.output_chunks(job.facts.name, job.out_shape, job.out_dtype, job.out_layout, {})
    if default is None:
        return None
    chunks = list(default)
    for a, t in zip(job.out_layout.spatial_axes, job.plan.tile_shape):
        c = chunks[a]
        if t % c:  # (a tile spanning the axis would do with a partial last chunk; a divisor is as good)
            d = max(d for d in range(1, min(t, c) + 1) if t % d == 0)
            chunks[a] = d if 4 * d >= min(t, c) else t  # a tiny divisor would make tiny chunks: one per tile
    if job.out_layout.has_batch and job.plan.batch_step != 1:
        chunks[0] = job.plan.batch_step if job.plan.batch_step < job.plan.batch else chunks[0]
    return tuple(chunks)


def _layer_axes(
    spec: LayerSpec, layout: Layout, shape: tuple[int, ...], channels: int, source: Path, options: Options
) -> Any:
    """A layer's three axes for this input (boundary extension included), its channels checked."""
    expected = layer_channels(spec)
    if expected is not None and channels != expected:
        raise InputError(
            f"shape {shape} has {channels} channel(s) ({spec.data_format}) but the layer expects "
            f"{expected}; check data_format in the spec",
            source=str(source),
        )
    axes = spec.axes(layout.spatial_shape(shape))  # its own refusals name the spec's fields (padding)
    try:
        return boundary.extend_axes(axes, options.compute.boundary)
    except ValueError as exc:
        raise InputError(str(exc), param="boundary") from None


def _grid(spec: ResampleSpec, spatial: tuple[int, int, int], reader: Any, source: Path) -> Any:
    """A resampling's output grid for this input (from its affine, or its spacing), refusals naming the file."""
    meta = reader.meta
    try:
        return spec.grid(spatial, meta.affine, meta.spacing)
    except InputError as exc:
        raise InputError(exc.message, source=str(source), param=exc.param) from None
