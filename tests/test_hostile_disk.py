"""Faulty disks and killed writers: full disks and file-size limits are one RunError line, never a signal.

Full-disk cases run on a real small filesystem: an 8 MiB tmpfs mounted for the test (root only; the
test is skipped where it cannot mount one). File-size cases run under RLIMIT_FSIZE (`ulimit -f`) in a
child process, which needs no privilege. Both assert exit status 1 (a run failure on valid input), one
stderr line naming the target and, for a full disk, the free space; no `.partial-*` beside the target;
and an existing target byte-identical. Resume cases check that a partial torn at any point either
reopens or raises PartialUnusable, the one exception the run core takes as "start over".
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from hostile_files import cli, one_error_line, strays

from deconv3d_cli import RunError
from deconv3d_cli.io import Destination, PartialUnusable, VolumeMeta, check_space, create_writer, output_size, space
from deconv3d_cli.io.npy import NpyWriter

TARGET_BYTES = b"the user's previous output\n"
zarr = pytest.importorskip("zarr", minversion="3")


@pytest.fixture
def disk(tmp_path: Path):
    """A real 8 MiB filesystem (tmpfs), mounted for this test only."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """64^3 float32 noise: its x2 upsampling is 8 MiB, more than the disk, and does not compress away."""
    path = tmp_path / "in.npy"
    np.save(path, np.random.default_rng(0).standard_normal((64, 64, 64)).astype(np.float32))
    return path


def upsample(src: Path, target: Path, *extra: object, limits: dict | None = None):
    # A fixed formulation: no timing runs before the write (these cases are about the write).
    return cli(
        "upsample",
        src,
        "-o",
        target,
        "--preset",
        "trilinear",
        "--scale",
        2,
        "--no-progress",
        "--overwrite",
        "--engine-path",
        "transpose",
        *extra,
        limits=limits,
    )


def failed_cleanly(res, target: Path, *fragments: str) -> str:
    assert res.code == 1, res  # not -SIGBUS (135) nor -SIGSEGV (139)
    line = one_error_line(res.lines, str(target), *fragments)
    assert strays(target.parent) == []
    return line


# ----------------------------------------------------------------------------------------- full disk
@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("out.npy", ["--tile", "32,32,32"]),  # small tiles: the boxes went through memory maps (SIGBUS)
        ("out.npy", []),  # slabs: written with pwrite
        ("out.h5", ["--compression-level", "0"]),  # HDF5 crashed with SIGSEGV after its message
        ("out.zarr", ["--compression-level", "0"]),
    ],
)
def test_full_disk_is_one_line_and_exit_1(disk, volume, name, extra):
    target = disk / name
    if name.endswith(".zarr"):
        target.mkdir()
        (target / "zarr.json").write_bytes(TARGET_BYTES)
        before = TARGET_BYTES
    else:
        target.write_bytes(TARGET_BYTES)
        before = TARGET_BYTES
    # Refused before writing where the size is certain (check_space), or failing mid-write: one line either way.
    line = failed_cleanly(upsample(volume, target, *extra), target, "free on its disk")
    assert "no space left on the device" in line or "are free on its disk" in line
    existing = target / "zarr.json" if target.is_dir() else target
    assert existing.read_bytes() == before


def test_full_disk_through_a_writer_that_cannot_reserve(disk, tmp_path):
    """Where the filesystem cannot reserve blocks, .npy boxes go out with pwrite: ENOSPC, not SIGBUS."""
    script = f"""
import numpy as np
from pathlib import Path
from deconv3d_cli.io import space, Destination, VolumeMeta
from deconv3d_cli.io.npy import NpyWriter
from deconv3d_cli import RunError
space.reserve = lambda fd, n, path: False
w = NpyWriter(Destination(Path({str(disk / ".partial-o.npy")!r}), (128, 128, 160), np.float32, VolumeMeta()))
assert not w.mapped
try:
    for d in range(0, 128, 8):
        w.write((slice(d, d + 8), slice(0, 100), slice(0, 100)), np.ones((8, 100, 100), np.float32))
    w.close()
