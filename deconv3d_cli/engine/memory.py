"""Memory orders of tensors: which axis is slowest in memory, and empty tensors laid out that way.

A NIfTI slab arrives x fastest, as the file holds it. The per-axis engines (separable presets, the
resampler) compute in the slab's own memory order and give their tile in it, so the tile reaches the
file with no transposing copy (engine/separable.py, engine/resample.py, run/local.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def order(t: torch.Tensor) -> tuple[int, ...] | None:
    """The axes of `t`, slowest in memory first, when `t.permute(order)` is contiguous; else None.

    Length-1 axes come first (their strides mean nothing), ties keep the axes' own order.
    """
    strides = t.stride()
    axes = tuple(sorted(range(t.ndim), key=lambda i: (-strides[i] if t.shape[i] > 1 else -(1 << 62), i)))
    return axes if t.permute(axes).is_contiguous() else None


def empty(shape: Sequence[int], axes: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor of `shape` whose axes lie in memory in `axes` (slowest first)."""
    inverse = sorted(range(len(axes)), key=list(axes).__getitem__)
    return torch.empty([shape[i] for i in axes], dtype=like.dtype, device=like.device).permute(inverse)
