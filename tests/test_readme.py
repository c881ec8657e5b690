"""Every console example of the README runs as written and prints what the README shows.

See readme_examples.py for the rules; a failure names the README line of the command.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from readme_examples import ROOT, examples, matches, run, workspace

from deconv3d_cli.geometry.sizes import DEFAULT_MEMORY_LIMIT, default_memory_limit

EXAMPLES = examples((ROOT / "README.md").read_text())


def test_the_readme_has_runnable_examples():
    assert len(EXAMPLES) >= 25 and any("upsample" in e.command for e in EXAMPLES)


def test_a_stale_computed_number_is_caught():
    line = "  regularization: kernel l2 = 0.128627, bias l1 = 0.0327951, activity l1_l2 = {}"
    printed, stale = [line.format("0.117576 (total 0.278998)")], [line.format("0.111988 (total 0.27341)")]
    assert matches(stale, printed) == stale[0]
    assert matches(printed, printed) is None
    assert matches(["x.npy: (2, 4, 5, 3, 2) float32"], ["x.npy: (2, 4, 5, 3, 3) float32"]) is not None
    assert matches(["  tiles: 1 of (80, 96, 88), memory estimate 22.9 MiB"],
                   ["  tiles: 1 of (80, 96, 88), memory estimate 23.0 MiB"]) is not None  # fmt: skip


def test_only_times_speeds_and_thread_counts_may_vary():
    assert matches(["  done in 0.03 s on cpu (26.5 Mvox/s)"], ["  done in 0.09 s on cpu (10.0 Mvox/s)"]) is None
    assert matches(["  done in 0.03 s on cpu (26.5 Mvox/s)"], ["  done in 0.09 s on cuda (10.0 Mvox/s)"]) is not None
    assert matches(["done   a.nii.gz -> out/a_x2.nii.gz (80, 96, 88) N s"],
                   ["done   a.nii.gz -> out/a_x2.nii.gz (80, 96, 88) 0.08 s"]) is None  # fmt: skip
    assert matches(["done   a.nii.gz -> out/a_x2.nii.gz (80, 96, 88) N s"],
                   ["done   a.nii.gz -> out/a_x2.nii.gz (80, 96, 89) 0.08 s"]) is not None  # fmt: skip
    worker = "  peak memory per worker: 295.8 MiB (--memory-limit 512.0 MiB, {} thread(s))"
    assert matches([worker.format(1)], [worker.format(8)]) is None
    assert matches([worker.format(1)], [worker.format(8).replace("295.8", "295.9")]) is not None


@pytest.mark.slow
def test_every_console_example_runs_as_written(tmp_path):
    if default_memory_limit() != DEFAULT_MEMORY_LIMIT:
        pytest.skip("the README's plans are those of the default tile budget, lowered here by a cgroup/SLURM limit")
    env = workspace(tmp_path)
    for example in EXAMPLES:
        res = run(example, tmp_path, env)
        printed = res.stdout.splitlines()
        where = f"README.md:{example.line}: $ {example.command}\n{res.stdout}"
        assert res.returncode == example.exit_code, where
        missing = matches(example.expected, printed)
        assert missing is None, f"{where}\nnot printed: {missing!r}"


def _ci_snippet() -> str:
    """The README's CI block (after `<!-- batch-ci -->`), as a user copies it."""
    text = (ROOT / "README.md").read_text()
    return text[text.index("<!-- batch-ci -->") :].split("```sh\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["all done", "a file fails", "nothing matched"])
def test_the_ci_snippet_reads_the_report_whatever_happens(tmp_path, case):
    """The snippet reads r["totals"] on success and on every failure (a usage error's report included)."""
    import ast
    import os
    import subprocess
    import sys

    import numpy as np

    if case != "nothing matched":
        (tmp_path / "scans").mkdir()
        np.save(tmp_path / "scans" / "a.npy", np.ones((3, 4, 5), np.float32))
    if case == "a file fails":
        (tmp_path / "scans" / "b.npy").write_bytes(b"not a volume\n" * 8)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "TQDM_DISABLE": "1"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", _ci_snippet()], cwd=tmp_path, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert "KeyError" not in proc.stderr, proc.stderr
    totals = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    expected = {"all done": (0, 1, 1, 0), "a file fails": (1, 2, 1, 1), "nothing matched": (2, 0, 0, 0)}[case]
    assert (proc.returncode, totals["files"], totals["done"], totals["failed"]) == expected, proc.stderr
