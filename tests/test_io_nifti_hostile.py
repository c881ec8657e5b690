"""Hostile NIfTI files and faulty disks: one clear line, the right exit code, nothing left behind.

Full-disk cases run on a real small filesystem (a tmpfs mounted here when the tests run as root) and
file-size-limit cases under RLIMIT_FSIZE in a subprocess; each skips cleanly where it cannot be set up.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from deconv3d_cli.cli import main
from deconv3d_cli.errors import InputError
from deconv3d_cli.io import nifti


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def cli(*args: object, fsize: int | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The command in a real process, optionally under a file size limit."""

    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    cmd = [sys.executable, "-m", "deconv3d_cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=limit, cwd=cwd)


def raw_nifti(path: Path, data: np.ndarray, **fields) -> Path:
    """A NIfTI with exactly these header fields (set after nibabel's own, so NaN stays NaN)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(data.dtype)
    affine = np.diag([1.0, 1.2, 1.4, 1.0])
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=2)
    hdr["vox_offset"] = 352
    for name, value in fields.items():
        if name == "pixdim_xyz":
            pix = hdr["pixdim"]
            pix[1:4] = value
            hdr["pixdim"] = pix
        else:
            hdr[name] = value
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(hdr.binaryblock + b"\x00" * 4)
        f.write(data.tobytes(order="F"))
    return path


def one_line(text: str) -> str:
    """The one error line on stderr (the plan the run prints when it starts may stand before it)."""
    lines = [line for line in text.strip().splitlines() if "error" in line.lower()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


VOL = np.random.default_rng(0).normal(size=(12, 10, 8)).astype(np.float32)
NAN_SROW = np.array([np.nan, 0, 0, 0], np.float32)


# ----------------------------------------------------------------------------------------------------
# hostile headers


@pytest.mark.parametrize(
    "fields, kept_codes",
    [
        (dict(pixdim_xyz=[np.nan, 1.2, 1.4]), (0, 2)),  # NaN pixdim: the qform (built from it) is set aside
        (dict(srow_x=NAN_SROW), (1, 0)),  # NaN sform: the qform is used
        (dict(quatern_b=np.nan), (0, 2)),  # NaN qform: the sform is used
        (dict(pixdim_xyz=[np.nan] * 3, srow_x=NAN_SROW), (1, 0)),  # nothing usable: base affine, stated as scanner
    ],
)
def test_nan_geometry_falls_back_for_gz_output_and_inspect(tmp_path, fields, kept_codes):
    src = raw_nifti(tmp_path / "in.nii", VOL, **fields)
    out = tmp_path / "out.nii.gz"
    r = run("upsample", src, "-o", out, "--preset", "nearest", "--scale", "2", "--no-progress")
    assert r.exit_code == 0, r.output
    img = nib.load(out)
    assert img.shape == (24, 20, 16) and np.isfinite(img.affine).all()
    reader = nifti.open_reader(src)
    assert reader.notes and np.isfinite(reader.meta.affine).all() and all(np.isfinite(reader.meta.spacing))
    reader.close()
    np.testing.assert_array_equal(img.get_fdata(dtype=np.float32)[::2, ::2, ::2], VOL)
    q, s = int(img.header["qform_code"]), int(img.header["sform_code"])
    assert (q, s) == kept_codes  # a transform set aside is never passed on
    r = run("inspect", src)
    assert r.exit_code == 0 and "geometry" in r.output and ("set aside" in r.output or "pixdim" in r.output)
    info = json.loads(run("inspect", src, "--json").output, parse_constant=lambda c: pytest.fail(f"JSON {c}"))
    assert info["nifti"]["geometry_notes"]


@pytest.mark.parametrize(
    "fields, field",
    [(dict(scl_slope=0.5, scl_inter=np.nan), "scl_inter"), (dict(vox_offset=np.nan), "vox_offset")],
)
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nan_scaling_or_offset_is_one_line_exit_2(tmp_path, fields, field, suffix):
    src = raw_nifti(tmp_path / f"in{suffix}", VOL, **fields)
    for args in (("inspect", src), ("upsample", src, "-o", tmp_path / "o.nii", "--preset", "nearest", "--scale", "2")):
        r = run(*args)
        assert r.exit_code == 2, r.output
        line = one_line(r.stderr)
        assert field in line and src.name in line
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def test_gz_stream_longer_than_the_header_is_refused_without_decompressing_it(tmp_path):
    src = tmp_path / "bomb.nii.gz"
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((24, 20, 16))
    hdr.set_data_dtype(np.float32)
    hdr["vox_offset"] = 352
    zeros = bytes(64 << 20)
    with gzip.open(src, "wb", compresslevel=1) as f:
        f.write(hdr.binaryblock + b"\x00" * 4)
        for _ in range(8):  # 512 MiB of zeros in a file of about 0.5 MiB
            f.write(zeros)
    assert src.stat().st_size < 4 << 20
    reader = nifti.open_reader(src)
    with pytest.raises(InputError, match="holds more than"):
        reader.read((slice(None),) * 3)
    assert not reader.staged
    reader.close()
    r = cli("upsample", src, "-o", tmp_path / "o.nii.gz", "--preset", "nearest", "--scale", "2", "--no-progress")
    assert r.returncode == 2 and "holds more than" in one_line(r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def test_gz_stream_shorter_than_the_header_or_corrupt_is_refused(tmp_path):
    good = raw_nifti(tmp_path / "g.nii.gz", VOL)
    blob = good.read_bytes()
    (tmp_path / "short.nii.gz").write_bytes(gzip.compress(gzip.decompress(blob)[:-100], mtime=0))
    bad_crc = bytearray(blob)
    bad_crc[-6] ^= 0xFF
    (tmp_path / "crc.nii.gz").write_bytes(bytes(bad_crc))
    for name, words in (("short.nii.gz", "truncated"), ("crc.nii.gz", "cannot decompress")):
        reader = nifti.open_reader(tmp_path / name)
        with pytest.raises(InputError, match=words):
            reader.read((slice(None),) * 3)
        reader.close()
        r = run("upsample", tmp_path / name, "-o", tmp_path / "o.nii", "--preset", "nearest", "--scale", "2")
        assert r.exit_code == 2 and words in one_line(r.stderr)
        assert not (tmp_path / "o.nii").exists()


def test_gz_header_promising_more_than_deflate_can_hold_is_refused_at_open(tmp_path):
    src = tmp_path / "huge.nii.gz"
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((32767, 32767, 32767))
    hdr.set_data_dtype(np.uint8)
    hdr["vox_offset"] = 352
    with gzip.open(src, "wb") as f:
        f.write(hdr.binaryblock + b"\x00" * 4 + bytes(1 << 20))
    with pytest.raises(InputError, match="holds at most") as exc:
        nifti.open_reader(src)
    assert exc.value.field == "dim"


# ----------------------------------------------------------------------------------------------------
# faulty disks


def noisy_input(tmp_path: Path, n: int = 160) -> Path:
    """Noise compresses badly (nearest at scale 1 keeps it as it is), so even the .nii.gz output is large."""
    data = np.random.default_rng(1).normal(size=(n, n, n)).astype(np.float32)
    return raw_nifti(tmp_path / "noise.nii", data)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_file_size_limit_is_one_line_exit_1_and_leaves_nothing(tmp_path, suffix):
    src = noisy_input(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = cli(
        "upsample",
        src,
        "-o",
        out_dir / f"o{suffix}",
        "--preset",
        "nearest",
        "--scale",
        "1",
        "--no-progress",
        fsize=2 << 20,
    )
    assert r.returncode == 1, r.stderr
    line = one_line(r.stderr)
    assert "file-size limit" in line and f"o{suffix}" in line
    assert os.listdir(out_dir) == []  # no partial, journal, index, spill or staging file


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs (needs root and mount); skipped where neither works."""
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root and mount(8)")
    where = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_full_disk_is_one_line_exit_1_never_sigbus(tmp_path, small_disk, suffix):
    src = noisy_input(tmp_path)  # 16 MiB out (about 15 MiB gzipped): does not fit in 8 MiB
    r = cli("upsample", src, "-o", small_disk / f"o{suffix}", "--preset", "nearest", "--scale", "1", "--no-progress")
    assert r.returncode == 1, (r.returncode, r.stderr)
    line = one_line(r.stderr)
    assert ("no space left" in line or "are free" in line) and f"o{suffix}" in line
    assert os.listdir(small_disk) == []
    if suffix == ".nii":
        assert "needs" in line  # refused before anything was computed (its exact size is known)


def test_qfac_zero_keeps_the_qform_as_nibabel_does(tmp_path):
    pix = np.array([0, 1.0, 1.2, 1.4, 1, 1, 1, 1], np.float32)  # pixdim[0] (qfac) 0, as in many old files
    src = raw_nifti(tmp_path / "q.nii", VOL, pixdim=pix, sform_code=0)
    reader = nifti.open_reader(src)
    assert reader.notes == []
    np.testing.assert_allclose(reader.meta.affine, nib.load(src).affine, atol=1e-6)
    reader.close()
