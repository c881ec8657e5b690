"""HDF5 inputs under stress: a file cut short while it is read, many small chunks, a second signal while
a reader thread is busy inside HDF5. Every stop is driven at an exact point by a hook in a subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from deconv3d_cli import InputError
from deconv3d_cli.io import open_reader
from deconv3d_cli.io.atomic import journal_path, partial_path

if sys.platform != "linux":  # pragma: no cover - truncation and signals are what the cases are about
    pytestmark = pytest.mark.skip("Linux only")

SPEC = "filters: 1\nkernel_size: 2\nstrides: 2\nkernel_initializer: ones\nuse_bias: false\n"


def _h5(path: Path, shape=(32, 32, 32), chunks=(8, 8, 8), dtype="f4") -> Path:
    data = (np.arange(np.prod(shape)) % 251 + 1).astype(dtype).reshape(shape)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data, chunks=chunks)
    return path


def _cli(tmp_path: Path, prelude: str, args: list[str]) -> subprocess.CompletedProcess:
    """Run the CLI in a subprocess after `prelude` (a hook) has been executed there."""
    script = f"{prelude}\nimport sys\nfrom deconv3d_cli.cli import main\nsys.argv = ['deconv3d', *{args!r}]\nmain()\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_hdf5_reader_refuses_a_file_cut_short_after_it_was_opened(tmp_path):
    src = _h5(tmp_path / "in.h5")
    reader = open_reader(src)
    first = reader.read((slice(0, 8),))
    assert first.min() > 0
    os.truncate(src, os.path.getsize(src) // 2)  # another process rewriting the input
    with pytest.raises(InputError, match="truncated while it was being read"):
        reader.read((slice(16, 32),))  # HDF5 alone returns zeros here
    reader.close()


def test_hdf5_reader_refuses_a_file_replaced_after_it_was_opened(tmp_path):
    src = _h5(tmp_path / "in.h5")
    reader = open_reader(src)
    _h5(tmp_path / "new.h5")
    os.replace(tmp_path / "new.h5", src)
    with pytest.raises(InputError, match="replaced while it was being read"):
        reader.read((slice(0, 8),))
    reader.close()


def test_hdf5_input_cut_short_during_a_run_fails_in_one_line_and_leaves_nothing(tmp_path):
    src = _h5(tmp_path / "in.h5", shape=(64, 64, 64))
    (tmp_path / "s.yaml").write_text(SPEC)
    out = tmp_path / "out" / "o.npy"
    out.parent.mkdir()
    hook = f"""
