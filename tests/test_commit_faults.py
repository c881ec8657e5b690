"""Faults in the commit and the writers of every output format, each followed by `--resume` or a rerun.

Kill -9 after each rename, unlink, rmdir and fsync of the commit (the last checkpoint, the writer's
close, the rename onto the target, the clean-up): a recorded run copies the output folder after each
such call, which is the state on disk a kill at that point leaves (a kill only adds the loss of the
process: its locks go with it, and the copies hold none); every copy is then resumed, and rerun
without `--resume`. A few cases kill a child process for real (os._exit from a hook at a named
point) to show the copies stand for kills. Full disks: OSError(ENOSPC) at the n-th write of a run,
for every n the format's run makes, then `--resume` when the error promises it, else a rerun.

After each: the old target intact or the new one complete, byte-identical to a clean run, and
nothing hidden left beside it (no .partial-*, .replaced-*, gzip side files, stage, journal).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from deconv3d_cli.cli import main
from deconv3d_cli.io import gzip_stream
from deconv3d_cli.run import local

pytestmark = pytest.mark.xdist_group("commit-faults")  # many runs and some child processes: on one worker

# (output, tile): tiles across the first axis make a .nii.gz writer staged, across the last one streamed
CASES = [
    pytest.param("o.npy", "4,16,16", id="npy"),
    pytest.param("o.h5", "4,16,16", id="h5"),
    pytest.param("o.nii", "4,16,16", id="nii"),
    pytest.param("o.nii.gz", "4,16,16", id="nii.gz-staged"),
    pytest.param("o.nii.gz", "16,16,4", id="nii.gz-streamed"),
    pytest.param("o.zarr", "4,16,16", id="zarr"),
    # outputs named vec.*: two channels, so a .nii.gz has two segments (a side file appended on close)
    pytest.param("vec.nii.gz", "16,16,4", id="nii.gz-vector"),
]
# .npy boxes go through memory maps of the reserved file, which cannot meet a full disk; without maps,
# through pwrite, which can
DISK_CASES = [*CASES, pytest.param("o.npy", "4,16,16", id="npy-pwrite")]
HIDDEN = (".partial-", ".replaced-")
SIDE = (".gzindex", ".gzspill", ".gzstage", ".gzseg", ".journal", ".new")
COMMIT_OPS = ("rename", "replace", "unlink", "rmdir", "fsync")
WRITE_OPS = ("write", "pwrite", "pwritev", "writev", "copy_file_range", "posix_fallocate")


# ----------------------------------------------------------------------------------------- helpers
@pytest.fixture(autouse=True)
def small_members(monkeypatch):
    """4 KiB gzip members and 8 KiB of pending bytes: a 16 KiB .nii.gz has 5 members and spills."""
    monkeypatch.setattr(gzip_stream, "MEMBER_BYTES", 4096)
    monkeypatch.setattr(gzip_stream, "PENDING_BYTES", 8192)


def inputs(folder: Path) -> tuple[Path, Path]:
    """Two 8^3 float32 volumes: the old target is made from `old`, the run under test from `new`."""
    rng = np.random.default_rng(7)
    old, new = folder / "old.npy", folder / "new.npy"
    np.save(old, rng.standard_normal((8, 8, 8)).astype(np.float32))
    np.save(new, rng.standard_normal((8, 8, 8)).astype(np.float32))
    (folder / "vector.yaml").write_text("filters: 2\nkernel_size: 2\nstrides: 2\nkernel_initializer: ones\n")
    return old, new


def command(src: Path, target: Path, *extra: str, tile: str = "4,16,16") -> list[str]:
    # 4 tiles; a fixed formulation (no timing runs); checkpoints only where the test makes them
    return [
        "upsample",
        str(src),
        "-o",
        str(target),
        *(["--spec", str(src.parent / "vector.yaml")] if "vec" in target.name else ["--preset", "trilinear"]),
        *(["--scale", "2"] if "vec" not in target.name else []),
        "--no-progress",
        "--engine-path",
        "transpose",
        "--tile",
        tile,
        "--checkpoint-every",
        "1000",
        "--overwrite",
        *extra,
    ]


def invoke(args: list[str]):
    return CliRunner().invoke(main, args)


def content(path: Path) -> object:
    """A file's bytes, or a store's {relative path: bytes}; None when missing."""
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    return path.read_bytes() if path.exists() else None


def strays(folder: Path) -> list[str]:
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.name.startswith(HIDDEN) or p.name.endswith(SIDE) or any(s in p.name for s in SIDE)
    )


def prepared(folder: Path, name: str, tile: str) -> tuple[Path, Path, object, object]:
    """A folder with the old target in place; (new input, target, old content, clean new content)."""
    folder.mkdir()
    old, new = inputs(folder)
    clean = folder / ("clean-" + name)
    assert invoke(command(new, clean, tile=tile)).exit_code == 0
    want = content(clean)
    remove(clean)
    target = folder / name
    assert invoke(command(old, target, tile=tile)).exit_code == 0
    return new, target, content(target), want


def remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def checked(res, target: Path, want: object) -> None:
    assert res.exit_code == 0, res.output
    assert content(target) == want
    assert strays(target.parent) == []


@contextmanager
def checkpoint_every_tile() -> Iterator[None]:
    """Tiles journalled one by one, deterministically: each tile's write first checkpoints those before it."""
    pipes: list[local.Pipeline] = []
    real_init, real_write = local.Pipeline.__init__, local.write_tile

    def init(self, *a, **k):
        real_init(self, *a, **k)
        pipes.append(self)

    def write_tile(job, writer, tile, data):
        pipes[-1]._checkpoint()
        return real_write(job, writer, tile, data)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(local.Pipeline, "__init__", init)
        mp.setattr(local, "write_tile", write_tile)
        yield


