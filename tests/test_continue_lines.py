"""The continue line a stopped run prints finishes exactly the job that was stopped.

Each run is stopped at an exact point: a hook in the child process sends it SIGTERM right after a
chosen output's first tiles are journaled. The printed line is then parsed and run as it is, and every
output is compared byte for byte with a clean run; nothing of ours may be left in the output folder.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deconv3d_cli.run.continuation import RECORD_PREFIX

CLI = [sys.executable, "-m", "deconv3d_cli"]
ENV = {**os.environ, "TQDM_DISABLE": "1"}
HOOK = """
import os, signal, sys
from deconv3d_cli.io import atomic
from deconv3d_cli.cli import main
real = atomic.OutputTarget.record
def record(self, tiles):
    real(self, tiles)
    if self.target.name == {name!r} and self.done:
        os.kill(os.getpid(), signal.SIGTERM)  # the pipeline stops after this checkpoint
atomic.OutputTarget.record = record
sys.argv = ["deconv3d", *{args!r}]
main()
"""


def stopped(args: list, name: str) -> subprocess.CompletedProcess:
    """The CLI with `args`, stopped by SIGTERM as soon as output `name` has journaled tiles."""
    script = HOOK.format(name=name, args=[str(a) for a in args])
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=300)


def continued(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """Run the command the stopped run printed, exactly as printed (as a shell would split it)."""
    assert res.returncode == 143, res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert "Traceback" not in res.stderr and "continue with: " in line, res.stderr
    words = shlex.split(line.split("continue with: ", 1)[1])
    assert words[0] == "deconv3d"
    return subprocess.run([*CLI, *words[1:]], capture_output=True, text=True, env=ENV, timeout=300)


def ours(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith((".partial-", ".replaced-", RECORD_PREFIX)))


@pytest.fixture
def job(tmp_path: Path) -> tuple[Path, list[str]]:
    rng = np.random.default_rng(5)
    (tmp_path / "in").mkdir()
    for name in "abcd":
        np.save(tmp_path / "in" / f"{name}.npy", rng.standard_normal((16, 16, 16)).astype(np.float32))
    np.savez(tmp_path / "w.npz", kernel=rng.standard_normal((3, 3, 3, 1, 1)).astype(np.float32))
    (tmp_path / "s.yaml").write_text("filters: 1\nkernel_size: 3\nstrides: 2\nuse_bias: false\nweights: w.npz\n")
    return tmp_path, ["--spec", str(tmp_path / "s.yaml"), "--tile", "8,8,8", "--checkpoint-every", "0", "--no-progress"]


def older_outputs(out: Path) -> None:
    out.mkdir()
    for name in "abcd":
        np.save(out / f"{name}_x2.npy", np.full((33, 33, 33), 7.0, np.float32))  # an older run's outputs


def assert_a_clean_batch(root: Path, out: Path, common: list[str]) -> None:
    """Every output in `out` has the bytes of an uninterrupted batch, and nothing of ours is left."""
    clean = subprocess.run([*CLI, "upsample", f"{root}/in/*.npy", "-O", root / "clean", *common], env=ENV,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert clean.returncode == 0, clean.stderr
    for name in ("a_x2.npy", "b_x2.npy", "c_x2.npy", "d_x2.npy"):
        assert (out / name).read_bytes() == (root / "clean" / name).read_bytes(), name
    assert ours(out) == []


def test_a_stopped_overwrite_batch_continues_to_exactly_a_clean_run(job):
    root, common = job
    out = root / "out"
    older_outputs(out)
    res = stopped(["upsample", f"{root}/in/*.npy", "-O", out, *common, "--overwrite"], "c_x2.npy")
    assert (out / ".partial-c_x2.npy").exists()  # stopped in the middle of the third file
    again = continued(res)
    assert again.returncode == 0, again.stderr
    assert "4 file(s): 2 done, 2 skipped" in again.stderr  # a and b were rewritten already: not again
    assert_a_clean_batch(root, out, common)


def test_a_stopped_overwrite_batch_stopped_again_still_continues(job):
    root, common = job
    out = root / "out"
    older_outputs(out)
    first = stopped(["upsample", f"{root}/in/*.npy", "-O", out, *common, "--overwrite"], "b_x2.npy")
    words = shlex.split(first.stderr.strip().splitlines()[-1].split("continue with: ", 1)[1])
    second = stopped(words[1:], "d_x2.npy")  # the continuation itself stopped, in the last file
    again = continued(second)
    assert again.returncode == 0, again.stderr
    assert "4 file(s): 1 done, 3 skipped" in again.stderr
    assert_a_clean_batch(root, out, common)


def test_a_stopped_single_overwrite_continues_to_exactly_a_clean_run(job):
    root, common = job
    src = root / "in" / "a.npy"
    assert subprocess.run([*CLI, "upsample", src, "-o", root / "clean.npy", *common], env=ENV).returncode == 0
    target = root / "o.npy"
    np.save(target, np.full((33, 33, 33), 7.0, np.float32))
    again = continued(stopped(["upsample", src, "-o", target, *common, "--overwrite"], "o.npy"))
    assert again.returncode == 0, again.stderr
    assert target.read_bytes() == (root / "clean.npy").read_bytes()
    assert ours(root) == []


def test_continue_run_is_refused_without_overwrite_or_a_record(job):
    root, common = job
    base = [*CLI, "upsample", f"{root}/in/*.npy", "-O", root / "out", *common, "--continue-run"]
    res = subprocess.run([*base, "0123abcd"], capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 2 and "with --overwrite" in res.stderr, res.stderr
    res = subprocess.run([*base, "0123abcd", "--overwrite"], capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 2 and "no record of run 0123abcd" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([*base, "../../x", "--overwrite"], capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 2 and "not a run id" in res.stderr, res.stderr


DASK_HOOK = """
import os, signal, sys
from deconv3d_cli.cli import main
from deconv3d_cli.run.dask import runner
if __name__ == "__main__":
    real = runner._Many.finish
    def finish(self, pair, out):
        real(self, pair, out)
        if pair.output.name == "a_x2.npy":
            os.kill(os.getpid(), signal.SIGTERM)  # a is rewritten; b, c, d are not
    runner._Many.finish = finish
    sys.argv = ["deconv3d", *sys.argv[1:]]
    main()
"""


def test_a_stopped_overwrite_batch_on_dask_continues_to_exactly_a_clean_run(job):
    pytest.importorskip("distributed")
    root, common = job
    out = root / "out"
    older_outputs(out)
    (root / "hook.py").write_text(DASK_HOOK)
    args = ["upsample", f"{root}/in/*.npy", "-O", out, *common, "--overwrite", "--scheduler", "local:1"]
    res = subprocess.run([sys.executable, root / "hook.py", *map(str, args)], capture_output=True, text=True, env=ENV,
                         timeout=300)  # fmt: skip
    again = continued(res)
    assert again.returncode == 0, again.stderr
    assert "4 file(s): 3 done, 1 skipped" in again.stderr
    assert_a_clean_batch(root, out, common)
