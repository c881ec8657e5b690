"""Tile plans: tiled engine output equals the whole-volume output; plans cover once, fit and align."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deconv3d_cli import LayerSpec
from deconv3d_cli.engine import Engine, to_numpy
from deconv3d_cli.geometry.tiling import READ_AHEAD, Costs, format_bytes, make_plan, parse_bytes
from deconv3d_cli.geometry.tiling import PlanError as InputError

HUGE = 1 << 50
ACTIVATIONS = ["linear", "relu", "sigmoid", "tanh", "selu", "softmax", "log_softmax"]


@st.composite
def layer_case(draw, max_len: int = 4, max_kernel: int = 3, max_stride: int = 3):
    """A legal spec (with random weights) and an input array in its layout."""
    kernel_size = tuple(draw(st.integers(1, max_kernel)) for _ in range(3))
    strides = tuple(draw(st.integers(1, max_stride)) for _ in range(3))
    if any(s > 1 for s in strides):
        dilation = (1, 1, 1)
    else:
        dilation = tuple(draw(st.integers(1, 2)) for _ in range(3))
    padding = draw(st.sampled_from(["valid", "same"]))
    k_eff = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
    lows = [1 if padding == "same" and k % 2 == 0 else 0 for k in k_eff]
    op = None
    if all(lo <= s - 1 for lo, s in zip(lows, strides)) and draw(st.booleans()):
        op = tuple(draw(st.integers(lo, s - 1)) for lo, s in zip(lows, strides))
    data_format = draw(st.sampled_from(["channels_last", "channels_first"]))
    ndim = draw(st.sampled_from([3, 4, 5]))
    channels = 1 if ndim == 3 else draw(st.integers(1, 2))
    filters = draw(st.integers(1, 3))
    batch = draw(st.integers(1, 2)) if ndim == 5 else 1
    spatial = tuple(draw(st.integers(1, max_len)) for _ in range(3))
    activation = draw(st.sampled_from(ACTIVATIONS))
    use_bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kernel = rng.standard_normal((*kernel_size, filters, channels)).astype(np.float32)
    bias = rng.standard_normal(filters).astype(np.float32) if use_bias else None
    spec = LayerSpec.create(
        filters=filters,
        kernel_size=kernel_size,
        strides=strides,
        padding=padding,
        output_padding=op,
        data_format=data_format,
        dilation_rate=dilation,
        activation=activation,
        use_bias=use_bias,
        kernel=kernel,
        bias=bias,
    )
    if ndim == 3:
        shape = spatial
    else:
        inner = (*spatial, channels) if data_format == "channels_last" else (channels, *spatial)
        shape = inner if ndim == 4 else (batch, *inner)
    x = rng.standard_normal(shape).astype(np.float32)
    return spec, x


def plan_for(spec, x, **kw):
    layout = spec.layout(x.ndim)
    axes = spec.axes(layout.spatial_shape(x.shape))
    kw.setdefault("full_width", spec.mixes_width)
    return make_plan(
        axes,
        layout.batch(x.shape),
        layout.channels(x.shape),
        spec.filters,
        spec.kernel_size,
        **kw,
    )


def run_tiles(spec, x, plan, engine):
    """What pipeline.execute does, in memory: read each tile's slab via the layout, write its output."""
    layout = spec.layout(x.ndim)
    out_layout = layout.output_layout(spec.filters)
    out = np.full(spec.output_shape(x.shape), np.nan, dtype=np.float32)
    count = np.zeros(out.shape, dtype=np.int32)
    for tile in plan.tiles():
        raw = x[layout.region(tile.src, tile.batch)]
        y = engine.tile(layout.to_ncdhw(raw), tile.offsets, tile.sizes)
        region = out_layout.region(tile.out, tile.batch)
        data = out_layout.from_ncdhw(to_numpy(y), spec.filters)
        assert data.shape == out[region].shape
        out[region] = data
        count[region] += 1
    return out, count


def whole(spec, x, engine):
    layout = spec.layout(x.ndim)
    y = engine.whole(layout.to_ncdhw(x))
    return layout.from_ncdhw(to_numpy(y), spec.filters)


