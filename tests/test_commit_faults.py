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

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from deconv3d_cli.cli import main
from deconv3d_cli.run import local

pytestmark = pytest.mark.xdist_group("commit-faults")  # in-process runs patch os: one worker, one at a time

FORMATS = ["o.npy", "o.h5", "o.nii", "o.nii.gz", "o.zarr"]
HIDDEN = (".partial-", ".replaced-")
SIDE = (".gzindex", ".gzspill", ".gzstage", ".gzseg", ".journal", ".new")
COMMIT_OPS = ("rename", "replace", "unlink", "rmdir", "fsync")
WRITE_OPS = ("write", "pwrite", "pwritev", "writev", "copy_file_range", "posix_fallocate")


# ----------------------------------------------------------------------------------------- helpers
def inputs(folder: Path) -> tuple[Path, Path]:
    """Two 8^3 float32 volumes: the old target is made from `old`, the run under test from `new`."""
    rng = np.random.default_rng(7)
    old, new = folder / "old.npy", folder / "new.npy"
    np.save(old, rng.standard_normal((8, 8, 8)).astype(np.float32))
    np.save(new, rng.standard_normal((8, 8, 8)).astype(np.float32))
    return old, new


def command(src: Path, target: Path, *extra: str) -> list[str]:
    # 4 tiles; a fixed formulation (no timing runs); checkpoints only where the test makes them
    return [
        "upsample",
        str(src),
        "-o",
        str(target),
        "--preset",
        "trilinear",
        "--scale",
        "2",
        "--no-progress",
        "--engine-path",
        "transpose",
        "--tile",
        "4,16,16",
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


def prepared(folder: Path, name: str) -> tuple[Path, Path, object, object]:
    """A folder with the old target in place; (new input, target, old content, clean new content)."""
    folder.mkdir()
    old, new = inputs(folder)
    clean = folder / ("clean-" + name)
    assert invoke(command(new, clean)).exit_code == 0
    want = content(clean)
    remove(clean)
    target = folder / name
    assert invoke(command(old, target)).exit_code == 0
    return new, target, content(target), want


def remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def checked(res, target: Path, want: object) -> None:
    assert res.exit_code == 0, res.output
    assert content(target) == want
    assert strays(target.parent) == []


@contextmanager
def checkpoint_every_tile(monkeypatch) -> Iterator[None]:
    """Tiles journalled one by one, deterministically: each tile's write first checkpoints those before it."""
    pipes: list[local.Pipeline] = []
    real_init, real_write = local.Pipeline.__init__, local.write_tile

    def init(self, *a, **k):
        real_init(self, *a, **k)
        pipes.append(self)

    def write_tile(job, writer, tile, data):
        pipes[-1]._checkpoint()
        return real_write(job, writer, tile, data)

    monkeypatch.setattr(local.Pipeline, "__init__", init)
    monkeypatch.setattr(local, "write_tile", write_tile)
    yield
    monkeypatch.undo()


# ----------------------------------------------------------------------------------------- kill -9 in the commit
def record_commit(monkeypatch, folder: Path, snaps: Path, run: Callable[[], object]) -> list[str]:
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

    for op in COMMIT_OPS:
        monkeypatch.setattr(os, op, hooked(op, getattr(os, op)))
    monkeypatch.setattr(local.Pipeline, "_finish", finish)
    try:
        res = run()
    finally:
        monkeypatch.undo()
    assert res.exit_code == 0, res.output
    return calls


@pytest.mark.parametrize("name", FORMATS)
def test_kill_after_each_call_of_the_commit_then_resume_or_rerun(tmp_path, monkeypatch, name):
    new, target, old_bytes, want = prepared(tmp_path / "run", name)
    snaps = tmp_path / "snaps"
    calls = record_commit(monkeypatch, target.parent, snaps, lambda: invoke(command(new, target)))
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
            res = invoke(command(new, work / name, *extra))
            if res.exit_code != 0 or content(work / name) != want or strays(work):
                failures.append(
                    f"after {call!r}, {how}: exit {res.exit_code} {res.output.strip()[-200:]!r}, "
                    f"same bytes {content(work / name) == want}, strays {strays(work)}"
                )
            shutil.rmtree(work)
    assert failures == [], "\n".join(failures)


REPLACED = ".replaced-"
