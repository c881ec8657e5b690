"""Where the batch, channel and spatial axes of a user's array live.

Arrays arrive as 3-D (one channel), 4-D (channels, no batch) or 5-D (batch and channels), in either
Keras data format. Everything inside the engine works on (N, C, D, H, W); this module is the one place
that maps between the two, so readers, the API and the writers agree on which axis is which.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CHANNELS_LAST = "channels_last"
CHANNELS_FIRST = "channels_first"


@dataclass(frozen=True)
class Layout:
    """An array of `ndim` axes in a Keras data format: which axis is the batch, the channels, D, H, W."""

    ndim: int
    data_format: str = CHANNELS_LAST

    def __post_init__(self) -> None:
        if self.ndim not in (3, 4, 5):
            raise ValueError(f"expected a 3-, 4- or 5-dimensional array, got {self.ndim} dimensions")

    @property
    def has_batch(self) -> bool:
        return self.ndim == 5

    @property
    def has_channels(self) -> bool:
        return self.ndim >= 4

    @property
    def channel_axis(self) -> int | None:
        if not self.has_channels:
            return None
        if self.data_format == CHANNELS_LAST:
            return self.ndim - 1
        return 1 if self.has_batch else 0

    @property
    def spatial_axes(self) -> tuple[int, int, int]:
        first = (1 if self.has_batch else 0) + (1 if self.has_channels and self.data_format == CHANNELS_FIRST else 0)
        return (first, first + 1, first + 2)

    def spatial_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        return tuple(int(shape[a]) for a in self.spatial_axes)  # type: ignore[return-value]

    def channels(self, shape: Sequence[int]) -> int:
        return 1 if self.channel_axis is None else int(shape[self.channel_axis])

    def batch(self, shape: Sequence[int]) -> int:
        return int(shape[0]) if self.has_batch else 1

    def output_layout(self, filters: int) -> Layout:
        """A one-channel 3-D volume stays 3-D for one filter and gains a channel axis for several."""
        if self.ndim == 3 and filters != 1:
            return Layout(4, self.data_format)
        return self

    def output_shape(self, shape: Sequence[int], spatial_out: Sequence[int], filters: int) -> tuple[int, ...]:
        out = self.output_layout(filters)
        dims = [0] * out.ndim
        if out.has_batch:
            dims[0] = self.batch(shape)
        if out.channel_axis is not None:
            dims[out.channel_axis] = filters
        for a, n in zip(out.spatial_axes, spatial_out):
            dims[a] = int(n)
        return tuple(dims)

    def region(self, spatial: Sequence[slice], batch: slice = slice(None)) -> tuple[slice, ...]:
        """Index selecting a spatial box of some batch entries, all channels."""
        index = [slice(None)] * self.ndim
        if self.has_batch:
            index[0] = batch
        for a, s in zip(self.spatial_axes, spatial):
            index[a] = s
        return tuple(index)

    def to_ncdhw(self, array: np.ndarray) -> np.ndarray:
        """A (N, C, D, H, W) view of `array` (no copy)."""
        a = array
        if self.ndim == 3:
            return a[None, None]
        if self.ndim == 4:
            a = a[None]
        if self.data_format == CHANNELS_LAST:
            a = np.moveaxis(a, -1, 1)
        return a

    def ncdhw_order(self, filters: int) -> tuple[int, ...]:
        """Axis order taking (N, C, D, H, W) to this layout's output order, before dropping axes."""
        return (0, 2, 3, 4, 1) if self.output_layout(filters).data_format == CHANNELS_LAST else (0, 1, 2, 3, 4)

    def squeeze_ncdhw(self, array: Any, filters: int) -> Any:
        """Drop the batch/channel axes the output layout lacks from an array already in `ncdhw_order`."""
        out = self.output_layout(filters)
        if out.ndim == 5:
            return array
        if out.ndim == 4:
            return array[0]
        return array[0, 0] if out.data_format == CHANNELS_FIRST else array[0, ..., 0]

    def from_ncdhw(self, array: np.ndarray, filters: int) -> np.ndarray:
        """Inverse of `to_ncdhw` for the output layout (a view where possible)."""
        out = self.output_layout(filters)
        a = array
        if out.data_format == CHANNELS_LAST:
            a = np.moveaxis(a, 1, -1)
        if out.ndim == 5:
            return a
        if out.ndim == 4:
            return a[0]
        return a[0, 0] if out.data_format == CHANNELS_FIRST else a[0, ..., 0]
