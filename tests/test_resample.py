"""The Resampler and api.resample against their peers (SimpleITK, scipy, Pillow, torch), tiled or whole.

Peers run on the same grid: output voxel o at input coordinate u(o) (geometry/grid.py). Where a peer's
own boundary differs from the one under test, the peer runs on the input padded with numpy's mode of
that boundary (edge, reflect, constant), so the comparison covers the edges as well.
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import scipy.ndimage as ndi
import SimpleITK as sitk
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from deconv3d_cli.api import resample, upsample
from deconv3d_cli.engine.resample import Resampler, pass_order
from deconv3d_cli.errors import InputError, SpecError
from deconv3d_cli.geometry import boundary
from deconv3d_cli.geometry.grid import Grid, output_grid, spacing_of
from deconv3d_cli.geometry.layout import Layout
from deconv3d_cli.geometry.tiling import make_plan
from deconv3d_cli.layer.interpolators import bspline_truncation_bound
from deconv3d_cli.layer.resample import ResampleSpec

NP_MODE = {"replicate": "edge", "reflect": "reflect", "zeros": "constant"}
SCIPY_MODE = {"replicate": "nearest", "reflect": "mirror", "zeros": "grid-constant"}
SITK = {
    "nearest": sitk.sitkNearestNeighbor,
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
    "lanczos": sitk.sitkLanczosWindowedSinc,
}
TOL = 1e-5  # of the data range
GRIDS = [dict(scale=1.5), dict(scale=(1.3, 2.0, 2.7)), dict(voxel_size=(0.5, 0.7, 0.9)), dict(shape=(17, 20, 9))]
NIBABEL_DATA = os.path.join(os.path.dirname(nib.__file__), "tests", "data")


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).uniform(-100, 400, (13, 11, 9)).astype(np.float32)
    return x, np.diag([1.2, 0.9, 2.0, 1.0])


@pytest.fixture(scope="module")
def anatomical() -> tuple[np.ndarray, np.ndarray]:
    """A real MRI volume shipped with nibabel (33 x 41 x 25, 2 mm, int16 on disk)."""
    img = nib.load(os.path.join(NIBABEL_DATA, "anatomical.nii"))
    return np.asarray(img.dataobj, dtype=np.float32), img.affine


def padded(x: np.ndarray, affine: np.ndarray, pad: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """x extended by `pad` voxels per side as `mode` extends it, with the affine that keeps the world in place."""
    if pad == 0:
        return x, affine
    shift = np.eye(4)
    shift[:3, 3] = -pad
    return np.pad(x, pad, mode=NP_MODE[mode]), affine @ shift


def sitk_resample(
    x: np.ndarray, affine: np.ndarray, grid: Grid, interp: str, pad: int = 0, mode: str = ""
) -> np.ndarray:
    """SimpleITK's ResampleImageFilter onto `grid` (index (i, j, k) = our voxel (i, j, k)), in float64."""
    x, affine = padded(x, affine, pad, mode)
    img = sitk.GetImageFromArray(np.ascontiguousarray(x.transpose(2, 1, 0)).astype(np.float64))
    sp = spacing_of(affine)
    img.SetSpacing(sp)
    img.SetOrigin([float(v) for v in affine[:3, 3]])
    img.SetDirection((affine[:3, :3] / np.asarray(sp)).ravel().tolist())
    f = sitk.ResampleImageFilter()
    f.SetSize([int(n) for n in grid.shape])
    f.SetOutputSpacing([float(v) for v in grid.spacing])
    f.SetOutputOrigin([float(v) for v in grid.affine[:3, 3]])
    f.SetOutputDirection((grid.affine[:3, :3] / np.asarray(grid.spacing)).ravel().tolist())
    f.SetInterpolator(SITK[interp])
    f.SetOutputPixelType(sitk.sitkFloat64)
    return sitk.GetArrayFromImage(f.Execute(img)).transpose(2, 1, 0)


def coordinates(grid: Grid) -> np.ndarray:
    return np.stack(np.meshgrid(*[mp(np.arange(m)) for mp, m in zip(grid.maps, grid.shape)], indexing="ij"))


