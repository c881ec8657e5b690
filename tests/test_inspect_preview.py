"""`deconv3d inspect` (text and JSON, every format) and the `--preview` PNGs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from deconv3d_cli import io as vio
from deconv3d_cli.cli import main
from deconv3d_cli.errors import InputError, RunError
from deconv3d_cli.views import labels, preview, target, volumes
from deconv3d_cli.views import sheet as sheets
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
# previews: size, one window, scale bar, orientation labels


def _volumes(*paths: Path) -> list[preview.Volume]:
    roles = ["input", "output"] if len(paths) == 2 else ["file"]
    return [preview.volume_from_reader(role, vio.open_reader(p)) for role, p in zip(roles, paths)]


def _panel(image: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    return np.asarray(image.convert("L").crop(box), dtype=np.float64)


def _boxes(sheet: sheets.Sheet) -> dict[tuple[int, str], tuple[int, int, int, int]]:
    return {(row, name): box for row, name, box in sheet.boxes()}


def test_inspect_preview_png_panels_and_text_are_big_enough(tmp_path):
    png = tmp_path / "p.png"
    r = run("inspect", SAMPLE / "phantom.nii.gz", "--preview", png)
    assert r.exit_code == 0, r.output
    image = Image.open(png)
    assert image.format == "PNG" and image.mode == "RGB"
    sheet = preview.plan(_volumes(SAMPLE / "phantom.nii.gz"))
    assert image.size == (sheet.width, sheet.height)
    # 40 x 57.6 x 48.4 mm at 7 px per 1 mm voxel (the least whole number that makes 40 mm >= 256 px)
    assert sheet.units_per_px == pytest.approx(1 / 7)
    sizes = {name: (b[2] - b[0], b[3] - b[1]) for _, name, b in sheet.boxes()}
    assert sizes == {"axial": (280, 403), "coronal": (280, 339), "sagittal": (403, 339)}
    assert all(min(w, h) >= sheets.MIN_PANEL for w, h in sizes.values())
    assert min(t.size for t in sheet.texts) >= 14
    assert sheets.font(14).size == 14  # a scalable font: sizes are pixels
    pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 20 and len(np.unique(pixels)) > 50


def test_upsample_preview_is_aligned_at_one_physical_scale(tmp_path):
    out, png = tmp_path / "up.nii.gz", tmp_path / "preview.png"
    r = run("upsample", SAMPLE / "phantom.nii.gz", "-o", out, "--spec", SPEC, "--preview", png)
    assert r.exit_code == 0, r.output
    assert "preview written" in r.stderr
    image = Image.open(png)
    sheet = preview.plan(_volumes(SAMPLE / "phantom.nii.gz", out), "t")
    assert image.size == (sheet.width, sheet.height)
    by = _boxes(sheet)
    assert [name for row, name, _ in sheet.boxes() if row == 0] == ["axial", "coronal", "sagittal"]
    for name in ("axial", "coronal", "sagittal"):
        a, b = by[(0, name)], by[(1, name)]
        assert (a[2] - a[0], a[3] - a[1]) == (b[2] - b[0], b[3] - b[1])  # same physical size
        assert min(a[2] - a[0], a[3] - a[1]) >= sheets.MIN_PANEL
        ia, ib = _panel(image, a), _panel(image, b)
        assert ia.std() > 20 and ib.std() > 20
        assert np.corrcoef(ia.ravel(), ib.ravel())[0, 1] > 0.9  # the same anatomy in the same place
    # 40 mm x 57.6 mm at 8 px/mm: each input voxel 8 px, each output voxel 4
    assert sheet.units_per_px == pytest.approx(0.125)
    assert by[(0, "axial")][2] - by[(0, "axial")][0] == 320 and by[(0, "axial")][3] - by[(0, "axial")][1] == 461
    assert sheet.strings("scale") == ["10 mm", "all panels at 8 pixels per mm"]
    assert sheet.bar == (80, "10 mm")


def test_both_rows_share_one_window(tmp_path):
    """Equal values are equal greys in both rows, though the output's range is ten times the input's."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 100, size=(12, 16, 14)).astype(np.float32)
    y = x.repeat(2, 0).repeat(2, 1).repeat(2, 2)  # nearest x2: the same data on a finer grid
    y[:, :, 20:] *= 10.0  # a part of the output ten times brighter (a per-row window would dim the rest)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    vols = _volumes(tmp_path / "x.npy", tmp_path / "y.npy")
    sheet = preview.plan(vols)
    image = preview.render(vols)
    by = _boxes(sheet)
    planes = volumes.planes_for(vols[0])
    middles = [(6, 8, 7), (12, 16, 14)]  # the input's middle slices, and the output's through the same planes
    slices = [volumes.read_slice(v, p, i) for v, mid in zip(vols, middles) for p, i in zip(planes, mid)]
    lo, hi = np.percentile(np.concatenate([s.ravel() for s in slices]), sheets.PERCENTILES)
    assert sheet.window == pytest.approx((lo, hi))
    assert sheet.strings("window")[:2] == [f"{lo:.4g}", f"{hi:.4g}"]
    said = sheet.strings("window")[2]
    assert said.startswith(f"window {lo:.4g} to {hi:.4g}") and "one window for both" in said
    for name, across_w in (("axis 0", 2), ("axis 1", 2), ("axis 2", 1)):
        a, b = _panel(image, by[(0, name)]), _panel(image, by[(1, name)])
        assert a.shape == b.shape
        px_per_voxel = a.shape[1] // x.shape[across_w]
        same = slice(0, 10 * px_per_voxel) if across_w == 2 else slice(None)  # columns where y == x
        if name == "axis 2":
            continue  # its slice (index 7 of 14 -> 14 of 28) lies in the brightened part
        marks = slice(70, None)  # below the corner arrows
        np.testing.assert_array_equal(a[marks, same], b[marks, same])
        assert b[marks, 11 * px_per_voxel :].mean() > a[marks, 11 * px_per_voxel :].mean() + 20


