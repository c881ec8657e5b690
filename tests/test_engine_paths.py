"""Engine formulations and out-of-memory back-off: every path, and every split, gives the same tile."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_close, tiled

from deconv3d_cli import LayerSpec, RunError
from deconv3d_cli.engine import Engine
from deconv3d_cli.engine.formulations import PATHS


def spec_for(rng, cin=2, f=3, k=(3, 4, 2), s=(2, 3, 1), d=1, pad="same", act="relu", fmt="channels_last", op=None):
    kernel = rng.standard_normal((*k, f, cin)).astype(np.float32)
    return LayerSpec.create(
        filters=f,
        kernel_size=k,
        strides=s,
        dilation_rate=d,
        padding=pad,
        activation=act,
        data_format=fmt,
        output_padding=op,
        kernel=kernel,
        bias=rng.standard_normal(f).astype(np.float32),
    )


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", range(6))
def test_every_path_matches_fp64(path, case):
    rng = np.random.default_rng(case)
    k = tuple(int(v) for v in rng.integers(1, 6, 3))
    s = tuple(int(v) for v in rng.integers(1, 4, 3))
    op = tuple(int(rng.integers(0, v)) for v in s) if case % 2 else None
    pad = "valid" if case % 3 == 0 or op is not None else "same"
    spec = spec_for(rng, cin=int(rng.integers(1, 4)), f=int(rng.integers(1, 4)), k=k, s=s, pad=pad, op=op)
    x = rng.standard_normal((2, spec.kernel.shape[4], 5, 4, 6)).astype(np.float32)
    ref = Engine(spec, x.shape[1], precision="fp64", path="transpose").whole(x.astype(np.float64)).numpy()
    y = Engine(spec, x.shape[1], path=path).whole(x).numpy()
    assert y.shape == ref.shape
    assert np.abs(y - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


def test_dilation_offers_only_transposed_paths():
    spec = spec_for(np.random.default_rng(0), s=1, d=2)
    engine = Engine(spec, 2)
    assert {"transpose", "transpose_cl"} <= set(engine.available_paths())
    assert all(p.startswith("transpose") for p in engine.available_paths())
    with pytest.raises(Exception, match="not available"):
        engine.force_path("phase")


@pytest.mark.parametrize("path", [p for p in PATHS if p.startswith("transpose")])
def test_dilated_transposed_paths_match_fp64(path):
    rng = np.random.default_rng(7)
    spec = spec_for(rng, cin=3, f=2, k=(3, 2, 3), s=1, d=(2, 3, 1), pad="same")
    x = rng.standard_normal((1, 3, 6, 7, 5)).astype(np.float32)
    ref = Engine(spec, 3, precision="fp64", path="transpose").whole(x.astype(np.float64)).numpy()
    engine = Engine(spec, 3)
    if path not in engine.available_paths():
        pytest.skip(f"{path} needs oneDNN")
    engine.force_path(path)
    y = engine.whole(x).numpy()
    assert np.abs(y - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


def test_new_axes_from_numpy_get_ordinary_strides():
    """numpy's a[None] has stride 0, which sent oneDNN a 'strided' slab it reordered (3x slower)."""
    spec = spec_for(np.random.default_rng(4))
    engine = Engine(spec, 2)
    volume = np.random.default_rng(4).standard_normal((6, 5, 4, 2)).astype(np.float32)
    x = engine.to_tensor(volume[None].transpose(0, 4, 1, 2, 3))
    assert 0 not in x.stride() and x.is_contiguous(memory_format=torch.channels_last_3d)
    np.testing.assert_array_equal(x.numpy()[0], volume.transpose(3, 0, 1, 2))


def test_choice_is_cached_per_process():
    spec = spec_for(np.random.default_rng(1))
    a, b = Engine(spec, 2), Engine(spec, 2)
    x = torch.zeros(1, 2, 9, 9, 9)
    assert a.choose_path(x) == b.choose_path(x) and a.path in PATHS


def _oom_above(monkeypatch, limit: int) -> list[tuple[int, ...]]:
    seen = []
    real = Engine._tile_once

    def fake(self, x, offsets, sizes, **kw):
        seen.append(tuple(sizes))
        if int(np.prod(sizes)) > limit:
            raise torch.OutOfMemoryError("simulated: device full")
        return real(self, x, offsets, sizes, **kw)

    monkeypatch.setattr(Engine, "_tile_once", fake)
    return seen


@pytest.mark.parametrize("fmt,act", [("channels_last", "relu"), ("channels_first", "softmax")])
def test_out_of_memory_halves_the_tile_and_gives_the_same_result(monkeypatch, fmt, act):
    rng = np.random.default_rng(2)
    spec = spec_for(rng, fmt=fmt, act=act)
    x = rng.standard_normal((1, 2, 7, 6, 5)).astype(np.float32)
    whole = Engine(spec, 2, path="transpose").whole(x).numpy()
    seen = _oom_above(monkeypatch, 200)
    engine = Engine(spec, 2, path="transpose")
    y = engine.whole(x).numpy()
    assert engine.splits > 0 and len(seen) > 2
    np.testing.assert_allclose(y, whole, rtol=1e-6, atol=1e-6)
    if spec.mixes_width:  # softmax over the width axis: the width is never split
        assert all(sz[2] == whole.shape[4] for sz in seen)


def test_out_of_memory_on_one_voxel_is_a_clear_error(monkeypatch):
    spec = spec_for(np.random.default_rng(3))
    _oom_above(monkeypatch, 0)
    with pytest.raises(RunError, match="one-voxel tile"):
        Engine(spec, 2).whole(np.ones((1, 2, 3, 3, 3), np.float32))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", range(4))