def scipy_resample(x: np.ndarray, grid: Grid, order: int, mode: str) -> np.ndarray:
    return ndi.map_coordinates(x.astype(np.float64), coordinates(grid), order=order, mode=SCIPY_MODE[mode])


def pillow_cubic(x: np.ndarray, grid: Grid, mode: str) -> np.ndarray:
    """Pillow's BICUBIC (Keys a = -0.5) axis by axis on float images: (H, W) per slice, then depth."""
    p = 3
    xp = np.pad(x, p, mode=NP_MODE[mode]).astype(np.float32)
    m0, m1, m2 = grid.shape

    def box(ax: int) -> tuple[float, float]:
        mp, m = grid.maps[ax], grid.shape[ax]
        lo = p + mp.shift + 0.5 - 0.5 * mp.scale  # Pillow's centre (o + 1/2) a + lo is at u(o) + p + 1/2
        return lo, lo + mp.scale * m

    (h0, h1), (w0, w1) = box(1), box(2)
    planes = np.stack(
        [np.asarray(Image.fromarray(s).resize((m2, m1), Image.Resampling.BICUBIC, box=(w0, h0, w1, h1))) for s in xp]
    )
    d0, d1 = box(0)
    flat = Image.fromarray(np.ascontiguousarray(planes.reshape(planes.shape[0], -1)))
    out = np.asarray(flat.resize((m1 * m2, m0), Image.Resampling.BICUBIC, box=(0, d0, m1 * m2, d1)))
    return out.reshape(m0, m1, m2)


def assert_matches(ours: np.ndarray, ref: np.ndarray, x: np.ndarray, margin: int = 0) -> None:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    if margin:
        ours, ref = (
            ours[margin:-margin, margin:-margin, margin:-margin],
            ref[margin:-margin, margin:-margin, margin:-margin],
        )
    assert float(np.abs(ours.astype(np.float64) - ref).max()) <= TOL * float(np.ptp(x))


# ------------------------------------------------------------------------- peers, random data
@pytest.mark.parametrize("kw", GRIDS)
@pytest.mark.parametrize("mode", boundary.MODES)
def test_linear_equals_simpleitk_and_scipy(volume, kw, mode):
    x, affine = volume
    g = output_grid(x.shape, affine, **kw)
    ours = resample(x, affine=affine, interp="linear", boundary=mode, **kw)
    pad = 0 if mode == "replicate" else 2  # sitkLinear's own edge rule is replicate
    assert_matches(ours, sitk_resample(x, affine, g, "linear", pad, mode), x)
    assert_matches(ours, scipy_resample(x, g, 1, mode), x)


@pytest.mark.parametrize("kw", GRIDS)
def test_linear_equals_torch_trilinear(volume, kw):
    x, affine = volume
    g = output_grid(x.shape, affine, **kw)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x)[None, None], size=g.shape, mode="trilinear", align_corners=False
    )[0, 0].numpy()
    assert_matches(resample(x, affine=affine, **kw), ref, x)


def _not_a_tie(grid: Grid) -> np.ndarray:
    """Output voxels none of whose coordinates is within 1e-6 of a half-integer (where rounding is a matter of bits)."""
    ok = np.ones(grid.shape, bool)
    for a, (mp, m) in enumerate(zip(grid.maps, grid.shape)):
        frac = (mp(np.arange(m)) + 0.5) % 1.0
        clear = np.minimum(frac, 1 - frac) > 1e-6
        ok &= clear.reshape([-1 if i == a else 1 for i in range(3)])
    return ok


@pytest.mark.parametrize("kw", GRIDS + [dict(scale=(2, 3, 4))])
def test_nearest_equals_simpleitk_and_torch_nearest_exact(volume, kw):
    x, affine = volume
    g = output_grid(x.shape, affine, **kw)
    ours = resample(x, affine=affine, interp="nearest", **kw)
    ok = _not_a_tie(g)
    assert ok.mean() > 0.5
    assert np.array_equal(ours[ok], sitk_resample(x, affine, g, "nearest")[ok])
    ref = torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], size=g.shape, mode="nearest-exact")[0, 0]
    assert np.array_equal(ours[ok], ref.numpy()[ok])
    assert set(np.unique(ours)) <= set(np.unique(x))  # copies, never mixtures