def test_scale_bar_and_units_per_format(tmp_path):
    assert labels.scale_bar(0.125, "mm", 85) == (80, "10 mm")
    assert labels.scale_bar(0.125, "mm", 79) == (40, "5 mm")
    assert labels.scale_bar(125.0, "um", 93) == (80, "10 mm")  # 10000 um
    assert labels.scale_bar(0.5, "um", 60) == (40, "20 um")
    assert labels.scale_bar(1 / 7, "voxels", 93) == (70, "10 voxels")
    assert labels.scale_bar(1 / 7, "voxels", 93, rows=2) == (70, "10 input voxels")
    assert labels.scale_bar(1 / 40, "voxels", 30) == (40, "1 voxel")  # never a fraction of a voxel
    assert labels.scale_bar(0.3, "", 100) == (67, "20 (spacing units)")
    assert labels.scale_note(2.5, "mm", 1) == "all panels at 2.5 mm per pixel"
    pytest.importorskip("deconv3d_cli.io.hdf5")
    assert preview.plan(_volumes(SAMPLE / "phantom.h5")).unit == "um"
    assert preview.plan(_volumes(SAMPLE / "phantom.npy")).unit == "voxels"


@pytest.mark.parametrize(
    "fmt, header, attrs, unit",
    [
        ("zarr", SimpleNamespace(axes=[{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]), {}, "um"),
        ("zarr", SimpleNamespace(axes=[{"name": "c"}, *({"name": n, "unit": "nanometer"} for n in "zyx")]), {}, "nm"),
        ("zarr", SimpleNamespace(axes=[{"name": n, "type": "space"} for n in "zyx"]), {}, ""),
        ("zarr", None, {"element_size_um": [1, 1, 1]}, "um"),
        ("hdf5", None, {"spacing": [2, 2, 2], "units": "mm"}, "mm"),
        ("hdf5", None, {"spacing": [2, 2, 2], "unit": b"micron"}, "um"),
        ("hdf5", None, {"spacing": [2, 2, 2]}, ""),
    ],
)
def test_units_of_hdf5_and_zarr(fmt, header, attrs, unit):
    from deconv3d_cli.io.base import VolumeMeta

    reader = SimpleNamespace(format=fmt, meta=VolumeMeta(spacing=(1.0, 1.0, 1.0), attrs=attrs, header=header))
    assert volumes.units_of(reader) == unit


def _marked_nifti(tmp_path: Path, affine: np.ndarray) -> Path:
    """A 20x24x16 volume, bright in the world's right-anterior-superior octant from its middle voxel on."""
    shape = (20, 24, 16)
    ijk = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), axis=-1)
    world = nib.affines.apply_affine(affine, ijk)
    middle = nib.affines.apply_affine(affine, [n // 2 for n in shape])
    data = np.where(np.all(world >= middle - 1e-6, axis=-1), 1000.0, 10.0).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "m.nii")
    return tmp_path / "m.nii"


@pytest.mark.parametrize(
    "affine",
    [
        np.diag([2.0, 2.0, 3.0, 1.0]),  # RAS
        np.diag([-2.0, 2.0, 3.0, 1.0]),  # LAS, the radiological storage order
        np.array([[0, 0, -3.0, 0], [2.0, 0, 0, 0], [0, -2.0, 0, 0], [0, 0, 0, 1]]),  # permuted and flipped: PIL
    ],
)
def test_anatomical_letters_follow_the_affine(tmp_path, affine):
    path = _marked_nifti(tmp_path, affine)
    vols = _volumes(path)
    planes = volumes.planes_for(vols[0])
    codes = nib.aff2axcodes(affine)
    assert [codes[p.normal] in ("S", "I") for p in planes] == [True, False, False]  # axial is the z plane
    assert [codes[p.normal] in ("A", "P") for p in planes] == [False, True, False]
    sheet = preview.plan(vols)
    letters = {}
    for t in sheet.texts:
        if t.kind == "letter":
            letters.setdefault(t.plane, []).append(t.text)
    assert letters == {"axial": ["L", "R", "A", "P"], "coronal": ["L", "R", "S", "I"], "sagittal": ["P", "A", "S", "I"]}
    image = np.asarray(preview.render(vols).convert("L"), dtype=float)
    for _, name, (x0, y0, x1, y1) in sheet.boxes():
        panel = image[y0:y1, x0:x1]
        bright = np.argwhere(panel == 255)
        cy, cx = bright.mean(axis=0)
        # R (axial, coronal) or A (sagittal) is drawn on the right, A (axial) or S at the top
        assert cy < (y1 - y0) / 2 and cx > (x1 - x0) / 2, name


def test_array_axis_labels_say_which_axis_runs_across_and_down(tmp_path):
    data = np.zeros((20, 24, 28), np.float32)
    data[9:12, 0:3, 25:28] = 100.0  # in the middle plane of axis 0, at the top (axis 1 = 0), right (axis 2 end)
    np.save(tmp_path / "a.npy", data)
    vols = _volumes(tmp_path / "a.npy")
    sheet = preview.plan(vols)
    assert sheet.strings("letter") == []
    arrows = [t.text for t in sheet.texts if t.kind == "axis"]
    assert arrows == ["axis 2", "axis 1", "axis 2", "axis 0", "axis 1", "axis 0"]  # (across, down) per panel
    captions = sheet.strings("caption")
    assert captions == [
        "axis 0 = 10 of 20",
        "down: axis 1, across: axis 2",
        "axis 1 = 12 of 24",
        "down: axis 0, across: axis 2",
        "axis 2 = 14 of 28",
        "down: axis 0, across: axis 1",
    ]
    image = np.asarray(preview.render(vols).convert("L"), dtype=float)
    x0, y0, x1, y1 = _boxes(sheet)[(0, "axis 0")]
    px = (x1 - x0) // 28
    block = image[y0 : y0 + 3 * px, x1 - 3 * px : x1]
    assert block.min() == 255 and image[y0 + 3 * px + 1 : y1, x0 : x1 - 3 * px].max() < 255


def test_hdf5_panels_use_array_axes_and_micrometres(tmp_path):
    pytest.importorskip("deconv3d_cli.io.hdf5")
    png = tmp_path / "h5.png"
    r = run("upsample", SAMPLE / "phantom.h5", "-o", tmp_path / "up.h5", "--spec", SPEC, "--preview", png)
    assert r.exit_code == 0, r.output
    sheet = preview.plan(_volumes(SAMPLE / "phantom.h5", tmp_path / "up.h5"), "title")
    assert Image.open(png).size == (sheet.width, sheet.height)
    by = _boxes(sheet)
    a, b = by[(0, "axis 0")], by[(1, "axis 0")]
    assert (a[2] - a[0], a[3] - a[1]) == (b[2] - b[0], b[3] - b[1])
    assert sheet.unit == "um" and sheet.strings("scale")[0] == "10 mm"
    assert "voxel 1000 x 1200 x 1100 um" in sheet.strings("row")[0]
    assert "down: axis 1, across: axis 2" in sheet.strings("caption")


def test_preview_without_geometry_npy(tmp_path):
    png = tmp_path / "npy.png"
    r = run("upsample", SAMPLE / "phantom.npy", "-o", tmp_path / "up.npy", "--spec", SPEC, "--preview", png)
    assert r.exit_code == 0, r.output
    image = Image.open(png)
    assert image.size[0] > 3 * 256 and np.asarray(image.convert("L")).std() > 20
    sheet = preview.plan(_volumes(SAMPLE / "phantom.npy", tmp_path / "up.npy"))
    assert sheet.unit == "voxels" and sheet.strings("scale")[0].endswith("input voxels")
    assert "voxel size unknown" in sheet.strings("row")[0]


def test_preview_of_a_4d_series_and_nan_geometry(tmp_path):
    data = np.random.default_rng(0).normal(size=(12, 10, 8, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), tmp_path / "s.nii")
    png = preview.preview_file(tmp_path / "s.nii", tmp_path / "s.png")
    assert Image.open(png).size[0] > 3 * 256
    assert "(volume 0 of 3)" in preview.plan(_volumes(tmp_path / "s.nii")).strings("row")[0]
    nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.float32), np.eye(4)), tmp_path / "nan.nii")
    raw = bytearray((tmp_path / "nan.nii").read_bytes())
    raw[280:284] = np.float32(np.nan).tobytes()  # srow_x[0]: a NaN affine, drawn on the voxel grid
    (tmp_path / "nan.nii").write_bytes(bytes(raw))
    reader = vio.open_reader(tmp_path / "nan.nii")  # the NaN sform is set aside (io/nifti_header.geometry)
    assert np.isfinite(reader.meta.affine).all() and "sform" in reader.notes[0]
    reader.close()
    png = preview.preview_file(tmp_path / "nan.nii", tmp_path / "nan.png")
    assert Image.open(png).format == "PNG"


