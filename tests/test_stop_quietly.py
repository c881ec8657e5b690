"""A stop is one line on stderr, whatever else is going on: a second signal while the process exits,
or a stop while a local Dask cluster starts. Each stop is sent at an exact point by a hook."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ENV = {**os.environ, "TQDM_DISABLE": "1"}


def hooked(tmp_path: Path, hook: str, args: list) -> subprocess.CompletedProcess:
    """The CLI run as a program (a script, so Dask's spawned workers can import it) with `hook` installed."""
    script = tmp_path / "hooked.py"
    script.write_text(
        f"import atexit, os, signal, sys\nfrom deconv3d_cli.cli import main\n{hook}\n"
        f"if __name__ == '__main__':\n    install()\n    sys.argv = ['deconv3d', *{[str(a) for a in args]!r}]\n"
        "    main()\n"
    )
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=ENV, timeout=300)


@pytest.fixture
def job(tmp_path: Path) -> list:
    np.save(tmp_path / "x.npy", np.random.default_rng(1).uniform(0, 1, (16, 16, 16)).astype(np.float32))
    np.savez(tmp_path / "w.npz", kernel=np.ones((2, 2, 2, 1, 1), np.float32))
    (tmp_path / "s.yaml").write_text("filters: 1\nkernel_size: 2\nstrides: 2\nuse_bias: false\nweights: w.npz\n")
    return ["upsample", tmp_path / "x.npy", "--spec", tmp_path / "s.yaml", "--tile", "8,8,8", "--no-progress",
            "--checkpoint-every", "0"]  # fmt: skip


SECOND_SIGNAL_AT_EXIT = """
from deconv3d_cli.io import atomic
def install():
    real = atomic.OutputTarget.record
    def record(self, tiles):
        real(self, tiles)
        os.kill(os.getpid(), signal.SIGTERM)  # the first: the run stops after this checkpoint
    atomic.OutputTarget.record = record
    atexit.register(lambda: os.kill(os.getpid(), signal.SIGTERM))  # the second, while the process exits
"""


@pytest.mark.parametrize("fmt", ["npy", "zarr"])
def test_a_second_sigterm_while_exiting_adds_nothing(tmp_path, job, fmt):
    pytest.importorskip("zarr")
    res = hooked(tmp_path, SECOND_SIGNAL_AT_EXIT, [*job, "-o", tmp_path / f"y.{fmt}"])
    assert res.returncode == 143, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "continue with:" in lines[0], res.stderr
    assert (tmp_path / f".partial-y.{fmt}").exists()


STOP_AS_WORKERS_START = """
def install():
    import distributed
    real = distributed.LocalCluster.__init__
    def init(self, *a, **k):
        real(self, *a, **k)
        os.kill(os.getpid(), signal.SIGTERM)  # the workers are up, the cluster not yet ours to close
    distributed.LocalCluster.__init__ = init
"""


def test_a_stop_while_a_local_cluster_starts_is_one_line(tmp_path, job):
    pytest.importorskip("distributed")
    res = hooked(tmp_path, STOP_AS_WORKERS_START, [*job, "-o", tmp_path / "y.zarr", "--scheduler", "local:2"])
    assert res.returncode == 143, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "stopped by SIGTERM" in lines[0], res.stderr  # was: distributed.diskutils ERRORs
    assert not (tmp_path / "y.zarr").exists()