def test_nearest_takes_the_upper_voxel_at_a_tie():
    x = np.arange(2, dtype=np.float32).reshape(2, 1, 1) + 10
    y = resample(x, shape=(3, 1, 1), interp="nearest")  # u(1) = 0.5 exactly
    assert y[:, 0, 0].tolist() == [10, 11, 11]


@pytest.mark.parametrize("kw", GRIDS)
@pytest.mark.parametrize("mode", boundary.MODES)
def test_cubic_equals_pillow_bicubic(volume, kw, mode):
    x, affine = volume
    g = output_grid(x.shape, affine, **kw)
    assert_matches(resample(x, affine=affine, interp="cubic", boundary=mode, **kw), pillow_cubic(x, g, mode), x)


@pytest.mark.parametrize("kw", GRIDS)
@pytest.mark.parametrize("mode", boundary.MODES)
def test_bspline_equals_scipy_map_coordinates(volume, kw, mode):
    x, affine = volume
    g = output_grid(x.shape, affine, **kw)
    assert_matches(resample(x, affine=affine, interp="bspline", boundary=mode, **kw), scipy_resample(x, g, 3, mode), x)


@pytest.mark.parametrize("kw", GRIDS)
def test_bspline_equals_simpleitk_with_its_mirror_boundary(volume, kw):
    x, affine = volume
    g = output_grid(x.shape, affine, **kw)
    assert_matches(
        resample(x, affine=affine, interp="bspline", boundary="reflect", **kw),
        sitk_resample(x, affine, g, "bspline"),
        x,
    )


@pytest.mark.parametrize("kw", GRIDS)
@pytest.mark.parametrize("mode", boundary.MODES)
def test_lanczos_equals_simpleitk(volume, kw, mode):
    x, affine = volume
    g = output_grid(x.shape, affine, **kw)
    pad = 0 if mode == "replicate" else 6  # ITK's ZeroFluxNeumann boundary is replicate
    ours = resample(x, affine=affine, interp="lanczos", boundary=mode, **kw)
    assert_matches(ours, sitk_resample(x, affine, g, "lanczos", pad, mode), x)


# ------------------------------------------------------------------------- a real volume
@pytest.mark.parametrize("interp", ["nearest", "linear", "bspline", "lanczos"])
def test_real_volume_equals_simpleitk(anatomical, interp):
    x, affine = anatomical
    g = output_grid(x.shape, affine, voxel_size=1.8)
    assert g.shape == (37, 46, 28)  # 36.7, 45.6, 27.8
    mode = "reflect" if interp == "bspline" else "replicate"
    ours = resample(x, affine=affine, voxel_size=1.8, interp=interp, boundary=mode)
    ref = sitk_resample(x, affine, g, interp)
    if interp == "nearest":
        ok = _not_a_tie(g)
        assert np.array_equal(ours[ok], ref[ok])
    else:
        assert_matches(ours, ref, x)


def test_real_volume_cubic_and_bspline_equal_pillow_and_scipy(anatomical):
    x, affine = anatomical
    g = output_grid(x.shape, affine, scale=1.7)
    assert_matches(resample(x, affine=affine, scale=1.7, interp="cubic"), pillow_cubic(x, g, "replicate"), x)
    assert_matches(resample(x, affine=affine, scale=1.7, interp="bspline"), scipy_resample(x, g, 3, "replicate"), x)


def test_oblique_real_volume_equals_simpleitk():
    """nibabel's example4d: an oblique affine, 2 x 2 x 2.2 mm; a crop of its first volume to 1 mm."""
    img = nib.load(os.path.join(NIBABEL_DATA, "example4d.nii.gz"))
    crop = np.eye(4)
    crop[:3, 3] = (50, 30, 6)
    x = np.asarray(img.dataobj[50:70, 30:50, 6:18, 0], dtype=np.float32)
    affine = img.affine @ crop
    g = output_grid(x.shape, affine, voxel_size=1.0)
    for interp in ("linear", "lanczos"):
        assert_matches(
            resample(x, affine=affine, voxel_size=1.0, interp=interp), sitk_resample(x, affine, g, interp), x
        )