# ----------------------------------------------------------------------------------------- kill -9 in the commit
def record_commit(folder: Path, snaps: Path, run: Callable[[], object]) -> list[str]:
    """Run `run`, copying `folder` into snaps/N after the N-th commit call; the calls' names."""
    calls: list[str] = []
    state = {"on": False}
    main_thread = threading.get_ident()

    def hooked(op: str, real: Callable) -> Callable:
        def call(*a, **k):
            out = real(*a, **k)
            if state["on"] and threading.get_ident() == main_thread:
                state["on"] = False
                calls.append(f"{op} {' '.join(os.path.basename(str(x)) for x in a if isinstance(x, (str, Path)))}")
                shutil.copytree(folder, snaps / str(len(calls)), symlinks=True)
                state["on"] = True
            return out

        return call

    real_finish = local.Pipeline._finish

    def finish(self, target):
        state["on"] = True
        try:
            return real_finish(self, target)
        finally:
            state["on"] = False

    with pytest.MonkeyPatch.context() as mp:
        for op in COMMIT_OPS:
            mp.setattr(os, op, hooked(op, getattr(os, op)))
        mp.setattr(local.Pipeline, "_finish", finish)
        res = run()
    assert res.exit_code == 0, res.output
    return calls


@pytest.mark.parametrize(("name", "tile"), CASES)
def test_kill_after_each_call_of_the_commit_then_resume_or_rerun(tmp_path, name, tile):
    new, target, old_bytes, want = prepared(tmp_path / "run", name, tile)
    snaps = tmp_path / "snaps"
    calls = record_commit(target.parent, snaps, lambda: invoke(command(new, target, tile=tile)))
    assert any(c.startswith(("rename", "replace")) for c in calls), calls
    failures = []
    for n, call in enumerate(calls, 1):
        at = snaps / str(n)
        now = content(at / name)
        hidden = [s for s in strays(at) if s.startswith(REPLACED)]
        if now not in (old_bytes, want) and not (now is None and hidden):
            failures.append(f"after {call!r}: the target is neither the old one nor the new one")
        for how, extra in (("--resume", ["--resume"]), ("rerun", [])):
            work = tmp_path / f"{n}{how}"
            shutil.copytree(at, work, symlinks=True)
            res = invoke(command(new, work / name, *extra, tile=tile))
            if res.exit_code != 0 or content(work / name) != want or strays(work):
                failures.append(
                    f"after {call!r}, {how}: exit {res.exit_code} {res.output.strip()[-200:]!r}, "
                    f"same bytes {content(work / name) == want}, strays {strays(work)}"
                )
            shutil.rmtree(work)
    assert failures == [], "\n".join(failures)