import os
import signal
from deconv3d_cli.io import hdf5
real = hdf5.Hdf5Reader.read
calls = []
def read(self, index):
    calls.append(index)
    if len(calls) == 2:  # the first tile was read whole; the file is then cut in half
        os.truncate({str(src)!r}, os.path.getsize({str(src)!r}) // 2)
    return real(self, index)
hdf5.Hdf5Reader.read = read
"""
    res = _cli(tmp_path, hook, ["upsample", str(src), "-o", str(out), "--spec", "s.yaml", "--tile", "16,64,64"])
    assert res.returncode == 2, res.stderr  # was 0, with half the output zeros
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "truncated while it was being read" in lines[0] and str(src) in lines[0]
    assert os.listdir(out.parent) == []  # no target, no partial, no journal


class _CountingId:
    """A dataset id that counts the calls that ask HDF5's chunk index about chunks."""

    def __init__(self, real) -> None:
        self.real, self.calls = real, 0

    def __getattr__(self, name):
        attr = getattr(self.real, name)
        if not name.startswith(("chunk_iter", "get_chunk_info")):  # calls that walk or scan the index
            return attr

        def counted(*args, **kwargs):
            self.calls += 1
            return attr(*args, **kwargs)

        return counted


class _Proxy:
    def __init__(self, ds, ident) -> None:
        self.ds, self.id = ds, ident

    def __getattr__(self, name):
        return getattr(self.ds, name)


def test_unwritten_chunks_are_counted_from_one_walk_of_the_index(tmp_path):
    path = tmp_path / "sparse.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("data", shape=(20, 16, 16), dtype="u1", chunks=(4, 4, 4))
        ds[:8] = 1  # chunk rows 0 and 1 stored
        ds[16:, :4, :4] = 2  # one chunk of the last row
    reader = open_reader(path)
    ident = _CountingId(reader._raw.id)
    reader._raw = _Proxy(reader._raw, ident)
    reader.read((slice(0, 6),))
    assert reader.missing_chunks == 0
    reader.read((slice(6, 20),))  # rows 1 (stored), 2, 3 (16 each) and 4 (15 of 16 missing)
    reader.read((slice(0, 20),))  # every chunk met again: counted once
    assert reader.missing_chunks == 16 + 16 + 15
    assert ident.calls == 1  # was one index query per chunk (80), each a scan of the index
    reader.close()


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    """Until the subprocess's hook has made `path` (the deadline only bounds a broken test)."""
    deadline = time.monotonic() + 120
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"the hook never reached {path.name}"
        time.sleep(0.01)


# The reader thread, at its second tile, takes h5py's lock (as a thread inside HDF5 holds it) and blocks
# for good; each signal the handler receives is reported in a file before it is handled.
SECOND_SIGNAL_HOOK = """
import threading
from pathlib import Path
from h5py._objects import phil
from deconv3d_cli.io import hdf5
from deconv3d_cli.run import stop
real_read, real_handler = hdf5.Hdf5Reader.read, stop._Stop.handler
reads, seen = [], []
def read(self, index):
    reads.append(index)
    if len(reads) == 2:
        with phil:
            Path({blocked!r}).touch()
            threading.Event().wait()
    return real_read(self, index)
def handler(self, signum, frame):
    seen.append(signum)
    Path({signals!r} + str(len(seen))).touch()
    return real_handler(self, signum, frame)
hdf5.Hdf5Reader.read, stop._Stop.handler = read, handler
"""


@pytest.mark.parametrize("out_name", ["o.npy", "o.h5"])
def test_a_second_sigterm_stops_at_once_while_a_reader_is_blocked_inside_hdf5(tmp_path, out_name):
    src = _h5(tmp_path / "in.h5", shape=(32, 32, 32))
    (tmp_path / "s.yaml").write_text(SPEC)
    out = tmp_path / out_name
    blocked, signals = tmp_path / "blocked", str(tmp_path / "signal-")
    args = ["upsample", str(src), "-o", str(out), "--spec", "s.yaml", "--tile", "8,32,32", "--checkpoint-every", "0"]
    script = SECOND_SIGNAL_HOOK.format(blocked=str(blocked), signals=signals)
    script += f"import sys\nfrom deconv3d_cli.cli import main\nsys.argv = ['deconv3d', *{args!r}]\nmain()\n"
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        _wait_for(blocked, proc)
        proc.send_signal(signal.SIGTERM)  # asks for a stop between tiles: the reader never returns
        _wait_for(Path(signals + "1"), proc)
        proc.send_signal(signal.SIGTERM)  # the second: at once
        stderr = proc.communicate(timeout=60)[1]  # was a hang: the signal swallowed, the reader joined forever
    finally:
        proc.kill()
        proc.wait()
    lines = stderr.strip().splitlines()
    assert proc.returncode == 143, stderr
    assert len(lines) == 1 and lines[0].startswith("deconv3d: stopped by SIGTERM: "), stderr
    assert lines[0].endswith("--resume")
    assert re.search(f"SIGTERM: [01] of 32 tiles of {re.escape(str(out))} kept", lines[0])
    assert not out.exists() and partial_path(out).exists() and journal_path(out).exists()
    clean = tmp_path / f"clean-{out_name}"
    for target, extra in ((out, ["--resume"]), (clean, [])):
        res = subprocess.run(
            [sys.executable, "-m", "deconv3d_cli", *args[:3], str(target), *args[4:], *extra],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert res.returncode == 0, res.stderr
    assert _values(out) == _values(clean)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["in.h5", "s.yaml", "blocked", "signal-1", "signal-2", out_name, f"clean-{out_name}"]
    )


def _values(path: Path) -> bytes:
    if path.suffix == ".npy":
        return np.load(path).tobytes()
    with h5py.File(path) as f:
        return f["data"][...].tobytes()


def test_a_dataset_with_every_chunk_stored_is_not_walked(tmp_path):
    reader = open_reader(_h5(tmp_path / "dense.h5", shape=(16, 16, 16), chunks=(2, 2, 2)))
    ident = _CountingId(reader._raw.id)
    reader._raw = _Proxy(reader._raw, ident)
    assert reader.read((slice(0, 16),)).min() > 0
    assert reader.missing_chunks == 0 and ident.calls == 0
    reader.close()