# ------------------------------------------------------------------------- today's presets
@pytest.mark.parametrize("scale", [2, 3, (2, 3, 1)])
def test_integer_factors_equal_the_presets(volume, scale):
    x, _ = volume
    lin = resample(x, scale=scale, interp="linear")
    tri = upsample(x, "trilinear", scale)
    assert lin.shape == tri.shape and np.abs(lin - tri).max() <= 1e-6 * np.ptp(x)
    assert np.array_equal(resample(x, scale=scale, interp="nearest"), upsample(x, "nearest", scale))


def test_like_a_flipped_copy_of_the_input_grid_flips_exactly(volume):
    x, affine = volume
    ref = affine.copy()
    ref[:3, 0] *= -1
    ref[:3, 3] = affine[:3, :3] @ [x.shape[0] - 1, 0, 0] + affine[:3, 3]
    for interp in ("linear", "cubic", "lanczos"):
        y = resample(x, affine=affine, like=(x.shape, ref), interp=interp)
        assert np.array_equal(y, x[::-1]), interp


@pytest.mark.parametrize("interp", ["linear", "bspline", "lanczos"])
def test_like_a_flipped_output_grid_is_the_output_reversed(volume, interp):
    x, affine = volume
    g = output_grid(x.shape, affine, scale=(1.5, 1.3, 2.2))
    ref = g.affine.copy()
    ref[:3, 3] = g.affine[:3, :3] @ [0, g.shape[1] - 1, 0] + g.affine[:3, 3]
    ref[:3, 1] *= -1
    flipped = resample(x, affine=affine, like=(g.shape, ref), interp=interp)
    assert np.abs(flipped - resample(x, affine=affine, scale=(1.5, 1.3, 2.2), interp=interp)[:, ::-1]).max() <= (
        1e-6 * np.ptp(x)
    )


def test_like_round_trip_reproduces_the_voxel_size_output(volume):
    x, affine = volume
    g = output_grid(x.shape, affine, voxel_size=0.6)
    a = resample(x, affine=affine, voxel_size=0.6, interp="bspline")
    b = resample(x, affine=affine, like=(g.shape, g.affine), interp="bspline")
    assert np.abs(a - b).max() <= 1e-6 * np.ptp(x)


