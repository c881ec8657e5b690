"""The command line: the main path through a real process, errors as one line with exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from deconv3d_cli import LayerSpec, conv3d_transpose
from deconv3d_cli.cli import main

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def sample_reference() -> np.ndarray:
    spec = LayerSpec.from_yaml(SAMPLE / "sample_spec.yaml")
    x = np.load(SAMPLE / "phantom.npy")
    return conv3d_transpose(x, spec.kernel, spec.bias, strides=2, padding="same", activation="relu")


def test_main_path_in_a_real_process(tmp_path):
    out = tmp_path / "up.npy"
    proc = subprocess.run(
        [sys.executable, "-m", "deconv3d_cli", "upsample", str(SAMPLE / "phantom.npy"), "-o", str(out)]
        + ["--spec", str(SAMPLE / "sample_spec.yaml"), "--memory-limit", "4MiB", "--json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["status"] == "done" and report["tiles"] > 1
    assert report["output_shape"] == [80, 96, 88]
    y = np.load(out)
    ref = sample_reference()
    assert y.shape == (80, 96, 88) and y.dtype == np.float32
    assert np.abs(y - ref).max() <= 1e-6 * np.abs(ref).max()


def test_help_is_instant_and_never_imports_torch():
    code = (
        "import sys; from click.testing import CliRunner; from deconv3d_cli.cli import main;"
        "r = CliRunner().invoke(main, ['upsample', '--help']); assert r.exit_code == 0, r.output;"
        "assert '--memory-limit' in r.output; print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"


def test_dry_run_prints_plan_and_writes_nothing(tmp_path):
    out = tmp_path / "up.npy"
    r = run(
        "upsample",
        str(SAMPLE / "phantom.npy"),
        "-o",
        str(out),
        "--spec",
        str(SAMPLE / "sample_spec.yaml"),
        "--dry-run",
        "--json",
        "--memory-limit",
        "4MiB",
    )
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    assert plan["status"] == "planned" and plan["tiles"] > 1 and plan["halo"] == [1, 1, 1]
    assert plan["memory_estimate_bytes"] <= 4 << 20
    assert list(tmp_path.iterdir()) == []


def one_line_error(r, code: int, *needles: str) -> str:
    assert r.exit_code == code, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_bad_spec_field_is_one_line_exit_2(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("filters: 1\nkernel_size: 3\nstrides: 2\npadding: causal\n")
    out = tmp_path / "o.npy"
    r = run("upsample", str(SAMPLE / "phantom.npy"), "-o", str(out), "--spec", str(spec))
    one_line_error(r, 2, str(spec), "padding", "causal", "'valid' or 'same'")
    assert not out.exists()
    r = run("spec", "validate", str(spec))
    one_line_error(r, 2, "padding")


def test_unknown_key_names_the_nearest(tmp_path):
    spec = tmp_path / "typo.yaml"
    spec.write_text("filters: 1\nkernal_size: 3\n")
    one_line_error(run("spec", "validate", str(spec)), 2, "kernal_size", "did you mean 'kernel_size'")


def test_spec_validate_ok_and_json():
    r = run("spec", "validate", str(SAMPLE / "sample_spec.yaml"))
    assert r.exit_code == 0 and "ok" in r.output
    r = run("spec", "validate", str(SAMPLE / "sample_spec.yaml"), "--json")
    cfg = json.loads(r.stdout)
    assert cfg["kernel_size"] == [4, 4, 4] and cfg["in_channels"] == 1 and cfg["weights_loaded"]


def test_channel_mismatch_and_missing_files(tmp_path):
    x = np.zeros((5, 5, 5, 3), np.float32)
    np.save(tmp_path / "rgb.npy", x)
    r = run(
        "upsample", str(tmp_path / "rgb.npy"), "-o", str(tmp_path / "o.npy"), "--spec", str(SAMPLE / "sample_spec.yaml")
    )
    one_line_error(r, 2, "rgb.npy", "3 channel", "expects 1")
    r = run(
        "upsample",
        str(tmp_path / "nope.npy"),
        "-o",
        str(tmp_path / "o.npy"),
        "--spec",
        str(SAMPLE / "sample_spec.yaml"),
    )
    one_line_error(r, 2, "nope.npy", "no such file")
    r = run("upsample", str(SAMPLE / "phantom.npy"), "-o", str(tmp_path / "o.npy"), "--spec", str(tmp_path / "x.yaml"))
    one_line_error(r, 2, "x.yaml", "not found")
    r = run(
        "upsample",
        str(SAMPLE / "phantom.npy"),
        "-o",
        str(tmp_path / "o.txt"),
        "--spec",
        str(SAMPLE / "sample_spec.yaml"),
    )
    one_line_error(r, 2, "o.txt", "unknown file type")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rgb.npy"]


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "o.npy"
    out.write_bytes(b"keep")
    args = ["upsample", str(SAMPLE / "phantom.npy"), "-o", str(out), "--spec", str(SAMPLE / "sample_spec.yaml")]
    one_line_error(run(*args), 2, "--overwrite")
    assert out.read_bytes() == b"keep"
    r = run(*args, "--overwrite", "--no-progress")
    assert r.exit_code == 0, r.output
    assert np.load(out).shape == (80, 96, 88)


def test_usage_errors_exit_2(tmp_path):
    spec = str(SAMPLE / "sample_spec.yaml")
    assert run("upsample", str(SAMPLE / "phantom.npy"), "--spec", spec).exit_code == 2
    assert run("upsample", str(SAMPLE / "phantom.npy"), "-o", "x.npy", "--spec", spec, "--tile", "a,b").exit_code == 2
    assert (
        run("upsample", str(SAMPLE / "phantom.npy"), "-o", "x.npy", "--spec", spec, "--memory-limit", "lots").exit_code
        == 2
    )
    r = run("upsample", str(SAMPLE / "phantom.npy"), "-o", str(tmp_path / "x.npy"), "--spec", spec, "--device", "tpu")
    one_line_error(r, 2, "--device")


def test_cuda_without_gpu_is_a_clear_error(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    r = run(
        "upsample",
        str(SAMPLE / "phantom.npy"),
        "-o",
        str(tmp_path / "x.npy"),
        "--spec",
        str(SAMPLE / "sample_spec.yaml"),
        "--device",
        "cuda",
    )
    one_line_error(r, 2, "CUDA", "--device cpu")
    assert list(tmp_path.iterdir()) == []


def test_failed_run_exit_1_without_traceback_or_output(tmp_path, monkeypatch):
    from deconv3d_cli import engine

    def boom(self, *a, **k):
        raise RuntimeError("simulated device failure")

    monkeypatch.setattr(engine.Engine, "tile", boom)
    out = tmp_path / "o.npy"
    r = run("upsample", str(SAMPLE / "phantom.npy"), "-o", str(out), "--spec", str(SAMPLE / "sample_spec.yaml"))
    one_line_error(r, 1, "simulated device failure", "--debug")
    assert list(tmp_path.iterdir()) == []
    r = run(
        "--debug", "upsample", str(SAMPLE / "phantom.npy"), "-o", str(out), "--spec", str(SAMPLE / "sample_spec.yaml")
    )
    assert r.exit_code == 1 and "Traceback" in r.stderr


def test_output_dtype_keep_rounds_and_clips(tmp_path):
    x = (np.arange(6 * 6 * 6, dtype=np.int16).reshape(6, 6, 6) * 100).astype(np.int16)
    np.save(tmp_path / "ct.npy", x)
    r = run(
        "upsample",
        str(tmp_path / "ct.npy"),
        "-o",
        str(tmp_path / "o.npy"),
        "--spec",
        str(SAMPLE / "sample_spec.yaml"),
        "--output-dtype",
        "keep",
        "--json",
    )
    assert r.exit_code == 0, r.output
    y = np.load(tmp_path / "o.npy")
    assert y.dtype == np.int16
    spec = LayerSpec.from_yaml(SAMPLE / "sample_spec.yaml")
    ref = conv3d_transpose(
        x.astype(np.float32), spec.kernel, spec.bias, strides=2, padding="same", activation="relu", precision="fp64"
    )
    expect = np.clip(np.rint(ref), -32768, 32767)
    np.testing.assert_array_equal(y, expect.astype(np.int16))
    assert json.loads(r.stdout)["clipped_voxels"] == int(np.count_nonzero(np.rint(ref) > 32767))


def test_engine_path_the_layer_cannot_take_is_one_line_exit_2(tmp_path):
    """`separable` needs a per-channel rank-1 kernel; a dense one is refused before anything is written."""
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "w.npz", kernel=rng.standard_normal((3, 3, 3, 2, 1)).astype(np.float32), bias=np.zeros(2, np.float32)
    )
    spec = tmp_path / "dense.yaml"
    spec.write_text("filters: 2\nkernel_size: 3\nstrides: 2\npadding: same\nweights: w.npz\n")
    out = tmp_path / "o.npy"
    r = run("upsample", str(SAMPLE / "phantom.npy"), "-o", str(out), "--spec", str(spec), "--engine-path", "separable")
    one_line_error(r, 2, "separable", "not available", "transpose")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense.yaml", "w.npz"]
