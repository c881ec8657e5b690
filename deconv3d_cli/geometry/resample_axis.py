"""One resampled axis, tileable: which input rows each output voxel's interpolation taps read.

Output voxel `o` sits at input coordinate `u(o) = scale * o + shift` (grid.AxisMap). An interpolator
reads `taps` consecutive input rows starting at `first(o) = floor(u + r) + lead` (r = 1/2 plus a
1e-9 tie allowance for nearest, which rounds halves up as ITK and torch's nearest-exact do; r = 0
otherwise), and a prefiltered one (the cubic B-spline) `margin` more rows on each side for its
truncated prefilter. Because `u` is monotone in `o`, the rows of a range of outputs are those of its
two ends. The class implements tiling.PlanAxis, so the tiler, the memory estimate and
`boundary.read_slab` work on it unchanged:

- `extended()` adds just enough replicate/reflect rows (`pad_lo`, `pad_hi`) that every tap of every
  output lands on a row; under `zeros` the axis stays unextended and rows outside the volume read 0.
- `input_range(start, stop)`: exactly the rows (extended coordinates, clipped to the stored rows) the
  outputs [start, stop) read; its `offset` is `start`, the tile's first output, from which the engine
  recomputes everything else (see `slab_start`).

`u` is computed here only (`coords`), in float64 and with the same two roundings for every `o`,
so the engine's weights and the tiler's rows can never disagree, tile by tile or whole.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .axis import SlabRange

# Nearest: an output centre within this many input voxels below a voxel boundary counts as on it
# (and takes the upper voxel), so that decimal grids whose binary u misses the half by 1e-16 round as written.
NEAREST_TIE = 1e-9


@dataclass(frozen=True)
class ResampleAxis:
    """Interpolating `length` input rows onto `size` output voxels along one axis."""

    length: int
    size: int
    scale: float  # input voxels per output voxel (negative on a flipped `like` axis)
    shift: float  # input coordinate of output voxel 0
    taps: int = 2
    lead: int = 0
    round_half: bool = False
    margin: int = 0
    pad_lo: int = 0
    pad_hi: int = 0
    stride: int = 1  # tile alignment unit (tiling.PlanAxis): any output start is exact

    @property
    def out(self) -> int:
        return self.size

    # ------------------------------------------------------------------ where the taps are
    def coords(self, start: int, stop: int) -> np.ndarray:
        """u(o) for o in [start, stop), float64: the only place it is computed."""
        return self.scale * np.arange(start, stop, dtype=np.float64) + self.shift

    def positions(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Each output's first tap (input row, unextended coordinates, int64) and its fraction t = u - floor(u).

        The weights are a function of `t` alone (interpolators.py); nearest has one tap and t = 0.
        """
        u = self.coords(start, stop)
        if self.round_half:
            base = np.floor(u + (0.5 + NEAREST_TIE))
            t = np.zeros_like(u)
        else:
            base = np.floor(u)
            t = u - base  # exact: u and floor(u) are within one unit of each other
        return base.astype(np.int64) + self.lead, t

    def first_taps(self, start: int, stop: int) -> np.ndarray:
        """Input row (unextended coordinates) of each output's first tap, int64."""
        return self.positions(start, stop)[0]

    def footprint(self, start: int, stop: int) -> tuple[int, int]:
        """Input rows [lo, hi) (unextended, unclipped) that outputs [start, stop) read, prefilter margin included."""
        ends = self.first_taps(start, stop)[[0, -1]] if stop - start > 1 else self.first_taps(start, stop)
        return int(ends.min()) - self.margin, int(ends.max()) + self.taps + self.margin

    # ------------------------------------------------------------------ tiling.PlanAxis
    @property
    def halo(self) -> int:
        """Input rows a tile reads beyond the span of its own outputs' positions (taps and prefilter)."""
        return self.taps - 1 + 2 * self.margin

    def _reach(self, t: int) -> int:
        # first_taps of t consecutive outputs differ by at most floor(|a| (t - 1)) + 1.
        return int(np.floor(abs(self.scale) * max(t - 1, 0))) + 1 + self.taps + 2 * self.margin

    def slab_rows(self, t: int) -> int:
        """Input rows a tile of `t` outputs reads, at most (boundary extension included)."""
        return min(self._reach(t), self.length + self.pad_lo + self.pad_hi)

    def full_rows(self, t: int) -> int:
        """The longest intermediate along this axis while computing such a tile (input rows or outputs)."""
        return max(t, self._reach(t))

    def extended(self) -> ResampleAxis:
        """The axis with the replicate/reflect rows that every output's taps reach outside [0, length)."""
        lo, hi = self.footprint(0, self.size)
        return replace(self, pad_lo=max(0, -lo), pad_hi=max(0, hi - self.length))

    def input_range(self, start: int, stop: int) -> SlabRange:
        """Rows (extended coordinates, clipped to the stored ones) for outputs [start, stop); offset = start."""
        if not 0 <= start < stop <= self.size:
            raise ValueError(f"output range [{start}, {stop}) outside [0, {self.size})")
        lo, hi = self.footprint(start, stop)
        rows = self.length + self.pad_lo + self.pad_hi
        lo, hi = min(max(lo + self.pad_lo, 0), rows), min(max(hi + self.pad_lo, 0), rows)
        return SlabRange(lo, max(lo, hi), start)

    def slab_start(self, start: int, stop: int) -> int:
        """Input row (unextended coordinates) of the first row of `input_range(start, stop)`'s slab."""
        return self.input_range(start, stop).lo - self.pad_lo
