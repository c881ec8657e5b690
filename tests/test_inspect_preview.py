"""`deconv3d inspect` (text and JSON, every format) and the `--preview` PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from deconv3d_cli import io as vio
from deconv3d_cli.cli import main
from deconv3d_cli.views import preview
from deconv3d_cli.views.describe import describe, format_text, guess_layout

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
SPEC = SAMPLE / "sample_spec.yaml"


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


# ----------------------------------------------------------------------------------------------------
# inspect


def test_describe_nifti_sample():
    info = describe(SAMPLE / "phantom.nii.gz")
    img = nib.load(SAMPLE / "phantom.nii.gz")
    assert info["format"] == "nifti" and info["shape"] == [40, 48, 44] and info["dtype"] == "float32"
    assert info["layout"].startswith("x, y, z")
    assert info["spacing"] == pytest.approx([1.0, 1.2, 1.1], rel=1e-6) and info["spacing_units"] == "mm"
    assert info["orientation"] == "".join(nib.aff2axcodes(img.affine))
    np.testing.assert_allclose(info["affine"], img.affine, atol=1e-6)
    assert info["chunks"] is None
    assert info["size_on_disk"] == (SAMPLE / "phantom.nii.gz").stat().st_size
    assert info["size_in_memory"] == 40 * 48 * 44 * 4
    n = info["nifti"]
    assert n["version"] == 1 and n["compressed"] is True
    assert (n["qform_code"], n["sform_code"]) == (1, 2) and n["sform_name"] == "aligned"
    assert n["stored_dtype"] == "<i2" and n["scl_slope"] == pytest.approx(0.05) and n["scl_inter"] == 0
    assert n["descrip"] == "deconv3d-cli sample phantom" and n["fourth_axis"] is None
    json.dumps(info)  # all plain types


def test_describe_npy_and_hdf5():
    info = describe(SAMPLE / "phantom.npy")
    assert info["format"] == "npy" and info["shape"] == [40, 48, 44] and info["dtype"] == "float32"
    assert info["affine"] is None and info["orientation"] is None and info["spacing"] is None
    assert info["size_in_memory"] == 40 * 48 * 44 * 4 and info["size_on_disk"] > info["size_in_memory"]
    pytest.importorskip("deconv3d_cli.io.hdf5")
    info = describe(SAMPLE / "phantom.h5")
    assert info["format"] == "hdf5" and info["dataset"] == "/volume" and info["shape"] == [40, 48, 44]
    assert info["spacing"] == pytest.approx([1000.0, 1200.0, 1100.0]) and info["spacing_units"] == "micron"
    assert info["chunks"] == [20, 24, 22]
    assert info["size_on_disk"] < info["size_in_memory"]  # compressed
    assert info["attributes"]["element_size_um"] == pytest.approx([1000.0, 1200.0, 1100.0])


def test_describe_4d_nifti_reports_its_fourth_axis(tmp_path):
    data = np.zeros((5, 4, 3, 7), np.int16)
    nib.save(nib.Nifti1Image(data, np.diag([-2.0, 2.0, 2.0, 1.0])), tmp_path / "f.nii")
    info = describe(tmp_path / "f.nii")
    assert info["shape"] == [7, 5, 4, 3, 1] and info["nifti"]["stored_shape"] == [5, 4, 3, 7]
    assert "series of 7" in info["nifti"]["fourth_axis"] and info["orientation"] == "LAS"
    info = describe(tmp_path / "f.nii", fourth_axis="channels")
    assert info["shape"] == [5, 4, 3, 7] and "7 channel(s)" in info["nifti"]["fourth_axis"]


@pytest.mark.parametrize(
    "shape, fmt",
    [
        ((64, 64, 32, 3), "channels_last"),
        ((2, 64, 64, 32), "channels_first"),
        ((64, 64, 64, 64), "channels_last"),
        ((4, 64, 64, 32, 1), "channels_last"),
        ((4, 3, 64, 64, 32), "channels_first"),
    ],
)
def test_layout_guess(shape, fmt):
    assert guess_layout(shape, None)[0] == fmt
    assert guess_layout((8, 8, 8), None)[0] is None


def test_inspect_command_text_and_json():
    r = run("inspect", SAMPLE / "phantom.nii.gz")
    assert r.exit_code == 0, r.output
    text = r.stdout
    assert "NIfTI-1 (gzip)" in text and "(40, 48, 44)" in text and "1 x 1.2 x 1.1 mm" in text
    assert "1 (scanner) / 2 (aligned)" in text and "orientation" in text and "affine" in text
    r = run("inspect", SAMPLE / "phantom.npy", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["shape"] == [40, 48, 44]
    pytest.importorskip("deconv3d_cli.io.hdf5")
    r = run("inspect", SAMPLE / "phantom.h5", "--dataset", "volume", "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["format"] == "hdf5" and info["chunks"] == [20, 24, 22]
    assert "dataset /volume" in format_text(info)


def test_inspect_errors_are_one_line():
    r = run("inspect", SAMPLE / "missing.nii.gz")
    assert r.exit_code == 2 and "no such file" in r.stderr and "Traceback" not in r.output
    r = run("inspect", SAMPLE / "phantom.nii.gz", "--dataset", "x")
    assert r.exit_code == 2 and "--dataset" in r.stderr


# ----------------------------------------------------------------------------------------------------
# previews


def _panel(image: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    return np.asarray(image.convert("L").crop(box), dtype=np.float64)


def test_inspect_preview_png(tmp_path):
    png = tmp_path / "p.png"
    r = run("inspect", SAMPLE / "phantom.nii.gz", "--preview", png)
    assert r.exit_code == 0, r.output
    image = Image.open(png)
    assert image.format == "PNG" and image.mode == "RGB"
    # 40 x 57.6 x 48.4 mm drawn at 4 px/mm (the smallest voxel, 1 mm, enlarged to reach MIN_PANEL):
    # panels 160 x 230 (axial), 160 x 194 (coronal), 230 x 194 (sagittal) side by side
    assert image.size[0] >= 2 * preview.MARGIN + 160 + 160 + 230 + 2 * preview.GAP
    assert image.size[1] >= 2 * preview.MARGIN + 230
    pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 20 and len(np.unique(pixels)) > 50


def _volumes(src: Path, dst: Path) -> list[preview.Volume]:
    return [
        preview.volume_from_reader("input", vio.open_reader(src)),
        preview.volume_from_reader("output", vio.open_reader(dst)),
    ]


def test_upsample_preview_is_aligned_at_one_physical_scale(tmp_path):
    out, png = tmp_path / "up.nii.gz", tmp_path / "preview.png"
    r = run("upsample", SAMPLE / "phantom.nii.gz", "-o", out, "--spec", SPEC, "--preview", png)
    assert r.exit_code == 0, r.output
    assert "preview written" in r.stderr
    image = Image.open(png)
    boxes: list = []
    again = preview.render(_volumes(SAMPLE / "phantom.nii.gz", out), "t", boxes=boxes)
    assert again.size == image.size
    by = {(row, name): box for row, name, box in boxes}
    assert [name for row, name, _ in boxes if row == 0] == ["axial", "coronal", "sagittal"]
    for name in ("axial", "coronal", "sagittal"):
        a, b = by[(0, name)], by[(1, name)]
        assert (a[2] - a[0], a[3] - a[1]) == (b[2] - b[0], b[3] - b[1])  # same physical size
        ia, ib = _panel(image, a), _panel(image, b)
        assert ia.std() > 20 and ib.std() > 20
        assert np.corrcoef(ia.ravel(), ib.ravel())[0, 1] > 0.9  # the same anatomy in the same place
    w, h = by[(0, "axial")][2] - by[(0, "axial")][0], by[(0, "axial")][3] - by[(0, "axial")][1]
    assert (w, h) == (160, 230)  # 40 mm x 57.6 mm at 4 px/mm: each input voxel 4 px, each output voxel 2


def test_upsample_preview_without_geometry_npy_and_hdf5(tmp_path):
    png = tmp_path / "npy.png"
    r = run("upsample", SAMPLE / "phantom.npy", "-o", tmp_path / "up.npy", "--spec", SPEC, "--preview", png)
    assert r.exit_code == 0, r.output
    image = Image.open(png)
    assert image.size[0] > 300 and np.asarray(image.convert("L")).std() > 20
    pytest.importorskip("deconv3d_cli.io.hdf5")
    png = tmp_path / "h5.png"
    r = run("upsample", SAMPLE / "phantom.h5", "-o", tmp_path / "up.h5", "--spec", SPEC, "--preview", png)
    assert r.exit_code == 0, r.output
    boxes: list = []
    preview.render(_volumes(SAMPLE / "phantom.h5", tmp_path / "up.h5"), boxes=boxes)
    by = {(row, name): box for row, name, box in boxes}
    a, b = by[(0, "axis 0")], by[(1, "axis 0")]
    assert (a[2] - a[0], a[3] - a[1]) == (b[2] - b[0], b[3] - b[1])


def test_preview_of_a_4d_series_and_a_bad_directory(tmp_path):
    data = np.random.default_rng(0).normal(size=(12, 10, 8, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), tmp_path / "s.nii")
    png = preview.preview_file(tmp_path / "s.nii", tmp_path / "s.png")
    assert Image.open(png).size[0] > 200
    r = run("inspect", tmp_path / "s.nii", "--preview", tmp_path / "nowhere" / "p.png")
    assert r.exit_code == 2 and "does not exist" in r.stderr