except RunError as exc:
    print(exc)
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, (res.returncode, res.stderr)
    assert res.stdout.startswith(f"{disk / 'o.npy'}: writing failed: no space left on the device"), res.stdout


def test_a_filesystem_that_cannot_reserve_turns_maps_off(tmp_path, monkeypatch):
    def unsupported(fd: int, nbytes: int) -> None:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(space, "_allocate", unsupported)
    w = NpyWriter(Destination(tmp_path / "o.npy", (8, 8, 8), np.dtype("float32"), VolumeMeta()))
    assert not w.mapped
    w.write((slice(0, 8),) * 3, np.ones((8, 8, 8), np.float32))
    w.close()
    assert np.array_equal(np.load(tmp_path / "o.npy"), np.ones((8, 8, 8), np.float32))


def test_full_disk_with_compressed_hdf5_does_not_crash(disk):
    script = f"""
import numpy as np
from pathlib import Path
from deconv3d_cli.io import create_writer, VolumeMeta
from deconv3d_cli import RunError
w = create_writer(Path({str(disk / ".partial-o.h5")!r}), "hdf5", (64, 256, 256), np.float32, VolumeMeta())
rng = np.random.default_rng(0)
try:
    for d in range(0, 64, 4):
        w.write((slice(d, d + 4),), rng.standard_normal((4, 256, 256)).astype(np.float32))
        w.flush()
    w.close()
    print("fit")
except RunError as exc:
    print(exc)
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, (res.returncode, res.stderr)  # was -11 (SIGSEGV) at exit
    assert res.stdout.startswith(f"{disk / 'o.h5'}: writing failed: no space left on the device"), res.stdout
    assert "Traceback" not in res.stderr


def test_check_space_refuses_what_cannot_fit(disk):
    free = space.free_bytes(disk)
    target = disk / "out.npy"
    with pytest.raises(RunError) as err:
        check_space(target, free + 1)
    line = str(err.value)
    assert line.startswith(f"{target}: needs ") and f"({free + 1} bytes)" in line and f"({free} bytes) are free" in line
    assert "--memory-limit" not in line
    check_space(target, free - 4096)  # fits
    check_space(target, 10 * free, compressed=True)  # a compressed size is not known: not refused
    (disk / "fill").write_bytes(bytes(free - 4096))
    with pytest.raises(RunError, match="needs at least 64.0 KiB"):
        check_space(target, 10, compressed=True)


def test_check_space_names_the_target_of_a_partial_and_counts_a_resumed_partial(disk):
    partial = disk / ".partial-out.npy"
    with open(partial, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, 4 << 20)
    free = space.free_bytes(disk)
    check_space(partial, free + (2 << 20), reusing=partial)
    with pytest.raises(RunError, match=f"^{disk / 'out.npy'}: needs"):
        check_space(partial, free + (2 << 20))


def test_output_size_is_exact_where_it_can_be(tmp_path):
    nbytes, compressed = output_size(tmp_path / "o.npy", "npy", (10, 20, 30), "float32", None, {})
    w = NpyWriter(Destination(tmp_path / "o.npy", (10, 20, 30), np.dtype("float32"), VolumeMeta()))
    w.close()
    assert (nbytes, compressed) == ((tmp_path / "o.npy").stat().st_size, False)
    # uncompressed HDF5 stores whole chunks: 2 x 2 x 2 chunks of 64^3 for a 100^3 output
    uncompressed = {"compression_level": 0}
    whole_chunks = 8 * 64**3 * 4
    got = output_size(tmp_path / "o.h5", "hdf5", (100, 100, 100), "float32", None, uncompressed)
    assert got == (whole_chunks, False)
    assert output_size(tmp_path / "o.h5", "hdf5", (100, 100, 100), "float32", None, {})[1] is True
    assert output_size(tmp_path / "o.zarr", "zarr", (100, 100, 100), "float32", None, {"compression_level": 0})[1]
    assert output_size(tmp_path / "o.nii", "nifti", (10, 10, 10), "int16", None, {}) == (352 + 2000, False)
    assert output_size(tmp_path / "o.nii.gz", "nifti", (10, 10, 10), "int16", None, {})[1] is True


# ----------------------------------------------------------------------------------------- ulimit -f
FSIZE = {resource.RLIMIT_FSIZE: 4 << 20}


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("out.npy", ["--tile", "32,32,32"]),
        ("out.h5", ["--compression-level", "0"]),  # crashed with SIGSEGV
        ("out.zarr", ["--compression-level", "0", "--chunks", "128,128,128"]),  # one 8 MiB chunk file
    ],
)
def test_file_size_limit_is_one_line_and_exit_1(tmp_path, volume, name, extra):
    out = tmp_path / "out"
    out.mkdir()
    target = out / name
    line = failed_cleanly(upsample(volume, target, *extra, limits=FSIZE), target)
    assert "file too large" in line or "the file-size limit (ulimit -f) is 4.0 MiB" in line  # mid-write, or before
    assert not target.exists()


def test_check_space_refuses_past_the_file_size_limit(tmp_path):
    script = f"""