REPLACED = ".replaced-"


# ----------------------------------------------------------------------------------------- ENOSPC at every write
@contextmanager
def full_disk(at: int | None) -> Iterator[list[str]]:
    """OSError(ENOSPC) at the `at`-th write of the run (None: count them); yields the writes met so far.

    Writes are the os calls that put bytes or blocks on disk, zarr's chunk and metadata files, and
    HDF5's chunk writes and flushes (their bytes leave from C, out of reach of a patch of os)."""
    import h5py
    import zarr.storage._local as zarr_local

    from deconv3d_cli.io import hdf5_chunks, space

    seen: list[str] = []
    lock = threading.Lock()

    def hooked(what: str, real: Callable) -> Callable:
        def call(*a, **k):
            with lock:
                seen.append(what)
                fail = len(seen) == at
            if fail:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(*a, **k)

        return call

    with pytest.MonkeyPatch.context() as mp:
        for op in WRITE_OPS:
            mp.setattr(os, op, hooked(op, getattr(os, op)))
        mp.setattr(space, "_allocate", hooked("reserve", space._allocate))
        mp.setattr(zarr_local, "_put", hooked("zarr put", zarr_local._put))
        mp.setattr(h5py.Dataset, "__setitem__", hooked("h5 write", h5py.Dataset.__setitem__))
        mp.setattr(h5py.File, "flush", hooked("h5 flush", h5py.File.flush))
        mp.setattr(hdf5_chunks.ChunkEncoder, "write", hooked("h5 chunk", hdf5_chunks.ChunkEncoder.write))
        yield seen


def run_out_of_space(new: Path, target: Path, tile: str, at: int | None):
    with checkpoint_every_tile(), full_disk(at) as seen:
        res = invoke(command(new, target, tile=tile))
    return res, list(seen)


@pytest.mark.parametrize(("name", "tile"), DISK_CASES)
def test_full_disk_at_every_write_then_resume_or_rerun(tmp_path, monkeypatch, request, name, tile):
    if request.node.callspec.id == "npy-pwrite":
        monkeypatch.setenv("DECONV3D_NPY_MAPS", "0")
    new, target, old_bytes, want = prepared(tmp_path / "run", name, tile)
    base = tmp_path / "base"
    shutil.copytree(target.parent, base)
    res, writes = run_out_of_space(new, target, tile, None)
    assert res.exit_code == 0 and content(target) == want, res.output
    assert len(writes) >= 4, writes
    failures, resumed = [], 0
    for n in range(1, len(writes) + 1):
        work = tmp_path / str(n)
        shutil.copytree(base, work)
        res, _ = run_out_of_space(new, work / name, tile, n)
        err = res.output.strip()
        if res.exit_code == 0:  # a failed copy_file_range is done again through user space: no fault
            if writes[n - 1] != "copy_file_range" or content(work / name) != want or strays(work):
                failures.append(f"ENOSPC at write {n} ({writes[n - 1]}): exit 0")
            shutil.rmtree(work)
            continue
        if res.exit_code != 1 or "no space left" not in err.lower() or content(work / name) != old_bytes:
            failures.append(f"ENOSPC at write {n} ({writes[n - 1]}): exit {res.exit_code}, {err[-300:]!r}")
        promised = "rerun with --resume" in err
        if not promised and strays(work):
            failures.append(f"ENOSPC at write {n} ({writes[n - 1]}): left {strays(work)} but promised no --resume")
        again = invoke(command(new, work / name, *(["--resume"] if promised else []), tile=tile))
        resumed += promised and "resumed" in again.output
        if again.exit_code != 0 or content(work / name) != want or strays(work):
            failures.append(
                f"ENOSPC at write {n} ({writes[n - 1]}), then {'--resume' if promised else 'a rerun'}: "
                f"exit {again.exit_code} {again.output.strip()[-300:]!r}, same bytes {content(work / name) == want}, "
                f"strays {strays(work)}"
            )
        shutil.rmtree(work)
    assert failures == [], "\n".join(failures)
    assert resumed > 0  # some faults came after journalled tiles, and their --resume reused them


