"""NIfTI in and out: the reader and writer on their own, then the whole command on real and random files.

Test files are written byte for byte here (header.write_to + raw data), so byte order, scaling and
codes are exactly what each test says, never what nibabel's writer would choose.
"""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from nibabel.testing import data_path as NIB_DATA

from deconv3d_cli import conv3d_transpose
from deconv3d_cli.cli import main
from deconv3d_cli.errors import InputError
from deconv3d_cli.geometry.layout import Layout
from deconv3d_cli.io import nifti
from deconv3d_cli.io.base import Destination, VolumeMeta
from deconv3d_cli.io.nifti_header import INTENT_VECTOR, read_header

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
ALL = (slice(None),) * 5


def write_nifti(
    path: Path,
    data: np.ndarray,
    affine: np.ndarray | None = None,
    *,
    version: int = 1,
    endian: str = "<",
    dtype: str | None = None,
    slope: float | None = None,
    inter: float = 0.0,
    qcode: int = 1,
    scode: int = 1,
    zooms_extra: tuple[float, ...] = (),
) -> Path:
    """A single-file NIfTI with exactly these bytes: `data` stored as given (no scaling applied)."""
    klass = nib.Nifti2Header if version == 2 else nib.Nifti1Header
    hdr = klass(endianness=endian)
    dt = np.dtype(dtype or data.dtype).newbyteorder(endian)
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(dt)
    affine = np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine
    hdr.set_qform(affine, code=qcode)
    hdr.set_sform(affine, code=scode)
    if zooms_extra:
        pixdim = hdr["pixdim"]
        for i, z in enumerate(zooms_extra):
            pixdim[4 + i] = z
        hdr["pixdim"] = pixdim
    hdr.set_xyzt_units("mm", "sec")
    hdr["descrip"] = b"test volume"
    if slope is not None:
        hdr.set_slope_inter(slope, inter)
    hdr["vox_offset"] = klass.single_vox_offset
    raw = np.asarray(data).astype(dt).tobytes(order="F")
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        hdr.write_to(f)
        f.write(raw)
    return path