from deconv3d_cli.io import check_space
from deconv3d_cli import RunError
try:
    check_space({str(tmp_path / "o.npy")!r}, 8 << 20)
except RunError as exc:
    print(exc)
check_space({str(tmp_path / "o.npy")!r}, 1 << 20)
check_space({str(tmp_path / "o.npy")!r}, 8 << 20, compressed=True)
"""
    res = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20)),
    )
    assert res.returncode == 0, res.stderr
    assert "file-size limit (ulimit -f) is 4.0 MiB (4194304 bytes)" in res.stdout


# ----------------------------------------------------------------------------------------- Zarr store gone
def test_zarr_store_removed_mid_run_is_an_error_and_not_recreated(tmp_path):
    partial = tmp_path / ".partial-o.zarr"
    w = create_writer(partial, "zarr", (32, 32, 32), "float32", VolumeMeta(), chunks=(16, 16, 16))
    w.write((slice(0, 16),) * 3, np.ones((16, 16, 16), np.float32))
    w.flush()
    shutil.rmtree(partial)
    with pytest.raises(RunError, match="removed or replaced while it was being written"):
        w.write((slice(16, 32),) * 3, np.ones((16, 16, 16), np.float32))
    assert not partial.exists()
    w = create_writer(partial, "zarr", (32, 32, 32), "float32", VolumeMeta(), chunks=(16, 16, 16))
    w.write((slice(0, 16),) * 3, np.ones((16, 16, 16), np.float32))
    shutil.rmtree(partial)
    partial.mkdir()  # replaced by another folder of the same name
    for step in (w.flush, w.close):
        with pytest.raises(RunError, match=f"^{tmp_path / 'o.zarr'}: the output store"):
            step()


# ----------------------------------------------------------------------------------------- resume
def h5_partial(path: Path) -> bytes:
    w = create_writer(path, "hdf5", (32, 32, 32), "float32", VolumeMeta(attrs={"k": 1}), chunks=(8, 8, 8))
    w.write((slice(0, 16),), np.ones((16, 32, 32), np.float32))
    w.flush()
    w.close()
    return path.read_bytes()


def reopen(path: Path, fmt: str, shape=(32, 32, 32)) -> str:
    try:
        w = create_writer(path, fmt, shape, "float32", VolumeMeta(), resume=True)
    except PartialUnusable:
        return "start over"
    w.write((slice(0, 8),), np.zeros((8, *shape[1:]), np.float32))
    w.close()
    return "resumed"


def test_hdf5_partial_torn_anywhere_reopens_or_says_start_over(tmp_path):
    data = h5_partial(tmp_path / "full.h5")
    cuts = sorted(set(range(0, len(data), max(1, len(data) // 97))) | {len(data)})
    seen = set()
    for n in cuts:
        (tmp_path / "p.h5").write_bytes(data[:n])
        seen.add(reopen(tmp_path / "p.h5", "hdf5"))  # any other exception fails the test
    assert seen == {"start over", "resumed"}


def test_hdf5_partial_killed_before_its_first_checkpoint_resumes(tmp_path):
    partial = tmp_path / ".partial-o.h5"
    script = f"""
