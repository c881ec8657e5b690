"""HDF5 inputs under stress: a file cut short while it is read, many small chunks, a second signal while
a reader thread is busy inside HDF5. Every stop is driven at an exact point by a hook in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from deconv3d_cli import InputError
from deconv3d_cli.io import open_reader

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
        if not name.startswith(("chunk_iter", "get_chunk_info", "get_num_chunks")):
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
