"""The resampling kernels, defined once: which input rows each output reads and with what weights.

Every interpolator is separable and reads `taps` consecutive input rows per axis starting at
`floor(u + r) + lead`, where `u` is the output voxel's input coordinate (resample_axis.ResampleAxis);
`weights(t)` gives the taps' weights for the fractional part `t = u - floor(u)` (float64, one row per
output). Each one equals a named peer on the same grid (tests/test_interpolators.py, test_resample.py):

- `nearest`: the voxel whose centre is closest, halves up (ITK's NearestNeighborInterpolateImageFunction
  rounds with RoundHalfIntegerUp; torch's `interpolate(mode="nearest-exact")`; the `nearest` preset
  at integer factors). Values are copied, never mixed.
- `linear`: (1 - t, t) on floor(u), floor(u) + 1: SimpleITK `sitkLinear`, torch `interpolate(mode=
  "trilinear", align_corners=False)`, and the `trilinear` preset at integer factors (replicate).
- `cubic`: Keys (1981) cubic convolution with a = -0.5 (Catmull-Rom), 4 taps: Pillow's
  `Image.resize(resample=BICUBIC)` (libImaging/Resample.c, `bicubic_filter`, a = -0.5), axis by axis on
  float ('F') images. (torch's bicubic and OpenCV's use a = -0.75; SimpleITK has no cubic convolution.)
- `bspline`: the cubic B-spline of the prefiltered samples (interpolating: it passes through every
  sample), 4 taps after a prefilter: `scipy.ndimage.map_coordinates(order=3)` with the matching mode and
  SimpleITK `sitkBSpline` (whose mirror boundary is our `reflect`).
- `lanczos`: ITK's WindowedSincInterpolateImageFunction with the Lanczos window, as SimpleITK's
  `sitkLanczosWindowedSinc` builds it: radius m = 5 (SimpleITK's WindowingRadius; ITK's own examples
  use 3), 2m taps floor(u) - m + 1 .. floor(u) + m, weight sinc(x) * sinc(x / m) for x = u - row,
  sinc(x) = sin(pi x) / (pi x), and exactly the sample itself when t == 0. The weights are ITK's, not
  renormalised (ITK does not), so a constant volume comes back within 0.13% of itself.

The B-spline prefilter is global (an IIR filter with pole z = sqrt(3) - 2); here it is the exact
product of a causal and an anticausal FIR of 16 taps each, each built as four 2-tap stages
y[i] = x[i] + z^(2^j) x[i -+ 2^j] (j = 0..3), and a gain -6z. Their product differs from the exact
filter only by the taps the truncation drops: the sum of |exact - truncated| impulse response is
(-6z / (1 - |z|)^2) * (1 - (1 - |z|^16)^2) = 4.24e-9 (`bspline_truncation_bound`), so along one axis
the coefficients are exact to 4.24e-9 of the largest magnitude entering it; over three axes, whose
later passes see coefficients up to 3 times the data (the prefilter's L1 gain), to at most
(1 + 3 + 9) * 4.24e-9 = 5.5e-8 of max |data|: under fp32's rounding (2^-24 = 6.0e-8) even in that
worst case, and 4e-9 on the test volumes. The stages read 15 rows on each side (`margin`): the halo
a tile reads beyond its taps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

KEYS_A = -0.5
LANCZOS_RADIUS = 5
BSPLINE_POLE = math.sqrt(3.0) - 2.0
BSPLINE_STAGES = 4  # 2-tap stages per direction: 2**4 = 16 taps
BSPLINE_GAIN = -6.0 * BSPLINE_POLE


def bspline_truncation_bound(stages: int = BSPLINE_STAGES) -> float:
    """Largest error of the truncated prefilter's coefficients, relative to max |input|."""
    z = abs(BSPLINE_POLE)
    return BSPLINE_GAIN / (1 - z) ** 2 * (1 - (1 - z ** (2**stages)) ** 2)


def nearest_weights(t: np.ndarray) -> np.ndarray:
    return np.ones((len(t), 1))


def linear_weights(t: np.ndarray) -> np.ndarray:
    t = np.asarray(t, dtype=np.float64)
    return np.stack([1.0 - t, t], axis=1)


def keys(x: np.ndarray, a: float = KEYS_A) -> np.ndarray:
    """Keys' cubic convolution kernel W(x), written as Pillow's bicubic_filter evaluates it."""
    x = np.abs(np.asarray(x, dtype=np.float64))
    inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    outer = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, inner, np.where(x < 2.0, outer, 0.0))


def cubic_weights(t: np.ndarray) -> np.ndarray:
    """Taps floor(u) - 1 .. floor(u) + 2: distances t + 1, t, 1 - t, 2 - t."""
    t = np.asarray(t, dtype=np.float64)
    return np.stack([keys(t + 1), keys(t), keys(1 - t), keys(2 - t)], axis=1)