# ----------------------------------------------------------------------------------------------------
# previews: never replacing what is not theirs


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_preview_refuses_its_own_input_even_with_overwrite(tmp_path):
    src = tmp_path / "scan.nii.gz"
    shutil.copy(SAMPLE / "phantom.nii.gz", src)
    before = src.read_bytes()
    for overwrite in (False, True):
        with pytest.raises(InputError) as err:
            preview.preview_file(src, src, overwrite=overwrite)
        assert "is the input of this command" in str(err.value) and "scan_preview.png" in str(err.value)
    (tmp_path / "link.nii.gz").symlink_to(src)
    os.link(src, tmp_path / "hard.nii.gz")
    for other in ("link.nii.gz", "hard.nii.gz"):
        with pytest.raises(InputError, match="is the input"):
            preview.preview_file(src, tmp_path / other, overwrite=True)
        with pytest.raises(InputError, match="is the input"):
            preview.preview_file(tmp_path / other, src, overwrite=True)
    assert src.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "hard.nii.gz",
        "link.nii.gz",
        "scan.nii.gz",
    ]


def test_preview_refuses_the_output_and_what_lies_inside_a_store(tmp_path):
    src, out = tmp_path / "v.npy", tmp_path / "up.npy"
    np.save(src, np.arange(8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8))
    np.save(out, np.zeros((16, 16, 16), np.float32))
    with pytest.raises(InputError, match="is the output of this command"):
        preview.preview_upsample(src, out, out, overwrite=True)
    with pytest.raises(InputError, match="is the input of this command"):
        preview.check_preview_target(src, src, out, overwrite=True)
    store = tmp_path / "o.zarr"
    store.mkdir()
    with pytest.raises(InputError, match="is the output"):
        preview.check_preview_target(store / "p.png", src, store, overwrite=True)
    with pytest.raises(InputError, match="is the output"):
        preview.check_preview_target(store, src, store, overwrite=True)
    with pytest.raises(InputError, match="is a directory"):
        preview.check_preview_target(tmp_path, src, out, overwrite=True)
    with pytest.raises(InputError, match="preview directory does not exist"):
        preview.check_preview_target(tmp_path / "nowhere" / "p.png", src, out)
    os.mkfifo(tmp_path / "fifo.png")
    with pytest.raises(InputError, match="not a regular file"):
        preview.check_preview_target(tmp_path / "fifo.png", src, out, overwrite=True)
    assert preview.check_preview_target(tmp_path / "new.png", src, tmp_path / "not-yet.npy") == tmp_path / "new.png"


