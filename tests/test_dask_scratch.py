"""A local Dask cluster's scratch folder: named for its process, and removed by a later run once that
process is gone (a kill -9 of the client left `$TMPDIR/deconv3d-dask-*` behind for good)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from deconv3d_cli.run.dask import scratch
from deconv3d_cli.run.dask.scratch import PREFIX, make_scratch, start_time, sweep

if not Path("/proc/self/stat").exists():  # pragma: no cover - start times come from /proc
    pytestmark = pytest.mark.skip("needs /proc")


@pytest.fixture
def tmpdir_is(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def _dead_pid() -> tuple[int, int]:
    """The pid and start time of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    start = start_time(proc.pid)
    assert start is not None
    proc.communicate(b"")
    return proc.pid, start


def test_a_folder_left_by_a_killed_client_is_removed_by_the_next_run(tmpdir_is):
    script = (
        "import os, signal, tempfile\n"
        f"tempfile.tempdir = {str(tmpdir_is)!r}\n"
        "from deconv3d_cli.run.dask.scratch import make_scratch\n"
        "(make_scratch() / 'spill.bin').write_bytes(b'x' * 100)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert res.returncode == -signal.SIGKILL, res.stderr
    (left,) = tmpdir_is.iterdir()
    assert left.name.startswith(PREFIX)
    mine = make_scratch()  # was: the killed run's folder stayed for good
    assert list(tmpdir_is.iterdir()) == [mine]
    assert mine.name.startswith(f"{PREFIX}{os.getpid()}-{start_time(os.getpid())}-")


def test_only_folders_whose_owner_is_gone_are_removed(tmpdir_is):
    dead, dead_start = _dead_pid()
    me, my_start = os.getpid(), start_time(os.getpid())
    names = {
        f"{PREFIX}{dead}-{dead_start}-abc": False,  # its process has ended
        f"{PREFIX}{me}-{my_start}-def": True,  # a run still going (this process)
        f"{PREFIX}{me}-{my_start + 1}-ghi": False,  # the pid reused by another process: the owner is gone
        f"{PREFIX}abc123": True,  # named by an older version: whose it is cannot be known
        "other-1-2-xyz": True,
    }
    for name in names:
        (tmpdir_is / name).mkdir()
        (tmpdir_is / name / "f").write_bytes(b"1")
    (tmpdir_is / f"{PREFIX}{dead}-{dead_start}-file").write_bytes(b"a file, not ours to remove")
    removed = sweep(tmpdir_is)
    assert sorted(p.name for p in removed) == sorted(n for n, kept in names.items() if not kept)
    assert sorted(p.name for p in tmpdir_is.iterdir()) == sorted(
        [n for n, kept in names.items() if kept] + [f"{PREFIX}{dead}-{dead_start}-file"]
    )


def test_start_time_reads_past_a_command_name_with_spaces_and_parentheses(monkeypatch, tmp_path):
    fake = tmp_path / "stat"
    fields = ["S", *[str(n) for n in range(4, 22)], "987654", "1", "2"]
    fake.write_text("4242 (a (b) c) " + " ".join(fields) + "\n")
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: real(fake if str(self) == "/proc/4242/stat" else self))
    assert scratch.start_time(4242) == 987654


def test_the_local_cluster_works_in_a_folder_named_for_its_process(tmpdir_is):
    pytest.importorskip("dask")
    from deconv3d_cli.run.dask import cluster

    dead, dead_start = _dead_pid()
    (tmpdir_is / f"{PREFIX}{dead}-{dead_start}-old").mkdir()
    seen = {}

    class FakeCluster:
        def __init__(self, **kwargs) -> None:
            seen.update(kwargs)

        def close(self) -> None:
            pass

    class FakeClient:
        def __init__(self, cluster) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

    fake = type("distributed", (), {"LocalCluster": FakeCluster, "Client": FakeClient})
    with cluster._local_cluster(fake, 1):
        folder = Path(seen["local_directory"])
        assert [p for p in tmpdir_is.iterdir()] == [folder]  # the dead run's folder is gone
        assert folder.name.startswith(f"{PREFIX}{os.getpid()}-{start_time(os.getpid())}-")
    assert list(tmpdir_is.iterdir()) == []


WORKER_LOGS = """
import logging
from deconv3d_cli.run.dask.cluster import connect
with connect("local:1") as client:
    client.run(lambda: logging.getLogger("distributed.worker").error("a worker's error line"))
    client.run_on_scheduler(lambda: logging.getLogger("distributed.scheduler").error("a scheduler's error line"))
print("closed")
"""


@pytest.mark.slow
@pytest.mark.xdist_group("dask")
def test_the_local_clusters_error_lines_never_reach_the_users_stderr(tmp_path):
    """A stop that closes the scheduler under heartbeating workers made them log 'Failed to communicate
    with scheduler during heartbeat' with a CommClosedError traceback at ERROR; the run says a stop in
    one line, so the cluster's own ERROR lines (and anything below CRITICAL) are not shown."""
    pytest.importorskip("distributed")
    pytest.importorskip("zarr", minversion="3")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", WORKER_LOGS], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "closed", res.stderr
    assert "error line" not in res.stderr and "ERROR" not in res.stderr, res.stderr
