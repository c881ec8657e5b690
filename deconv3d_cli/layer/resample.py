"""ResampleSpec: what a resampling computes (the grid asked for, the interpolator, the boundary), checked once.

The counterpart of LayerSpec for `--voxel-size / --scale / --shape / --like` with `--interp`:
`ResampleSpec.create(...)` refuses what is wrong on its own (names, values, two grid options), before
any file is read; `spec.grid(in_shape, affine)` resolves the output grid for one input (refusing
downsampling, a smaller shape, a rotated reference) and `spec.axes(grid)` gives the three tileable
axes (boundary extension included) that `tiling.make_plan`, `boundary.read_slab` and the engine's
Resampler share. Torch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError, SpecError
from ..geometry import boundary
from ..geometry.grid import GRID_PARAMS, Grid, GridError, GridRequest, spacing_affine
from ..geometry.layout import CHANNELS_FIRST, CHANNELS_LAST
from ..geometry.resample_axis import ResampleAxis
from . import interpolators

DEFAULT_INTERP = "linear"
DEFAULT_BOUNDARY = "replicate"


def _boundaries() -> tuple[str, ...]:
    return boundary.MODES


@dataclass(frozen=True)
class ResampleSpec:
    """A resampling asked for: the grid (one of four ways), the interpolator, the boundary rule."""

    request: GridRequest
    interp: str = DEFAULT_INTERP
    boundary: str = DEFAULT_BOUNDARY
    data_format: str = CHANNELS_LAST

    @classmethod
    def create(
        cls,
        *,
        interp: str = DEFAULT_INTERP,
        boundary: str = DEFAULT_BOUNDARY,
        data_format: str | None = None,
        **grid: Any,
    ) -> ResampleSpec:
        """Check the request on its own; SpecError names the parameter (`interp`, `scale`, ...).

        `grid`: exactly one of `voxel_size`, `scale`, `shape`, `like` (geometry.grid.GridRequest), None ones ignored.
        """
        name = str(interp or DEFAULT_INTERP).lower()
        if interpolators.get(name) is None:
            raise SpecError(
                f"unknown interpolator {interp!r}; valid: {', '.join(interpolators.INTERPOLATORS)}", param="interp"
            )
        mode = str(boundary or DEFAULT_BOUNDARY).lower()
        if mode not in _boundaries():
            raise SpecError(f"unknown boundary {boundary!r}; valid: {', '.join(_boundaries())}", param="boundary")
        fmt = (data_format or CHANNELS_LAST).lower()
        if fmt not in (CHANNELS_LAST, CHANNELS_FIRST):
            raise SpecError(f"data_format {data_format!r}; use channels_last or channels_first", param="data_format")
        unknown = sorted(set(grid) - set(GRID_PARAMS))
        if unknown:
            raise SpecError(
                f"{unknown[0]!r} is not a way of saying the grid; use {', '.join(GRID_PARAMS)}", param=unknown[0]
            )
        try:
            request = GridRequest.create(**grid)
        except GridError as exc:
            raise SpecError(exc.message, param=exc.param) from None
        return cls(request, name, mode, fmt)

    @property
    def interpolator(self) -> interpolators.Interpolator:
        return interpolators.INTERPOLATORS[self.interp]

    def grid(self, in_shape: Sequence[int], affine: Any = None, spacing: Sequence[float] | None = None) -> Grid:
        """The output grid for one input: `affine` (voxel centres to world) or, without one, `diag(spacing, 1)`."""
        try:
            a = spacing_affine(spacing) if affine is None else np.asarray(affine, dtype=np.float64)
            return self.request.resolve(in_shape, a)
        except GridError as exc:
            raise InputError(exc.message, param=exc.param) from None

    def axes(self, grid: Grid) -> tuple[ResampleAxis, ResampleAxis, ResampleAxis]:
        """The three tileable axes of `grid` with this interpolator's taps, extended per the boundary."""
        it = self.interpolator
        axes = tuple(
            ResampleAxis(
                length=n,
                size=m,
                scale=mp.scale,
                shift=mp.shift,
                taps=it.taps,
                lead=it.lead,
                round_half=it.round_half,
                margin=it.margin,
            )
            for n, m, mp in zip(grid.in_shape, grid.shape, grid.maps)
        )
        return boundary.extend_axes(axes, self.boundary)  # type: ignore[arg-type, return-value]

    # ------------------------------------------------------------- what the run core reads
    filters = None  # output channels = input channels (each channel is resampled alone)
    mixes_width = False  # tiles may cut every axis
    kernel_size = (1, 1, 1)  # for tiling.make_plan (used only by its unfold estimate, which is off)

    def to_config(self) -> dict[str, Any]:
        """A JSON-able record of the request (journals, --json reports)."""
        r = self.request
        grid: Any
        if r.kind == "like":
            grid = {"shape": list(r.like_shape or ()), "affine": [list(row) for row in r.like_affine or ()]}
        else:
            grid = list(r.values or ())
        return {r.kind: grid, "interp": self.interp, "boundary": self.boundary, "data_format": self.data_format}

    def describe(self) -> str:
        r = self.request
        what = "a reference grid" if r.kind == "like" else f"{r.kind} {','.join(f'{v:g}' for v in r.values or ())}"
        return f"resample to {what}, {self.interp} ({self.interpolator.definition}), boundary {self.boundary}"