def test_an_existing_preview_is_replaced_only_with_overwrite(tmp_path):
    png = tmp_path / "p.png"
    png.write_bytes(b"mine")
    with pytest.raises(InputError) as err:
        preview.preview_file(SAMPLE / "phantom.npy", png)
    assert str(err.value) == f"{png}: exists; pass --overwrite to replace it, or choose another path"
    assert png.read_bytes() == b"mine"
    preview.preview_file(SAMPLE / "phantom.npy", png, overwrite=True)
    assert Image.open(png).format == "PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]  # no temporary file left
    mode = png.stat().st_mode & 0o777
    assert mode == 0o666 & ~target.umask()
    # a symlink at the target is replaced itself; the file it points to is never written
    keep = tmp_path / "keep.txt"
    keep.write_bytes(b"keep")
    (tmp_path / "l.png").symlink_to(keep)
    preview.preview_file(SAMPLE / "phantom.npy", tmp_path / "l.png", overwrite=True)
    assert keep.read_bytes() == b"keep" and not (tmp_path / "l.png").is_symlink()


def test_write_never_replaces_a_file_that_appeared_and_leaves_no_stray(tmp_path):
    image = Image.new("RGB", (4, 4))
    png = tmp_path / "late.png"
    png.write_bytes(b"theirs")  # appeared after the check
    with pytest.raises(InputError, match="exists"):
        target.write_png(image, png, overwrite=False)
    assert png.read_bytes() == b"theirs" and _tree(tmp_path) == {"late.png": b"theirs"}

    class Broken:
        def save(self, fh, format):
            fh.write(b"half a png")
            raise OSError(28, "No space left on device")

    with pytest.raises(RunError, match="No space left on device") as err:
        target.write_png(Broken(), png, overwrite=True)
    assert str(err.value).startswith(f"{png}: cannot write the preview") and "free)" in str(err.value)
    assert _tree(tmp_path) == {"late.png": b"theirs"}


