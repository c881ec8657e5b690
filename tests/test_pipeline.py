"""Streaming pipeline: tiled runs equal the whole-volume engine, safe output, kill and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close, random_spec, reference
from helpers import options as Options
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deconv3d_cli import InputError, LayerSpec
from deconv3d_cli.io.atomic import journal_path, partial_path
from deconv3d_cli.run.job import prepare
from deconv3d_cli.run.local import run_job


def make_spec(tmp: Path, rng: np.random.Generator, in_ch: int = 2, **hyper) -> tuple[Path, LayerSpec]:
    """A random layer saved as YAML + npz, and the spec read back from it."""
    path = random_spec(rng, in_ch, **{"filters": 3, **hyper}).save(tmp / "layer.yaml")
    return path, LayerSpec.from_yaml(path)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.tuples(*[st.integers(1, 9)] * 3),
    k=st.tuples(*[st.integers(1, 4)] * 3),
    s=st.tuples(*[st.integers(1, 3)] * 3),
    padding=st.sampled_from(["valid", "same"]),
    tile=st.tuples(*[st.integers(1, 7)] * 3),
    channels_first=st.booleans(),
    batch=st.integers(0, 2),
)
def test_tiled_file_run_equals_whole_volume(tmp_path_factory, shape, k, s, padding, tile, channels_first, batch):
    tmp = tmp_path_factory.mktemp("tiled")
    rng = np.random.default_rng(abs(hash((shape, k, s, tile))) % 2**32)
    fmt = "channels_first" if channels_first else "channels_last"
    spec_path, spec = make_spec(tmp, rng, in_ch=2, kernel_size=k, strides=s, padding=padding, data_format=fmt)
    full = (2, *shape) if channels_first else (*shape, 2)
    if batch:
        full = (batch, *full)
    x = rng.standard_normal(full).astype(np.float32)
    np.save(tmp / "in.npy", x)
    opts = Options(tile=tile, progress=False, flush_every=0)
    result = run_job(spec, tmp / "in.npy", tmp / "out.npy", opts)
    assert result["tiles"] >= 1
    assert_close(np.load(tmp / "out.npy"), reference(spec, x))
    assert sorted(p.name for p in tmp.iterdir()) == ["in.npy", "layer.npz", "layer.yaml", "out.npy"]


def test_budgeted_plan_fits_and_matches(tmp_path):
    rng = np.random.default_rng(1)
    spec_path, spec = make_spec(tmp_path, rng, in_ch=1, filters=4, kernel_size=4, strides=2)
    x = rng.standard_normal((30, 33, 17)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    opts = Options(memory_limit=2 << 20, progress=False)
    job = prepare(spec, tmp_path / "in.npy", tmp_path / "out.npy", opts)
    assert len(job.plan) > 1 and job.plan.tile_bytes() <= 2 << 20
    assert all(t % 2 == 0 or t == n for t, n in zip(job.plan.tile_shape, job.plan.out_shape))
    job.reader.close()
    run_job(spec, tmp_path / "in.npy", tmp_path / "out.npy", opts)
    assert_close(np.load(tmp_path / "out.npy"), reference(spec, x))


def test_refuses_existing_output_and_input_as_output(tmp_path):
    rng = np.random.default_rng(2)
    _, spec = make_spec(tmp_path, rng, in_ch=1)
    np.save(tmp_path / "in.npy", np.ones((4, 4, 4, 1), np.float32))
    (tmp_path / "out.npy").write_bytes(b"precious")
    with pytest.raises(InputError, match="--overwrite"):
        run_job(spec, tmp_path / "in.npy", tmp_path / "out.npy", Options(progress=False))
    assert (tmp_path / "out.npy").read_bytes() == b"precious"
    with pytest.raises(InputError, match="output is the input"):
        run_job(spec, tmp_path / "in.npy", tmp_path / "in.npy", Options(progress=False, overwrite=True))


def test_failure_midway_leaves_target_untouched(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    _, spec = make_spec(tmp_path, rng, in_ch=1)
    np.save(tmp_path / "in.npy", rng.standard_normal((12, 12, 12, 1)).astype(np.float32))
    (tmp_path / "out.npy").write_bytes(b"old")
    from deconv3d_cli import engine as engine_mod

    calls = {"n": 0}
    real = engine_mod.Engine.tile

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("device lost")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(engine_mod.Engine, "tile", failing)
    with pytest.raises(RuntimeError, match="device lost"):
        run_job(
            spec, tmp_path / "in.npy", tmp_path / "out.npy", Options(tile=(4, 4, 4), overwrite=True, progress=False)
        )
    assert (tmp_path / "out.npy").read_bytes() == b"old"
    assert not partial_path(tmp_path / "out.npy").exists()
    assert not journal_path(tmp_path / "out.npy").exists()


def test_resume_refuses_another_spec(tmp_path):
    rng = np.random.default_rng(4)
    _, spec = make_spec(tmp_path, rng, in_ch=1)
    x = rng.standard_normal((10, 10, 10, 1)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    target = tmp_path / "out.npy"
    job = prepare(spec, tmp_path / "in.npy", target, Options(tile=(4, 4, 4), progress=False))
    from deconv3d_cli.io.atomic import OutputTarget

    t = OutputTarget(target, {**job.header(), "engine_path": "transpose"})
    t.open()
    partial_path(target).write_bytes(b"x")
    t.record([0, 1])
    t.release()
    job.reader.close()
    other = LayerSpec.create(**{**spec.to_config(), "kernel": spec.kernel * 2, "bias": spec.bias})
    with pytest.raises(InputError, match="another spec"):
        run_job(other, tmp_path / "in.npy", target, Options(tile=(4, 4, 4), resume=True, progress=False))
    with pytest.raises(InputError, match="another tile_shape"):
        run_job(spec, tmp_path / "in.npy", target, Options(tile=(2, 4, 4), resume=True, progress=False))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "deconv3d_cli", *args]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, seed):
    """A run killed at a random tile leaves the old target intact; --resume completes it identically."""
    rng = np.random.default_rng(seed)
    spec_path, spec = make_spec(tmp_path, rng, in_ch=2, filters=4, kernel_size=3, strides=2)
    x = rng.standard_normal((48, 48, 48, 2)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    common = ["--spec", str(spec_path), "--tile", "8,8,8", "--no-progress", "--device", "cpu", "--threads", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(_cli("upsample", str(tmp_path / "in.npy"), "-o", str(tmp_path / "ref.npy"), *common), check=True)
    target = tmp_path / "out.npy"
    np.save(target, np.zeros(3, np.float32))  # an earlier file that must survive the kill
    before = target.read_bytes()
    args = _cli("upsample", str(tmp_path / "in.npy"), "-o", str(target), "--overwrite", "--checkpoint-every", "0")
    proc = subprocess.Popen([*args, *common], env=env, stderr=subprocess.PIPE)
    journal = journal_path(target)
    kill_after = int(rng.integers(2, 15))  # journal lines: each may hold several tiles
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"\n") > kill_after:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed; make the volume larger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == before
    assert partial_path(target).exists()
    done = subprocess.run([*args, "--resume", "--json", *common], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    import json

    report = json.loads(done.stdout)
    assert report["resumed_tiles"] >= kill_after
    np.testing.assert_array_equal(np.load(target), np.load(tmp_path / "ref.npy"))
    assert not partial_path(target).exists() and not journal.exists()


def test_execute_fixes_one_formulation_per_output_and_releases_it(tmp_path):
    """Every tile of an output uses one formulation (resume reproduces it); the next file is timed anew,
    and a formulation the caller fixed stays fixed."""
    from helpers import options as Options

    from deconv3d_cli.engine import Engine
    from deconv3d_cli.run.job import prepare
    from deconv3d_cli.run.local import execute

    rng = np.random.default_rng(12)
    spec = random_spec(rng, in_ch=2)
    np.save(tmp_path / "in.npy", rng.standard_normal((9, 8, 7, 2)).astype(np.float32))
    opts = Options(progress=False, tile=(4, 4, 4))
    engine = Engine(spec, 2)
    report = execute(prepare(spec, tmp_path / "in.npy", tmp_path / "a.npy", opts), engine, opts)
    assert report["engine_path"] == engine.path and engine.forced is None
    engine.force_path("transpose")
    report = execute(prepare(spec, tmp_path / "in.npy", tmp_path / "b.npy", opts), engine, opts)
    assert report["engine_path"] == "transpose" and engine.forced == "transpose"


def test_deferred_downloads_are_waited_for_by_the_array_they_fill(tmp_path, monkeypatch):
    """On CUDA a tile's download lands asynchronously and the writer waits for it by the tile array's
    address; tiles sit at a page phase inside their pool buffer, so waiting on the buffer would write
    stale data. A fake that copies only when waited for shows it without a GPU."""
    import torch

    from deconv3d_cli.api import run_array
    from deconv3d_cli.run import local as pipeline

    class DeferredTransfers:
        def __init__(self, device):
            self.device, self.cuda, self.pending = device, False, {}

        def host_buffer(self, nbytes):
            return np.empty(nbytes, np.uint8)

        def upload(self, slab):
            return slab

        def ready(self, item):
            return item

        def download(self, y, host):
            if host.dtype.kind != "f":
                return False
            self.pending[host.ctypes.data] = (y.clone(), host)
            return True

        def wait(self, host):
            item = self.pending.pop(host.ctypes.data, None)
            if item is not None:
                torch.from_numpy(item[1]).copy_(item[0])

    made = []
    monkeypatch.setattr(pipeline, "Transfers", lambda device: made.append(DeferredTransfers(device)) or made[-1])
    rng = np.random.default_rng(13)
    spec = random_spec(rng, in_ch=2, filters=3)
    x = rng.standard_normal((40, 36, 200, 2)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    report = pipeline.run_job(spec, tmp_path / "in.npy", tmp_path / "out.npy", Options(progress=False))
    assert report["tiles"] > 1 and made and not made[0].pending
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), run_array(spec, x), rtol=1e-5, atol=1e-5)


def test_per_axis_passes_plan_tiles_within_their_own_budget_unless_a_tile_needs_more(tmp_path):
    """Presets and resamplings are memory-bound per-axis passes: their tiles stay within SEPARABLE_TILE_LIMIT
    of a larger budget (lower peak); layers and chunked outputs get the whole budget, and so does a
    tile the user asks for that needs more."""
    from deconv3d_cli.geometry.sizes import MIB, SEPARABLE_TILE_LIMIT
    from deconv3d_cli.layer.presets import Preset
    from deconv3d_cli.layer.resample import ResampleSpec

    np.save(tmp_path / "in.npy", np.zeros((160, 160, 160), np.float32))
    preset = Preset("trilinear", (2, 2, 2))
    spec = random_spec(np.random.default_rng(3), 1, filters=1, kernel_size=4, strides=2, padding="same")
    cases = [(preset, True), (spec, False), (ResampleSpec.create(interp="linear", scale=2.0), True),
             (ResampleSpec.create(interp="cubic", scale=2.0), True),
             (ResampleSpec.create(interp="lanczos", scale=2.0), True),
             (ResampleSpec.create(interp="bspline", scale=2.0), True)]  # fmt: skip
    for layer, short in cases:
        job = prepare(layer, tmp_path / "in.npy", tmp_path / "o.npy", Options(memory_limit=1024 * MIB))
        job.close()
        assert job.plan.tile_bytes() <= 1024 * MIB
        assert (job.plan.tile_bytes() <= SEPARABLE_TILE_LIMIT) == short, layer
    job = prepare(preset, tmp_path / "in.npy", tmp_path / "o.h5", Options(memory_limit=1024 * MIB))
    job.close()
    assert job.plan.tile_bytes() > SEPARABLE_TILE_LIMIT  # chunked outputs: chunks follow the tiles
    job = prepare(preset, tmp_path / "in.npy", tmp_path / "o.npy",
                  Options(memory_limit=2048 * MIB, tile=(320, 320, 320)))  # fmt: skip
    job.close()
    assert job.plan.tile_bytes() > SEPARABLE_TILE_LIMIT and job.plan.tile_shape == (320, 320, 320)
