"""Stops while a reader thread is inside a read: one signal stops without waiting for the read, a
second ends the process whatever holds the way out (run/stop.py, run/local.py).

Each case runs the real program in a subprocess whose HDF5 read of the third slab blocks holding
h5py's one lock, as a read stuck in a damaged or huge chunk index does; signals are sent at exact
points the script reports through files, never after a sleep.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from deconv3d_cli.io.atomic import journal_path, partial_path

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="signals and wakeup fds as on Linux")

BLOCKED_READ = """
import sys, threading
from pathlib import Path
from h5py._objects import phil
from deconv3d_cli.io import hdf5
from deconv3d_cli.run import local
marks, mode = Path(sys.argv[1]), sys.argv[2]
read, keep = hdf5.Hdf5Reader.read, local.Pipeline._keep
calls = []
def blocked_read(self, index):
    calls.append(index)
    if len(calls) == 3:
        with phil:  # inside HDF5: h5py's lock is held for as long as the read takes
            (marks / "reading").write_text("")
            threading.Event().wait()
    return read(self, index)
def stuck_keep(self, target):
    (marks / "keeping").write_text("")
    if mode == "stuck-exit":
        try:
            with phil:  # the way out needs the reader's lock: the main thread waits in C, deaf to signals
                pass
        except BaseException:  # the second signal came before the wait began: wait all the same
            with phil:
                pass
    return keep(self, target)
hdf5.Hdf5Reader.read, local.Pipeline._keep = blocked_read, stuck_keep
from deconv3d_cli.cli.main import main
sys.argv = ["deconv3d", *sys.argv[3:]]
main()
"""


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120  # bounds the test only; the mark comes at an exact point
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


@pytest.fixture
def job(tmp_path):
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f.create_dataset("d", data=np.random.default_rng(0).random((24, 24, 24)).astype("f4"))
    args = ["upsample", str(tmp_path / "in.h5"), "-o", str(tmp_path / "o.npy"), "--preset", "nearest"]
    return [*args, "--scale", "2", "--tile", "8,8,8", "--checkpoint-every", "0"]


@pytest.fixture
def started():
    """Processes a test starts, killed at its end whatever happened (a failing case must not leave one)."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _start(tmp_path: Path, mode: str, args: list[str], started: list[subprocess.Popen]) -> subprocess.Popen:
    cmd = [sys.executable, "-c", BLOCKED_READ, str(tmp_path), mode, *args]
    started.append(subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True))
    return started[-1]


@pytest.mark.slow
def test_one_signal_stops_while_a_read_is_stuck_and_the_continue_line_finishes(tmp_path, job, started):
    proc = _start(tmp_path, "plain", job, started)
    _wait_for(tmp_path / "reading", proc)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=60)[1]  # the old pipeline waited for the read forever
    lines = stderr.strip().splitlines()
    assert proc.returncode == 143 and len(lines) == 1 and "continue with: " in lines[0], stderr
    target = tmp_path / "o.npy"
    assert partial_path(target).exists() and journal_path(target).exists() and not target.exists()
    again = shlex.split(lines[0].split("continue with: ", 1)[1])
    done = subprocess.run([sys.executable, "-m", "deconv3d_cli", *again[1:]], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ref = subprocess.run(
        [sys.executable, "-m", "deconv3d_cli", *job[:3], str(tmp_path / "ref.npy"), *job[4:]], capture_output=True
    )
    assert ref.returncode == 0
    assert target.read_bytes() == (tmp_path / "ref.npy").read_bytes()


@pytest.mark.slow
def test_a_second_signal_ends_the_process_when_the_way_out_waits_on_the_reader(tmp_path, job, started):
    proc = _start(tmp_path, "stuck-exit", job, started)
    _wait_for(tmp_path / "reading", proc)
    proc.send_signal(signal.SIGTERM)
    _wait_for(tmp_path / "keeping", proc)  # the first signal was handled; the main thread now waits in C
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=60)[1]
    lines = stderr.strip().splitlines()
    assert proc.returncode == 143, stderr
    assert lines == ["deconv3d: stopped by SIGTERM (second signal); finished tiles are kept: rerun with --resume"]
    assert not (tmp_path / "o.npy").exists()


EXITING = """
import atexit, sys, time
from pathlib import Path
marks = Path(sys.argv[1])
def slow_exit_handler():
    (marks / "exiting").write_text("")
    while not (marks / "go").exists():  # the test signals, then says go
        time.sleep(0.01)
atexit.register(slow_exit_handler)
from deconv3d_cli.cli.main import main
sys.argv = ["deconv3d", *sys.argv[2:]]
main()
"""


def test_a_signal_during_the_exit_handlers_prints_nothing_more(tmp_path, job, started):
    proc = subprocess.Popen([sys.executable, "-c", EXITING, str(tmp_path), *job], stderr=subprocess.PIPE, text=True)
    started.append(proc)
    _wait_for(tmp_path / "exiting", proc)  # the run is done and committed; exit handlers are running
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)  # only lets the handler run first; the assertions hold whenever it runs
    (tmp_path / "go").write_text("")
    stderr = proc.communicate(timeout=60)[1]
    assert "Exception ignored" not in stderr and "Traceback" not in stderr, stderr
    assert proc.returncode == 0 and (tmp_path / "o.npy").exists()
