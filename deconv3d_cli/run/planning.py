"""A job's tile plan: one rule for every output format, within the budget the job's kind needs.

Kept apart from job.py, which opens the files and decides the output; this decides the tiles only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from ..geometry.layout import Layout
from ..geometry.sizes import SEPARABLE_TILE_LIMIT, format_bytes
from ..geometry.tiling import Costs, Plan, PlanError, make_plan
from ..io.buffers import WriterMemory, writer_memory
from ..io.formats import FormatFacts
from ..layer.resample import ResampleSpec
from ..layer.spec import LayerSpec
from .options import Options


def plan_job(
    layer: Any,
    spec: LayerSpec | ResampleSpec,
    reader: Any,
    layout: Layout,
    out_layout: Layout,
    out_shape: tuple[int, ...],
    out_dtype: np.dtype,
    axes: Any,
    channels: int,
    filters: int,
    options: Options,
    facts: FormatFacts,
) -> Plan:
    """The plan for `layer` (a LayerSpec, a preset's factory or a ResampleSpec; `spec` is what it computes):
    the same rule for every output format (so outputs in different formats hold the same bytes),
    aligned to the chunks only when the user names them.

    Presets and resamplings (per-axis passes) take at most SEPARABLE_TILE_LIMIT of the budget: smaller
    tiles cost them little and lower the peak; the full budget only when even the smallest tile needs more, and
    always for chunked outputs, whose chunks follow the tiles (HDF5 in 16 x 256 x 512 chunks instead
    of 32 x 512 x 512 wrote 256^3 trilinear x2 in 4.8 s instead of 3.5). The bytes are the same
    either way: these engines' tiles do not change any voxel's arithmetic.
    """
    compute = options.compute
    writer = writer_memory(facts, tuple(out_shape), out_dtype, out_layout, options.write.writer_options)
    check_bookkeeping(writer, options)
    costs = Costs(
        in_item=reader.dtype.itemsize,
        compute_item=8 if compute.precision == "fp64" else 4,
        out_item=out_dtype.itemsize,
        unfold=compute.precision == "fp64",
        writer_tiles=writer.tiles,
        writer_per_tile=writer.per_tile,
        writer_cap=writer.cap,
        writer_fixed=writer.fixed,
    )
    chunks: tuple[int, ...] | None = options.write.chunks
    if chunks is not None and len(chunks) == len(out_shape):  # full-rank chunks: the spatial part
        chunks = tuple(chunks[a] for a in out_layout.spatial_axes)

    def attempt(memory_limit: int) -> Plan:
        try:
            return make_plan(
                axes, layout.batch(reader.shape), channels, filters, spec.kernel_size,
                memory_limit=memory_limit, tile_shape=compute.tile, chunks=chunks, full_width=spec.mixes_width,
                costs=costs, slabs=True, order=facts.order,
            )  # fmt: skip
        except PlanError as exc:
            raise InputError(exc.message, param=exc.param) from None

    limit, capped = compute.memory_limit, not isinstance(layer, LayerSpec) and not facts.chunked
    try:
        return attempt(min(limit, SEPARABLE_TILE_LIMIT) if capped else limit)
    except InputError:
        if not capped or limit <= SEPARABLE_TILE_LIMIT:
            raise
        return attempt(limit)


def check_bookkeeping(writer: WriterMemory, options: Options) -> None:
    """Refuse output chunks so small that the writer's bookkeeping of them alone exceeds the budget
    (an .h5 or .zarr output of a 384^3 volume in 1^3 chunks has 57 million of them)."""
    limit = options.compute.memory_limit
    if writer.bookkeeping <= limit:
        return
    given = options.write.chunks
    named = ",".join(str(c) for c in given) if given else "the default"
    raise InputError(
        f"{named} cuts the output into {writer.chunks} chunks, whose bookkeeping alone needs about "
        f"{format_bytes(writer.bookkeeping)}, over the memory limit of {format_bytes(limit)}; use larger chunks "
        f"(at most {writer.chunks * limit // writer.bookkeeping} chunks) or a larger --memory-limit",
        param="chunks",
    )
