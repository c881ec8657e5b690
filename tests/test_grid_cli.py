"""Resampling to any grid from the command line: the four ways of saying it, through every runner and format.

The values themselves are checked against SimpleITK, scipy and torch in test_resample.py; here the
command line must give exactly what the library gives (tiled or not, by bytes) and place it right.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from deconv3d_cli.api import resample

CLI = [sys.executable, "-m", "deconv3d_cli"]
AFFINE = np.array([[1.2, 0, 0, -20.0], [0, 1.2, 0, 10.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])


def run(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def scan(tmp_path) -> tuple[Path, np.ndarray]:
    x = np.random.default_rng(0).standard_normal((30, 26, 12)).astype(np.float32)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(x, AFFINE), str(path))
    return path, x


def test_voxel_size_gives_the_library_result_tiled_and_placed(tmp_path, scan):
    path, x = scan
    out = tmp_path / "iso.nii"
    res = run("upsample", path, "-o", out, "--voxel-size", "0.5", "--memory-limit", "4MiB", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["tiles"] > 1 and report["engine_path"] == "resample"
    img = nib.load(str(out))
    want = resample(x, voxel_size=0.5, affine=AFFINE)
    assert img.shape == want.shape == (72, 62, 72)  # round(30*1.2/0.5), round(26*1.2/0.5), 12*3/0.5
    assert np.asarray(img.dataobj).tobytes() == want.tobytes()
    # The field of view is the input's: the first voxel's centre sits half an output voxel in from the edge.
    fov = np.array([30, 26, 12]) * [1.2, 1.2, 3.0]
    spacing = fov / np.array(img.shape)
    corner = AFFINE[:3, 3] - np.array([1.2, 1.2, 3.0]) / 2
    np.testing.assert_allclose(img.affine[:3, 3], corner + spacing / 2, atol=1e-4)
    np.testing.assert_allclose(np.diag(img.affine)[:3], spacing, atol=1e-6)


@pytest.mark.parametrize("interp", ["nearest", "linear", "cubic", "bspline", "lanczos"])
def test_every_interpolator_streams_exactly(tmp_path, scan, interp):
    path, x = scan
    out = tmp_path / "o.npy"
    res = run("upsample", path, "-o", out, "--scale", "1.5,1.5,2", "--interp", interp, "--tile", "7,5,6")
    assert res.returncode == 0, res.stderr
    want = resample(x, scale=(1.5, 1.5, 2), affine=AFFINE, interp=interp)
    assert np.load(out).tobytes() == want.tobytes()


def test_like_a_file_the_tool_wrote_gives_the_same_grid_and_bytes(tmp_path, scan):
    path, _ = scan
    first, second = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    assert run("upsample", path, "-o", first, "--voxel-size", "0.7,0.8,1.1", "--interp", "cubic").returncode == 0
    res = run("upsample", path, "-o", second, "--like", first, "--interp", "cubic")
    assert res.returncode == 0, res.stderr
    a, b = nib.load(str(first)), nib.load(str(second))
    assert a.shape == b.shape and np.allclose(a.affine, b.affine, atol=1e-5)
    assert np.asarray(a.dataobj).tobytes() == np.asarray(b.dataobj).tobytes()


def test_integer_scale_is_todays_trilinear_grid(tmp_path, scan):
    path, _ = scan
    assert run("upsample", path, "-o", tmp_path / "p.nii", "--preset", "trilinear", "--scale", "2").returncode == 0
    assert run("upsample", path, "-o", tmp_path / "r.nii", "--scale", "2").returncode == 0
    p, r = nib.load(str(tmp_path / "p.nii")), nib.load(str(tmp_path / "r.nii"))
    assert p.shape == r.shape and np.array_equal(p.affine, r.affine)
    np.testing.assert_allclose(np.asarray(r.dataobj), np.asarray(p.dataobj), atol=2e-6)


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--scale", "0.8"], "--scale"),
        (["--scale", "1.5", "--voxel-size", "0.5"], "--scale"),
        (["--shape", "20,26,12"], "--shape"),
        (["--voxel-size", "2,1,1"], "--voxel-size"),
        (["--voxel-size", "0,1,1"], "--voxel-size"),
        (["--interp", "cubic", "--spec", "x.yaml"], "--interp"),
        (["--preset", "trilinear", "--scale", "1.5"], "--scale"),
    ],
)
def test_refusals_are_one_line_exit_2_and_write_nothing(tmp_path, scan, args, flag):
    path, _ = scan
    res = run("upsample", path, "-o", tmp_path / "o.nii", *args)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and flag in lines[0], res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz"]


def test_like_a_rotated_reference_is_refused(tmp_path, scan):
    path, _ = scan
    c, s = np.cos(0.3), np.sin(0.3)
    rotated = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]) * [0.5, 0.5, 0.5, 1]
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), rotated), str(tmp_path / "ref.nii"))
    res = run("upsample", path, "-o", tmp_path / "o.nii", "--like", tmp_path / "ref.nii")
    assert res.returncode == 2 and "--like" in res.stderr and "rotat" in res.stderr
    assert not (tmp_path / "o.nii").exists()


def test_channels_series_formats_batch_and_dry_run(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, 10, 8, 3)).astype(np.float32)  # channels last
    np.save(tmp_path / "c.npy", x)
    for name in ("o.npy", "o.h5", "o.zarr"):
        if name.endswith(".zarr"):
            pytest.importorskip("zarr", minversion="3")
        res = run("upsample", tmp_path / "c.npy", "-o", tmp_path / name, "--scale", "1.5", "--interp", "bspline")
        assert res.returncode == 0, res.stderr
    want = resample(x, scale=1.5, interp="bspline")
    assert np.load(tmp_path / "o.npy").tobytes() == want.tobytes()
    import h5py

    with h5py.File(tmp_path / "o.h5") as f:
        assert next(iter(f.values()))[...].tobytes() == want.tobytes()
    planned = run("upsample", tmp_path / "c.npy", "-o", tmp_path / "p.npy", "--scale", "2.5", "--dry-run", "--json")
    assert planned.returncode == 0 and json.loads(planned.stdout)["output_shape"] == [30, 25, 20, 3]
    assert not (tmp_path / "p.npy").exists()
    res = run("upsample", tmp_path / "c.npy", tmp_path / "o.npy", "-O", tmp_path / "out", "--scale", "1.5", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["totals"]["done"] == 2


def test_cli_spells_out_every_interpolator():
    """--interp lists the names (its --help imports nothing): keep them in step with layer.interpolators."""
    from deconv3d_cli.cli.upsample_options import INTERPOLATORS
    from deconv3d_cli.layer.interpolators import INTERPOLATORS as DEFINED

    assert list(INTERPOLATORS) == list(DEFINED)


def test_a_series_a_preview_and_a_stopped_run_resampled(tmp_path):
    """A 4-D NIfTI series, --preview of a resampled output, and SIGTERM then --resume (same bytes)."""
    import signal
    import time

    rng = np.random.default_rng(2)
    series = rng.standard_normal((20, 18, 10, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(series, AFFINE), str(tmp_path / "series.nii"))
    res = run("upsample", tmp_path / "series.nii", "-o", tmp_path / "s.nii", "--scale", "1.5", "--fourth-axis",
              "series", "--preview", tmp_path / "s.png", "--json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = np.asarray(nib.load(str(tmp_path / "s.nii")).dataobj)
    assert out.shape == (30, 27, 15, 3) and (tmp_path / "s.png").stat().st_size > 0
    for t in range(3):
        assert out[..., t].tobytes() == resample(series[..., t], scale=1.5, affine=AFFINE).tobytes()
    big = rng.standard_normal((60, 60, 40)).astype(np.float32)
    np.save(tmp_path / "big.npy", big)
    args = [*CLI, "upsample", str(tmp_path / "big.npy"), "-o", str(tmp_path / "b.npy"), "--scale", "2.5", "--interp",
            "bspline", "--tile", "10,10,10", "--checkpoint-every", "0"]  # fmt: skip
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    journal = tmp_path / ".partial-b.npy.journal"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"\n") > 5:
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the run finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    res = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert np.load(tmp_path / "b.npy").tobytes() == resample(big, scale=2.5, interp="bspline").tobytes()


@pytest.mark.slow
@pytest.mark.xdist_group("dask")
def test_a_resampling_on_a_local_cluster_equals_the_local_run(tmp_path):
    pytest.importorskip("distributed")
    zarr = pytest.importorskip("zarr", minversion="3")
    x = np.random.default_rng(3).standard_normal((40, 36, 30)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    res = run("upsample", tmp_path / "in.npy", "-o", tmp_path / "o.zarr", "--voxel-size", "0.4", "--interp", "cubic",
              "--memory-limit", "8MiB", "--scheduler", "local:2", "--json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["tasks"] > 1
    got = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["0"][:]
    assert got.tobytes() == resample(x, voxel_size=0.4, interp="cubic").tobytes()
