"""The range of values a layer or a resampling can produce from inputs in a known range.

`--output-dtype keep` on a NIfTI stored as scaled integers writes the output in the same integer type
with its own slope and intercept, and these have to be chosen before the first tile is written (the
output streams). They are fitted to the range the computation can reach from the input's
representable range, so no value can clip:

- a convex one (nonnegative weights summing to one at every output voxel, no bias: the presets, the
  `nearest` and `linear` interpolators) stays inside the input's range: the input's own slope and
  intercept are kept, and nothing is lost beyond the input's own quantisation;
- any other linear one is bounded by its gain, the largest sum of |weights| any output voxel sees
  (per stride phase for a transposed convolution; the Lebesgue constant of the interpolator per axis
  for a resampling), plus the bias.

Activations other than linear, relu and relu6 (which keep or narrow such a range) are not bounded
here: `value_range` returns None and the caller writes floats instead.
"""

from __future__ import annotations

import itertools
from functools import cache
from typing import Any

import numpy as np

from . import interpolators
from .resample import ResampleSpec

RANGE_KEEPING = ("linear", "relu", "relu6")
ONE = 1e-6  # how close to one a phase's weights must sum to count as an average


def value_range(spec: Any, lo: float, hi: float) -> tuple[tuple[float, float], bool] | None:
    """((lo', hi'), convex) the output can reach from inputs in [lo, hi], or None when not bounded here."""
    if isinstance(spec, ResampleSpec):
        g = resample_gain(spec.interp)
        if g is None:
            return (lo, hi), True
        m = max(abs(lo), abs(hi)) * g
        return (-m, m), False
    if spec.activation not in RANGE_KEEPING:
        return None
    kernel, bias = spec.kernel, spec.bias
    if kernel is None:
        return None
    sums, nonneg = _phase_sums(np.asarray(kernel, np.float64), spec.strides, spec.dilation_rate)
    b = 0.0 if bias is None else float(np.abs(np.asarray(bias, np.float64)).max(initial=0.0))
    if nonneg and b == 0.0 and np.all(np.abs(sums - 1.0) <= ONE):
        return (lo, hi), True
    m = max(abs(lo), abs(hi)) * float(sums.max(initial=0.0)) + b
    if spec.activation != "linear":
        return (0.0, m), False
    return (-m, m), False


def _phase_sums(kernel: np.ndarray, strides: Any, dilation: Any) -> tuple[np.ndarray, bool]:
    """Per output filter and stride phase, the sum of |weights| reaching one output voxel.

    A transposed convolution's output position q*s + r draws on the taps t with t*d = r (mod s): one
    phase's taps, summed over the input channels.
    """
    kd, kh, kw, filters, _ = kernel.shape
    phases = []
    classes = [
        [np.flatnonzero((np.arange(k) * d) % s == r) for r in range(s)]
        for k, s, d in zip((kd, kh, kw), strides, dilation)
    ]
    a = np.abs(kernel)
    for rd, rh, rw in itertools.product(*classes):
        if len(rd) and len(rh) and len(rw):
            phases.append(a[np.ix_(rd, rh, rw)].sum(axis=(0, 1, 2, 4)))  # (filters,)
    sums = np.max(phases, axis=0) if phases else np.zeros(filters)
    return sums, bool(np.all(kernel >= 0))


@cache
def resample_gain(interp: str) -> float | None:
    """The largest sum of |weights| over three axes (None: convex, the range is kept)."""
    it = interpolators.INTERPOLATORS[interp]
    t = np.linspace(0.0, 1.0, 1025)[:-1]
    if it.prefiltered:
        per_axis = _cardinal_spline_gain()
    else:
        w = it.weights(t)
        if np.all(w >= 0) and np.allclose(w.sum(axis=1), 1.0):
            return None
        per_axis = float(np.abs(w).sum(axis=1).max())
    return per_axis**3


def _cardinal_spline_gain() -> float:
    """The Lebesgue constant of cubic spline interpolation (about 1.5486): the prefilter's impulse
    response, c[k] = -6z/(1 - z^2) * z^|k|, convolved with the cubic B-spline, summed in |.|."""
    z = interpolators.BSPLINE_POLE
    k = np.arange(-40, 41)
    h = -6.0 * z / (1.0 - z * z) * z ** np.abs(k)
    t = np.linspace(0.0, 1.0, 257)[:-1]
    # eta(t - j) = sum_k h[k] * beta3(t - j - k), for the rows j near each output (t: its fraction)
    eta = (h[None, None, :] * _beta3(t[:, None, None] - k[None, :, None] - k[None, None, :])).sum(axis=2)
    return float(np.abs(eta).sum(axis=1).max())


def _beta3(x: np.ndarray) -> np.ndarray:
    ax = np.abs(np.asarray(x, np.float64))
    out = np.where(ax < 1, 2.0 / 3.0 - ax**2 + ax**3 / 2.0, 0.0)
    return np.where((ax >= 1) & (ax < 2), (2.0 - ax) ** 3 / 6.0, out)


def integer_range(dtype: Any, slope: float, inter: float) -> tuple[float, float]:
    """The values an integer type stores through (slope, intercept)."""
    info = np.iinfo(np.dtype(dtype))
    ends = (info.min * slope + inter, info.max * slope + inter)
    return float(min(ends)), float(max(ends))
