"""Spacing attributes as HDF5 and Zarr files carry them (no format library needed to read this module).

Spacing is not standardised in HDF5; the usual attribute names (`SPACING_ATTRS`) hold 3 numbers in the
array's spatial axis order (D, H, W), or one number for isotropic voxels. An attribute with one entry
per array axis of a 4-D or 5-D dataset (4 or 5 entries) is read as channels_last: entries 0-2 of 4 and
1-3 of 5 are spatial; the others are kept as they are. Any other length is left alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

SPACING_ATTRS = ("element_size_um", "spacing", "voxel_size", "resolution")


def spatial_positions(n: int) -> tuple[int, ...] | None:
    """Which entries of an n-entry spacing attribute are spatial (channels_last rule, see module doc)."""
    return {1: (0, 0, 0), 3: (0, 1, 2), 4: (0, 1, 2), 5: (1, 2, 3)}.get(n)


def spacing_from(value: Any, ndim: int) -> tuple[float, float, float] | None:
    """Three positive spatial spacings from an attribute value, or None when it is not one."""
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    n = arr.size
    if n not in (1, 3) and n != ndim:
        return None
    pos = spatial_positions(n)
    if pos is None:
        return None
    out = tuple(float(arr[p]) for p in pos)
    if not all(math.isfinite(v) and v > 0 for v in out):
        return None
    return out  # type: ignore[return-value]


def spacing_value(original: Any, spacing: Sequence[float]) -> Any:
    """`spacing` in the form of `original`: same length, dtype and non-spatial entries."""
    arr = np.array(original).reshape(-1)
    pos = spatial_positions(arr.size)
    if pos is None or arr.dtype.kind not in "fiu":
        return original  # not a form the reader understands: left as it was
    dtype = arr.dtype if arr.dtype.kind == "f" else np.float64
    if arr.size == 1:
        if len(set(spacing)) == 1:
            return np.asarray(spacing[0], dtype=dtype).reshape(np.shape(original))
        return np.asarray(spacing, dtype=dtype)  # no longer isotropic: one value per axis
    out = arr.astype(dtype)
    for p, v in zip(pos, spacing):
        out[p] = v
    return out
