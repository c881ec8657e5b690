"""NIfTI conventions users of nibabel and ITK expect: scaled integers, vector images, metadata through Zarr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from deconv3d_cli import conv3d_transpose
from deconv3d_cli.cli import main
from deconv3d_cli.io import nifti
from deconv3d_cli.io.base import Destination, VolumeMeta
from deconv3d_cli.io.nifti_header import INTENT_VECTOR, fit_scaling, read_header


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def spec_file(tmp_path: Path, kernel: np.ndarray, **config) -> Path:
    np.savez(tmp_path / "layer.npz", kernel=kernel)
    spec = {"filters": int(kernel.shape[3]), "kernel_size": list(kernel.shape[:3]), "use_bias": False}
    path = tmp_path / "layer.yaml"
    path.write_text(yaml.safe_dump({**spec, "weights": "layer.npz", **config}, sort_keys=False))
    return path


def scan(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    img = nib.Nifti1Image(data, np.diag([0.9, 1.1, 1.3, 1.0]) if affine is None else affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = b"a scan"
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=2)
    img.to_filename(path)
    return path


# ----------------------------------------------------------------------------------------------------
# scaled integers


@pytest.mark.parametrize("dtype", ["int16", "uint8", "int8", "uint16", "int32"])
@pytest.mark.parametrize("lo, hi", [(-22.45, 819.15), (0.0, 1.0), (-5.0, -1.0), (3.0, 3.0), (-1e6, 2e6)])
def test_fit_scaling_is_what_nibabel_writes(tmp_path, dtype, lo, hi):
    img = nib.Nifti1Image(np.array([[[lo, hi]]], np.float64), np.eye(4))
    img.set_data_dtype(dtype)
    img.to_filename(tmp_path / "n.nii")
    hdr = read_header(tmp_path / "n.nii", compressed=False)
    want = float(hdr["scl_slope"]), float(hdr["scl_inter"])
    assert fit_scaling(dtype, lo, hi) == pytest.approx(want, rel=1e-7, abs=0)
    slope, inter = fit_scaling(dtype, lo, hi)
    info = np.iinfo(dtype)
    mapped = sorted([(lo - inter) / slope, (hi - inter) / slope])
    if info.bits <= 16:  # wider types: float32 slopes overshoot by a few units, the writer's cast clips them
        assert info.min - 0.5 <= mapped[0] and mapped[1] <= info.max + 0.5  # the range fits the type, rounded
    assert fit_scaling("float32", lo, hi) == (1.0, 0.0)


def test_writer_stores_the_scaling_it_is_given(tmp_path):
    slope, inter = fit_scaling("int16", -22.45, 819.15)
    values = np.linspace(-22.45, 819.15, 6 * 5 * 4).reshape(6, 5, 4)
    stored = np.round((values - inter) / slope).astype(np.int16)
    for suffix in (".nii", ".nii.gz"):
        w = nifti.create_writer(
            Destination(tmp_path / f"s{suffix}", stored.shape, np.int16, VolumeMeta()), scaling=(slope, inter)
        )
        w.write((slice(None),) * 3, stored)
        w.close()
        img = nib.load(tmp_path / f"s{suffix}")
        assert img.get_data_dtype() == np.int16 and img.dataobj.slope == pytest.approx(slope, rel=1e-7)
        np.testing.assert_allclose(img.get_fdata(), values, atol=slope / 2 + 1e-4)
        reader = nifti.open_reader(tmp_path / f"s{suffix}")
        assert reader.scaling == pytest.approx((slope, inter)) and reader.dtype == np.float32
        reader.close()


# ----------------------------------------------------------------------------------------------------
# vectors


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_multi_filter_output_is_a_vector_image_for_nibabel_itk_and_inspect(tmp_path, suffix):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, 6, 5)).astype(np.float32)
    c, s = np.cos(0.2), np.sin(0.2)
    affine = np.array([[c * 0.9, -s, 0, -10.0], [s * 0.9, c, 0, 4.0], [0, 0, 1.3, 2.0], [0, 0, 0, 1]])
    src = scan(tmp_path / "in.nii", x, affine)
    kernel = rng.normal(size=(2, 2, 2, 3, 1)).astype(np.float32)
    out = tmp_path / f"v{suffix}"
    r = run("upsample", src, "-o", out, "--spec", spec_file(tmp_path, kernel, strides=2, padding="same"))
    assert r.exit_code == 0, r.output
    ref = conv3d_transpose(x, kernel, strides=2, padding="same")  # (14, 12, 10, 3)
    img = nib.load(out)
    assert img.shape == (14, 12, 10, 1, 3) and int(img.header["intent_code"]) == INTENT_VECTOR
    np.testing.assert_allclose(img.get_fdata(dtype=np.float32)[:, :, :, 0], ref, rtol=1e-5, atol=1e-5)

    sitk = pytest.importorskip("SimpleITK")
    im = sitk.ReadImage(str(out))
    assert im.GetDimension() == 3 and im.GetNumberOfComponentsPerPixel() == 3 and im.GetSize() == (14, 12, 10)
    arr = np.transpose(sitk.GetArrayFromImage(im), (2, 1, 0, 3))  # ITK: (z, y, x, c)
    np.testing.assert_allclose(arr, ref, rtol=1e-5, atol=1e-5)
    lps = np.diag([-1.0, -1.0, 1.0])  # ITK's physical space is LPS, NIfTI's RAS
    direction = np.array(im.GetDirection()).reshape(3, 3) * np.array(im.GetSpacing())
    np.testing.assert_allclose(lps @ direction, img.affine[:3, :3], atol=1e-5)
    np.testing.assert_allclose(lps @ np.array(im.GetOrigin()), img.affine[:3, 3], atol=1e-4)

    reader = nifti.open_reader(out)  # read back as channels
    assert reader.shape == (14, 12, 10, 3) and "vector" in reader.fourth_axis_choice
    reader.close()
    r = run("inspect", out)
    assert r.exit_code == 0 and "vector: 3 components" in r.output and "series" not in r.output
    info = json.loads(run("inspect", out, "--json").output)
    assert info["nifti"]["vector"] is True and info["nifti"]["intent"] == "vector"


def test_one_filter_from_a_vector_input_drops_the_vector_intent(tmp_path):
    data = np.random.default_rng(1).normal(size=(5, 4, 3, 1, 2)).astype(np.float32)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_intent("vector")
    img.to_filename(tmp_path / "v.nii")
    kernel = np.ones((1, 1, 1, 1, 2), np.float32)
    r = run("upsample", tmp_path / "v.nii", "-o", tmp_path / "s.nii", "--spec", spec_file(tmp_path, kernel))
    assert r.exit_code == 0, r.output
    out = nib.load(tmp_path / "s.nii")
    assert out.shape == (5, 4, 3, 1) and int(out.header["intent_code"]) == 0
    np.testing.assert_allclose(out.get_fdata()[..., 0], data.sum(axis=(3, 4)), rtol=1e-6)


# ----------------------------------------------------------------------------------------------------
# through Zarr and back


def test_nifti_to_zarr_to_nifti_keeps_units_codes_and_description(tmp_path):
    pytest.importorskip("zarr")
    x = np.random.default_rng(2).normal(size=(8, 7, 6)).astype(np.float32)
    src = scan(tmp_path / "in.nii", x)
    for args in (
        [src, "-o", tmp_path / "mid.zarr"],
        [tmp_path / "mid.zarr", "-o", tmp_path / "back.nii"],
    ):
        r = run("upsample", *args, "--preset", "nearest", "--scale", "1")
        assert r.exit_code == 0, r.output
    a, b = nib.load(src).header, nib.load(tmp_path / "back.nii").header
    assert b.get_xyzt_units() == ("mm", "sec")
    assert (int(b["qform_code"]), int(b["sform_code"])) == (1, 2)
    assert b["descrip"].item() == b"a scan"
    np.testing.assert_allclose(nib.load(tmp_path / "back.nii").affine, nib.load(src).affine, atol=1e-6)
    np.testing.assert_array_equal(nib.load(tmp_path / "back.nii").get_fdata(dtype=np.float32), x)
    assert a.get_xyzt_units() == b.get_xyzt_units()


def test_vector_nifti_through_a_real_process(tmp_path):
    x = np.random.default_rng(4).normal(size=(6, 5, 4)).astype(np.float32)
    src = scan(tmp_path / "in.nii.gz", x)
    kernel = np.random.default_rng(5).normal(size=(2, 2, 2, 2, 1)).astype(np.float32)
    spec = spec_file(tmp_path, kernel, strides=2)
    out = tmp_path / "o.nii.gz"
    cmd = [sys.executable, "-m", "deconv3d_cli", "upsample", str(src), "-o", str(out), "--spec", str(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    img = nib.load(out)
    assert img.shape == (12, 10, 8, 1, 2) and int(img.header["intent_code"]) == INTENT_VECTOR
    ref = conv3d_transpose(x, kernel, strides=2)
    np.testing.assert_allclose(img.get_fdata(dtype=np.float32)[:, :, :, 0], ref, rtol=1e-5, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz", "layer.npz", "layer.yaml", "o.nii.gz"]
