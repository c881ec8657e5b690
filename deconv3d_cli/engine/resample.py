"""The Resampler: one input slab in, one output tile of an interpolated grid out, an axis at a time.

Each axis is one pass over the slab: for every output row, `taps` input rows (gathered) times their
weights, summed tap by tap in a fixed order; the B-spline first runs its prefilter stages over the
slab (interpolators.py). Every operation is a copy, or one multiply or one add per element (never a
fused multiply-add, a matmul or a reduction, whose rounding depends on the vector lane or the block
an element falls in), with weights computed in float64 from the output's global index and the axes
taken in an order fixed by the grid. So each output voxel is the same arithmetic on the same
numbers in the same order whatever tile it falls in: tiled and whole-volume outputs are equal in
every bit (tests/test_resample.py checks by bytes, down to one-voxel tiles; on CUDA, where the same
operations run, its CUDA test checks the same where a device is present).

The slab is what `ResampleAxis.input_range` asks for (boundary extension included); rows the taps
reach outside it (the `zeros` boundary at the volume's edges) read as zeros.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import SpecError
from ..geometry import boundary as bnd
from ..geometry.grid import Grid
from ..geometry.resample_axis import ResampleAxis
from ..layer.resample import ResampleSpec
from . import allocator, memory, workers
from .core import resolve_device, resolve_precision

PATH = "resample"
# Elements per block of a pass on the CPU (512 KiB of fp32): a block's gathers, products and sums stay
# in cache (linear 128^3 x1.5 took 23 ms of CPU unblocked, 16 blocked). On CUDA one block (fewer launches).
CHUNK = 1 << 17
# Consecutive blocks per piece for the engine's threads (workers.py): 1 MiB of fp32 outputs a piece, so
# that a thin slab still makes a piece per thread (a 384 x 384 x 6 tile made one piece of 4 MiB, run on
# one thread: --scale 1.5 linear of 256^3 in 64 such tiles ran 0.75 s, 0.54 s with 1 MiB pieces; the
# whole volume in memory 115 ms against 108).
PIECE_BLOCKS = 2


class Resampler:
    """A ResampleSpec bound to one input grid, a channel count, a device and a compute precision."""

    path = PATH

    def __init__(
        self,
        spec: ResampleSpec,
        grid: Grid,
        in_channels: int,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
    ) -> None:
        self.spec = spec
        self.grid = grid
        self.axes: tuple[ResampleAxis, ResampleAxis, ResampleAxis] = spec.axes(grid)
        self.in_channels = self.filters = int(in_channels)
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.interpolator = spec.interpolator
        self.stages = self.interpolator.prefilter_stages()
        self.order = pass_order(self.axes)
        self.chunk = CHUNK if self.device.type == "cpu" else 1 << 62
        if self.device.type == "cpu":
            allocator.keep_freed_memory()

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return tuple(ax.out for ax in self.axes)  # type: ignore[return-value]

    @property
    def out_numpy_dtype(self) -> np.dtype:
        return np.dtype(np.float64) if self.dtype == torch.float64 else np.dtype(np.float32)

    # ------------------------------------------------------------------ entry points
    def compute_tile(self, slab: Any, tile: Any) -> torch.Tensor:
        """The output tile `tile` (a tiling.Tile of a plan over `self.axes`) from its slab, (N, C, *tile.sizes)."""
        return self.tile(slab, [s.start for s in tile.out], tile.sizes)

    def tile(self, slab: Any, offsets: Sequence[int], sizes: Sequence[int]) -> torch.Tensor:
        """Outputs [offset, offset + size) per axis from the slab `input_range(offset, offset + size)` gives.

        `offsets` are SlabRange.offset (the tile's first output on each axis), so the run core's
        `engine.tile(slab, tile.offsets, tile.sizes)` works for this engine as for Engine.
        """
        x = self.to_tensor(slab)
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise SpecError(f"slab of shape {tuple(x.shape)} does not have {self.in_channels} channel(s) on axis 1")
        n, c = int(x.shape[0]), int(x.shape[1])
        spans = [(int(o), int(o) + int(m)) for o, m in zip(offsets, sizes)]
        with torch.inference_mode():
            y = self._fit(x.reshape(n * c, *x.shape[2:]), spans)
            return self._run(y, spans, [None, None, None]).reshape(n, c, *sizes)

    def whole(self, x: Any) -> torch.Tensor:
        """The resampled (N, C, D, H, W) volume `x`.

        Replicate/reflect rows are not materialised: the gathers read the stored rows they stand for
        (the same values, so the same bytes as the tiles' extended slabs give); only the B-spline's
        prefilter extends an axis, just before it filters that axis.
        """
        t = self.to_tensor(x)
        if t.ndim != 5 or tuple(t.shape[2:]) != tuple(self.grid.in_shape):
            raise SpecError(f"volume of shape {tuple(t.shape)}; this grid is for (N, C, *{self.grid.in_shape})")
        if self.spec.boundary == "zeros":
            rows: tuple[Any, ...] = (slice(None), slice(None), *(slice(*_rows(ax)) for ax in self.axes))
            slab = t[rows]
            return self.tile(slab, (0, 0, 0), self.out_shape)
        n, c = int(t.shape[0]), int(t.shape[1])
        spans = [(0, ax.out) for ax in self.axes]
        maps: list[np.ndarray | None] = []
        for ax in self.axes:
            lo, hi = ax.footprint(0, ax.out)
            maps.append(bnd.source_rows(lo, hi, 0, ax.length, self.spec.boundary))
        with torch.inference_mode():
            y = t.reshape(n * c, *t.shape[2:])
            return self._run(y, spans, maps).reshape(n, c, *self.out_shape)

    def to_tensor(self, slab: Any) -> torch.Tensor:
        if isinstance(slab, torch.Tensor):
            return slab.to(self.device, self.dtype)
        arr = np.asarray(slab)
        if arr.dtype.kind not in "fiub":
            raise SpecError(f"input has dtype {arr.dtype}; a numeric array is needed")
        want = np.float64 if self.dtype == torch.float64 else np.float32
        if arr.dtype != want or arr.dtype.byteorder not in ("=", "|") or not arr.flags.writeable:
            arr = arr.astype(want)
        return torch.from_numpy(arr).to(self.device, self.dtype)

    # ------------------------------------------------------------------ one tile
    def _fit(self, y: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
        """Check the slab against the plan's rows and zero-fill the footprint rows it lacks (`zeros` edges)."""
        pads: list[int] = []
        for a, ax in enumerate(self.axes):
            start, stop = spans[a]
            if not 0 <= start < stop <= ax.out:
                raise SpecError(f"output range [{start}, {stop}) outside [0, {ax.out}) on axis {a}")
            r = ax.input_range(start, stop)
            if y.shape[a + 1] != r.size:
                raise SpecError(
                    f"slab has {y.shape[a + 1]} rows on axis {a}; outputs [{start}, {stop}) read {r.size} "
                    "(ResampleAxis.input_range)"
                )
            need_lo, need_hi = ax.footprint(start, stop)
            have_lo = r.lo - ax.pad_lo
            pads += [have_lo - need_lo, need_hi - (have_lo + r.size)]
        order = spatial_order(y)
        if not any(pads):
            return y if y.permute(0, *(1 + a for a in order)).is_contiguous() else y.contiguous()
        lo = [pads[2 * a] for a in range(3)]
        shape = [y.shape[0]] + [y.shape[a + 1] + pads[2 * a] + pads[2 * a + 1] for a in range(3)]
        out = memory.empty(shape, (0, *(1 + a for a in order)), y).zero_()  # in the slab's memory order
        inner: tuple[Any, ...] = (slice(None), *(slice(lo[a], lo[a] + y.shape[a + 1]) for a in range(3)))
        out[inner] = y
        return out

    def _run(self, y: torch.Tensor, spans: list[tuple[int, int]], maps: list[np.ndarray | None]) -> torch.Tensor:
        """(B, d, h, w) rows -> the tile. Along axis a, local row j is footprint row lo + j, or row maps[a][j].

        The passes work on `y`'s own memory order (`spatial_order`; a NIfTI slab is x fastest) and the
        tile comes out in it, so it reaches the file with no transposing copy. Every pass is the same
        arithmetic on the same rows in either order, so the bytes do not depend on it.
        """
        order = spatial_order(y)
        y = y.permute(0, *(1 + a for a in order))  # contiguous: its axis 1 + i is spatial axis order[i]
        dim = {a: 1 + order.index(a) for a in range(3)}
        for a in (2, 1, 0) if self.stages else ():  # prefilter (B-spline only), innermost axis first
            rows_of = maps[a]
            if rows_of is not None:  # extend this axis now (whole volumes only)
                view = _axis_view(y, dim[a])
                ext = torch.empty((view.shape[0], len(rows_of), view.shape[2]), dtype=y.dtype, device=y.device)
                _gather(view, torch.from_numpy(rows_of).to(y.device), ext)
                shape = list(y.shape)
                shape[dim[a]] = len(rows_of)
                y, maps[a] = ext.view(shape), None
            y = _prefilter(y, dim[a], self.stages, self.chunk)
        for a in self.order:
            y = self._interpolate(y, a, dim[a], *spans[a], maps[a])
        return y.permute(0, *(1 + order.index(a) for a in range(3)))

    def _interpolate(
        self, y: torch.Tensor, a: int, dim: int, start: int, stop: int, rows: np.ndarray | None
    ) -> torch.Tensor:
        """Axis `a` of the grid, dimension `dim` of `y` (rows from the first tap's, or looked up in `rows`):
        outputs [start, stop)."""
        ax = self.axes[a]
        first, t = ax.positions(start, stop)
        local = first - (ax.footprint(start, stop)[0] + ax.margin)
        weights = self.interpolator.weights(t)
        if self.interpolator.gain != 1.0:
            weights = weights * self.interpolator.gain
        w = torch.from_numpy(np.ascontiguousarray(weights.T)).to(self.device, self.dtype)  # (taps, m)
        index = [local + k if rows is None else rows[local + k] for k in range(weights.shape[1])]
        idx = [torch.from_numpy(np.ascontiguousarray(i)).to(self.device) for i in index]
        sizes = list(y.shape)
        sizes[dim] = stop - start
        return _accumulate(_axis_view(y, dim), idx, w, self.chunk).view(sizes)


def pass_order(axes: Sequence[ResampleAxis]) -> tuple[int, ...]:
    """The interpolation passes, smallest factor first (the intermediates then stay smallest).

    Fixed by the grid, never by a tile: the order is part of every output voxel's arithmetic.
    """
    return tuple(sorted(range(3), key=lambda a: (1.0 / abs(axes[a].scale), -a)))


def _axis_view(y: torch.Tensor, dim: int) -> torch.Tensor:
    """Contiguous `y` as (outer, n, inner) around `dim`: gathers along it are then row copies of `inner` elements."""
    outer = int(np.prod(y.shape[:dim]))
    inner = int(np.prod(y.shape[dim + 1 :]))
    return y.contiguous().view(outer, y.shape[dim], inner)


def _accumulate(view: torch.Tensor, idx: list[torch.Tensor], w: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """out[:, j, :] = sum over taps k, in order, of w[k, j] * view[:, idx[k][j], :] (one multiply, one add each).

    Computed in blocks of about `chunk` elements so that a block's gathers, products and sums stay in
    cache; blocks change no element's arithmetic, only when it happens (and on which of the engine's
    threads: PIECE_BLOCKS consecutive blocks make one piece for workers.py).
    """
    outer, _, inner = view.shape
    m = len(idx[0])
    out = torch.empty((outer, m, inner), dtype=view.dtype, device=view.device)
    if outer == 1:  # the outermost axis: blocks of output planes
        step = max(1, chunk // max(inner, 1))
        blocks = [(slice(0, 1), slice(j, min(j + step, m))) for j in range(0, m, step)]
    else:
        step = max(1, chunk // max(m * inner, 1))
        blocks = [(slice(i, min(i + step, outer)), slice(0, m)) for i in range(0, outer, step)]

    def piece(part: list[tuple[slice, slice]]) -> None:
        buf: torch.Tensor | None = None
        for rows, cols in part:
            src, dst = view[rows], out[rows, cols]
            _gather(src, idx[0][cols], dst)
            if len(idx) == 1:  # nearest: one copy
                continue
            dst.mul_(w[0, cols].view(1, -1, 1))
            if buf is None:
                buf = torch.empty_like(dst)
            tmp = buf if buf.shape == dst.shape else torch.empty_like(dst)
            for k in range(1, len(idx)):
                _gather(src, idx[k][cols], tmp)
                tmp.mul_(w[k, cols].view(1, -1, 1))
                dst.add_(tmp)

    workers.run([functools.partial(piece, blocks[i : i + PIECE_BLOCKS]) for i in range(0, len(blocks), PIECE_BLOCKS)])
    return out


def _gather(view: torch.Tensor, idx: torch.Tensor, out: torch.Tensor) -> None:
    """out = rows `idx` of an (outer, n, inner) view along its middle axis."""
    if view.shape[2] == 1:  # the contiguous axis: torch.gather on 2-D is 4-8x faster than index_select here
        torch.gather(view[..., 0], 1, idx.view(1, -1).expand(view.shape[0], len(idx)), out=out[..., 0])
    elif view.shape[0] == 1:  # the outermost axis: whole planes
        torch.index_select(view[0], 0, idx, out=out[0])
    else:
        torch.index_select(view, 1, idx, out=out)


def _rows(ax: ResampleAxis) -> tuple[int, int]:
    r = ax.input_range(0, ax.out)
    return r.lo, r.hi


def _prefilter(y: torch.Tensor, dim: int, stages: Sequence[tuple[int, float]], chunk: int = CHUNK) -> torch.Tensor:
    """All prefilter stages along `dim`, in blocks across the other axes (each block stays in cache)."""
    view = _axis_view(y, dim)
    outer, n, inner = view.shape
    lost = sum(abs(s) for s, _ in stages)
    out = torch.empty((outer, n - lost, inner), dtype=y.dtype, device=y.device)
    blocks: list[tuple[slice, ...]]
    if outer == 1:  # the outermost axis: blocks of columns (strided reads, every stage in cache)
        step = max(1, chunk // n)
        blocks = [(slice(None), slice(None), slice(j, min(j + step, inner))) for j in range(0, inner, step)]
    else:
        step = max(1, chunk // (n * inner))
        blocks = [(slice(i, min(i + step, outer)), slice(None), slice(None)) for i in range(0, outer, step)]

    def piece(part: list[tuple[slice, ...]]) -> None:
        for block in part:
            z = view[block]
            for shift, weight in stages:
                z = _stage(z, 1, shift, weight)
            out[block] = z

    workers.run([functools.partial(piece, blocks[i : i + PIECE_BLOCKS]) for i in range(0, len(blocks), PIECE_BLOCKS)])
    shape = list(y.shape)
    shape[dim] = n - lost
    return out.view(shape)


def _stage(y: torch.Tensor, dim: int, shift: int, weight: float) -> torch.Tensor:
    """One prefilter stage along `dim`: x[i] + weight * x[i - shift]; the axis loses |shift| rows."""
    s = abs(shift)
    n = y.shape[dim] - s
    if shift > 0:  # causal: the result's row i is input row i + s
        out = torch.mul(y.narrow(dim, 0, n), weight)
        return out.add_(y.narrow(dim, s, n))
    out = torch.mul(y.narrow(dim, s, n), weight)  # anticausal: row i is input row i
    return out.add_(y.narrow(dim, 0, n))


def spatial_order(y: torch.Tensor) -> tuple[int, ...]:
    """The spatial axes (0-2) of a (B, d, h, w) tensor, slowest in memory first, when it is contiguous
    in that order with B slowest (a NIfTI slab: (2, 1, 0)); C order, (0, 1, 2), otherwise."""
    axes = memory.order(y)
    if axes is None or (y.shape[0] > 1 and axes[0] != 0):
        return (0, 1, 2)
    return tuple(a - 1 for a in axes if a != 0)
