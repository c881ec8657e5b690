"""Boundary extension of the input: Keras's implicit zeros, edge replication, or mirror reflection.

Keras pads with zeros, which darkens the border of an upsampled volume; interpolation presets want
the edge repeated (this is what makes the trilinear preset equal torch's `interpolate`). The extension
is never materialised for the whole volume: each slab maps its extended rows back to stored rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .axis import Axis
from .layout import Layout

MODES = ("zeros", "replicate", "reflect")


def source_rows(lo: int, hi: int, pad_lo: int, length: int, mode: str) -> np.ndarray:
    """Stored rows for extended rows [lo, hi): clipped (replicate) or mirrored without the edge (reflect)."""
    rows = np.arange(lo, hi) - pad_lo
    if mode == "replicate" or length == 1:
        return np.clip(rows, 0, length - 1)
    if mode == "reflect":
        period = 2 * (length - 1)
        rows = np.mod(rows, period)
        return np.where(rows >= length, period - rows, rows)
    raise ValueError(f"boundary {mode!r} has no extension; valid: {', '.join(MODES)}")


def extend_axes(axes: Sequence[Axis], mode: str) -> tuple[Axis, ...]:
    if mode not in MODES:
        raise ValueError(f"unknown boundary {mode!r}; valid: {', '.join(MODES)}")
    return tuple(axes) if mode == "zeros" else tuple(ax.extended() for ax in axes)


def read_slab(read: Any, layout: Layout, src: Sequence[slice], batch: slice, axes: Sequence[Any], mode: str) -> Any:
    """Read the (extended) rows `src` through `read(index)`; only border slabs pay for a gather.

    `axes`: the plan's (any PlanAxis: `length`, `pad_lo` and `pad_hi` are what is read here)."""
    if all(ax.pad_lo == 0 and ax.pad_hi == 0 for ax in axes):
        return read(layout.region(src, batch))
    maps = [source_rows(s.start, s.stop, ax.pad_lo, ax.length, mode) for s, ax in zip(src, axes)]
    box = [slice(int(m.min()), int(m.max()) + 1) if len(m) else slice(0, 0) for m in maps]
    data = read(layout.region(box, batch))
    # The gather keeps the slab's memory order (np.take alone returns C order): a NIfTI slab stays x
    # fastest, so its output tile can go to the file without a transposing copy (engine/separable.py).
    order = sorted(range(data.ndim), key=lambda i: (-data.strides[i], i))
    view = data.transpose(order)
    for a, (m, b) in enumerate(zip(maps, box)):
        if len(m) and not np.array_equal(m, np.arange(b.start, b.stop)):
            view = np.take(view, m - b.start, axis=order.index(layout.spatial_axes[a]))
    return view.transpose(np.argsort(order))
