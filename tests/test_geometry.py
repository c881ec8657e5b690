"""Geometry of one axis (lengths, crops, input ranges) and of the affine, against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deconv3d_cli import conv3d_transpose
from deconv3d_cli.geometry.axis import Axis, axes_for, effective_kernel, output_affine, output_spacing

SETTINGS = settings(max_examples=80, deadline=None)


@st.composite
def axis_params(draw, max_len: int = 8, max_kernel: int = 5, max_stride: int = 4):
    """(I, k, s, d, padding, op) that Keras accepts: never s > 1 with d > 1, op < s, no same+even K+op 0."""
    length = draw(st.integers(1, max_len))
    kernel = draw(st.integers(1, max_kernel))
    stride = draw(st.integers(1, max_stride))
    dilation = 1 if stride > 1 else draw(st.integers(1, 3))
    padding = draw(st.sampled_from(["valid", "same"]))
    k_eff = (kernel - 1) * dilation + 1
    lowest = 1 if padding == "same" and k_eff % 2 == 0 else 0
    op = None
    if lowest <= stride - 1 and draw(st.booleans()):
        op = draw(st.integers(lowest, stride - 1))
    return length, kernel, stride, dilation, padding, op


def _rng(data) -> np.random.Generator:
    return np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))


# --------------------------------------------------------------------------- (a) lengths, crops, values
@SETTINGS
@given(p=axis_params(), data=st.data())
def test_axis_lengths_crop_and_values_match_brute_force(p, data, ref):
    length, k, s, d, padding, op = p
    ax = Axis(length, k, s, d, padding, op)
    k_eff = (k - 1) * d + 1
    want_out = ref.keras_output_length(length, k, s, padding, op, d)
    assert ax.k_eff == effective_kernel(k, d) == k_eff
    assert ax.full == (length - 1) * s + k_eff
    assert ax.out == want_out
    assert ax.crop == ref.tf_pad_before(length, k, s, padding, want_out, d)
    # TensorFlow's forward-shape check for the adjoint conv must accept (out -> length), or TF aborts.
    if padding == "same":
        assert -(-ax.out // s) == length
    else:
        assert -(-(ax.out - k_eff + 1) // s) == length

    rng = _rng(data)
    x = rng.standard_normal(length)
    w = rng.standard_normal(k)
    b = rng.standard_normal()
    y = conv3d_transpose(
        x.reshape(1, length, 1, 1, 1),
        w.reshape(k, 1, 1, 1, 1),
        np.array([b]),
        strides=(s, 1, 1),
        padding=padding,
        output_padding=None if op is None else (op, 0, 0),
        dilation_rate=(d, 1, 1),
        precision="fp64",
    )
    assert y.dtype == np.float64
    assert y.shape == (1, want_out, 1, 1, 1)
    want = ref.layer_1d(x, w, s, d, padding, op) + b
    np.testing.assert_allclose(y[0, :, 0, 0, 0], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "length, k, s, d, padding, op, out, crop",
    [
        (4, 3, 2, 1, "same", None, 8, 0),  # K - s = 1 odd: TF floors the crop (Keras 3 torch would give 1)
        (4, 4, 2, 1, "same", None, 8, 1),
        (4, 5, 2, 1, "same", None, 8, 1),  # K - s = 3: floor(3 / 2)
        (3, 1, 3, 1, "valid", None, 9, 0),  # K < s: gaps and a bias-only tail
        (3, 3, 1, 2, "same", None, 3, 2),  # dilated: K = 5
        (5, 4, 3, 1, "same", 1, 13, 1),  # even K with op >= 1
        (2, 3, 2, 1, "valid", 1, 6, 0),
    ],
)
def test_axis_known_values(length, k, s, d, padding, op, out, crop):
    ax = Axis(length, k, s, d, padding, op)
    assert (ax.out, ax.crop) == (out, crop)


# --------------------------------------------------------------------------- (b) input ranges
def _check_range(ax: Axis, start: int, stop: int, x: np.ndarray, w: np.ndarray, ref) -> None:
    s, d, k, c, K = ax.stride, ax.dilation, ax.kernel, ax.crop, ax.k_eff
    whole = ref.layer_1d(x, w, s, d, ax.padding, ax.output_padding)
    assert len(whole) == ax.out
    r = ax.input_range(start, stop)
    assert 0 <= r.lo <= r.hi <= ax.length
    if r.size == 0:
        tile = np.zeros(stop - start)
    else:
        tile = ref.window_1d(ref.full_1d(x[r.lo : r.hi], w, s, d), r.offset, stop - start)
    np.testing.assert_allclose(tile, whole[start:stop], rtol=1e-12, atol=1e-12)
    # Every row one of whose taps lands in [start, stop) is in the slab ...
    for i in range(ax.length):
        if any(start <= i * s + t * d - c < stop for t in range(k)):
            assert r.lo <= i < r.hi, f"row {i} reaches [{start}, {stop}) but the slab is [{r.lo}, {r.hi})"
    # ... and the slab is tight: its first and last rows' kernel spans reach into the range.
    if r.size:
        for i in (r.lo, r.hi - 1):
            first, last = i * s - c, i * s - c + K - 1
            assert first < stop and last >= start, f"row {i} (span [{first}, {last}]) is not needed"


@settings(max_examples=100, deadline=None)
@given(p=axis_params(max_len=10), data=st.data())
def test_input_range_tile_equals_whole(p, data, ref):
    length, k, s, d, padding, op = p
    ax = Axis(length, k, s, d, padding, op)
    start = data.draw(st.integers(0, ax.out - 1), label="start")
    stop = data.draw(st.integers(start + 1, ax.out), label="stop")
    rng = _rng(data)
    _check_range(ax, start, stop, rng.standard_normal(length), rng.standard_normal(k), ref)


@pytest.mark.parametrize(
    "axis, start, stop, empty",
    [
        (Axis(3, 1, 3, 1, "valid", 2), 7, 9, True),  # entirely past the full length: bias only
        (Axis(3, 1, 3, 1, "same", 2), 7, 9, True),  # same, K = 1 < s, op 2: tail of 2
        (Axis(3, 2, 4, 1, "valid", None), 2, 4, True),  # k < s: a gap between rows 0 and 1
        (Axis(3, 2, 4, 1, "valid", None), 6, 8, True),  # the gap between rows 1 and 2
        (Axis(3, 2, 4, 1, "valid", None), 10, 12, True),  # the bias-only tail
        (Axis(3, 2, 4, 1, "valid", None), 3, 6, False),  # starts in a gap: negative slab offset
        (Axis(3, 2, 4, 1, "valid", None), 9, 12, False),  # runs past the slab's own full length
        (Axis(5, 4, 2, 1, "same", None), 0, 10, False),
        (Axis(5, 3, 1, 3, "same", None), 2, 3, False),
    ],
)
def test_input_range_gaps_and_tail(axis, start, stop, empty, ref):
    r = axis.input_range(start, stop)
    assert (r.size == 0) == empty
    if not empty and start == 3 and axis.kernel == 2:
        assert r.offset < 0
    rng = np.random.default_rng(7)
    _check_range(axis, start, stop, rng.standard_normal(axis.length), rng.standard_normal(axis.kernel), ref)


@pytest.mark.parametrize("bad", [(-1, 2), (0, 0), (3, 2), (0, 99)])
def test_input_range_rejects_out_of_bounds(bad):
    ax = Axis(4, 3, 2, 1, "same", None)
    with pytest.raises(ValueError):
        ax.input_range(*bad)


@SETTINGS
@given(p=axis_params(max_len=12))
def test_halo_is_the_low_side_reach_of_stride_aligned_tiles(p):
    length, k, s, d, _, op = p
    ax = Axis(length, k, s, d, "valid", op)  # valid: no crop, so stride-aligned means a multiple of s
    assert ax.halo == -(-ax.k_eff // s) - 1
    for a in range(0, ax.out, s):
        r = ax.input_range(a, min(a + s, ax.out))
        if r.size:
            assert r.lo == max(a // s - ax.halo, 0)


# --------------------------------------------------------------------------- (c) affine and spacing
@st.composite
def oblique_affine(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    zooms = rng.uniform(0.2, 5.0, 3)
    affine = np.eye(4)
    affine[:3, :3] = q @ np.diag(zooms)
    affine[:3, 3] = rng.uniform(-100, 100, 3)
    return affine


@settings(max_examples=60, deadline=None)
@given(
    affine=oblique_affine(),
    params=st.lists(axis_params(max_len=6), min_size=3, max_size=3),
    data=st.data(),
)
def test_output_affine_maps_output_voxels_to_their_input_position(affine, params, data):
    axes = [Axis(*p) for p in params]
    before = affine.copy()
    a_out = output_affine(affine, axes)
    np.testing.assert_array_equal(affine, before)  # input untouched
    np.testing.assert_array_equal(a_out[3], [0, 0, 0, 1])
    for _ in range(5):
        o = np.array([data.draw(st.integers(0, ax.out - 1)) for ax in axes], dtype=np.float64)
        u = np.array([(o[a] + ax.crop - (ax.k_eff - 1) / 2) / ax.stride for a, ax in enumerate(axes)])
        np.testing.assert_allclose(a_out @ np.append(o, 1), affine @ np.append(u, 1), rtol=1e-10, atol=1e-9)
    strides = [ax.stride for ax in axes]
    # Zooms divide by the strides; directions (orientation, obliquity) are kept.
    np.testing.assert_allclose(
        np.linalg.norm(a_out[:3, :3], axis=0), np.linalg.norm(affine[:3, :3], axis=0) / strides, rtol=1e-12
    )
    np.testing.assert_allclose(
        a_out[:3, :3] / np.linalg.norm(a_out[:3, :3], axis=0),
        affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0),
        atol=1e-12,
    )
    spacing = [float(data.draw(st.floats(0.1, 10.0))) for _ in range(3)]
    assert list(output_spacing(spacing, strides)) == pytest.approx([v / s for v, s in zip(spacing, strides)], rel=1e-15)


def test_output_affine_nearest_upsampling_centres_children_in_their_parent():
    # nearest x2: k = s = 2, valid. Input voxel 0 covers [-0.5, 0.5]; its children sit at -0.25 and +0.25.
    axes = axes_for((4, 4, 4), (2, 2, 2), (2, 2, 2), (1, 1, 1), "valid", None)
    a_out = output_affine(np.diag([2.0, 3.0, 4.0, 1.0]), axes)
    np.testing.assert_allclose(a_out @ [0, 0, 0, 1], [-0.5, -0.75, -1.0, 1])
    np.testing.assert_allclose(a_out @ [1, 1, 1, 1], [0.5, 0.75, 1.0, 1])
    np.testing.assert_allclose(np.diag(a_out)[:3], [1.0, 1.5, 2.0])


def test_output_spacing_divides_by_strides():
    assert output_spacing((1.0, 2.0, 3.0), (1, 2, 3)) == (1.0, 1.0, 1.0)
    assert output_spacing([0.5, 0.5, 0.5], [2, 4, 1]) == (0.25, 0.125, 0.5)
