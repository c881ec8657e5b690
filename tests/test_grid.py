"""Output grids (geometry/grid.py): the four ways of saying the grid, the rounding rule, exact affines, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from deconv3d_cli.errors import InputError, SpecError
from deconv3d_cli.geometry import axis as conv_axis
from deconv3d_cli.geometry.grid import (
    Grid,
    GridError,
    GridRequest,
    output_grid,
    parse_triple,
    rounded_length,
    spacing_affine,
    spacing_of,
)
from deconv3d_cli.layer.presets import make_spec
from deconv3d_cli.layer.resample import ResampleSpec


def oblique_affine(spacing=(1.2, 0.9, 3.0), angles=(0.3, -0.2, 0.5), origin=(-90.0, 12.5, 40.0)) -> np.ndarray:
    """A rotated, anisotropic voxel-to-world affine (no shear), as scanners write for oblique slices."""
    cx, cy, cz = (math.cos(a) for a in angles)
    sx, sy, sz = (math.sin(a) for a in angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    a = np.eye(4)
    a[:3, :3] = rz @ ry @ rx @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def sitk_image(shape, affine) -> sitk.Image:
    """A SimpleITK image whose index (i, j, k) is our voxel (i, j, k) at world affine @ (i, j, k, 1)."""
    img = sitk.Image([int(n) for n in shape], sitk.sitkFloat32)
    sp = spacing_of(affine)
    img.SetSpacing(sp)
    img.SetOrigin([float(v) for v in affine[:3, 3]])
    img.SetDirection((np.asarray(affine)[:3, :3] / np.asarray(sp)).ravel().tolist())
    return img


# ------------------------------------------------------------------------- the rounding rule
def test_rounding_is_nearest_with_halves_up():
    assert [rounded_length(x) for x in (7.5, 6.5, 7.49, 7.51, 12.0)] == [8, 7, 7, 8, 12]
    # a tie that binary arithmetic misses by 1e-16 still rounds up ("as written")
    assert rounded_length(0.15 * 50 / 1.0) == 8  # 7.499999999999999


@pytest.mark.parametrize("n, s", [(1, 2), (7, 2), (33, 3), (128, 4), (5, 7)])
def test_integer_scale_is_exactly_the_trilinear_presets_grid(n, s):
    shape = (n, n + 1, n + 2)
    affine = oblique_affine()
    g = output_grid(shape, affine, scale=s)
    assert g.shape == tuple(v * s for v in shape)
    preset_axes = make_spec("trilinear", s).axes(shape)
    assert g.shape == tuple(ax.out for ax in preset_axes)
    assert np.array_equal(g.affine, conv_axis.output_affine(affine, preset_axes))  # to the last bit


def test_real_scale_and_its_map():
    g = output_grid((20, 21, 5), np.eye(4), scale=(1.5, 1.5, 1.3))
    assert g.shape == (30, 32, 7)  # 31.5 -> 32, 6.5 -> 7: halves up
    for n, m, mp in zip((20, 21, 5), g.shape, g.maps):
        o = np.arange(m)
        assert np.allclose(mp(o), (o + 0.5) * n / m - 0.5, rtol=0, atol=1e-12)
    assert g.factors == pytest.approx((1.5, 32 / 21, 7 / 5))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 400), f=st.floats(1.0, 9.0), v=st.floats(0.2, 4.0))
def test_lengths_follow_the_rule_and_keep_the_field_of_view(n, f, v):
    affine = np.diag([v, v, v, 1.0])
    g = output_grid((n, n, n), affine, scale=f)
    m = g.shape[0]
    assert m >= n and abs(m - n * f) <= 0.5 + 1e-6
    if f == int(f):
        assert m == n * int(f)
    # voxel edges aligned: the output's first and last edges are the input's, in world units
    first_edge = g.world([-0.5, -0.5, -0.5])[0]
    last_edge = g.world([m - 0.5] * 3)[0]
    assert first_edge == pytest.approx(-0.5 * v, abs=1e-9 * n * v)
    assert last_edge == pytest.approx((n - 0.5) * v, abs=1e-9 * n * v)
    assert g.spacing[0] == pytest.approx(v * n / m, rel=1e-12)


def test_anisotropic_voxel_size_to_half_a_millimetre():
    """The issue's example: 1.2 x 1.2 x 3 mm to 0.5 mm isotropic."""
    affine = np.diag([1.2, 1.2, 3.0, 1.0])
    g = output_grid((40, 41, 16), affine, voxel_size=0.5)
    assert g.shape == (96, 98, 96)  # 96, 98.4 -> 98, 96
    assert g.spacing == pytest.approx((0.5, 41 * 1.2 / 98, 0.5), rel=1e-12)
    # a float32 header's 1.2 (1.2000000476837158) asked as 1.2 is that axis unchanged, not a refusal
    f32 = np.diag([np.float32(1.2), 1.2, 3.0, 1.0]).astype(np.float64)
    assert output_grid((40, 41, 16), f32, voxel_size=(1.2, 0.5, 0.5)).shape[0] == 40


