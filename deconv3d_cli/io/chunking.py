"""Output chunk shapes (HDF5 and Zarr choose them alike), and the chunks a box of an array touches."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import product
from typing import Any

import numpy as np

from ..errors import InputError
from ..geometry.layout import Layout

CHUNK_BYTES = 1 << 20  # HDF5's chunk cache defaults to 1 MiB; larger chunks would bypass it
MAX_CHUNK = 64


def layout_of(shape: Sequence[int], layout: Layout | str | None) -> Layout:
    if isinstance(layout, Layout):
        return layout
    return Layout(len(shape), layout or "channels_last")


def output_chunks(
    shape: tuple[int, ...], dtype: np.dtype, layout: Layout | str | None, options: dict[str, Any]
) -> tuple[int, ...]:
    """The output's chunk shape: `options["chunks"]` (D, H, W) or about 1 MiB of whole-channel voxels.

    Batch chunks hold one entry and channel chunks all channels, so a tile (all channels, one spatial
    box) maps onto whole chunks. Spatial extents are powers of two (<= 64) clipped to the shape.
    """
    lay = layout_of(shape, layout)
    chunks = [1] * len(shape)
    if lay.channel_axis is not None:
        chunks[lay.channel_axis] = int(shape[lay.channel_axis])
    asked = options.get("chunks")
    spatial: list[int]
    if asked is not None:
        spatial = list(parse_chunks(asked, len(shape)))
        if len(spatial) == len(shape):
            return tuple(max(1, min(int(c), int(n))) for c, n in zip(spatial, shape))
    else:
        per_voxel = max(1, np.dtype(dtype).itemsize * lay.channels(shape))
        extents = lay.spatial_shape(shape)
        spatial, grew = [1, 1, 1], True
        while grew:
            grew = False
            for a in (2, 1, 0):  # width first: the contiguous axis in C order
                bigger = spatial[a] * 2
                if bigger > MAX_CHUNK or spatial[a] >= extents[a]:
                    continue
                trial = [min(c, n) for c, n in zip(spatial, extents)]
                trial[a] = min(bigger, extents[a])
                if math.prod(trial) * per_voxel <= CHUNK_BYTES:
                    spatial[a], grew = bigger, True
    for a, c in zip(lay.spatial_axes, spatial):
        chunks[a] = c
    return tuple(max(1, min(int(c), int(n))) for c, n in zip(chunks, shape))


def parse_chunks(value: Any, ndim: int) -> tuple[int, ...]:
    """Three spatial extents (or one per array axis); one number means a cube."""
    if isinstance(value, str):
        value = value.replace("x", ",").split(",")
    items = [value] if isinstance(value, (int, np.integer)) else list(value)
    if len(items) == 1:
        items *= 3
    try:
        nums = tuple(int(v) for v in items)
    except (TypeError, ValueError):
        nums = ()
    if len(nums) not in (3, ndim) or any(n < 1 for n in nums):
        raise InputError(f"{value!r}: give three positive integers D,H,W", param="chunks")
    return nums


def chunk_ranges(index: tuple[slice, ...], shape: Sequence[int], chunks: Sequence[int]) -> list[range]:
    """Per axis, the chunk numbers a box touches."""
    out = []
    for s, n, c in zip(index, shape, chunks):
        start, stop, _ = s.indices(n)
        out.append(range(start // c, -(-stop // c)) if stop > start else range(0))
    return out


def chunk_boxes(
    index: tuple[slice, ...], shape: Sequence[int], chunks: Sequence[int]
) -> list[tuple[tuple[int, ...], tuple[slice, ...], tuple[slice, ...]]]:
    """For each chunk a box touches: its grid coordinates, its part of the box in array coordinates, and
    the same part in box coordinates."""
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    bounds = [s.indices(n)[:2] for s, n in zip(index, shape)]
    per_axis = []
    for (start, stop), c, r in zip(bounds, chunks, chunk_ranges(index, shape, chunks)):
        per_axis.append([(k, max(start, k * c), min(stop, (k + 1) * c), start) for k in r])
    return [
        (
            tuple(k for k, _, _, _ in combo),
            tuple(slice(a, b) for _, a, b, _ in combo),
            tuple(slice(a - o, b - o) for _, a, b, o in combo),
        )
        for combo in product(*per_axis)
    ]