# ----------------------------------------------------------------------------------------- real kills at named points
KILLER = """
import os, signal, sys, runpy
from deconv3d_cli.io import gzip_stream
gzip_stream.MEMBER_BYTES, gzip_stream.PENDING_BYTES = 4096, 8192  # as the small_members fixture
op, pattern, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
real, seen = getattr(os, op), []
def hooked(*a, **k):
    out = real(*a, **k)
    if any(pattern in os.path.basename(str(x)) for x in a if isinstance(x, (str, os.PathLike))):
        seen.append(a)
        if len(seen) == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    return out
setattr(os, op, hooked)
sys.argv = ["deconv3d", *sys.argv[4:]]
runpy.run_module("deconv3d_cli", run_name="__main__")
"""


def killed(op: str, pattern: str, nth: int, args: list[str]) -> None:
    """Run the CLI in a child that kill -9s itself right after the `nth` call of os.`op` on a `pattern` name."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    res = subprocess.run(
        [sys.executable, "-c", KILLER, op, pattern, str(nth), *args], capture_output=True, text=True, env=env
    )
    assert res.returncode == -signal.SIGKILL, res.stderr


@pytest.mark.parametrize(
    ("how", "extra"),
    [("--resume", ["--resume"]), ("rerun", []), ("without --overwrite", None)],
)
def test_zarr_overwrite_killed_between_the_two_renames_is_finished_by_the_next_run(tmp_path, how, extra):
    new, target, old_bytes, want = prepared(tmp_path / "run", "o.zarr", "4,16,16")
    killed("rename", ".replaced-o.zarr", 1, command(new, target))
    assert not target.exists() and content(target.with_name(".replaced-o.zarr")) == old_bytes
    if extra is None:  # the target is missing: a run that may not overwrite finishes the commit, then refuses
        args = [a for a in command(new, target) if a != "--overwrite"]
        res = invoke(args)
        assert res.exit_code == 2 and "output exists" in res.output, res.output
    else:
        res = invoke(command(new, target, *extra))
        assert res.exit_code == 0, res.output
    assert content(target) == want
    assert strays(target.parent) == []


@pytest.mark.parametrize(
    ("tile", "nth"),  # the commit's unlinks: spill, (stage), index; the old order was index, spill, (stage)
    [("4,16,16", 1), ("4,16,16", 2), ("4,16,16", 3), ("16,16,4", 1), ("16,16,4", 2)],
    ids=["staged-1", "staged-2", "staged-3", "streamed-1", "streamed-2"],
)
def test_nii_gz_killed_after_each_unlink_of_the_commit_resumes(tmp_path, tile, nth):
    new, target, _, want = prepared(tmp_path / "run", "o.nii.gz", tile)
    killed("unlink", ".partial-o.nii.gz.gz", nth, command(new, target, tile=tile))
    assert (target.parent / ".partial-o.nii.gz.journal").exists()
    res = invoke(command(new, target, "--resume", tile=tile))
    assert res.exit_code == 0, res.output
    assert "4 tiles resumed" in res.output
    assert content(target) == want
    assert strays(target.parent) == []


@pytest.mark.parametrize("tile", ["4,16,16", "16,16,4"], ids=["staged", "streamed"])
def test_nii_gz_full_disk_keeps_the_tiles_its_error_says_resume_will_use(tmp_path, tile):
    new, target, old_bytes, want = prepared(tmp_path / "run", "o.nii.gz", tile)
    for n in range(1, 100):  # the first write whose failure comes after a journalled tile
        res, _ = run_out_of_space(new, target, tile, n)
        if "kept: free some space and rerun with --resume" in res.output:
            break
    else:
        pytest.fail("no full disk after a journalled tile")
    assert res.exit_code == 1 and content(target) == old_bytes
    res = invoke(command(new, target, "--resume", tile=tile))
    assert res.exit_code == 0, res.output
    assert "resumed" in res.output
    assert content(target) == want
    assert strays(target.parent) == []
