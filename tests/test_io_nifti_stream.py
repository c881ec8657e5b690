"""NIfTI outputs written in file order: `.nii` by direct runs, `.nii.gz` as fixed gzip members on threads.

The writers are driven here as the pipeline drives them (boxes in the presented layout, flush between
them), with the bytes and the files checked: same bytes whatever the tiles, threads and interruptions,
gzip members readable by every reader we can find, nothing left beside the output.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deconv3d_cli.errors import InputError
from deconv3d_cli.io import gzip_stream, nifti
from deconv3d_cli.io.base import Destination, VolumeMeta
from deconv3d_cli.io.gzip_stream import GzipStreamWriter

META = VolumeMeta(spacing=(1.0, 1.5, 2.0))


def volume(shape, dtype=np.float32, seed=0) -> np.ndarray:
    """Smooth values plus noise, like an upsampled scan (compressible, but not trivially)."""
    rng = np.random.default_rng(seed)
    base = sum(np.sin(i * (0.1 + 0.05 * k)) for k, i in enumerate(np.indices(shape, sparse=True))) * 300
    return (base + rng.normal(0, 5, shape)).astype(dtype)


def z_slabs(shape, depth):
    """Boxes of whole x-y planes, z slowest: the plan a NIfTI output wants."""
    rest = (slice(None),) * (len(shape) - 3)
    return [(slice(None), slice(None), slice(z, min(z + depth, shape[2]))) + rest for z in range(0, shape[2], depth)]


def x_slabs(shape, depth):
    """Boxes cut along x (what plans for .npy do): many short runs, out of file order."""
    rest = (slice(None),) * (len(shape) - 3)
    return [(slice(x, min(x + depth, shape[0])), slice(None), slice(None)) + rest for x in range(0, shape[0], depth)]


def write(path: Path, data: np.ndarray, boxes, **options) -> Path:
    w = nifti.create_writer(Destination(path, data.shape, data.dtype, META), **options)
    for i, box in enumerate(boxes):
        w.write(box, np.ascontiguousarray(data[box]))  # C-ordered tiles, as the pipeline makes them
        if i % 2:
            w.flush()
    w.close()
    return path


def members(raw: bytes) -> list[int]:
    """Uncompressed sizes of the gzip members of `raw`, walking it with zlib."""
    sizes, pos = [], 0
    while pos < len(raw):
        assert raw[pos : pos + 2] == b"\x1f\x8b" and raw[pos + 4 : pos + 8] == b"\x00\x00\x00\x00"  # MTIME 0
        d = zlib.decompressobj(-15)
        out = d.decompress(raw[pos + 10 :])
        rest = d.unused_data
        crc, isize = struct.unpack("<II", rest[:8])
        assert crc == zlib.crc32(out) and isize == len(out)
        sizes.append(len(out))
        pos = len(raw) - len(rest) + 8
    return sizes


def test_nii_is_written_in_file_order_by_runs_without_memory_maps(tmp_path, monkeypatch):
    data = volume((64, 48, 40))
    written: list[tuple[int, int]] = []
    from deconv3d_cli.io import direct

    real = direct.RunWriter.write

    def spy(self, at, view):
        written.append((at, len(view)))
        return real(self, at, view)

    monkeypatch.setattr(direct.RunWriter, "write", spy)
    monkeypatch.setattr(np, "memmap", None)  # any memory map in the writer would fail here
    path = write(tmp_path / "o.nii", data, z_slabs(data.shape, 12))
    monkeypatch.undo()
    plane = 64 * 48 * 4
    assert written == [(352 + z * plane, min(12, 40 - z) * plane) for z in range(0, 40, 12)]
    img = nib.load(path)
    assert img.shape == data.shape and img.dataobj.offset == 352
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), data)


def test_nii_reserves_its_size_and_takes_any_box(tmp_path, monkeypatch):
    calls = []
    real = nifti.NiftiWriter.__init__.__globals__["space"].reserve

    def spy(fd, size, path):
        calls.append(size)
        return real(fd, size, path)

    monkeypatch.setattr("deconv3d_cli.io.space.reserve", spy)
    data = volume((20, 18, 16, 3), seed=1)
    boxes = [
        (slice(0, 7), slice(3, 18), slice(0, 16), slice(None)),
        (slice(7, 20), slice(3, 18), slice(0, 16), slice(None)),
        (slice(0, 20), slice(0, 3), slice(0, 5), slice(None)),
        (slice(0, 20), slice(0, 3), slice(5, 16), slice(None)),
    ]
    path = write(tmp_path / "v.nii", data, boxes)
    assert calls == [352 + data.nbytes]
    img = nib.load(path)
    assert img.shape == (20, 18, 16, 1, 3)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj)[:, :, :, 0], data)


@pytest.mark.parametrize("shape", [(40, 36, 30), (40, 36, 30, 3), (3, 24, 20, 18, 1)])
def test_gz_bytes_depend_on_the_data_only(tmp_path, monkeypatch, shape):
    monkeypatch.setattr(gzip_stream, "MEMBER_BYTES", 16 << 10)  # several members on a small volume
    data = volume(shape, np.int16, seed=2)
    series = len(shape) == 5
    spatial = shape[1:4] if series else shape[:3]
    if series:
        boxes = [(slice(t, t + 1),) + b[:3] + (slice(None),) for t in range(shape[0]) for b in z_slabs(spatial, 7)]
        other = [(slice(t, t + 1),) + b[:3] + (slice(None),) for t in range(shape[0]) for b in z_slabs(spatial, 30)]
    else:
        boxes, other = z_slabs(shape, 7), z_slabs(shape, 4)
    runs = {
        "slabs of 7, 1 thread": dict(boxes=boxes, threads=1),
        "slabs of 7, 4 threads": dict(boxes=boxes, threads=4),
        "other slabs, 2 threads": dict(boxes=other, threads=2),
        "whole volume": dict(boxes=[(slice(None),) * len(shape)], threads=3),
    }
    if not series:
        runs["x slabs (staged)"] = dict(boxes=x_slabs(shape, 9), threads=2)
    outs = {}
    for name, run in runs.items():
        path = tmp_path / f"{len(outs)}.nii.gz"
        write(path, data, run["boxes"], threads=run["threads"])
        outs[name] = path.read_bytes()
    assert len(set(outs.values())) == 1, [k for k in outs]
    raw = next(iter(outs.values()))
    sizes = members(raw)
    assert len(sizes) > 3 and sum(sizes) == 352 + data.nbytes
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{i}.nii.gz" for i in range(len(outs)))
    img = nib.load(tmp_path / "0.nii.gz")
    got = np.asanyarray(img.dataobj)
    if series:
        np.testing.assert_array_equal(np.moveaxis(got, 3, 0)[..., None], data)
    elif len(shape) == 4:
        assert img.shape == (*shape[:3], 1, 3) and int(img.header["intent_code"]) == 1007
        np.testing.assert_array_equal(got[:, :, :, 0], data)
    else:
        np.testing.assert_array_equal(got, data)
    assert gzip.decompress(raw)[352:] == np.asfortranarray(got).tobytes(order="F")


def test_gz_members_are_read_by_every_reader(tmp_path, monkeypatch):
    monkeypatch.setattr(gzip_stream, "MEMBER_BYTES", 32 << 10)
    data = volume((30, 26, 22, 2), np.float32, seed=4)
    path = write(tmp_path / "v.nii.gz", data, z_slabs(data.shape, 5))
    assert len(members(path.read_bytes())) == 6  # 3 per component (segments)
    np.testing.assert_array_equal(nib.load(path).get_fdata(dtype=np.float32)[:, :, :, 0], data)
    reader = nifti.open_reader(path)
    np.testing.assert_array_equal(reader.read((slice(None),) * 4), data)
    reader.close()
    sitk = pytest.importorskip("SimpleITK")
    img = sitk.ReadImage(str(path))
    assert img.GetSize() == (30, 26, 22) and img.GetNumberOfComponentsPerPixel() == 2
    np.testing.assert_array_equal(np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0, 3)), data)
    ig = pytest.importorskip("indexed_gzip")
    with ig.IndexedGzipFile(str(path)) as f:
        f.seek(352 + 4 * 30 * 26 * 22)  # the second component, by random access
        second = np.frombuffer(f.read(4 * 30 * 26 * 22), np.float32).reshape(22, 26, 30).T
    np.testing.assert_array_equal(second, data[..., 1])


@pytest.mark.parametrize("level, library", [(0, "zlib"), (1, "isal"), (3, "isal"), (6, "zlib-ng"), (9, "zlib-ng")])
def test_gz_levels_are_honoured(tmp_path, level, library):
    data = volume((24, 20, 16), np.int16)
    path = write(tmp_path / "o.nii.gz", data, z_slabs(data.shape, 4), compression_level=level)
    raw = path.read_bytes()
    assert gzip.decompress(raw)[352:] == data.tobytes(order="F")
    other = nifti.create_writer(
        Destination(tmp_path / "x.nii.gz", data.shape, data.dtype, META), compression_level=level
    )
    assert other.stream.library == library
    other.abort()
    if level == 0:
        assert len(raw) > data.nbytes  # stored
    with pytest.raises(InputError, match="0 \\(none\\) to 9"):
        nifti.create_writer(Destination(tmp_path / "y.nii.gz", data.shape, data.dtype, META), compression_level=10)


def _interrupted(path: Path, data: np.ndarray, boxes, flushed: int, lost: int, resume_from: int) -> bytes:
    """Write `flushed` boxes and flush, `lost` more unflushed, die; resume from box `resume_from`."""
    w = nifti.create_writer(Destination(path, data.shape, data.dtype, META), threads=2)
    for box in boxes[:flushed]:
        w.write(box, np.ascontiguousarray(data[box]))
    w.flush()
    for box in boxes[flushed : flushed + lost]:
        w.write(box, np.ascontiguousarray(data[box]))
    w.stream._shutdown()  # killed: files as they are, nothing closed or removed
    del w
    w = nifti.create_writer(Destination(path, data.shape, data.dtype, META, resume=True), threads=1)
    for box in boxes[resume_from:]:
        w.write(box, np.ascontiguousarray(data[box]))
    w.close()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    return path.read_bytes()


@settings(max_examples=12, deadline=None)
@given(st.data())
def test_gz_resume_after_any_kill_gives_the_uninterrupted_bytes(tmp_path_factory, data):
    gzip_stream.MEMBER_BYTES, saved = 48 << 10, gzip_stream.MEMBER_BYTES
    try:
        tmp = tmp_path_factory.mktemp("resume")
        vol = volume((32, 28, 24, 2), np.int16, seed=5)
        boxes = z_slabs(vol.shape, data.draw(st.sampled_from([3, 5, 8]), label="depth"))
        clean = write(tmp / "clean.nii.gz", vol, boxes).read_bytes()
        flushed = data.draw(st.integers(0, len(boxes)), label="flushed")
        lost = data.draw(st.integers(0, len(boxes) - flushed), label="lost")
        # the journal may lag the index: resume from any box at or before the flushed ones
        resume_from = data.draw(st.integers(0, flushed), label="resume_from")
        (tmp / "run").mkdir()
        got = _interrupted(tmp / "run" / ".partial-o.nii.gz", vol, boxes, flushed, lost, resume_from)
        assert got == clean
    finally:
        gzip_stream.MEMBER_BYTES = saved


def test_gz_staged_mode_resumes_too(tmp_path):
    vol = volume((30, 20, 16), np.float32, seed=6)
    boxes = x_slabs(vol.shape, 7)
    clean = write(tmp_path / "clean.nii.gz", vol, boxes).read_bytes()
    (tmp_path / "run").mkdir()
    assert _interrupted(tmp_path / "run" / ".partial-o.nii.gz", vol, boxes, 2, 1, 1) == clean


def test_stream_writer_refuses_bytes_outside_and_a_partial_without_index(tmp_path):
    w = GzipStreamWriter(tmp_path / "s.gz", [(0, 100)], level=1, threads=1)
    with pytest.raises(ValueError, match="outside"):
        w.write([(90, b"x" * 20)])
    w.write([(0, b"a" * 100)])
    w.close()
    assert gzip.decompress((tmp_path / "s.gz").read_bytes()) == b"a" * 100
    with pytest.raises(InputError, match="without --resume"):
        GzipStreamWriter(tmp_path / "t.gz", [(0, 100)], resume=True)


def test_pending_bytes_past_the_memory_bound_go_to_the_spill(tmp_path, monkeypatch):
    monkeypatch.setattr(gzip_stream, "MEMBER_BYTES", 1000)
    monkeypatch.setattr(gzip_stream, "PENDING_BYTES", 3000)
    payload = np.random.default_rng(0).integers(0, 255, 20000, dtype=np.uint8).tobytes()
    w = GzipStreamWriter(tmp_path / "s.gz", [(0, 20000)], level=1, threads=2)
    for start in range(19000, 0, -1000):  # backwards: nothing completes until the first member arrives
        w.write([(start + 500, payload[start + 500 : start + 1000])])
        w.write([(start, payload[start : start + 500])])
    assert sum(len(p.buf) for p in w._pending.values() if p.buf is not None) <= 3000
    assert w.spill_path.exists()
    w.write([(0, payload[:1000])])
    w.close()
    assert gzip.decompress((tmp_path / "s.gz").read_bytes()) == payload
    assert not w.spill_path.exists()


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_short_runs_without_a_reservation_are_written_by_plane_spans(tmp_path, monkeypatch, suffix):
    """Filesystems that cannot reserve space never get a memory map: spans are read, filled, written."""
    from deconv3d_cli.io import space

    real = space.reserve

    def unsupported(fd, size, path):
        real(fd, size, path)
        return False

    monkeypatch.setattr(space, "reserve", unsupported)
    monkeypatch.setattr(np, "memmap", None)
    data = volume((48, 40, 36), np.float32, seed=7)
    path = write(tmp_path / f"o{suffix}", data, x_slabs(data.shape, 5), threads=2)
    monkeypatch.undo()
    np.testing.assert_array_equal(nib.load(path).get_fdata(dtype=np.float32), data)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_kill_and_resume_through_the_command_gives_the_uninterrupted_bytes(tmp_path, suffix):
    """kill -9 once the journal holds a tile (or whenever the run ends first), then --resume."""
    import os
    import signal
    import subprocess
    import sys
    import time

    src = tmp_path / "in.nii.gz"
    nib.Nifti1Image(volume((96, 96, 96), np.float32, seed=8), np.eye(4)).to_filename(src)
    args = ["upsample", str(src), "--preset", "trilinear", "--scale", "2", "--tile", "192,192,8", "--no-progress"]
    # the formulation and thread count fixed: timing them could pick another rounding for the other run
    fixed = ["--engine-path", "separable", "--threads", "1"]
    base = [sys.executable, "-m", "deconv3d_cli", *args, *fixed, "--checkpoint-every", "0.01"]
    clean = tmp_path / f"clean{suffix}"
    subprocess.run([*base, "-o", str(clean)], check=True, capture_output=True, timeout=300)
    out = tmp_path / f"out{suffix}"
    journal = tmp_path / f".partial-out{suffix}.journal"
    proc = subprocess.Popen([*base, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if journal.exists() and len(journal.read_bytes().splitlines()) >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait(timeout=60)
    if not out.exists():
        done = subprocess.run([*base, "-o", str(out), "--resume"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    assert out.read_bytes() == clean.read_bytes()
    # a kill between the commit's rename and its journal removal leaves the journal (io/atomic.py's
    # ordering, not the writer's); nothing of the writer's may remain in any case
    left = {p.name for p in tmp_path.iterdir()} - {journal.name}
    assert left == {"in.nii.gz", clean.name, out.name}


@pytest.mark.parametrize("shape, layout", [((20, 18, 16), None), ((20, 18, 16, 3), None), ((3, 20, 18, 16), "cf")])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_tiles_already_in_file_order_are_written_without_a_copy(tmp_path, monkeypatch, shape, layout, suffix):
    """A pipeline that allocates tiles by `writer.file_axes` hands the writer its file's byte order."""
    from deconv3d_cli.io import nifti_write

    options = {"data_format": "channels_first"} if layout else {}
    data = volume(shape, np.float32, seed=9)
    w = nifti.create_writer(Destination(tmp_path / f"o{suffix}", shape, np.float32, META), **options)
    monkeypatch.setattr(nifti_write, "arrange", None)  # a copy into file order would fail
    axes = w.file_axes
    boxes = [(slice(None),) + b[:3] for b in z_slabs(shape[1:], 5)] if layout else z_slabs(shape, 5)
    for box in boxes:
        part = data[box]
        buf = np.empty([part.shape[a] for a in axes], np.float32).transpose(np.argsort(axes))
        buf[...] = part
        w.write(box, buf)
    w.close()
    monkeypatch.undo()
    img = nib.load(tmp_path / f"o{suffix}")
    got = img.get_fdata(dtype=np.float32)
    want = np.moveaxis(data, 0, -1) if layout else data
    np.testing.assert_array_equal(got.reshape(want.shape), want)