def assert_estimate_bounds_slabs(plan):
    """The estimate's input-slab term alone (1-byte input, nothing else costs) bounds every real slab."""
    slab_only = dataclasses.replace(plan, costs=Costs(in_item=1, compute_item=0, out_item=0))
    est_voxels = slab_only.tile_bytes() / ((1 + READ_AHEAD) * plan.batch_step * plan.channels)
    for tile in plan.tiles():
        real = math.prod(sl.stop - sl.start for sl in tile.src)
        assert real <= est_voxels, f"tile {tile.out} reads {real} input voxels, the estimate counts {est_voxels}"


def max_rel(got, want):
    return float(np.abs(got.astype(np.float64) - want).max() / max(float(np.abs(want).max()), 1e-30))


# --------------------------------------------------------------------------- the key property
@settings(max_examples=80, deadline=None)
@given(case=layer_case(), data=st.data())
def test_tiled_output_equals_whole_volume(case, data):
    spec, x = case
    layout = spec.layout(x.ndim)
    axes = spec.axes(layout.spatial_shape(x.shape))
    out = [ax.out for ax in axes]
    tile = [data.draw(st.integers(1, n), label=f"tile{a}") for a, n in enumerate(out)]
    if spec.mixes_width:
        tile[2] = out[2]
    # Keep the tile count modest; single-voxel tiles still occur on small volumes.
    while math.prod(-(-n // t) for n, t in zip(out, tile)) > 120:
        a = max(range(3), key=lambda i: -(-out[i] // tile[i]))
        tile[a] = min(out[a], tile[a] * 2)
    plan = plan_for(spec, x, memory_limit=HUGE, tile_shape=tile)
    assert plan.tile_shape == tuple(tile)
    assert_estimate_bounds_slabs(plan)
    engine = Engine(spec, layout.channels(x.shape), "cpu", "fp32")
    got, count = run_tiles(spec, x, plan, engine)
    want = whole(spec, x, engine)
    assert got.shape == want.shape == spec.output_shape(x.shape)
    assert (count == 1).all(), "tiles must cover every output voxel exactly once"
    assert max_rel(got, want) <= 1e-6


@pytest.mark.parametrize(
    "kw, spatial",
    [
        (dict(kernel_size=1, strides=3, padding="valid", output_padding=2), (3, 2, 3)),  # gaps and tail
        (dict(kernel_size=2, strides=3, padding="valid"), (3, 3, 2)),  # k < s
        (dict(kernel_size=4, strides=2, padding="same"), (3, 4, 3)),  # odd K - s: floored crop
        (dict(kernel_size=3, dilation_rate=(2, 3, 1), padding="same"), (4, 3, 5)),
        (dict(kernel_size=(2, 3, 1), strides=(3, 2, 2), padding="same", output_padding=(2, 1, 1)), (2, 3, 3)),
    ],
)
def test_single_voxel_tiles_equal_whole_volume_in_fp64(kw, spatial, ref):
    rng = np.random.default_rng(0)
    spec = LayerSpec.create(filters=2, **kw, activation="linear")
    kernel = rng.standard_normal((*spec.kernel_size, 2, 2))
    bias = rng.standard_normal(2)
    spec = spec.with_weights(kernel, bias)
    x = rng.standard_normal((1, *spatial, 2))
    plan = plan_for(spec, x, memory_limit=HUGE, tile_shape=(1, 1, 1))
    assert len(plan) == math.prod(spec.output_shape(x.shape)[1:4])
    engine = Engine(spec, 2, "cpu", "fp64")
    got, count = run_tiles(spec, x, plan, engine)
    assert (count == 1).all()
    want = ref.layer_3d(
        np.moveaxis(x, -1, 1), kernel, bias, spec.strides, spec.dilation_rate, spec.padding, spec.output_padding
    )
    np.testing.assert_allclose(got, np.moveaxis(want, 1, -1), rtol=1e-6, atol=1e-6)  # stored as float32 here
    np.testing.assert_allclose(whole(spec, x, engine), np.moveaxis(want, 1, -1), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- automatic plans
@settings(max_examples=80, deadline=None)
@given(case=layer_case(max_len=12, max_kernel=7, max_stride=4), data=st.data())
def test_auto_plan_fits_the_limit_is_aligned_and_covers_once(case, data):
    spec, x = case
    layout = spec.layout(x.ndim)
    axes = spec.axes(layout.spatial_shape(x.shape))
    out = [ax.out for ax in axes]
    chunks = None
    if data.draw(st.booleans(), label="chunked"):
        chunks = tuple(data.draw(st.integers(1, 6), label=f"chunk{a}") for a in range(3))
    full_width = spec.mixes_width
    costs = Costs(in_item=data.draw(st.sampled_from([1, 2, 4])), compute_item=4, out_item=4)
    probe = plan_for(spec, x, memory_limit=HUGE, chunks=chunks, costs=costs)
    assert probe.tile_shape == tuple(out) and probe.batch_step == layout.batch(x.shape)  # everything fits
    top = probe.tile_bytes()

    def aligned(align):  # alignment units per axis, and the bytes of the smallest such tile
        units = [min(u, n) for u, n in zip(align, out)]
        smallest = [*units[:2], out[2] if full_width else units[2]]
        return units, probe.tile_bytes(smallest, 1)

    stride_units, stride_floor = aligned([ax.stride for ax in axes])
    chunk_units, chunk_floor = stride_units, stride_floor
    if chunks:
        chunk_units, chunk_floor = aligned([math.lcm(ax.stride, c) for ax, c in zip(axes, chunks)])
    limit = data.draw(st.integers(max(1, stride_floor - 1000), top + 1000), label="limit")
    if limit < stride_floor:
        with pytest.raises(InputError) as info:
            plan_for(spec, x, memory_limit=limit, chunks=chunks, costs=costs)
        assert info.value.param == "memory_limit"
        return
    # Chunk-aligned whenever a chunk-aligned tile fits the budget; stride-aligned (still exact) otherwise.
    units = chunk_units if limit >= chunk_floor else stride_units
    plan = plan_for(spec, x, memory_limit=limit, chunks=chunks, costs=costs)
    assert plan.tile_bytes() <= limit
    if full_width:
        assert plan.tile_shape[2] == out[2]
    for a in range(3):
        t = plan.tile_shape[a]
        assert 1 <= t <= out[a]
        assert t == out[a] or t % units[a] == 0, f"axis {a}: tile {t} not a multiple of {units[a]}"
    count = np.zeros((layout.batch(x.shape), *out), dtype=np.int32)
    assert_estimate_bounds_slabs(plan)
    for tile in plan.tiles():
        for a, sl in enumerate(tile.out):
            assert sl.start % units[a] == 0
        count[(tile.batch, *tile.out)] += 1
    assert (count == 1).all()
    assert len(plan) == len(list(plan.tiles()))


def test_too_small_memory_limit_is_refused():
    spec = LayerSpec.create(filters=8, kernel_size=3, strides=2)
    axes = spec.axes((16, 16, 16))
    with pytest.raises(InputError) as info:
        make_plan(axes, 1, 4, 8, spec.kernel_size, memory_limit=1000)
    assert info.value.param == "memory_limit" and "raise --memory-limit" in info.value.message
    assert info.value.exit_code == 2
    with pytest.raises(InputError) as info:
        make_plan(axes, 1, 4, 8, spec.kernel_size, memory_limit=1000, tile_shape=(32, 32, 32))
    assert info.value.param == "tile"
    with pytest.raises(InputError) as info:
        make_plan(axes, 1, 4, 8, spec.kernel_size, memory_limit=HUGE, tile_shape=(0, 4, 4))
    assert info.value.param == "tile"


def test_auto_plan_shrinks_batch_before_space_and_depth_before_width():
    spec = LayerSpec.create(filters=2, kernel_size=2, strides=2)
    axes = spec.axes((64, 64, 64))
    full = make_plan(axes, 4, 1, 2, spec.kernel_size, memory_limit=HUGE)
    assert full.batch_step == 4 and full.tile_shape == (128, 128, 128) and len(full) == 1
    plan = make_plan(axes, 4, 1, 2, spec.kernel_size, memory_limit=full.tile_bytes() // 3)
    assert plan.batch_step == 1 and plan.tile_shape == (128, 128, 128)
    limit = full.tile_bytes() // 8
    plan = make_plan(axes, 4, 1, 2, spec.kernel_size, memory_limit=limit)
    assert plan.batch_step == 1 and plan.tile_bytes() <= limit
    # C-order friendly: depth gives way first, the width (contiguous rows) last
    assert plan.tile_shape[0] < 128 and plan.tile_shape[2] == 128 and plan.tile_shape[0] <= plan.tile_shape[1]


def test_softmax_channels_first_forces_full_width_tiles():
    spec = LayerSpec.create(filters=3, kernel_size=3, strides=2, activation="softmax", data_format="channels_first")
    assert spec.mixes_width
    assert not LayerSpec.create(filters=3, kernel_size=3, activation="softmax").mixes_width
    assert not LayerSpec.create(filters=3, kernel_size=3, data_format="channels_first").mixes_width
    assert LayerSpec.create(
        filters=3, kernel_size=3, activation="log_softmax", data_format="channels_first"
    ).mixes_width
    axes = spec.axes((40, 40, 40))
    out_w = axes[2].out
    roomy = make_plan(axes, 1, 2, 3, spec.kernel_size, memory_limit=HUGE, full_width=True)
    for limit in (roomy.tile_bytes() // 4, roomy.tile_bytes() // 40):
        plan = make_plan(axes, 1, 2, 3, spec.kernel_size, memory_limit=limit, full_width=True)
        assert plan.tile_shape[2] == out_w and plan.tile_bytes() <= limit
        assert plan.tile_shape[0] < axes[0].out
    with pytest.raises(InputError) as info:
        make_plan(axes, 1, 2, 3, spec.kernel_size, memory_limit=HUGE, tile_shape=(8, 8, 8), full_width=True)
    assert info.value.param == "tile" and "width" in info.value.message
    plan = make_plan(axes, 1, 2, 3, spec.kernel_size, memory_limit=HUGE, tile_shape=(8, 8, 999), full_width=True)
    assert plan.tile_shape == (8, 8, out_w)
    # a limit that only a narrower tile could meet is refused rather than silently splitting the width
    narrow = make_plan(axes, 1, 2, 3, spec.kernel_size, memory_limit=HUGE, tile_shape=(2, 2, 2))
    with pytest.raises(InputError):
        make_plan(axes, 1, 2, 3, spec.kernel_size, memory_limit=narrow.tile_bytes(), full_width=True)


# --------------------------------------------------------------------------- sizes
@pytest.mark.parametrize(
    "text, value",
    [
        ("1GiB", 1 << 30),
        ("2 GiB", 2 << 30),
        ("512MB", 512_000_000),
        ("512MiB", 512 << 20),
        ("256m", 256 << 20),
        ("1e9", 1_000_000_000),
        ("1.5KiB", 1536),
        ("4096", 4096),
        ("4096b", 4096),
        ("3TiB", 3 << 40),
        ("7k", 7 << 10),
        (" 8 kib ", 8192),
        ("1G", 1 << 30),  # binary, as SLURM reads it (tests/test_sizes.py has the rest),
    ],
)
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["", "abc", "GiB", "12 parsecs", "-1", "0", "0MiB", "1e999", "0.1", "inf", "nan"])
def test_parse_bytes_refuses_nonsense(text):
    with pytest.raises(ValueError):
        parse_bytes(text)


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (int(1.5 * 2**20), "1.5 MiB"),
        (3 << 30, "3.0 GiB"),
        (3 << 40, "3.0 TiB"),
        (1 << 50, "1024.0 TiB"),
    ],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text


@pytest.mark.parametrize("n", [1, 999, 5000, 123_456_789, 7 << 30])
def test_format_then_parse_is_close(n):
    assert parse_bytes(format_bytes(n).replace(" ", "")) == pytest.approx(n, rel=0.05)