def test_oblique_affine_keeps_orientation_and_world_positions():
    affine = oblique_affine()
    g = output_grid((30, 20, 12), affine, voxel_size=(0.5, 0.45, 1.0))
    assert g.shape == (72, 40, 36)
    # same directions, scaled columns
    for j in range(3):
        assert np.allclose(g.affine[:3, j] / g.spacing[j], affine[:3, j] / spacing_of(affine)[j], atol=1e-12)
    # output voxel o is at input coordinate u(o): its world position is the input affine's at u
    rng = np.random.default_rng(1)
    idx = rng.integers(0, g.shape, size=(50, 3))
    u = np.stack([mp(idx[:, a]) for a, mp in enumerate(g.maps)], axis=1)
    assert np.allclose(g.world(idx), u @ affine[:3, :3].T + affine[:3, 3], atol=1e-9)


@pytest.mark.parametrize("kw", [dict(voxel_size=(0.5, 0.45, 1.0)), dict(scale=2.5), dict(shape=(41, 33, 17))])
def test_world_grid_matches_simpleitk_field_of_view(kw):
    """SimpleITK's own index-to-world mapping of our output grid puts its outer voxel edges on the input's."""
    shape, affine = (30, 20, 12), oblique_affine()
    g = output_grid(shape, affine, **kw)
    src, out = sitk_image(shape, affine), sitk_image(g.shape, g.affine)
    for corner in [(-0.5, -0.5, -0.5), (0.5, 0.5, 0.5)]:  # low edges, then high edges
        lo = [c if c < 0 else n - 0.5 for c, n in zip(corner, shape)]
        lo_out = [c if c < 0 else m - 0.5 for c, m in zip(corner, g.shape)]
        p_in = np.array(src.TransformContinuousIndexToPhysicalPoint(lo))
        p_out = np.array(out.TransformContinuousIndexToPhysicalPoint(lo_out))
        assert np.abs(p_in - p_out).max() <= 1e-4
    # and every output voxel centre SimpleITK computes is ours
    for idx in [(0, 0, 0), (g.shape[0] - 1, 3, 5), tuple(m - 1 for m in g.shape)]:
        assert np.abs(np.array(out.TransformIndexToPhysicalPoint(idx)) - g.world(idx)).max() <= 1e-4


def test_shape_grid():
    g = output_grid((10, 10, 10), np.diag([2.0, 2.0, 2.0, 1.0]), shape=(10, 25, 31))
    assert g.shape == (10, 25, 31)
    assert g.maps[0].scale == 1.0 and g.maps[0].shift == 0.0  # an unchanged axis is the identity
    assert g.spacing == pytest.approx((2.0, 0.8, 20 / 31))


# ------------------------------------------------------------------------- like
def test_like_round_trip_of_a_produced_grid():
    shape, affine = (30, 20, 12), oblique_affine()
    g1 = output_grid(shape, affine, voxel_size=0.7)
    g2 = output_grid(shape, affine, like=(g1.shape, g1.affine))
    assert g2.shape == g1.shape and np.array_equal(g2.affine, g1.affine)
    for m1, m2 in zip(g1.maps, g2.maps):
        assert m2.scale == pytest.approx(m1.scale, abs=1e-12) and m2.shift == pytest.approx(m1.shift, abs=1e-12)
    assert output_grid(shape, affine, like=g1).shape == g1.shape  # a Grid (or an image) as the reference


def test_like_takes_the_reference_grid_including_origin_and_flips():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    ref = np.diag([-1.0, 0.5, 2.0, 1.0])
    ref[:3, 3] = (19.0, -0.25, 4.0)  # flipped axis 0, starting at the input's far end
    g = output_grid((10, 10, 10), affine, like=((20, 40, 3), ref))
    assert g.shape == (20, 40, 3) and np.array_equal(g.affine, ref)
    assert (g.maps[0].scale, g.maps[0].shift) == pytest.approx((-0.5, 9.5))
    assert (g.maps[1].scale, g.maps[1].shift) == pytest.approx((0.25, -0.125))
    assert (g.maps[2].scale, g.maps[2].shift) == pytest.approx((1.0, 2.0))