def test_nifti_outputs_are_planned_as_z_slabs_in_file_order(tmp_path):
    """The plan cuts z (the axis slowest in the file) first, then y, and sends the tiles z-major."""
    from deconv3d_cli.io import formats
    from deconv3d_cli.layer.presets import make_spec
    from deconv3d_cli.run.job import prepare
    from deconv3d_cli.run.options import ComputeOptions, Options

    assert formats.NIFTI.order == formats.NIFTI_GZ.order == (2, 1, 0) and formats.NPY.order == (0, 1, 2)
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 64), np.float32), np.eye(4)), str(tmp_path / "in.nii"))
    for limit in (16 << 20, 12 << 20):  # above the writer's own 8 MiB (a gzip member pending, one compressed)
        opts = Options(compute=ComputeOptions(memory_limit=limit, boundary="replicate"), progress=False)
        job = prepare(make_spec("trilinear", 2), tmp_path / "in.nii", tmp_path / "o.nii.gz", opts)
        job.close()
        tiles = list(job.plan.tiles())
        assert job.plan.tile_shape[0] == 128 and job.plan.tile_shape[2] < 128  # whole x rows, z cut first
        keys = [(t.out[2].start, t.out[1].start) for t in tiles]
        assert keys == sorted(keys) and [t.index for t in tiles] == list(range(len(tiles)))