def bspline_weights(t: np.ndarray) -> np.ndarray:
    """The cubic B-spline beta3 at distances t + 1, t, 1 - t, 2 - t (taps floor(u) - 1 .. floor(u) + 2)."""
    t = np.asarray(t, dtype=np.float64)
    s = 1.0 - t
    return np.stack(
        [s**3 / 6.0, 2.0 / 3.0 - t * t + t**3 / 2.0, 2.0 / 3.0 - s * s + s**3 / 2.0, t**3 / 6.0],
        axis=1,
    )


def sinc(x: np.ndarray) -> np.ndarray:
    """sin(pi x) / (pi x), 1 at 0 (ITK's WindowedSincInterpolateImageFunction::Sinc)."""
    x = np.asarray(x, dtype=np.float64)
    px = np.pi * x
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(x == 0.0, 1.0, np.sin(px) / px)


def lanczos_window(x: np.ndarray, radius: int = LANCZOS_RADIUS) -> np.ndarray:
    """ITK's LanczosWindowFunction: sin(z) / z with z = x pi / m, 1 at 0."""
    x = np.asarray(x, dtype=np.float64)
    z = x * (np.pi / radius)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(x == 0.0, 1.0, np.sin(z) / z)


def lanczos_weights(t: np.ndarray, radius: int = LANCZOS_RADIUS) -> np.ndarray:
    """Taps floor(u) - m + 1 .. floor(u) + m at x = t + m - 1 - i; a delta where t == 0 (as ITK)."""
    t = np.asarray(t, dtype=np.float64)
    x = t[:, None] + (radius - 1 - np.arange(2 * radius))[None, :]
    w = lanczos_window(x, radius) * sinc(x)
    delta = (np.arange(2 * radius) == radius - 1).astype(np.float64)
    return np.where((t == 0.0)[:, None], delta[None, :], w)


@dataclass(frozen=True)
class Interpolator:
    """A separable interpolator: its taps, where they start, and their weights."""

    name: str
    taps: int
    lead: int  # first tap = floor(u + (1/2 if round_half else 0)) + lead
    weights: Callable[[np.ndarray], np.ndarray]
    definition: str
    peer: str
    round_half: bool = False
    prefiltered: bool = False  # cubic B-spline: the samples are first turned into spline coefficients

    @property
    def margin(self) -> int:
        """Rows the prefilter reads on each side beyond the taps (0 without one)."""
        return 2**BSPLINE_STAGES - 1 if self.prefiltered else 0

    def prefilter_stages(self) -> tuple[tuple[int, float], ...]:
        """(shift, weight) of the 2-tap stages y[i] = x[i] + weight * x[i - shift]; shift < 0 is anticausal.

        Causal stages first, then anticausal; the gain BSPLINE_GAIN is left for the caller to fold in.
        """
        if not self.prefiltered:
            return ()
        z = BSPLINE_POLE
        causal = tuple((2**j, z ** (2**j)) for j in range(BSPLINE_STAGES))
        return causal + tuple((-s, w) for s, w in causal)

    @property
    def gain(self) -> float:
        return BSPLINE_GAIN if self.prefiltered else 1.0


INTERPOLATORS: dict[str, Interpolator] = {
    "nearest": Interpolator(
        "nearest",
        1,
        0,
        nearest_weights,
        "the input voxel whose centre is closest (halves up); values copied",
        "SimpleITK sitkNearestNeighbor; torch interpolate(mode='nearest-exact')",
        round_half=True,
    ),
    "linear": Interpolator(
        "linear",
        2,
        0,
        linear_weights,
        "(1 - t, t) on the two nearest voxels per axis",
        "SimpleITK sitkLinear; torch interpolate(mode='trilinear', align_corners=False)",
    ),
    "cubic": Interpolator(
        "cubic",
        4,
        -1,
        cubic_weights,
        "Keys cubic convolution, a = -0.5 (Catmull-Rom), 4 taps per axis",
        "Pillow Image.resize(resample=BICUBIC) on float images, per axis",
    ),
    "bspline": Interpolator(
        "bspline",
        4,
        -1,
        bspline_weights,
        "cubic B-spline of the prefiltered samples (interpolating), 4 taps per axis after the prefilter",
        "scipy.ndimage.map_coordinates(order=3); SimpleITK sitkBSpline (mirror boundary: reflect)",
        prefiltered=True,
    ),
    "lanczos": Interpolator(
        "lanczos",
        2 * LANCZOS_RADIUS,
        1 - LANCZOS_RADIUS,
        lanczos_weights,
        f"Lanczos windowed sinc, radius {LANCZOS_RADIUS} ({2 * LANCZOS_RADIUS} taps per axis), weights as ITK's",
        "SimpleITK sitkLanczosWindowedSinc",
    ),
}


def get(name: str) -> Interpolator | None:
    return INTERPOLATORS.get(str(name).lower())
