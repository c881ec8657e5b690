"""Tile plans: which output boxes to compute, which input slab each needs, and what it costs in memory.

Output tiles are aligned to the strides (and to the output's chunks when it has any), so every tile's
input slab is the same size up to the volume's edges and concurrent writers never share a chunk. The
input each tile needs comes from `geometry.Axis.input_range`, so tiled and whole-volume results agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Protocol

from .axis import SlabRange
from .sizes import format_bytes, parse_bytes  # noqa: F401 - re-exported: their home is sizes.py


class PlanError(ValueError):
    """A tile plan that cannot be made as asked; `param` names the setting to change (`tile`, `memory_limit`).

    Geometry knows no error types of the package's; the run turns this into an InputError.
    """

    exit_code = 2  # a usage or input error, as InputError

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# Read-ahead slabs and write-behind tiles kept in the pipeline's queues (counted in the estimate).
READ_AHEAD = 2
WRITE_BEHIND = 2
# Slab plans (see make_plan) cut an output of at least PIPELINE_TILES * PIPELINE_MIN_BYTES into this
# many slabs: measured on 8-729 MiB outputs, 4-16 slabs ran 15-25% faster than one (I/O overlapped).
PIPELINE_TILES = 8
PIPELINE_MIN_BYTES = 2 << 20


class PlanAxis(Protocol):
    """What a plan needs of one spatial axis: a transposed convolution's (axis.Axis) or a resampler's.

    `stride` is the alignment unit of tile starts (so every tile's slab has the same shape up to the
    edges); `halo` the rows a tile reads below its own; `slab_rows(t)` / `full_rows(t)` the input rows a
    tile of `t` outputs reads and the rows of the intermediate it computes (the memory estimate).
    """

    length: int
    stride: int
    pad_lo: int
    pad_hi: int

    @property
    def out(self) -> int: ...

    @property
    def halo(self) -> int: ...

    def slab_rows(self, t: int) -> int: ...

    def full_rows(self, t: int) -> int: ...

    def input_range(self, start: int, stop: int) -> SlabRange: ...


@dataclass(frozen=True)
class Tile:
    index: int
    batch: slice
    out: tuple[slice, slice, slice]
    src: tuple[slice, slice, slice]
    offsets: tuple[int, int, int]

    @property
    def sizes(self) -> tuple[int, int, int]:
        d, h, w = (s.stop - s.start for s in self.out)
        return d, h, w

    @property
    def voxels(self) -> int:
        return math.prod(self.sizes) * (self.batch.stop - self.batch.start)


@dataclass(frozen=True)
class Costs:
    """Bytes per element of the input as stored, of compute, and of the output as stored."""

    in_item: int = 4
    compute_item: int = 4
    out_item: int = 4
    # True when the engine's path unfolds the input into F * kd*kh*kw columns per input voxel (torch's
    # generic transposed convolution: fp64, or no oneDNN); oneDNN's path needs no such buffer.
    unfold: bool = False
    # The output writer's own buffers (io/buffers.py states them per format): `writer_tiles` whole
    # copies of a tile as stored (a file-ordered copy), `writer_per_tile` more copies capped at
    # `writer_cap` bytes (buffers that hold at most the tile's bytes and at most a bounded window),
    # and `writer_fixed` bytes whatever the tile (buffers of a fixed unit; chunk bookkeeping).
    writer_tiles: int = 0
    writer_per_tile: int = 0
    writer_cap: int = 0
    writer_fixed: int = 0

    def writer(self, written: int) -> int:
        """Bytes the writer holds while it writes tiles of `written` bytes."""
        return self.writer_tiles * written + min(self.writer_cap, self.writer_per_tile * written) + self.writer_fixed


@dataclass(frozen=True)
class Plan:
    axes: tuple[PlanAxis, PlanAxis, PlanAxis]
    batch: int
    channels: int
    filters: int
    kernel_size: tuple[int, int, int]
    tile_shape: tuple[int, int, int]
    batch_step: int
    costs: Costs = Costs()
    order: tuple[int, ...] = (0, 1, 2)  # spatial axes from slowest to fastest in the output file

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return tuple(ax.out for ax in self.axes)  # type: ignore[return-value]

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(ax.length for ax in self.axes)  # type: ignore[return-value]

    @property
    def grid(self) -> tuple[int, int, int, int]:
        spatial = tuple(-(-n // t) for n, t in zip(self.out_shape, self.tile_shape))
        return (-(-self.batch // self.batch_step), *spatial)  # type: ignore[return-value]

    @property
    def halo(self) -> tuple[int, int, int]:
        return tuple(ax.halo for ax in self.axes)  # type: ignore[return-value]

    def __len__(self) -> int:
        return math.prod(self.grid)

    def tiles(self) -> Iterator[Tile]:
        """Tiles in the file's order (batch first, then `order`: the slowest axis outermost), so files fill
        front to back and a streaming writer (gzip) receives its bytes in order."""
        starts = [range(0, n, t) for n, t in zip(self.out_shape, self.tile_shape)]
        ranked = [starts[a] for a in self.order]
        for index, (b, *ordered) in enumerate(product(range(0, self.batch, self.batch_step), *ranked)):
            corner = [0, 0, 0]
            for a, start in zip(self.order, ordered):
                corner[a] = start
            out, src, offsets = [], [], []
            for ax, a, t in zip(self.axes, corner, self.tile_shape):
                stop = min(a + t, ax.out)
                r = ax.input_range(a, stop)
                out.append(slice(a, stop))
                src.append(slice(r.lo, r.hi))
                offsets.append(r.offset)
            batch = slice(b, min(b + self.batch_step, self.batch))
            yield Tile(
                index, batch, (out[0], out[1], out[2]), (src[0], src[1], src[2]), (offsets[0], offsets[1], offsets[2])
            )

    def tile_bytes(self, tile_shape: Sequence[int] | None = None, batch_step: int | None = None) -> int:
        """Peak bytes of one tile in flight plus the pipeline's queued buffers.

        Buffers alive at the worst moment: raw input slabs (READ_AHEAD queued, one being read, one in
        the engine, and the mapped file pages of the read), the converted slab, the slab's uncropped
        output (twice while oneDNN reorders it) and the cropped tile, the column workspace
        when the engine unfolds, and output tiles in the stored dtype (WRITE_BEHIND queued, one being
        produced, one being written plus its mapped file pages), and the writer's own buffers
        (`Costs.writer`).
        """
        shape = tuple(tile_shape or self.tile_shape)
        b = batch_step or self.batch_step
        c = self.costs
        n_in = [ax.slab_rows(t) for t, ax in zip(shape, self.axes)]
        n_full = [ax.full_rows(t) for t, ax in zip(shape, self.axes)]
        vin, vfull, vout = math.prod(n_in), math.prod(n_full), math.prod(shape)
        slab = b * self.channels * vin
        raw = slab * c.in_item
        converted = slab * c.compute_item
        full = b * self.filters * vfull * c.compute_item
        workspace = self.filters * math.prod(self.kernel_size) * vin * c.compute_item if c.unfold else 0
        out = b * self.filters * vout
        tile = out * c.compute_item
        written = out * c.out_item
        reading = (READ_AHEAD + 3) * raw
        writing = (WRITE_BEHIND + 3) * written
        # oneDNN computes into its own blocked layout and reorders: the uncropped output exists twice.
        return reading + converted + 2 * full + workspace + tile + writing + c.writer(written)


def make_plan(
    axes: Sequence[PlanAxis],
    batch: int,
    channels: int,
    filters: int,
    kernel_size: Sequence[int],
    *,
    memory_limit: int,
    tile_shape: Sequence[int] | None = None,
    chunks: Sequence[int] | None = None,
    full_width: bool = False,
    costs: Costs = Costs(),
    slabs: bool = False,
    order: Sequence[int] = (0, 1, 2),
) -> Plan:
    """A plan with the given tile shape, or the largest aligned one whose estimate fits the budget.

    `slabs`: tiles span whole planes of the file and its slowest axis is cut first (down to a depth
    whose halo costs about a quarter more input, then rows), and a large output is cut into
    PIPELINE_TILES slabs (fewer if they would be under PIPELINE_MIN_BYTES) even when the budget would
    hold it whole, so that writing one slab overlaps computing the next. Whole planes are long
    contiguous runs of a file (what .npy and NIfTI writers send to disk directly) and cost a chunked
    format nothing when its chunks divide the tile. `order`: the spatial axes from slowest to fastest
    in the file (0, 1, 2 for C order; 2, 1, 0 for NIfTI, whose x varies fastest).
    `chunks`: tiles are aligned to them when the budget allows (concurrent writers never share a chunk).
    """
    axes = tuple(axes)
    out = [ax.out for ax in axes]
    base = dict(
        axes=axes, batch=batch, channels=channels, filters=filters, kernel_size=tuple(kernel_size), costs=costs,
        order=tuple(order),
    )  # fmt: skip
    if tile_shape is not None:
        return _given_plan(base, batch, out, tile_shape, memory_limit, full_width)
    strides = [ax.stride for ax in axes]
    order = tuple(order)
    if chunks is not None:
        # Chunk-aligned tiles never share a chunk between writes; when the budget cannot hold one,
        # stride alignment alone is still exact (the single writer thread serialises chunk updates).
        try:
            aligned = [math.lcm(st, int(c)) for st, c in zip(strides, chunks)]
            return _auto_plan(base, batch, out, aligned, memory_limit, full_width, slabs, order)
        except PlanError:
            pass
    return _auto_plan(base, batch, out, strides, memory_limit, full_width, slabs, order)


def _given_plan(
    base: dict, batch: int, out: list[int], tile_shape: Sequence[int], memory_limit: int, full_width: bool
) -> Plan:
    """The plan of a tile shape given by hand (`--tile`), checked against the output and the budget."""
    shape = [min(int(t), n) for t, n in zip(tile_shape, out)]
    if any(t < 1 for t in shape):
        raise PlanError(f"tile {list(tile_shape)} must be positive on every axis", "tile")
    if full_width and shape[2] != out[2]:
        raise PlanError(
            f"softmax over channels_first acts on the width axis, so tiles must span all {out[2]} "
            f"voxels of it; got tile width {shape[2]}",
            "tile",
        )
    plan = Plan(tile_shape=tuple(shape), batch_step=1 if batch > 1 else batch, **base)  # type: ignore[arg-type]
    if plan.tile_bytes() > memory_limit:
        raise PlanError(
            f"tile {shape} needs about {format_bytes(plan.tile_bytes())}, over the memory limit of "
            f"{format_bytes(memory_limit)}; use a smaller --tile or a larger --memory-limit",
            "tile",
        )
    return plan


def _slab_depth(base: dict, batch: int, out: list[int], unit: int, slow: int) -> int:
    """The depth along axis `slow` that cuts a large output into PIPELINE_TILES slabs of at least
    PIPELINE_MIN_BYTES."""
    c = base["costs"]
    plane = batch * base["filters"] * math.prod(out) // out[slow] * c.out_item
    slabs = min(PIPELINE_TILES, plane * out[slow] // PIPELINE_MIN_BYTES)
    if slabs < 2:
        return out[slow]
    depth = -(-out[slow] // slabs)
    return min(out[slow], -(-depth // unit) * unit)


def _auto_plan(
    base: dict,
    batch: int,
    out: list[int],
    units: list[int],
    memory_limit: int,
    full_width: bool,
    slabs: bool = False,
    order: tuple[int, ...] = (0, 1, 2),
) -> Plan:
    units = [min(u, n) for u, n in zip(units, out)]
    shape = list(out)
    batch_step = batch
    slow, middle = order[0], order[1]
    # Below this extent a tile recomputes over ~25% extra input rows (its halo) along that axis.
    thinnest = [-(-4 * (ax.halo + 1) * ax.stride // u) * u for ax, u in zip(base["axes"], units)]
    if slabs:
        shape[slow] = min(out[slow], max(_slab_depth(base, batch, out, units[slow], slow), thinnest[slow]))
        if shape[slow] < out[slow]:
            batch_step = 1  # a tile of several volumes is one run of the file only when it spans them whole
    plan = Plan(tile_shape=tuple(shape), batch_step=batch_step, **base)  # type: ignore[arg-type]
    while plan.tile_bytes(shape, batch_step) > memory_limit:
        if batch_step > 1:
            batch_step = max(1, batch_step // 2)
            continue
        # Halve the longest axis (rounded to its alignment), depth first on ties: near-cubic tiles
        # recompute the least halo for their size.
        candidates = [a for a in range(3) if shape[a] > units[a] and not (full_width and a == 2)]
        if not candidates:
            need = plan.tile_bytes(shape, batch_step)
            raise PlanError(
                f"the smallest tile {shape} needs about {format_bytes(need)}, over the memory limit of "
                f"{format_bytes(memory_limit)}; raise --memory-limit to at least {format_bytes(need)}",
                "memory_limit",
            )
        if slabs and slow in candidates and shape[slow] > thinnest[slow]:
            pick = slow  # whole planes stay contiguous in the file: thinner slabs first
        elif slabs and middle in candidates and shape[middle] > thinnest[middle]:
            pick = middle  # then whole rows (runs of the file still long), before recomputing more halo
        else:
            pick = max(candidates, key=lambda a: (shape[a], -a))
        half = -(-shape[pick] // 2)
        shape[pick] = max(units[pick], -(-half // units[pick]) * units[pick])
    return Plan(tile_shape=tuple(shape), batch_step=batch_step, **base)  # type: ignore[arg-type]