# ------------------------------------------------------------------------- tiles: same bytes
def _tiled(resampler: Resampler, x: np.ndarray, tile_shape, mode: str) -> np.ndarray:
    """The output assembled tile by tile, each from the slab the plan and boundary.read_slab give it."""
    layout = Layout(5, "channels_first")
    plan = make_plan(
        resampler.axes, x.shape[0], x.shape[1], x.shape[1], (1, 1, 1), memory_limit=1 << 40, tile_shape=tile_shape
    )
    out = np.full((x.shape[0], x.shape[1], *plan.out_shape), np.nan, resampler.out_numpy_dtype)
    for t in plan.tiles():
        slab = boundary.read_slab(lambda index: x[index], layout, t.src, t.batch, resampler.axes, mode)
        out[(t.batch, slice(None), *t.out)] = resampler.compute_tile(slab, t).numpy()
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(st.integers(1, 7), st.integers(1, 7), st.integers(1, 7)),
    factors=st.tuples(st.floats(1.0, 2.6), st.floats(1.0, 2.6), st.floats(1.0, 2.6)),
    interp=st.sampled_from(["nearest", "linear", "cubic", "bspline", "lanczos"]),
    mode=st.sampled_from(boundary.MODES),
    channels=st.integers(1, 2),
    flip=st.booleans(),
    data=st.data(),
)
def test_tiled_equals_whole_by_bytes(shape, factors, interp, mode, channels, flip, data):
    rng = np.random.default_rng(sum(shape))
    x = rng.uniform(-5, 5, (1, channels, *shape)).astype(np.float32)
    spec = ResampleSpec.create(scale=factors, interp=interp, boundary=mode)
    grid = spec.grid(shape, spacing=(1.0, 1.0, 1.0))
    if flip:  # the same grid through `like`, its first axis running backwards (negative scale)
        ref = grid.affine.copy()
        ref[:3, 3] = grid.affine[:3, :3] @ [grid.shape[0] - 1, 0, 0] + grid.affine[:3, 3]
        ref[:3, 0] *= -1
        spec = ResampleSpec.create(like=(grid.shape, ref), interp=interp, boundary=mode)
        grid = spec.grid(shape, spacing=(1.0, 1.0, 1.0))
        assert grid.maps[0].scale < 0
    r = Resampler(spec, grid, channels)
    tile = tuple(data.draw(st.integers(1, m)) for m in grid.shape)
    assume(np.prod([-(-m // t) for m, t in zip(grid.shape, tile)]) <= 400)
    whole = r.whole(x).numpy()
    assert whole.shape == (1, channels, *grid.shape)
    assert _tiled(r, x, tile, mode).tobytes() == whole.tobytes()


@pytest.mark.parametrize("interp", ["linear", "bspline", "lanczos"])
def test_one_voxel_tiles_equal_whole_by_bytes(interp):
    x = np.random.default_rng(3).standard_normal((1, 1, 3, 4, 2)).astype(np.float32)
    spec = ResampleSpec.create(scale=(1.7, 1.25, 2.2), interp=interp, boundary="reflect")
    r = Resampler(spec, spec.grid(x.shape[2:]), 1)
    assert _tiled(r, x, (1, 1, 1), "reflect").tobytes() == r.whole(x).numpy().tobytes()


@pytest.mark.parametrize("interp", ["linear", "bspline"])
def test_blocks_change_no_bytes(volume, interp):
    """The cache blocks (CPU) and the single block (CUDA's choice) compute the same bytes."""
    x = volume[0][None, None]
    spec = ResampleSpec.create(scale=(1.5, 2.2, 1.7), interp=interp)
    r = Resampler(spec, spec.grid(x.shape[2:]), 1)
    ref = r.whole(x).numpy().tobytes()
    for chunk in (7, 1 << 62):
        r.chunk = chunk
        assert r.whole(x).numpy().tobytes() == ref


def test_fp64_and_repeat_calls_are_deterministic(volume):
    x, affine = volume
    kw = dict(affine=affine, scale=1.5, interp="bspline", boundary="reflect", precision="fp64")
    a = resample(x, **kw)
    assert a.dtype == np.float64 and a.tobytes() == resample(x, **kw).tobytes()
    # fp64 against scipy's exact mirror boundary: the truncated prefilter's bound, not fp32's rounding
    # (three axes: at most (1 + 3 + 9) times the one-axis bound, 3 being the prefilter's gain in L1)
    ref = scipy_resample(x, output_grid(x.shape, affine, scale=1.5), 3, "reflect")
    assert np.abs(a - ref).max() <= 13 * bspline_truncation_bound() * np.abs(x).max()


# ------------------------------------------------------------------------- layouts and kinds
def test_channels_batches_layouts_and_torch(volume):
    x, _ = volume
    one = resample(x, scale=1.5, interp="cubic")
    stack = np.stack([x, 2 * x], axis=-1)  # (D, H, W, C)
    y = resample(stack, scale=1.5, interp="cubic")
    assert y.shape == (*one.shape, 2) and np.array_equal(y[..., 0], one)
    assert np.allclose(y[..., 1], 2 * one, rtol=0, atol=1e-5 * np.ptp(x))
    cf = resample(np.moveaxis(stack, -1, 0)[None], scale=1.5, interp="cubic", data_format="channels_first")
    assert cf.shape == (1, 2, *one.shape) and np.array_equal(cf[0, 0], one)
    t = resample(torch.from_numpy(x), scale=1.5, interp="cubic")
    assert isinstance(t, torch.Tensor) and np.array_equal(t.numpy(), one)
    ints = resample(x.astype(np.int16), scale=1.5, interp="nearest")
    assert ints.dtype == np.float32


def test_refusals_through_the_api(volume):
    x, _ = volume
    with pytest.raises(SpecError, match="axis 1 is below 1") as e:
        resample(x, scale=(1, 0.5, 1))
    assert e.value.param == "scale"
    with pytest.raises(InputError, match="smaller than the input") as e2:
        resample(x, shape=(4, 4, 4))
    assert e2.value.param == "shape"
    with pytest.raises(SpecError, match="unknown interpolator 'sinc'") as e:
        resample(x, scale=2, interp="sinc")
    assert e.value.param == "interp"
    with pytest.raises(SpecError, match="unknown boundary") as e:
        resample(x, scale=2, boundary="wrap")
    assert e.value.param == "boundary"
    with pytest.raises(SpecError, match="spacing or affine") as e:
        resample(x, scale=2, spacing=1, affine=np.eye(4))
    with pytest.raises(SpecError, match="dimensions"):
        resample(x[0, 0], scale=2)


def test_a_slab_of_the_wrong_size_is_refused():
    spec = ResampleSpec.create(scale=2)
    r = Resampler(spec, spec.grid((8, 8, 8)), 1)
    with pytest.raises(SpecError, match="rows on axis 0"):
        r.tile(np.zeros((1, 1, 3, 8, 8), np.float32), (0, 0, 0), (4, 16, 16))


def test_pass_order_is_fixed_by_the_grid():
    spec = ResampleSpec.create(voxel_size=0.5)
    axes = spec.axes(spec.grid((10, 10, 10), spacing=(1.2, 3.0, 1.2)))
    assert pass_order(axes) == (2, 0, 1)  # smallest factor first (2.4 twice, innermost first), then 6


# ------------------------------------------------------------------------- CUDA
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("interp", ["nearest", "linear", "cubic", "bspline", "lanczos"])
def test_cuda_equals_cpu_and_tiles_equal_whole(interp):
    x = np.random.default_rng(4).standard_normal((1, 2, 12, 10, 9)).astype(np.float32)
    spec = ResampleSpec.create(scale=(1.5, 2.2, 1.3), interp=interp)
    grid = spec.grid(x.shape[2:])
    cpu = Resampler(spec, grid, 2).whole(x).numpy()
    gpu = Resampler(spec, grid, 2, device="cuda")
    whole = gpu.whole(x).cpu().numpy()
    assert np.abs(whole - cpu).max() <= 1e-5 * np.ptp(x)
    layout = Layout(5, "channels_first")
    plan = make_plan(gpu.axes, 1, 2, 2, (1, 1, 1), memory_limit=1 << 40, tile_shape=(5, 4, 3))
    out = np.zeros_like(whole)
    for t in plan.tiles():
        slab = boundary.read_slab(lambda index: x[index], layout, t.src, t.batch, gpu.axes, spec.boundary)
        out[(t.batch, slice(None), *t.out)] = gpu.compute_tile(slab, t).cpu().numpy()
    assert out.tobytes() == whole.tobytes()


@pytest.mark.parametrize("interp", ["linear", "bspline", "lanczos"])
def test_any_memory_order_gives_the_same_bytes_and_keeps_it(interp):
    """An x-fastest volume (NIfTI's order) gives the C-order volume's bytes, whole and tiled with
    boundary rows, and the result keeps its memory order (so it reaches a NIfTI file without a copy)."""
    rng = np.random.default_rng(22)
    x = rng.standard_normal((1, 1, 13, 11, 9)).astype(np.float32)
    f_order = np.asfortranarray(x[0, 0])[None, None]
    spec = ResampleSpec.create(interp=interp, scale=(1.5, 2.0, 1.3), boundary="reflect")
    r = Resampler(spec, spec.grid(x.shape[2:]), 1)
    want, got = r.whole(x), r.whole(f_order)
    assert np.array_equal(got.numpy(), want.numpy()) and want.is_contiguous()
    assert got[0, 0].permute(2, 1, 0).is_contiguous()
    tiled = _tiled(r, f_order, (7, 5, 4), "reflect")
    assert tiled.tobytes() == np.ascontiguousarray(want.numpy()).tobytes()
