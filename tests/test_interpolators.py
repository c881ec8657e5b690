"""The kernels (layer/interpolators.py) and the tileable axis (geometry/resample_axis.py), on their own."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from deconv3d_cli.geometry import boundary
from deconv3d_cli.geometry.resample_axis import ResampleAxis
from deconv3d_cli.geometry.tiling import make_plan
from deconv3d_cli.layer import interpolators as interp
from deconv3d_cli.layer.resample import ResampleSpec

T = np.linspace(0.0, 1.0, 1001)[:-1]


@pytest.mark.parametrize("name", ["linear", "cubic", "bspline"])
def test_weights_sum_to_one(name):
    w = interp.INTERPOLATORS[name].weights(T)
    assert w.shape == (len(T), interp.INTERPOLATORS[name].taps)
    assert np.abs(w.sum(axis=1) - 1).max() < 1e-14


def test_lanczos_weights_are_itks_unnormalised_ones():
    w = interp.lanczos_weights(T)
    assert w.shape == (len(T), 10)
    s = w.sum(axis=1)
    assert s.min() > 1 - 1.3e-3 and s.max() <= 1 + 1e-15  # a constant comes back within 0.13%
    # t == 0: exactly the sample (ITK's delta), elsewhere sinc(x) sinc(x / 5) at x = t + 4 - i
    assert np.array_equal(w[0], (np.arange(10) == 4).astype(float))
    t, i = 0.3, 2
    x = t + 4 - i
    assert w[300, i] == pytest.approx(np.sinc(x) * np.sinc(x / 5), rel=1e-14)


def test_interpolating_kernels_reproduce_samples():
    zero = np.zeros(1)
    assert np.array_equal(interp.cubic_weights(zero)[0], [0, 1, 0, 0])
    assert np.allclose(interp.bspline_weights(zero)[0], [1 / 6, 2 / 3, 1 / 6, 0])  # on coefficients
    assert np.array_equal(interp.linear_weights(zero)[0], [1, 0])


def test_keys_kernel_equals_pillow_bicubic_in_one_dimension():
    """Pillow's BICUBIC on a float image, upsampling one row: Keys a = -0.5, away from Pillow's clipped edges."""
    rng = np.random.default_rng(0)
    row = rng.standard_normal(40).astype(np.float32)
    out = 97
    ref = np.asarray(Image.fromarray(row[None, :]).resize((out, 1), Image.Resampling.BICUBIC))[0]
    u = (np.arange(out) + 0.5) * 40 / out - 0.5
    base = np.floor(u).astype(int)
    w = interp.cubic_weights(u - base)
    ours = sum(w[:, k] * row[np.clip(base - 1 + k, 0, 39)] for k in range(4))
    inner = (base >= 1) & (base <= 37)
    assert np.abs(ours[inner] - ref[inner]).max() < 1e-5 * np.ptp(row)


def _prefilter_numpy(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Our prefilter stages in float64 on a 1-D signal; returns coefficients and how many rows each side lost."""
    y = x.astype(np.float64)
    for shift, w in interp.INTERPOLATORS["bspline"].prefilter_stages():
        s = abs(shift)
        y = y[s:] + w * y[:-s] if shift > 0 else y[:-s] + w * y[s:]
    return y * interp.BSPLINE_GAIN, interp.INTERPOLATORS["bspline"].margin


def test_prefilter_equals_scipy_spline_filter_to_the_bound():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, 300)
    c, m = _prefilter_numpy(x)
    assert m == 15 and len(c) == 300 - 2 * m
    exact = ndi.spline_filter1d(x, order=3, mode="mirror")
    # away from the signal's ends (where scipy's mirror boundary acts) the truncation is all that differs
    assert np.abs(c - exact[m:-m])[20:-20].max() <= interp.bspline_truncation_bound() + 1e-13
    assert interp.bspline_truncation_bound() < 2.0**-24 / 10  # well under fp32's rounding