def test_cli_preview_onto_the_input_is_refused_and_the_input_kept(tmp_path):
    src = tmp_path / "vol.npy"
    shutil.copy(SAMPLE / "phantom.npy", src)
    before = src.read_bytes()
    r = run("inspect", src, "--preview", src)
    assert r.exit_code == 2 and "is the input of this command" in r.stderr and "Traceback" not in r.output
    r = run("upsample", src, "-o", tmp_path / "up.npy", "--spec", SPEC, "--preview", src)
    assert r.exit_code != 0 and "is the input of this command" in r.stderr
    assert src.read_bytes() == before


def test_subprocess_inspect_preview_onto_the_scan_is_one_line_exit_2(tmp_path):
    scan = tmp_path / "scan.nii.gz"
    shutil.copy(SAMPLE / "phantom.nii.gz", scan)
    before = scan.read_bytes()
    done = subprocess.run(
        [sys.executable, "-m", "deconv3d_cli", "inspect", str(scan), "--preview", str(scan)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "is the input of this command" in done.stderr
    assert scan.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz"]


def test_zarr_output_preview_reads_its_ngff_unit(tmp_path):
    pytest.importorskip("zarr")
    pytest.importorskip("deconv3d_cli.io.hdf5")
    png = tmp_path / "z.png"
    r = run("upsample", SAMPLE / "phantom.h5", "-o", tmp_path / "up.zarr", "--spec", SPEC, "--preview", png)
    assert r.exit_code == 0, r.output
    vols = _volumes(SAMPLE / "phantom.h5", tmp_path / "up.zarr")
    assert [v.units for v in vols] == ["um", "um"] and not vols[1].anatomical
    sheet = preview.plan(vols, "title")
    assert Image.open(png).size == (sheet.width, sheet.height)
    by = _boxes(sheet)
    for name in ("axis 0", "axis 1", "axis 2"):
        a, b = by[(0, name)], by[(1, name)]
        assert (a[2] - a[0], a[3] - a[1]) == (b[2] - b[0], b[3] - b[1])
    assert "voxel 500 x 600 x 550 um" in sheet.strings("row")[1]


def test_a_4d_nifti_leads_with_the_files_own_order(tmp_path):
    """nibabel and FSL show (x, y, z, t); inspect and the plan lead with it, then say how the tool reads it,
    and speak of a layer's input channels only where there is a layer."""
    src = tmp_path / "bold.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 5, 4, 3), np.float32), np.eye(4)), src)
    text = run("inspect", src).output.splitlines()
    assert text[1] == "  shape        (6, 5, 4, 3)  x, y, z, t (the file's order)"
    assert text[2].startswith("  read as      (3, 6, 5, 4, 1)  t, x, y, z, c")
    assert "layer" not in "\n".join(text)
    out = tmp_path / "bold_x2.nii.gz"
    r = run("upsample", src, "-o", out, "--preset", "trilinear", "--scale", "2", "--no-progress")
    assert r.exit_code == 0, r.output
    plan = r.stderr.splitlines()
    assert plan[0] == f"{src}: (6, 5, 4, 3) float32 -> {out}: (12, 10, 8, 3) float32"
    assert plan[1] == "  read as t, x, y, z, c: (3, 6, 5, 4, 1) -> (3, 12, 10, 8, 1)"
    assert "layer's" not in r.stderr
    assert nib.load(out).shape == (12, 10, 8, 3)
    doc = json.loads(
        run("upsample", src, "-o", tmp_path / "d.nii", "--preset", "nearest", "--dry-run", "--json").stdout
    )
    assert (doc["input_file_shape"], doc["output_file_shape"]) == ([6, 5, 4, 3], [12, 10, 8, 3])
    spec = tmp_path / "three.yaml"  # a layer with 3 input channels: then its channels are worth naming
    spec.write_text("filters: 1\nkernel_size: 2\nstrides: 2\nin_channels: 3\n")
    r = run("upsample", src, "-o", tmp_path / "s.nii", "--spec", spec, "--dry-run")
    assert r.exit_code == 0, r.output
    assert "(3) read as 3 channel(s): its length equals the layer's 3 input channel(s)" in r.stderr