import os, signal, numpy as np
from pathlib import Path
from deconv3d_cli.io import create_writer, VolumeMeta
w = create_writer(Path({str(partial)!r}), "hdf5", (32, 32, 32), np.float32, VolumeMeta(), chunks=(8, 8, 8))
w.write((slice(0, 8),), np.ones((8, 32, 32), np.float32))  # never flushed
os.kill(os.getpid(), signal.SIGKILL)
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert res.returncode == -signal.SIGKILL
    assert reopen(partial, "hdf5") == "resumed"
    with h5py.File(partial) as f:
        assert f["data"].shape == (32, 32, 32)


def test_zarr_partial_killed_while_being_created_leaves_nothing_to_resume(tmp_path):
    partial = tmp_path / ".partial-o.zarr"
    script = f"""
import os, signal, numpy as np, zarr
from pathlib import Path
from deconv3d_cli.io import create_writer, VolumeMeta
real = zarr.Group.create_array
def killed(self, *a, **k):
    real(self, *a, **k)
    os.kill(os.getpid(), signal.SIGKILL)  # the group and array exist, their attributes do not yet
zarr.Group.create_array = killed
create_writer(Path({str(partial)!r}), "zarr", (32, 32, 32), np.float32, VolumeMeta(spacing=(1.0, 2.0, 3.0)))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert not partial.exists()  # a resumed run finds no partial and starts over
    assert reopen(partial, "zarr") == "start over"
    w = create_writer(partial, "zarr", (32, 32, 32), "float32", VolumeMeta(spacing=(1.0, 2.0, 3.0)))
    w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".partial-o.zarr"]  # the half-made store was swept
    assert "multiscales" in json.dumps(dict(zarr.open_group(str(partial)).attrs))


def zarr_states(root: Path) -> dict[str, Path]:
    """A partial store in each state a kill (or a stranger) could leave it."""

    def make(name: str, prep) -> Path:
        path = root / name / ".partial-o.zarr"
        path.parent.mkdir()
        prep(path)
        return path

    def group_only(p: Path) -> None:
        zarr.open_group(str(p), mode="w")

    def array_json(p: Path, text: str) -> None:
        create_writer(p, "zarr", (32, 32, 32), "float32", VolumeMeta()).close()
        (p / "0" / "zarr.json").write_text(text)

    return {
        "empty-folder": make("a", lambda p: p.mkdir()),
        "group-without-array": make("b", group_only),
        "group-json-empty": make("c", lambda p: (p.mkdir(), (p / "zarr.json").write_text(""))),
        "group-json-a-list": make("d", lambda p: (p.mkdir(), (p / "zarr.json").write_text("[]"))),
        "array-json-torn": make("e", lambda p: array_json(p, '{"zarr_format": 3, "node_')),
        "array-other-shape": make("f", lambda p: create_writer(p, "zarr", (8, 8, 8), "float32", VolumeMeta()).close()),
        "complete": make("g", lambda p: create_writer(p, "zarr", (32, 32, 32), "float32", VolumeMeta()).close()),
    }


def test_zarr_partial_in_any_state_reopens_or_says_start_over(tmp_path):
    outcomes = {name: reopen(path, "zarr") for name, path in zarr_states(tmp_path).items()}
    assert outcomes == {name: "resumed" if name == "complete" else "start over" for name in outcomes}


def test_npy_partial_with_a_torn_header_says_start_over(tmp_path):
    (tmp_path / "p.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    assert reopen(tmp_path / "p.npy", "npy") == "start over"


def test_partial_unusable_is_an_input_error_the_cli_can_show():
    from deconv3d_cli import InputError

    assert issubclass(PartialUnusable, InputError) and PartialUnusable("x", source="f").exit_code == 2
