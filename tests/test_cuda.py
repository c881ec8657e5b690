"""CUDA paths; every test here skips cleanly on a machine without a CUDA device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from deconv3d_cli import LayerSpec
from deconv3d_cli.cli import main
from deconv3d_cli.engine import Engine

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


def _spec(rng, cin=4, f=6, k=(3, 4, 2), s=(2, 2, 3), act="relu"):
    kernel = rng.standard_normal((*k, f, cin)).astype(np.float32)
    return LayerSpec.create(
        filters=f,
        kernel_size=k,
        strides=s,
        padding="same",
        activation=act,
        kernel=kernel,
        bias=rng.standard_normal(f).astype(np.float32),
    )


@pytest.mark.parametrize("path", ["transpose", "transpose_cl", "phase", "phase_cl"])
def test_cuda_fp32_matches_cpu_fp64(path):
    rng = np.random.default_rng(0)
    spec = _spec(rng)
    x = rng.standard_normal((2, 4, 9, 8, 7)).astype(np.float32)
    ref = Engine(spec, 4, precision="fp64", path="transpose").whole(x.astype(np.float64)).numpy()
    y = Engine(spec, 4, device="cuda", path=path).whole(x).cpu().numpy()
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("precision,tol", [("bf16", 3e-2), ("fp16", 5e-3)])
def test_cuda_half_precisions_are_close(precision, tol):
    rng = np.random.default_rng(1)
    spec = _spec(rng, act="linear")
    x = rng.standard_normal((1, 4, 12, 12, 12)).astype(np.float32)
    ref = Engine(spec, 4, precision="fp64").whole(x.astype(np.float64)).numpy()
    y = Engine(spec, 4, device="cuda", precision=precision).whole(x).float().cpu().numpy()
    assert np.abs(y - ref).max() <= tol * np.abs(ref).max()


def test_cuda_file_to_file_equals_cpu(tmp_path):
    rng = np.random.default_rng(2)
    spec = _spec(rng, cin=1, f=3)
    path = spec.save(tmp_path / "layer.yaml")
    np.save(tmp_path / "in.npy", rng.standard_normal((30, 26, 22, 1)).astype(np.float32))
    for device in ("cpu", "cuda"):
        r = CliRunner().invoke(
            main,
            [
                "upsample",
                str(tmp_path / "in.npy"),
                "-o",
                str(tmp_path / f"{device}.npy"),
                "--spec",
                str(path),
                "--device",
                device,
                "--tile",
                "16,16,16",
                "--no-progress",
            ],
        )
        assert r.exit_code == 0, r.output
    a, b = np.load(tmp_path / "cpu.npy"), np.load(tmp_path / "cuda.npy")
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()


def test_cuda_out_of_memory_backs_off(monkeypatch):
    rng = np.random.default_rng(3)
    spec = _spec(rng)
    x = rng.standard_normal((1, 4, 10, 10, 10)).astype(np.float32)
    whole = Engine(spec, 4, device="cuda").whole(x).cpu().numpy()
    real = Engine._tile_once

    def fake(self, xx, offsets, sizes, **kw):
        if int(np.prod(sizes)) > 500:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, xx, offsets, sizes, **kw)

    monkeypatch.setattr(Engine, "_tile_once", fake)
    engine = Engine(spec, 4, device="cuda")
    y = engine.whole(x).cpu().numpy()
    assert engine.splits > 0
    assert np.abs(y - whole).max() <= 1e-5 * np.abs(whole).max()
