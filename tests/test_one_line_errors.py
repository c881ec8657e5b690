"""Values that once surfaced as Python exceptions (exit 1): each now works, or is one line and exit 2.

A big-endian `.npz` kernel is a valid file and gives the little-endian one's bytes; a kernel near
float32's limit runs; `--checkpoint-every inf` means "only at the end"; a `datetime64` kernel and an
absurd `--threads` are refused naming the field; a `.nii` cut short while it is read says so.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from deconv3d_cli.cli import main

SPEC = "filters: 1\nkernel_size: {k}\nstrides: 2\nuse_bias: false\nweights: {w}\n"


def run(*args: object) -> tuple[int, list[str]]:
    res = CliRunner().invoke(main, [str(a) for a in args] + ["--no-progress"])
    return res.exit_code, [line for line in res.stderr.splitlines() if line.strip()]


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    np.save(tmp_path / "x.npy", np.random.default_rng(3).uniform(0, 1, (12, 10, 8)).astype(np.float32))
    return tmp_path / "x.npy"


def spec(folder: Path, name: str, kernel: np.ndarray) -> Path:
    np.savez(folder / f"{name}.npz", kernel=kernel)
    path = folder / f"{name}.yaml"
    path.write_text(SPEC.format(k=kernel.shape[0], w=f"{name}.npz"))
    return path


def test_a_big_endian_kernel_gives_the_little_endian_bytes(tmp_path, volume):
    kernel = np.random.default_rng(4).standard_normal((3, 3, 3, 1, 1)).astype(np.float32)
    for name, k in (("le", kernel), ("be", kernel.astype(">f4")), ("be64", kernel.astype(">f8"))):
        code, lines = run("upsample", volume, "-o", tmp_path / f"{name}.npy", "--spec", spec(tmp_path, name, k))
        assert code == 0, lines
    assert (tmp_path / "be.npy").read_bytes() == (tmp_path / "le.npy").read_bytes()
    assert (tmp_path / "be64.npy").read_bytes() == (tmp_path / "le.npy").read_bytes()


def test_a_datetime_kernel_is_one_line_naming_the_field(tmp_path, volume):
    path = spec(tmp_path, "dt", np.zeros((2, 2, 2, 1, 1), "datetime64[s]"))
    code, lines = run("upsample", volume, "-o", tmp_path / "y.npy", "--spec", path)
    assert code == 2 and len(lines) == 1, lines
    assert "dt.npz: field 'kernel'" in lines[0] and "datetime64" in lines[0] and "float32" in lines[0]
    assert not (tmp_path / "y.npy").exists()


def test_a_kernel_near_the_float32_limit_runs_as_the_convolution_does(tmp_path, volume):
    path = spec(tmp_path, "big", np.full((3, 3, 3, 1, 1), 3e38, np.float32))  # separable, but a tap past float32
    code, lines = run("upsample", volume, "-o", tmp_path / "auto.npy", "--spec", path)
    assert code == 0, lines
    code, lines = run("upsample", volume, "-o", tmp_path / "conv.npy", "--spec", path, "--engine-path", "transpose")
    assert code == 0, lines
    auto, conv = np.load(tmp_path / "auto.npy"), np.load(tmp_path / "conv.npy")
    assert np.isinf(auto).any() and np.isfinite(auto).any()  # sums past float32 overflow, as in Keras
    assert np.array_equal(np.isinf(auto), np.isinf(conv))  # formulations agree to rounding, not to the bit
    assert np.allclose(auto[np.isfinite(auto)], conv[np.isfinite(conv)], rtol=1e-6, atol=0)


@pytest.mark.parametrize("every", ["inf", "1e308"])
def test_checkpoint_every_inf_checkpoints_only_at_the_end(tmp_path, volume, every):
    path = spec(tmp_path, "k", np.random.default_rng(5).standard_normal((2, 2, 2, 1, 1)).astype(np.float32))
    assert run("upsample", volume, "-o", tmp_path / "ref.npy", "--spec", path)[0] == 0
    code, lines = run("upsample", volume, "-o", tmp_path / "y.npy", "--spec", path, "--checkpoint-every", every)
    assert code == 0, lines
    assert (tmp_path / "y.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()


@pytest.mark.parametrize("dry", [[], ["--dry-run"]])
def test_more_threads_than_a_system_starts_is_one_line(tmp_path, volume, dry):
    path = spec(tmp_path, "k", np.ones((2, 2, 2, 1, 1), np.float32))
    code, lines = run("upsample", volume, "-o", tmp_path / "y.npy", "--spec", path, "--threads", 100000, *dry)
    assert code == 2 and len(lines) == 1, lines
    assert "field '--threads'" in lines[0] and "give at most" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.npz", "k.yaml", "x.npy"]


def test_a_nii_cut_short_while_it_is_read_is_an_input_error(tmp_path):
    path = tmp_path / "x.nii"
    nib.save(nib.Nifti1Image(np.ones((64, 64, 64), np.float32), np.eye(4)), path)
    script = f"""
import os
from deconv3d_cli.io import open_reader
from deconv3d_cli import InputError
r = open_reader({str(path)!r})
os.truncate({str(path)!r}, 4096)  # another process rewriting the input
try:
    r.read((slice(0, 8), slice(None), slice(None)))
except InputError as exc:
    print(exc, exc.exit_code)
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, (res.returncode, res.stderr)
    assert res.stdout.strip() == f"{path}: the file was truncated while it was being read 2"
