"""Weight-free upsampling kernels, run through the same exact engine as trained layers.

Both presets are separable and act on each channel alone (SEMANTICS.md, "Presets"). With the
`replicate` boundary the trilinear preset equals torch's `interpolate(mode="trilinear",
align_corners=False)`, and nearest equals `interpolate(mode="nearest")`, for any integer scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SpecError
from .spec import LayerSpec

PRESETS: dict[str, str] = {
    "nearest": "repeat each voxel s times per axis (kernel s, all ones, padding valid)",
    "trilinear": "linear interpolation, align_corners=False (kernel 2s - s mod 2, tent weights, padding same)",
}
PADDING = {"nearest": "valid", "trilinear": "same"}
DEFAULT_BOUNDARY = "replicate"


def taps(name: str, scale: int) -> np.ndarray:
    """The 1-D kernel of a preset along an axis of integer `scale`."""
    if name == "nearest":
        return np.ones(scale)
    k = 2 * scale - (scale % 2)
    t = np.arange(k)
    return 1.0 - np.abs(t - (k - 1) / 2.0) / scale


def parse_scale(value: Any) -> tuple[int, int, int]:
    """`2`, `"2"` or `"2,2,3"` -> a per-axis integer scale."""
    if isinstance(value, int):
        parts: Sequence[Any] = [value]
    elif isinstance(value, str):
        parts = [p for p in value.replace("x", ",").split(",") if p.strip()]
    else:
        parts = list(value)
    try:
        nums = [int(p) for p in parts]
    except (TypeError, ValueError):
        raise SpecError(f"{value!r}: use a positive integer or three, e.g. 2 or 2,2,3", param="scale") from None
    if len(nums) == 1:
        nums *= 3
    if len(nums) != 3 or any(n < 1 for n in nums):
        raise SpecError(f"{value!r}: use a positive integer or three, e.g. 2 or 2,2,3", param="scale")
    return tuple(nums)  # type: ignore[return-value]


def make_spec(name: str, scale: Any, channels: int = 1, data_format: str = "channels_last") -> LayerSpec:
    """A LayerSpec computing the preset on `channels` channels independently (a diagonal kernel)."""
    key = name.lower()
    if key not in PRESETS:
        raise SpecError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}", param="preset")
    s = parse_scale(scale)
    t = [taps(key, n) for n in s]
    kernel3 = t[0][:, None, None] * t[1][None, :, None] * t[2][None, None, :]
    kernel = np.zeros((*kernel3.shape, channels, channels), np.float32)
    for c in range(channels):
        kernel[..., c, c] = kernel3
    return LayerSpec.create(
        filters=channels,
        kernel_size=kernel3.shape,
        strides=s,
        padding=PADDING[key],
        data_format=data_format,
        use_bias=False,
        kernel=kernel,
        name=f"{key}_x{'x'.join(map(str, s))}",
    )


@dataclass(frozen=True)
class Preset:
    """A preset at a scale: the factory of its LayerSpec for an input's channel count (presets act on
    each channel alone, so the layer is known only once the input is open)."""

    name: str
    scale: tuple[int, int, int]

    def __call__(self, channels: int = 1, data_format: str = "channels_last") -> LayerSpec:
        return make_spec(self.name, self.scale, channels, data_format)

    @classmethod
    def parse(cls, name: str, scale: Any = 2) -> Preset:
        """Checked now, before any file is opened: an unknown name or a bad scale is refused here."""
        factor = parse_scale(scale)
        make_spec(name, factor)
        return cls(name.lower(), factor)
