"""The separable formulation: which kernels it takes, and that it equals the 3-D transposed convolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_close, tiled

from deconv3d_cli.api import upsample
from deconv3d_cli.engine import SEPARABLE, Engine, separable
from deconv3d_cli.layer import presets
from deconv3d_cli.layer.spec import LayerSpec


def _separable_spec(rng, k, s, channels=2, pad="same", bias=True, fmt="channels_last", taps=None, act=None):
    taps = taps or [rng.uniform(-1, 1, n) for n in k]
    k3 = taps[0][:, None, None] * taps[1][None, :, None] * taps[2][None, None, :]
    kernel = np.zeros((*k3.shape, channels, channels), np.float32)
    for c in range(channels):
        kernel[..., c, c] = k3
    return LayerSpec.create(
        filters=channels,
        kernel_size=k,
        strides=s,
        padding=pad,
        data_format=fmt,
        activation=act,
        use_bias=bias,
        kernel=kernel,
        bias=rng.standard_normal(channels).astype(np.float32) if bias else None,
    )


@pytest.mark.parametrize("name,scale", [("trilinear", 2), ("trilinear", 3), ("nearest", 2), ("trilinear", (2, 3, 1))])
def test_preset_kernels_factor_into_their_taps(name, scale):
    spec = presets.make_spec(name, scale, channels=3)
    taps = separable.factor(spec.kernel, spec.strides)
    assert taps is not None
    for got, s in zip(taps, presets.parse_scale(scale)):
        np.testing.assert_allclose(got, presets.taps(name, s), rtol=1e-6)


def test_other_kernels_are_not_separable():
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((3, 3, 3, 2, 2))
    assert separable.factor(dense, (2, 2, 2)) is None
    spec = _separable_spec(rng, (3, 2, 4), (2, 2, 2))
    mixing = spec.kernel.copy()
    mixing[0, 0, 0, 0, 1] = 0.5  # one channel feeds another
    assert separable.factor(mixing, (2, 2, 2)) is None
    per_channel = spec.kernel.copy()
    per_channel[..., 1, 1] *= 2  # channels with different kernels
    assert separable.factor(per_channel, (2, 2, 2)) is None
    rank2 = spec.kernel.copy()
    rank2[1, 1, 1, 0, 0] += 1.0
    rank2[1, 1, 1, 1, 1] += 1.0
    assert separable.factor(rank2, (2, 2, 2)) is None
    assert separable.factor(np.zeros((2, 2, 2, 1, 1)), (2, 2, 2)) is None
    assert (
        SEPARABLE
        not in Engine(
            LayerSpec.create(filters=2, kernel_size=3, use_bias=False, kernel=dense.astype(np.float32)), 2
        ).available_paths()
    )


@pytest.mark.parametrize("case", range(8))
def test_separable_path_equals_fp64_transposed_convolution(case):
    """Random separable kernels (k < s gaps, k > s overlaps, valid and same), whole volume and random tiles."""
    rng = np.random.default_rng(300 + case)
    k = tuple(int(v) for v in rng.integers(1, 6, 3))
    s = tuple(int(v) for v in rng.integers(1, 4, 3))
    spec = _separable_spec(rng, k, s, channels=int(rng.integers(1, 4)), pad="same" if case % 2 else "valid")
    c = spec.filters
    x = rng.standard_normal((1, c, 6, 5, 7)).astype(np.float32)
    ref = Engine(spec, c, precision="fp64", path="transpose").whole(x.astype(np.float64)).numpy()
    engine = Engine(spec, c, path=SEPARABLE)
    assert_close(engine.whole(x).numpy(), ref, rel=1e-5)
    assert_close(tiled(engine, spec, x, rng.integers(1, 6, 3)), ref, rel=1e-5)


def test_separable_path_with_channels_first_and_activation():
    rng = np.random.default_rng(9)
    spec = _separable_spec(rng, (4, 4, 4), (2, 2, 2), channels=3, fmt="channels_first", act="relu")
    x = rng.standard_normal((2, 3, 5, 6, 4)).astype(np.float32)
    ref = Engine(spec, 3, precision="fp64", path="transpose").whole(x.astype(np.float64)).numpy()
    y = Engine(spec, 3, path=SEPARABLE).whole(torch.from_numpy(x)).numpy()
    assert np.abs(y - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("name,scale", [("trilinear", 2), ("nearest", 3), ("trilinear", (3, 2, 2))])
def test_presets_pick_and_match_interpolate_on_the_separable_path(name, scale):
    x = np.random.default_rng(1).uniform(0, 1000, (12, 10, 9)).astype(np.float32)
    spec = presets.make_spec(name, scale, channels=1)
    assert SEPARABLE in Engine(spec, 1).available_paths()
    y = upsample(x, name, scale)
    mode = {"align_corners": False} if name == "trilinear" else {}
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x).double()[None, None], scale_factor=presets.parse_scale(scale), mode=name, **mode
    ).numpy()[0, 0]
    assert np.abs(y - ref).max() <= 1e-5 * 1000


@pytest.mark.parametrize("order", [(2, 1, 0), (1, 2, 0), (0, 2, 1)])
def test_any_memory_order_gives_the_same_bytes_and_keeps_it(order):
    """A slab laid out x fastest (NIfTI's order) or any other way gives the C-order slab's bytes, and its
    tile comes out in the slab's memory order (what lets the tile reach a NIfTI file without a copy)."""
    rng = np.random.default_rng(21)
    spec = presets.make_spec("trilinear", (2, 3, 2), channels=2)
    engine = Engine(spec, 2)
    x = rng.standard_normal((1, 2, 9, 8, 7)).astype(np.float32)
    perm = (0, 1, *(2 + a for a in order))
    strided = np.ascontiguousarray(x.transpose(perm)).transpose(np.argsort(perm))
    offsets, sizes = (1, 2, 1), (15, 20, 12)
    want = engine.tile(x, offsets, sizes)
    got = engine.tile(strided, offsets, sizes)
    assert engine.path == SEPARABLE
    assert np.array_equal(got.numpy(), want.numpy())
    assert got.permute(perm).is_contiguous() and want.is_contiguous()