def oblique(rng: np.random.Generator, zooms=(1.0, 1.2, 1.1)) -> np.ndarray:
    """A random rotation (no reflection) of the given zooms, with a random origin."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q @ np.diag(np.sign(np.diag(r)))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    affine = np.eye(4)
    affine[:3, :3] = q @ np.diag(zooms)
    affine[:3, 3] = rng.uniform(-80, 80, 3)
    return affine


def small_oblique(degrees_x=12.0, degrees_z=-9.0, zooms=(1.0, 1.2, 1.1)) -> np.ndarray:
    tx, tz = np.deg2rad(degrees_x), np.deg2rad(degrees_z)
    rx = np.array([[1, 0, 0], [0, np.cos(tx), -np.sin(tx)], [0, np.sin(tx), np.cos(tx)]])
    rz = np.array([[np.cos(tz), -np.sin(tz), 0], [np.sin(tz), np.cos(tz), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag(zooms)
    affine[:3, 3] = (-20.0, 15.0, -8.0)
    return affine


def read_all(reader) -> np.ndarray:
    return reader.read(ALL[: len(reader.shape)])


def write_spec(tmp_path: Path, kernel: np.ndarray, bias: np.ndarray | None, **config) -> Path:
    np.savez(tmp_path / "layer.npz", kernel=kernel, **({} if bias is None else {"bias": bias}))
    spec = {
        "filters": int(kernel.shape[3]),
        "kernel_size": list(kernel.shape[:3]),
        "use_bias": bias is not None,
        "weights": "layer.npz",
        **config,
    }
    path = tmp_path / "layer.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


# ----------------------------------------------------------------------------------------------------
# reader


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_reader_3d_matches_nibabel_and_reads_boxes(tmp_path, version, suffix):
    rng = np.random.default_rng(version)
    data = rng.normal(size=(9, 7, 5)).astype(np.float32)
    affine = small_oblique()
    path = write_nifti(tmp_path / f"v{suffix}", data, affine, version=version, qcode=1, scode=2)
    reader = nifti.open_reader(path)
    assert reader.format == "nifti" and reader.data_format == "channels_last"
    assert reader.shape == (9, 7, 5) and reader.dtype == np.float32 and reader.nifti_version == version
    assert reader.fourth_axis_choice is None
    assert reader.meta.spacing == pytest.approx((1.0, 1.2, 1.1), rel=1e-6)
    np.testing.assert_allclose(reader.meta.affine, affine, atol=1e-5)
    assert isinstance(reader.meta.header, nib.Nifti2Header if version == 2 else nib.Nifti1Header)
    np.testing.assert_array_equal(read_all(reader), data)
    box = (slice(2, 6), slice(1, 7), slice(3, 4))
    np.testing.assert_array_equal(reader.read(box), data[box])
    reader.close()


def test_big_endian_int16_with_scaling(tmp_path):
    raw = (np.arange(6 * 5 * 4).reshape(6, 5, 4) * 7 - 60).astype(np.int16)
    path = write_nifti(tmp_path / "be.nii", raw, endian=">", slope=2.5, inter=-3.0)
    assert nib.load(path).header.endianness == ">"
    reader = nifti.open_reader(path)
    assert reader.stored_dtype == np.dtype(">i2") and reader.scaling == (2.5, -3.0)
    assert reader.dtype == np.float32  # scaling applies: float32, native order
    got = read_all(reader)
    assert got.dtype == np.float32 and got.dtype.isnative
    np.testing.assert_allclose(got, raw * 2.5 - 3.0, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got, nib.load(path).get_fdata(), rtol=1e-6)
    reader.close()


def test_big_endian_without_scaling_reports_the_stored_type_in_native_order(tmp_path):
    raw = np.arange(60, dtype=np.int16).reshape(5, 4, 3)
    path = write_nifti(tmp_path / "be.nii", raw, endian=">", slope=1.0, inter=0.0)
    reader = nifti.open_reader(path)
    assert reader.scaling is None and reader.dtype == np.dtype("int16") and reader.dtype.isnative
    got = read_all(reader)
    assert got.dtype == np.int16 and got.dtype.isnative
    np.testing.assert_array_equal(got, raw)


def test_gz_is_streamed_in_file_order_and_staged_once_out_of_order(tmp_path):
    rng = np.random.default_rng(3)
    raw = rng.integers(-500, 500, size=(11, 8, 6, 3)).astype(np.int16)
    path = write_nifti(tmp_path / "s.nii.gz", raw, slope=0.5, inter=10.0)
    reader = nifti.open_reader(path)
    assert reader.compressed and not reader.staged  # opening reads the header only
    assert reader.shape == (3, 11, 8, 6, 1) and reader.fourth_axis == "series"
    ref = np.moveaxis(nib.load(path).get_fdata(), 3, 0)[..., None]
    # slabs along z of each volume, in file order: streamed, nothing written anywhere
    for t in range(3):
        for z0 in range(0, 6, 2):
            box = (slice(t, t + 1), slice(None), slice(None), slice(max(0, z0 - 1), z0 + 2), slice(None))
            np.testing.assert_allclose(reader.read(box), ref[box], rtol=1e-6)
    assert not reader.staged
    box = (slice(1, 3), slice(2, 9), slice(0, 8), slice(4, 6), slice(None))  # behind the stream
    np.testing.assert_allclose(reader.read(box), ref[box], rtol=1e-6)
    assert reader.staged
    np.testing.assert_allclose(read_all(reader), ref, rtol=1e-6)
    reader.close()


def test_fourth_axis_choice_auto_and_forced(tmp_path):
    data = np.arange(5 * 4 * 3 * 2, dtype=np.float32).reshape(5, 4, 3, 2)
    path = write_nifti(tmp_path / "four.nii", data)
    channels = data
    series = np.moveaxis(data, 3, 0)[..., None]
    cases = [
        (dict(in_channels=2), (5, 4, 3, 2), channels, "channels"),
        (dict(in_channels=1), (2, 5, 4, 3, 1), series, "series"),
        (dict(), (2, 5, 4, 3, 1), series, "series"),
        (dict(fourth_axis="channels"), (5, 4, 3, 2), channels, "channels"),
        (dict(fourth_axis="series", in_channels=2), (2, 5, 4, 3, 1), series, "series"),
        (dict(fourth_axis="channels", in_channels=1), (5, 4, 3, 2), channels, "channels"),
    ]
    for hints, shape, expected, mode in cases:
        reader = nifti.open_reader(path, **hints)
        assert reader.shape == shape and reader.fourth_axis == mode, hints
        assert mode[:7] in reader.fourth_axis_choice and "four.nii" in reader.fourth_axis_choice
        np.testing.assert_array_equal(read_all(reader), expected)
        reader.close()
    one = write_nifti(tmp_path / "one.nii", data[..., :1])
    assert nifti.open_reader(one).shape == (5, 4, 3, 1)  # a length-1 4th axis is one channel


def test_five_d_vectors_are_channels(tmp_path):
    data = np.arange(4 * 3 * 2 * 3, dtype=np.float32).reshape(4, 3, 2, 1, 3)
    reader = nifti.open_reader(write_nifti(tmp_path / "vec.nii", data))
    assert reader.shape == (4, 3, 2, 3) and reader.fourth_axis == "channels"
    np.testing.assert_array_equal(read_all(reader), data[:, :, :, 0, :])
    with pytest.raises(InputError):
        nifti.open_reader(tmp_path / "vec.nii", fourth_axis="series")


def test_bad_files_are_input_errors(tmp_path):
    (tmp_path / "junk.nii").write_bytes(b"not a nifti file at all" * 30)
    with pytest.raises(InputError, match="not a NIfTI"):
        nifti.open_reader(tmp_path / "junk.nii")
    path = write_nifti(tmp_path / "short.nii", np.zeros((8, 8, 8), np.float32))
    with open(path, "r+b") as f:
        f.truncate(600)
    with pytest.raises(InputError, match="truncated"):
        nifti.open_reader(path)
    with pytest.raises(InputError, match="--fourth-axis|auto"):
        nifti.open_reader(write_nifti(tmp_path / "ok.nii", np.zeros((2, 2, 2), np.float32)), fourth_axis="time")


# ----------------------------------------------------------------------------------------------------
# writer


def _write_all(path: Path, data: np.ndarray, meta: VolumeMeta, **options) -> None:
    writer = nifti.create_writer(Destination(path, data.shape, data.dtype, meta), **options)
    # two boxes, as the pipeline would send them
    half = data.shape[-3] // 2 if data.ndim == 5 else data.shape[0] // 2
    if data.ndim == 5:
        boxes = [(slice(None), slice(0, half)), (slice(None), slice(half, None))]
    else:
        boxes = [(slice(0, half),), (slice(half, None),)]
    for box in boxes:
        box = box + (slice(None),) * (data.ndim - len(box))
        writer.write(box, data[box])
    writer.flush()
    writer.close()


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_writer_round_trip_keeps_flavour_geometry_and_codes(tmp_path, version, suffix):
    src = write_nifti(
        tmp_path / "in.nii", np.zeros((6, 5, 4), np.int16), small_oblique(), version=version, qcode=1, scode=3
    )
    meta = nifti.open_reader(src).meta
    data = np.random.default_rng(0).normal(size=(6, 5, 4)).astype(np.float32)
    out = tmp_path / f"out{suffix}"
    _write_all(out, data, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii", f"out{suffix}"]  # no sidecar left
    img = nib.load(out)
    hdr = img.header
    assert type(hdr) is (nib.Nifti2Header if version == 2 else nib.Nifti1Header)
    assert img.shape == (6, 5, 4) and hdr.get_data_dtype() == np.dtype("<f4") and hdr.endianness == "<"
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), data)
    assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (1, 3)
    np.testing.assert_allclose(hdr.get_sform(), small_oblique(), atol=1e-5)
    np.testing.assert_allclose(hdr.get_qform(), small_oblique(), atol=1e-5)
    assert hdr.get_zooms() == pytest.approx((1.0, 1.2, 1.1), rel=1e-5)
    assert hdr.get_xyzt_units() == ("mm", "sec") and hdr["descrip"].item() == b"test volume"
    raw = read_header(out, compressed=suffix == ".nii.gz")  # nibabel's image header hides scl_*
    assert float(raw["scl_slope"]) == 1.0 and float(raw["scl_inter"]) == 0.0
    if suffix == ".nii.gz":
        with open(out, "rb") as f:
            assert f.read(2) == b"\x1f\x8b"


def test_writer_layouts_channels_series_and_vectors(tmp_path):
    meta = VolumeMeta(spacing=(2.0, 2.0, 3.0))
    rng = np.random.default_rng(1)
    chans = rng.normal(size=(6, 5, 4, 3)).astype(np.float32)
    _write_all(tmp_path / "c.nii", chans, meta)
    img = nib.load(tmp_path / "c.nii")  # several channels: NIfTI's vector convention
    assert img.shape == (6, 5, 4, 1, 3) and int(img.header["intent_code"]) == INTENT_VECTOR
    np.testing.assert_array_equal(img.get_fdata(dtype=np.float32)[:, :, :, 0], chans)
    series = rng.normal(size=(3, 6, 5, 4, 1)).astype(np.float32)
    _write_all(tmp_path / "s.nii", series, meta)
    img = nib.load(tmp_path / "s.nii")
    assert img.shape == (6, 5, 4, 3)
    np.testing.assert_array_equal(img.get_fdata(dtype=np.float32), np.moveaxis(series[..., 0], 0, 3))
    series2 = rng.normal(size=(3, 6, 5, 4, 2)).astype(np.float32)
    _write_all(tmp_path / "s2.nii", series2, meta)
    img = nib.load(tmp_path / "s2.nii")
    assert img.shape == (6, 5, 4, 3, 2)
    np.testing.assert_array_equal(img.get_fdata(dtype=np.float32), np.moveaxis(series2, 0, 3))
    # channels_first boxes (an .npy input with data_format channels_first) land in the same NIfTI order
    _write_all(tmp_path / "cf.nii", np.ascontiguousarray(np.moveaxis(chans, 3, 0)), meta, data_format="channels_first")
    np.testing.assert_array_equal(nib.load(tmp_path / "cf.nii").get_fdata(dtype=np.float32)[:, :, :, 0], chans)
    layout = Layout(4, "channels_first")  # as the pipeline passes it
    _write_all(tmp_path / "cf2.nii", np.ascontiguousarray(np.moveaxis(chans, 3, 0)), meta, layout=layout)
    np.testing.assert_array_equal(nib.load(tmp_path / "cf2.nii").get_fdata(dtype=np.float32)[:, :, :, 0], chans)
    # an input with vectors on the 5th axis keeps them there
    vec = write_nifti(tmp_path / "vec.nii", np.zeros((6, 5, 4, 1, 3), np.float32))
    _write_all(tmp_path / "v.nii", chans[..., :2], nifti.open_reader(vec).meta)
    assert nib.load(tmp_path / "v.nii").shape == (6, 5, 4, 1, 2)


def test_writer_defaults_without_a_nifti_input(tmp_path):
    meta = VolumeMeta(spacing=(0.5, 0.25, 2.0), attrs={"element_size_um": [0.5, 0.25, 2.0]})
    _write_all(tmp_path / "o.nii", np.ones((4, 4, 4), np.int16), meta)
    hdr = nib.load(tmp_path / "o.nii").header
    assert type(hdr) is nib.Nifti1Header and hdr.get_data_dtype() == np.dtype("<i2")
    assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (2, 2)
    assert hdr.get_zooms() == pytest.approx((0.5, 0.25, 2.0))
    assert hdr.get_xyzt_units()[0] == "micron"


def test_input_without_codes_gets_an_explicit_scanner_qform(tmp_path):
    src = write_nifti(
        tmp_path / "nocodes.nii", np.zeros((4, 6, 8), np.float32), np.diag([2.0, 2, 2, 1]), qcode=0, scode=0
    )
    meta = nifti.open_reader(src).meta
    _write_all(tmp_path / "o.nii", np.ones((4, 6, 8), np.float32), meta)
    hdr = nib.load(tmp_path / "o.nii").header
    assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (1, 0)
    np.testing.assert_allclose(hdr.get_qform(), meta.affine, atol=1e-5)


def test_nifti2_when_a_dimension_exceeds_nifti1(tmp_path):
    meta = nifti.open_reader(write_nifti(tmp_path / "in.nii", np.zeros((2, 2, 2), np.uint8))).meta
    _write_all(tmp_path / "long.nii", np.ones((40000, 1, 2), np.uint8), meta)
    img = nib.load(tmp_path / "long.nii")
    assert type(img.header) is nib.Nifti2Header and img.shape == (40000, 1, 2)


def test_writer_refuses_float16_and_a_dataset(tmp_path):
    with pytest.raises(InputError, match="float16"):
        nifti.create_writer(Destination(tmp_path / "h.nii", (2, 2, 2), np.float16, VolumeMeta()))
    with pytest.raises(InputError, match="output-dataset"):
        nifti.create_writer(Destination(tmp_path / "h.nii", (2, 2, 2), np.float32, VolumeMeta()), dataset="/x")


def test_gz_writer_resumes_from_its_index_and_abort_removes_every_sidecar(tmp_path):
    data = np.random.default_rng(5).normal(size=(8, 6, 4)).astype(np.float32)
    out = tmp_path / ".partial-o.nii.gz"
    z = (slice(None), slice(None))
    w = nifti.create_writer(Destination(out, data.shape, data.dtype, VolumeMeta()))
    assert out.exists()  # the partial exists from the start, for --resume
    w.write(z + (slice(0, 2),), data[..., :2])
    w.flush()
    w.write(z + (slice(2, 3),), data[..., 2:3])  # written after the last flush: lost by the kill
    w.stream._shutdown()  # killed: never closed
    del w
    assert (tmp_path / (out.name + ".gzindex")).exists()
    w = nifti.create_writer(Destination(out, data.shape, data.dtype, VolumeMeta(), resume=True))
    w.write(z + (slice(2, 4),), data[..., 2:])
    w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    np.testing.assert_array_equal(nib.load(out).get_fdata(dtype=np.float32), data)
    with pytest.raises(InputError, match="resume"):
        nifti.create_writer(Destination(out, (9, 6, 4), data.dtype, VolumeMeta(), resume=True))
    w = nifti.create_writer(Destination(out, data.shape, data.dtype, VolumeMeta()))
    w.write(z + (slice(0, 2),), data[..., :2])
    w.flush()
    w.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # the run core removes the partial


# ----------------------------------------------------------------------------------------------------
# through the command: world coordinates, zooms, orientation, values


def _crop(i: int, k: int, s: int, d: int, padding: str) -> tuple[int, int]:
    """(output length, crop) per SEMANTICS.md, written out again here (no output_padding)."""
    keff = (k - 1) * d + 1
    if padding == "valid":
        return i * s + max(keff - s, 0), 0
    out = i * s
    return out, max((i - 1) * s + keff - out, 0) // 2


@pytest.mark.parametrize("seed", range(4))
def test_cli_world_coordinates_zooms_orientation_and_values(tmp_path, seed):
    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(n) for n in rng.integers(5, 11, 3))
    kernel_size = [int(k) for k in rng.integers(1, 5, 3)]
    strides = [int(s) for s in rng.integers(1, 4, 3)]
    padding = ["valid", "same"][seed % 2]
    zooms = tuple(float(z) for z in rng.uniform(0.5, 3.0, 3))
    affine = oblique(rng, zooms)
    x = rng.normal(size=shape).astype(np.float32)
    src = write_nifti(tmp_path / "in.nii.gz", x, affine, version=1 + seed % 2, qcode=1, scode=2)
    kernel = rng.normal(size=(*kernel_size, 1, 1)).astype(np.float32)
    bias = rng.normal(size=(1,)).astype(np.float32)
    spec = write_spec(tmp_path, kernel, bias, strides=strides, padding=padding)
    out = tmp_path / "out.nii.gz"
    r = run("upsample", src, "-o", out, "--spec", spec, "--memory-limit", "2MiB", "--tile", "4,4,4")
    assert r.exit_code == 0, r.output
    img = nib.load(out)
    expected_shape = tuple(_crop(i, k, s, 1, padding)[0] for i, k, s in zip(shape, kernel_size, strides))
    assert img.shape == expected_shape
    a_out = img.affine
    for _ in range(20):
        o = np.array([rng.integers(0, n) for n in expected_shape], float)
        u = np.array(
            [
                (o[a] + _crop(shape[a], kernel_size[a], strides[a], 1, padding)[1] - (kernel_size[a] - 1) / 2)
                / strides[a]
                for a in range(3)
            ]
        )
        np.testing.assert_allclose(a_out @ np.append(o, 1), affine @ np.append(u, 1), atol=2e-3)
    assert img.header.get_zooms() == pytest.approx([z / s for z, s in zip(zooms, strides)], rel=1e-5)
    assert nib.aff2axcodes(a_out) == nib.aff2axcodes(affine)
    assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (1, 2)
    assert type(img.header) is (nib.Nifti2Header if seed % 2 else nib.Nifti1Header)
    ref = conv3d_transpose(x, kernel, bias, strides=strides, padding=padding)
    got = img.get_fdata(dtype=np.float32)
    assert np.abs(got - ref).max() <= 1e-6 * max(np.abs(ref).max(), 1.0)


def test_cli_fourth_axis_channels_and_series(tmp_path):
    rng = np.random.default_rng(7)
    data = rng.normal(size=(6, 5, 4, 2)).astype(np.float32)
    src = write_nifti(tmp_path / "four.nii", data, small_oblique(), zooms_extra=(2.5,))
    k2 = rng.normal(size=(2, 2, 2, 3, 2)).astype(np.float32)  # 2 channels in, 3 out
    spec2 = write_spec(tmp_path, k2, None, strides=2, padding="same")
    r = run("upsample", src, "-o", tmp_path / "c.nii", "--spec", spec2)
    assert r.exit_code == 0, r.output
    assert "read as 2 channel(s)" in r.stderr
    img = nib.load(tmp_path / "c.nii")
    assert img.shape == (12, 10, 8, 1, 3) and int(img.header["intent_code"]) == INTENT_VECTOR
    ref = conv3d_transpose(data, k2, strides=2, padding="same")
    np.testing.assert_allclose(img.get_fdata(dtype=np.float32)[:, :, :, 0], ref, rtol=1e-6, atol=1e-6)
    r = run("upsample", src, "-o", tmp_path / "bad.nii", "--spec", spec2, "--fourth-axis", "series")
    assert r.exit_code == 2 and "channel" in r.stderr and not (tmp_path / "bad.nii").exists()

    (tmp_path / "one").mkdir()
    k1 = rng.normal(size=(3, 3, 3, 1, 1)).astype(np.float32)
    spec1 = write_spec(tmp_path / "one", k1, None, strides=2, padding="same")
    r = run("upsample", src, "-o", tmp_path / "s.nii.gz", "--spec", spec1)
    assert r.exit_code == 0, r.output
    assert "series of 2 volume(s)" in r.stderr
    img = nib.load(tmp_path / "s.nii.gz")
    assert img.shape == (12, 10, 8, 2)
    assert img.header.get_zooms()[3] == pytest.approx(2.5)  # the series' time step is kept
    for t in range(2):
        ref = conv3d_transpose(data[..., t], k1, strides=2, padding="same")
        np.testing.assert_allclose(img.get_fdata(dtype=np.float32)[..., t], ref, rtol=1e-6, atol=1e-6)
    r = run("upsample", src, "-o", tmp_path / "bad.nii", "--spec", spec1, "--fourth-axis", "channels")
    assert r.exit_code == 2 and "channel" in r.stderr
    r = run("upsample", SAMPLE / "phantom.npy", "-o", tmp_path / "x.npy", "--spec", spec1, "--fourth-axis", "series")
    assert r.exit_code == 2 and "NIfTI" in r.stderr


NIB_FILES = {
    # name: (shape presented, stored output shape, nifti version)
    "anatomical.nii": ((33, 41, 25), (66, 82, 50), 1),  # big-endian int16
    "example4d.nii.gz": ((2, 128, 96, 24, 1), (256, 192, 48, 2), 1),  # a series
    "example_nifti2.nii.gz": ((2, 32, 20, 12, 1), (64, 40, 24, 2), 2),
    "functional.nii": ((20, 17, 21, 3, 1), (34, 42, 6, 20), 1),  # scl_slope/inter
    "standard.nii.gz": ((4, 5, 7), (8, 10, 14), 1),  # qform code 0, sform code 2
    "reoriented_anat_moved.nii": ((21, 26, 22), (42, 52, 44), 1),  # big-endian float32, RAS
}


@pytest.mark.parametrize("name", sorted(NIB_FILES))
def test_nibabel_data_files_upsample(tmp_path, name):
    src = Path(NIB_DATA) / name
    if not src.exists():
        pytest.skip(f"{name} is not shipped with this nibabel")
    shape, out_shape, version = NIB_FILES[name]
    reader = nifti.open_reader(src)
    assert reader.shape == shape
    reader.close()
    suffix = ".nii.gz" if name.endswith(".gz") else ".nii"
    out = tmp_path / f"up{suffix}"
    r = run("upsample", src, "-o", out, "--spec", SAMPLE / "sample_spec.yaml", "--json")
    assert r.exit_code == 0, r.output
    a, b = nib.load(src), nib.load(out)
    assert b.shape == out_shape
    assert type(b.header) is (nib.Nifti2Header if version == 2 else nib.Nifti1Header)
    assert b.header.get_zooms()[:3] == pytest.approx([z / 2 for z in a.header.get_zooms()[:3]], rel=1e-5)
    assert nib.aff2axcodes(b.affine) == nib.aff2axcodes(a.affine)
    codes_in = int(a.header["qform_code"]), int(a.header["sform_code"])
    assert (int(b.header["qform_code"]), int(b.header["sform_code"])) == codes_in
    # output voxel 0 sits at input voxel (0 + 1 - 1.5) / 2 = -0.25 on each axis (k 4, s 2, same)
    np.testing.assert_allclose(b.affine @ [0, 0, 0, 1], a.affine @ [-0.25, -0.25, -0.25, 1], atol=1e-3)
    if name == "anatomical.nii":
        spec = yaml.safe_load((SAMPLE / "sample_spec.yaml").read_text())
        w = np.load(SAMPLE / spec["weights"])
        ref = conv3d_transpose(
            a.get_fdata().astype(np.float32), w["kernel"], w["bias"], strides=2, padding="same", activation="relu"
        )
        np.testing.assert_allclose(b.get_fdata(dtype=np.float32), ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


def test_sample_phantom_nifti_matches_the_npy_and_has_its_geometry():
    img = nib.load(SAMPLE / "phantom.nii.gz")
    hdr = img.header
    assert img.shape == (40, 48, 44)
    assert hdr.get_zooms() == pytest.approx((1.0, 1.2, 1.1), rel=1e-5)
    assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (1, 2)
    rot = img.affine[:3, :3] / np.array(hdr.get_zooms())
    angle = np.degrees(np.arccos(np.clip((np.trace(rot) - 1) / 2, -1, 1)))
    assert 10 <= angle <= 25  # oblique
    centre = img.affine @ np.append((np.array(img.shape) - 1) / 2, 1)
    assert np.linalg.norm(centre[:3]) < 10
    reader = nifti.open_reader(SAMPLE / "phantom.nii.gz")
    np.testing.assert_allclose(read_all(reader), np.load(SAMPLE / "phantom.npy"), atol=0.026)
    reader.close()


def test_no_temporary_files_are_left(tmp_path, monkeypatch):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    out = tmp_path / "o.nii.gz"
    r = run("upsample", SAMPLE / "phantom.nii.gz", "-o", out, "--spec", SAMPLE / "sample_spec.yaml")
    assert r.exit_code == 0, r.output
    assert os.listdir(tmp) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.nii.gz", "tmp"]


def test_standard_library_gzip_when_isal_is_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "isal", None)  # `from isal import igzip` now raises ImportError
    data = np.random.default_rng(9).normal(size=(7, 6, 5)).astype(np.float32)
    _write_all(tmp_path / "o.nii.gz", data, VolumeMeta(), compression_level=6)
    np.testing.assert_array_equal(nib.load(tmp_path / "o.nii.gz").get_fdata(dtype=np.float32), data)
    reader = nifti.open_reader(tmp_path / "o.nii.gz")
    np.testing.assert_array_equal(read_all(reader), data)
    reader.close()


def test_cli_channels_first_npy_to_nifti(tmp_path):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 6, 5, 4)).astype(np.float32)  # (C, D, H, W)
    np.save(tmp_path / "x.npy", x)
    kernel = rng.normal(size=(2, 2, 2, 3, 2)).astype(np.float32)
    spec = write_spec(tmp_path, kernel, None, strides=2, padding="valid", data_format="channels_first")
    r = run("upsample", tmp_path / "x.npy", "-o", tmp_path / "y.nii", "--spec", spec)
    assert r.exit_code == 0, r.output
    ref = conv3d_transpose(x, kernel, strides=2, padding="valid", data_format="channels_first")
    img = nib.load(tmp_path / "y.nii")
    assert img.shape == (12, 10, 8, 1, 3)
    got = img.get_fdata(dtype=np.float32)[:, :, :, 0]
    np.testing.assert_allclose(got, np.moveaxis(ref, 0, -1), rtol=1e-6, atol=1e-6)