def test_truncation_bound_holds_for_the_impulse_response():
    z = interp.BSPLINE_POLE
    impulse = np.zeros(101)
    impulse[50] = 1.0
    h, m = _prefilter_numpy(impulse)
    k = np.arange(-(50 - m), 51 - m)
    exact = -6 * z / (1 - z * z) * z ** np.abs(k)
    assert np.abs(h - exact).sum() <= interp.bspline_truncation_bound() + 1e-14  # the bound is tight


# ------------------------------------------------------------------------- the tileable axis
axes_strategy = st.builds(
    lambda n, m_extra, flip, spec: _axis(n, m_extra, flip, spec),
    st.integers(1, 40),
    st.integers(0, 60),
    st.booleans(),
    st.sampled_from(["nearest", "linear", "cubic", "bspline", "lanczos"]),
)


def _axis(n: int, m_extra: int, flip: bool, name: str) -> ResampleAxis:
    it = interp.INTERPOLATORS[name]
    m = n + m_extra
    a, b = n / m, (n - m) / (2 * m)
    if flip:
        a, b = -a, (n - 1) - b
    return ResampleAxis(n, m, a, b, it.taps, it.lead, it.round_half, it.margin)


def _rows_needed(ax: ResampleAxis, start: int, stop: int) -> set[int]:
    first = ax.first_taps(start, stop)
    rows: set[int] = set()
    for f in first:
        rows.update(range(int(f) - ax.margin, int(f) + ax.taps + ax.margin))
    return rows


@settings(max_examples=300, deadline=None)
@given(ax=axes_strategy, data=st.data(), mode=st.sampled_from(boundary.MODES))
def test_input_range_is_exactly_the_rows_the_taps_read(ax, data, mode):
    (ax,) = boundary.extend_axes([ax], mode)
    start = data.draw(st.integers(0, ax.out - 1))
    stop = data.draw(st.integers(start + 1, ax.out))
    r = ax.input_range(start, stop)
    assert r.offset == start and ax.slab_start(start, stop) == r.lo - ax.pad_lo
    need = _rows_needed(ax, start, stop)
    extended = set(range(-ax.pad_lo, ax.length + ax.pad_hi))
    assert set(range(r.lo - ax.pad_lo, r.hi - ax.pad_lo)) == need & extended  # contiguous, nothing more
    if mode != "zeros":
        assert need <= extended  # the extension reaches every tap
    assert r.size <= ax.slab_rows(stop - start) and ax.full_rows(stop - start) >= max(stop - start, r.size)


@settings(max_examples=100, deadline=None)
@given(ax=axes_strategy, mode=st.sampled_from(["replicate", "reflect"]))
def test_extension_is_minimal(ax, mode):
    ext = ax.extended()
    need = _rows_needed(ax, 0, ax.out)
    assert ext.pad_lo == max(0, -min(need)) and ext.pad_hi == max(0, max(need) - (ax.length - 1))


def test_nearest_rounds_halves_up():
    ax = ResampleAxis(2, 3, 2 / 3, -1 / 6, 1, 0, True, 0)  # u(1) = 0.5 up to binary rounding
    assert list(ax.first_taps(0, 3)) == [0, 1, 1]


def test_plans_tile_resampled_axes():
    spec = ResampleSpec.create(scale=(1.5, 2.25, 1.0), interp="bspline", boundary="reflect")
    grid = spec.grid((9, 7, 5), spacing=(1, 1, 1))
    axes = spec.axes(grid)
    plan = make_plan(axes, 1, 2, 2, spec.kernel_size, memory_limit=1 << 30, tile_shape=(4, 5, 3))
    assert plan.out_shape == (14, 16, 5)  # 13.5 -> 14, 15.75 -> 16
    covered = np.zeros(plan.out_shape, int)
    for t in plan.tiles():
        covered[t.out] += 1
        for ax, s, o, out in zip(axes, t.src, t.offsets, t.out):
            r = ax.input_range(out.start, out.stop)
            assert o == out.start and s == slice(r.lo, r.hi)
    assert covered.min() == covered.max() == 1
