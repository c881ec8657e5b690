"""`--output-dtype keep` on NIfTI scaled integers: the stored type, with a slope and intercept no value can clip.

An int16 scan with scl_slope 0.05: a convex computation (a preset, linear resampling) keeps the input's
own slope and intercept; any other is given the slope that holds everything it can produce; integer
outputs report their largest rounding error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from helpers import random_spec

CLI = [sys.executable, "-m", "deconv3d_cli"]


def run(*args: object) -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    res = subprocess.run([*CLI, *map(str, args), "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.fixture
def scaled(tmp_path):
    """Written by hand: nibabel.save recomputes scl_slope for integer data (and drops it)."""
    import gzip

    stored = np.random.default_rng(0).integers(-449, 16383, (20, 18, 16)).astype(np.int16)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(stored.shape)
    hdr.set_data_dtype(np.int16)
    hdr.set_sform(np.diag([1.0, 1.0, 2.0, 1.0]), 1)
    hdr["scl_slope"], hdr["scl_inter"], hdr["vox_offset"] = 0.05, 0.0, 352
    path = tmp_path / "scan.nii.gz"
    with gzip.open(path, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4 + stored.tobytes(order="F"))
    proxy = nib.load(str(path)).dataobj  # nibabel moves the scaling from the header into the array proxy
    assert (proxy.slope, proxy.inter) == pytest.approx((0.05, 0.0))
    return path, stored.astype(np.float64) * 0.05


@pytest.mark.parametrize("args", [["--preset", "trilinear", "--scale", "2"], ["--scale", "1.5", "--interp", "linear"]])
def test_a_convex_computation_keeps_the_input_scaling(tmp_path, scaled, args):
    path, values = scaled
    out = tmp_path / "o.nii.gz"
    report = run("upsample", path, "-o", out, *args, "--output-dtype", "keep")
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.int16 and report["output_dtype"] == "int16"
    slope, inter = img.dataobj.slope, img.dataobj.inter
    assert slope == pytest.approx(0.05) and inter == pytest.approx(0.0)
    assert report["clipped_voxels"] == 0 and 0 < report["max_rounding_error"] <= 0.025 + 1e-9
    got = np.asarray(img.dataobj, dtype=np.float64)
    assert got.min() >= values.min() - 0.05 and got.max() <= values.max() + 0.05


def test_another_layer_gets_a_slope_that_holds_all_it_can_produce(tmp_path, scaled):
    path, _ = scaled
    spec = random_spec(np.random.default_rng(1), 1, filters=1, kernel_size=3, strides=2, padding="same")
    layer = spec.save(tmp_path / "l.yaml")
    out = tmp_path / "o.nii.gz"
    report = run("upsample", path, "-o", out, "--spec", layer, "--output-dtype", "keep")
    img = nib.load(str(out))
    slope = img.dataobj.slope
    assert img.get_data_dtype() == np.int16 and slope > 0.05 and report["clipped_voxels"] == 0
    assert any("keep: int16 with slope" in note for note in report["notes"])
    floats = tmp_path / "f.nii.gz"
    run("upsample", path, "-o", floats, "--spec", layer)
    want = np.asarray(nib.load(str(floats)).dataobj, dtype=np.float64)
    got = np.asarray(img.dataobj, dtype=np.float64)
    assert np.abs(got - want).max() <= report["max_rounding_error"] + 1e-6 <= slope / 2 + 1e-6


def test_an_explicit_integer_type_reports_its_rounding(tmp_path, scaled):
    path, _ = scaled
    report = run("upsample", path, "-o", tmp_path / "o.nii.gz", "--preset", "trilinear", "--output-dtype", "int16")
    assert 0.4 < report["max_rounding_error"] <= 0.5 and report["clipped_voxels"] == 0