def test_like_refuses_rotated_permuted_and_coarser_references():
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    with pytest.raises(GridError, match=r"axis 1 is at 10 degrees to the input's axis 1") as e:
        output_grid((8, 8, 8), affine, like=((8, 8, 8), oblique_affine((1, 1, 1), (math.radians(10), 0, 0))))
    assert e.value.param == "like"
    perm = np.eye(4)[[1, 0, 2, 3]]
    with pytest.raises(GridError, match="permuted") as e:
        output_grid((8, 8, 8), affine, like=((8, 8, 8), perm))
    assert e.value.param == "like"
    with pytest.raises(GridError, match="downsampling") as e:
        output_grid((8, 8, 8), affine, like=((4, 8, 8), np.diag([2.0, 1.0, 1.0, 1.0])))
    assert e.value.param == "like"


def test_like_tolerates_float32_rounding_of_the_reference_header():
    affine = oblique_affine()
    g1 = output_grid((30, 20, 12), affine, scale=2)
    g2 = output_grid((30, 20, 12), affine, like=(g1.shape, g1.affine.astype(np.float32)))
    assert g2.shape == g1.shape


# ------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "kw, param, match",
    [
        (dict(scale=0.5), "scale", "axis 0 is below 1"),
        (dict(scale=(1, 1.5, 0.9)), "scale", "axis 2 is below 1"),
        (dict(scale=float("nan")), "scale", "not finite"),
        (dict(voxel_size=0), "voxel_size", "positive"),
        (dict(voxel_size=(0.5, -1, 0.5)), "voxel_size", r"positive on every axis \(axis 1\)"),
        (dict(voxel_size="inf"), "voxel_size", "not finite"),
        (dict(voxel_size="1,2"), "voxel_size", "one or three"),
        (dict(voxel_size="a"), "voxel_size", "not a number"),
        (dict(shape="2.5"), "shape", "whole numbers"),
        (dict(shape=(8, 0, 8)), "shape", "positive"),
        (dict(), "voxel_size", "give one of"),
        (dict(scale=2, voxel_size=0.5), "scale", "not voxel_size and scale"),
    ],
)
def test_request_refusals(kw, param, match):
    with pytest.raises(GridError, match=match) as e:
        GridRequest.create(**kw)
    assert e.value.param == param and e.value.exit_code == 2
    with pytest.raises(SpecError, match=match) as e2:  # the layer's face of the same refusal
        ResampleSpec.create(**kw)
    assert e2.value.param == param


@pytest.mark.parametrize(
    "kw, param, match",
    [
        (dict(voxel_size=(0.5, 2.5, 0.5)), "voxel_size", "axis 1 is larger than the input's 2"),
        (dict(shape=(16, 7, 16)), "shape", "smaller than the input's .* on axis 1"),
    ],
)
def test_input_dependent_refusals(kw, param, match):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    with pytest.raises(GridError, match=match) as e:
        output_grid((8, 8, 8), affine, **kw)
    assert e.value.param == param
    with pytest.raises(InputError, match=match) as e2:
        ResampleSpec.create(**kw).grid((8, 8, 8), affine)
    assert e2.value.param == param and e2.value.exit_code == 2


def test_bad_input_affines_and_spacings():
    with pytest.raises(GridError, match="singular"):
        output_grid((4, 4, 4), np.diag([1.0, 0.0, 1.0, 1.0]), scale=2)
    with pytest.raises(GridError, match="4x4"):
        output_grid((4, 4, 4), np.eye(3), scale=2)
    with pytest.raises(GridError, match="positive") as e:
        spacing_affine((1.0, -1.0, 1.0))
    assert e.value.param == "spacing"


def test_parse_triple_forms():
    assert parse_triple("1.2,1.2,3", "voxel_size") == (1.2, 1.2, 3.0)
    assert parse_triple("2x2x1", "scale") == (2.0, 2.0, 1.0)
    assert parse_triple(0.5, "voxel_size") == (0.5, 0.5, 0.5)
    assert parse_triple([64], "shape", integer=True) == (64, 64, 64)
    assert isinstance(output_grid((4, 4, 4), np.eye(4), scale=2), Grid)