@pytest.mark.parametrize("boxes_of", [z_slabs, x_slabs], ids=["streamed", "staged"])
def test_gz_writer_closed_by_a_stopped_run_stays_resumable(tmp_path, boxes_of):
    """The run core closes the writer of a stopped run (SIGTERM, Ctrl-C): incomplete, it keeps its state."""
    vol = volume((30, 24, 20), np.float32, seed=10)
    boxes = boxes_of(vol.shape, 6)
    clean = write(tmp_path / "clean.nii.gz", vol, boxes).read_bytes()
    (tmp_path / "run").mkdir()
    out = tmp_path / "run" / ".partial-o.nii.gz"
    w = nifti.create_writer(Destination(out, vol.shape, vol.dtype, META))
    for box in boxes[:2]:
        w.write(box, np.ascontiguousarray(vol[box]))
    w.flush()
    w.close()
    assert not w.complete and (out.parent / (out.name + ".gzindex")).exists()
    w = nifti.create_writer(Destination(out, vol.shape, vol.dtype, META, resume=True))
    for box in boxes[2:]:
        w.write(box, np.ascontiguousarray(vol[box]))
    w.close()
    assert w.complete and out.read_bytes() == clean
    assert [p.name for p in out.parent.iterdir()] == [out.name]


@pytest.mark.parametrize(
    "shape, grid",
    [
        ((21, 18, 16), ["--preset", "trilinear", "--scale", "2"]),
        ((21, 18, 16, 3), ["--preset", "trilinear", "--scale", "2,3,1"]),
        ((21, 18, 16), ["--scale", "1.5", "--interp", "linear"]),
        ((21, 18, 16), ["--scale", "1.5", "--interp", "bspline"]),
        ((21, 18, 16), ["--voxel-size", "0.7", "--interp", "lanczos"]),
    ],
)  # fmt: skip
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_interpolated_tiles_reach_the_file_without_a_transposing_copy(tmp_path, monkeypatch, shape, grid, suffix):
    """A NIfTI slab arrives x fastest; the presets and the resampler keep that memory order, the
    runner's host buffer follows it, and the writer takes the tiles as they are. The bytes equal the
    same job on the same values as .npy (C order throughout), tiles and boundary rows included."""
    from click.testing import CliRunner

    from deconv3d_cli.cli import main
    from deconv3d_cli.io import nifti_write

    data = volume(shape, np.float32, seed=11)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "in.nii"))
    np.save(tmp_path / "in.npy", data)
    common = [*grid, "--tile", "16,12,8", "-q", "--overwrite"]
    monkeypatch.setattr(nifti_write, "arrange", None)  # a copy into file order would fail
    res = CliRunner().invoke(main, ["upsample", str(tmp_path / "in.nii"), "-o", str(tmp_path / f"o{suffix}"), *common])
    assert res.exit_code == 0, res.output
    monkeypatch.undo()
    res = CliRunner().invoke(main, ["upsample", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), *common])
    assert res.exit_code == 0, res.output
    want = np.load(tmp_path / "o.npy")
    got = np.asanyarray(nib.load(tmp_path / f"o{suffix}").dataobj)
    assert got.shape == want.shape and got.tobytes() == np.ascontiguousarray(want).tobytes()
