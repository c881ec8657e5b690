"""Presets and boundary modes: trilinear/nearest equal torch's interpolate, tiled or not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from deconv3d_cli.api import upsample
from deconv3d_cli.cli import main
from deconv3d_cli.geometry.boundary import source_rows
from deconv3d_cli.layer import presets

SCALES = [2, 3, (2, 2, 3)]


def interpolate(x: np.ndarray, scale, mode: str) -> np.ndarray:
    sf = tuple(float(s) for s in presets.parse_scale(scale))
    kwargs = {"align_corners": False} if mode == "trilinear" else {}
    return torch.nn.functional.interpolate(torch.from_numpy(x)[None, None], scale_factor=sf, mode=mode, **kwargs)[
        0, 0
    ].numpy()


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    return np.random.default_rng(0).uniform(-100, 400, (9, 11, 7)).astype(np.float32)


@pytest.mark.parametrize("scale", SCALES)
def test_trilinear_replicate_equals_interpolate(volume, scale):
    y = upsample(volume, "trilinear", scale)
    ref = interpolate(volume, scale, "trilinear")
    assert y.shape == ref.shape
    assert np.abs(y - ref).max() <= 1e-5 * np.ptp(volume)


@pytest.mark.parametrize("scale", SCALES)
def test_nearest_equals_interpolate(volume, scale):
    np.testing.assert_array_equal(upsample(volume, "nearest", scale), interpolate(volume, scale, "nearest"))


@pytest.mark.parametrize("scale", SCALES)
def test_streamed_tiles_equal_interpolate(tmp_path, volume, scale):
    np.save(tmp_path / "v.npy", volume)
    s = ",".join(map(str, presets.parse_scale(scale)))
    r = CliRunner().invoke(
        main,
        ["upsample", str(tmp_path / "v.npy"), "-o", str(tmp_path / "o.npy"), "--preset", "trilinear"]
        + ["--scale", s, "--tile", "3,5,4", "--no-progress"],
    )
    assert r.exit_code == 0, r.output
    ref = interpolate(volume, scale, "trilinear")
    assert np.abs(np.load(tmp_path / "o.npy") - ref).max() <= 1e-5 * np.ptp(volume)


def test_channels_are_independent(volume):
    x = np.stack([volume, -2 * volume, volume[::-1]], axis=-1)
    y = upsample(x, "trilinear", 2)
    for c in range(3):
        alone = upsample(x[..., c], "trilinear", 2)
        np.testing.assert_allclose(y[..., c], alone, rtol=0, atol=1e-6 * np.abs(alone).max())


def test_zeros_boundary_darkens_border_and_reflect_mirrors(volume):
    flat = np.full((6, 6, 6), 10.0, np.float32)
    inner = upsample(flat, "trilinear", 2, boundary="replicate")
    assert np.allclose(inner, 10.0)
    zeros = upsample(flat, "trilinear", 2, boundary="zeros")
    assert zeros[0, 0, 0] < 10.0 and np.isclose(zeros[5, 5, 5], 10.0)
    reflect = upsample(volume, "trilinear", 2, boundary="reflect")
    padded = np.pad(volume, 1, mode="reflect")
    ref = interpolate(padded, 2, "trilinear")[2:-2, 2:-2, 2:-2]
    assert np.abs(reflect - ref).max() <= 1e-5 * np.ptp(volume)


def test_source_rows_match_numpy_pad():
    for n in (1, 2, 5):
        x = np.arange(n)
        for mode, np_mode in (("replicate", "edge"), ("reflect", "reflect")):
            if n == 1 and mode == "reflect":
                continue
            np.testing.assert_array_equal(x[source_rows(0, n + 6, 3, n, mode)], np.pad(x, 3, mode=np_mode))


def test_cli_refuses_spec_and_preset_together(tmp_path):
    r = CliRunner().invoke(main, ["upsample", "a.npy", "-o", "b.npy", "--preset", "trilinear", "--spec", "s.yaml"])
    assert r.exit_code == 2 and "either --spec or --preset" in r.output
    r = CliRunner().invoke(main, ["upsample", "a.npy", "-o", "b.npy", "--preset", "cubic"])
    assert r.exit_code == 2 and "nearest, trilinear" in r.stderr
    r = CliRunner().invoke(main, ["presets"])
    assert r.exit_code == 0 and "trilinear" in r.output and "nearest" in r.output