def test_every_path_tiles_equal_fp64_whole(path, case):
    """Tiles of random sizes (one voxel up), bias-only tails and k < s gaps included, on each path."""
    rng = np.random.default_rng(100 + case)
    k = tuple(int(v) for v in rng.integers(1, 5, 3))
    s = tuple(int(v) for v in rng.integers(1, 4, 3))
    spec = spec_for(rng, cin=2, f=2, k=k, s=s, pad="valid" if case % 2 else "same")
    x = rng.standard_normal((1, 2, 5, 6, 4)).astype(np.float32)
    ref = Engine(spec, 2, precision="fp64", path="transpose").whole(x.astype(np.float64)).numpy()
    engine = Engine(spec, 2, path=path)
    assert_close(tiled(engine, spec, x, rng.integers(1, 6, 3)), ref, rel=1e-5)


def test_a_formulation_that_raises_is_left_out_of_the_choice(monkeypatch, fresh_tuning):
    """A oneDNN entry point refusing a shape must not fail the run: the other paths are timed."""
    from deconv3d_cli.engine import formulations as paths

    spec = spec_for(np.random.default_rng(5))
    real = paths.transpose

    def refusing(*args, **kwargs):
        if kwargs.get("dnn") or not kwargs.get("cl", True):
            raise RuntimeError("simulated: primitive not supported")
        return real(*args, **kwargs)

    monkeypatch.setattr(paths, "transpose", refusing)
    engine = Engine(spec, 2)
    chosen = engine.choose_path(torch.zeros(1, 2, 9, 9, 9))
    assert chosen in ("transpose_cl",) or chosen.startswith("phase")
    assert "transpose" not in engine.timings and "transpose_dnn" not in engine.timings


def test_cli_lists_every_formulation():
    """--engine-path spells the names out (its --help must not import torch): keep them in step."""
    from deconv3d_cli.cli import upsample
    from deconv3d_cli.engine import SEPARABLE

    option = next(p for p in upsample.params if p.name == "engine_path")
    assert tuple(option.type.choices) == ("auto", *PATHS, SEPARABLE)


def test_an_unforced_engine_times_each_shape_class_anew(monkeypatch, fresh_tuning):
    """A layer called on a tiny volume first must not keep that volume's formulation for big ones."""
    spec = spec_for(np.random.default_rng(6))
    engine = Engine(spec, 2)
    seen = []
    real = Engine.choose_path

    def spy(self, x):
        seen.append(tuple(x.shape))
        return real(self, x)

    monkeypatch.setattr(Engine, "choose_path", spy)
    engine.whole(np.zeros((1, 2, 2, 2, 2), np.float32))
    engine.whole(np.zeros((1, 2, 9, 10, 11), np.float32))
    assert [s[2:] for s in seen] == [(2, 2, 2), (9, 10, 11)] and engine.forced is None
    engine.force_path("transpose")
    engine.whole(np.zeros((1, 2, 20, 20, 20), np.float32))
    assert len(seen) == 2 and engine.path == "transpose"


@pytest.mark.parametrize("path", [p for p in PATHS if p.startswith("phase")])
@pytest.mark.parametrize("k,pad", [((3, 3, 3), "same"), ((5, 3, 1), "same"), ((3, 2, 4), "same"), ((3, 3, 3), "valid")])
def test_stride_one_phase_paths_whole_and_tiled(path, k, pad):
    """Stride 1: a centred window is conv3d's own padding (no copy); other windows take the general route."""
    rng = np.random.default_rng(11)
    spec = spec_for(rng, cin=3, f=2, k=k, s=1, pad=pad)
    x = rng.standard_normal((1, 3, 7, 6, 5)).astype(np.float32)
    ref = Engine(spec, 3, precision="fp64", path="transpose").whole(x.astype(np.float64)).numpy()
    engine = Engine(spec, 3)
    if path not in engine.available_paths():
        pytest.skip(f"{path} needs oneDNN")
    engine.force_path(path)
    assert_close(engine.whole(x).numpy(), ref, rel=1e-5)
    assert_close(tiled(engine, spec, x, (3, 4, 2)), ref, rel=1e-5)


@pytest.mark.parametrize("fmt", ["channels_last", "channels_first"])
@pytest.mark.parametrize("path", ["transpose", "transpose_cl", "transpose_dnn", "transpose_dnn_cl"])
def test_a_same_crop_takes_its_bias_in_the_pass_that_makes_it_compact(path, fmt):
    """k3 s2 `same` keeps the first 2n of 2n + 1 full rows, which torch's symmetric crop cannot: the
    window and the bias come in one pass, into a tile already in the stored memory format, with the
    bytes of the in-place add followed by the crop."""
    rng = np.random.default_rng(31)
    spec = spec_for(rng, cin=3, f=4, k=(3, 3, 3), s=(2, 2, 2), act=None, fmt=fmt)
    engine = Engine(spec, 3)
    if path not in engine.available_paths():
        pytest.skip(f"{path} is not offered by this torch build")
    engine.force_path(path)
    x = rng.standard_normal((1, 3, 9, 8, 7)).astype(np.float32)
    y = engine.whole(x)
    assert tuple(y.shape[2:]) == (18, 16, 14) and y.is_contiguous(memory_format=engine.out_memory_format)
    bias = engine.bias
    engine.bias = None
    unbiased = engine.whole(x)
    engine.bias = bias
    assert torch.equal(y, unbiased + bias)
