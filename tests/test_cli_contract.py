"""What scripts rely on: one JSON document on stdout whatever happens, one-line errors, exit codes, dry
runs that refuse what the run would, stopping that keeps work, and the flags a shell user reaches for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import random_spec

from deconv3d_cli.cli import main
from deconv3d_cli.io.atomic import journal_path, partial_path

CLI = [sys.executable, "-m", "deconv3d_cli"]


def run(*args: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def one_json(res: subprocess.CompletedProcess) -> dict:
    doc = json.loads(res.stdout)  # one document, nothing else on stdout
    assert {"version", "exit_code", "error"} <= set(doc) and doc["exit_code"] == res.returncode
    return doc


@pytest.fixture
def layer(tmp_path):
    return random_spec(np.random.default_rng(0), 1, filters=1, kernel_size=3, strides=2).save(tmp_path / "l.yaml")


@pytest.fixture
def volume(tmp_path):
    np.save(tmp_path / "in.npy", np.random.default_rng(1).standard_normal((8, 9, 10)).astype(np.float32))
    return tmp_path / "in.npy"


def test_json_always_prints_one_document(tmp_path, layer, volume):
    ok = run("upsample", volume, "-o", tmp_path / "o.npy", "--spec", layer, "--json")
    assert ok.returncode == 0 and one_json(ok)["error"] is None and one_json(ok)["status"] == "done"
    usage = run("upsample", volume, "--spec", layer, "--json")  # neither -o nor -O
    assert usage.returncode == 2 and "-o OUTPUT" in one_json(usage)["error"]
    bad_input = run("upsample", tmp_path / "missing.npy", "-o", tmp_path / "x.npy", "--spec", layer, "--json")
    assert bad_input.returncode == 2 and "no such file" in one_json(bad_input)["error"]
    nothing = run("upsample", str(tmp_path / "none-*.npy"), "-O", tmp_path / "out", "--spec", layer, "--json")
    assert nothing.returncode == 2 and "matched no files" in one_json(nothing)["error"]
    batch = run("upsample", volume, "-O", tmp_path / "out", "--spec", layer, "--json")
    doc = one_json(batch)
    assert batch.returncode == 0 and doc["totals"]["done"] == 1 and doc["files"][0]["status"] == "done"


def test_usage_errors_are_one_line_with_exit_2(tmp_path, layer, volume):
    for args in (["upsample", volume, "--spec", layer], ["upsample", volume, "-o", "x.npy", "--tile", "0"],
                 ["upsample", volume, "-o", "x.npy", "--spec", layer, "--memory-limit", "12Q"], ["nope"]):  # fmt: skip
        res = run(*args)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("deconv3d: error: "), res.stderr


def test_force_is_overwrite_and_memory_units_are_binary(tmp_path, layer, volume):
    out = tmp_path / "o.npy"
    assert run("upsample", volume, "-o", out, "--spec", layer).returncode == 0
    again = run("upsample", volume, "-o", out, "--spec", layer)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert run("upsample", volume, "-o", out, "--spec", layer, "-f").returncode == 0
    res = CliRunner().invoke(main, ["upsample", str(volume), "-o", str(tmp_path / "p.npy"), "--spec", str(layer),
                                    "--dry-run", "--json", "--memory-limit", "1G"])  # fmt: skip
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(
    "out_name, extra, fragment",
    [
        ("x.nii.gz", ["--output-dtype", "float16"], "float16"),
        ("x.nii", ["--output-dataset", "foo"], "output dataset"),
        ("x.npy", ["--compression-level", "3"], "compression_level"),
        ("x.h5", ["--output-dtype", "bool"], "output-dtype"),
    ],
)
def test_dry_run_refuses_what_the_run_refuses(tmp_path, layer, volume, out_name, extra, fragment):
    target = tmp_path / out_name
    planned = run("upsample", volume, "-o", target, "--spec", layer, "--dry-run", *extra)
    real = run("upsample", volume, "-o", target, "--spec", layer, *extra)
    assert planned.returncode == real.returncode == 2
    assert planned.stderr == real.stderr and fragment in planned.stderr and str(target) in planned.stderr
    assert ".partial-" not in planned.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["in.npy", "l.npz",
                                                                                               "l.yaml"]  # fmt: skip


def test_dry_run_refuses_an_existing_output_and_a_gzip_input_for_a_cluster(tmp_path, layer, volume):
    (tmp_path / "o.npy").write_bytes(b"mine")
    res = run("upsample", volume, "-o", tmp_path / "o.npy", "--spec", layer, "--dry-run")
    assert res.returncode == 2 and "--overwrite" in res.stderr and (tmp_path / "o.npy").read_bytes() == b"mine"
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((40, 40, 40), np.float32), np.eye(4)), str(tmp_path / "in.nii.gz"))
    started = time.monotonic()
    res = run("upsample", tmp_path / "in.nii.gz", "-o", tmp_path / "o.zarr", "--spec", layer, "--scheduler", "local:2",
              "--memory-limit", "2MiB")  # fmt: skip
    assert res.returncode == 2 and "convert it to .zarr first" in res.stderr
    assert time.monotonic() - started < 20  # refused before a cluster starts (one takes seconds)


@pytest.mark.parametrize("value, fragment", [("bogus", "not a scheduler address"), ("missing.json", "no such"),
                                             ("empty.json", "no 'address'"), ("local:0", "local:N")])  # fmt: skip
def test_scheduler_input_errors(tmp_path, layer, volume, value, fragment):
    (tmp_path / "empty.json").write_text("{}")
    res = run("upsample", volume, "-o", tmp_path / "o.zarr", "--spec", layer, "--scheduler", str(tmp_path / value)
              if value.endswith(".json") else value)  # fmt: skip
    assert res.returncode == 2 and fragment in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_a_glob_that_matches_a_folder_skips_it_and_reports_it(tmp_path, layer, volume):
    (tmp_path / "sub1").mkdir()
    res = run("upsample", str(tmp_path / "*"), "-O", tmp_path / "out", "--spec", layer, "--json")
    doc = one_json(res)
    statuses = {Path(f["input"]).name: f["status"] for f in doc["files"]}
    assert statuses["sub1"] == "skipped" and statuses["in.npy"] == "done"


def test_names_come_from_the_path_the_user_gave_not_a_symlinks_target(tmp_path):
    """DataLad / git-annex trees: sub-01/anat/T1w.npy links into the annex; the output is named from the link."""
    from deconv3d_cli.run.inputs import output_name

    annex = tmp_path / ".git" / "annex" / "objects" / "Xk" / "MD5E-s1--abc.npy"
    annex.mkdir(parents=True)
    np.save(annex / "MD5E-s1--abc.npy", np.zeros((4, 4, 4), np.float32))
    link = tmp_path / "sub-01" / "anat" / "T1w.npy"
    link.parent.mkdir(parents=True)
    link.symlink_to(annex / "MD5E-s1--abc.npy")
    assert output_name(link, "{parent}_{stem}_x{scale}{ext}", (2, 2, 2), None, 0) == "anat_T1w_x2.npy"


def _big_job(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(2)
    np.save(tmp_path / "big.npy", rng.standard_normal((40, 40, 40, 2)).astype(np.float32))
    spec = random_spec(rng, 2, filters=3, kernel_size=3, strides=2)
    return tmp_path / "big.npy", spec.save(tmp_path / "big.yaml")


def _stop_after(proc: subprocess.Popen, journal: Path, tiles: int, signum: int) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"\n") > tiles:
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the run finished before it could be stopped"
    proc.send_signal(signum)
    return proc.communicate(timeout=60)[1]


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_ctrl_c_and_hangup_keep_the_work_too(tmp_path, signum, code):
    src, layer = _big_job(tmp_path)
    target = tmp_path / "o.npy"
    args = [*CLI, "upsample", src, "-o", target, "--spec", layer, "--tile", "8,8,8", "--checkpoint-every", "0"]
    proc = subprocess.Popen(list(map(str, args)), stderr=subprocess.PIPE, text=True)
    stderr = _stop_after(proc, journal_path(target), 5, signum)
    assert proc.returncode == code and stderr.strip().endswith("--resume") and len(stderr.strip().splitlines()) == 1
    assert partial_path(target).exists() and journal_path(target).exists()


@pytest.mark.slow
def test_a_stopped_batch_continues_with_skip_existing_and_resume(tmp_path):
    src, layer = _big_job(tmp_path)
    for name in ("a", "b"):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / f"{name}.npy").write_bytes(src.read_bytes())
    out = tmp_path / "out"
    common = ["--spec", layer, "--tile", "8,8,8", "--checkpoint-every", "0"]
    args = [*CLI, "upsample", tmp_path / "in" / "a.npy", tmp_path / "in" / "b.npy", "-O", out, *common]
    proc = subprocess.Popen(list(map(str, args)), stderr=subprocess.PIPE, text=True)
    stderr = _stop_after(proc, journal_path(out / "a_x2.npy"), 5, signal.SIGTERM)
    assert proc.returncode == 143 and "--skip-existing --resume" in stderr.strip().splitlines()[-1]
    again = stderr.strip().splitlines()[-1].split("continue with: ", 1)[1]
    assert again.startswith("deconv3d ")
    res = run(*again.split()[1:])
    assert res.returncode == 0, res.stderr
    ref = run("upsample", src, "-o", tmp_path / "ref.npy", *common)
    assert ref.returncode == 0
    for name in ("a_x2.npy", "b_x2.npy"):
        assert (out / name).read_bytes() == (tmp_path / "ref.npy").read_bytes()


def test_output_dir_that_is_a_file_is_refused(tmp_path, layer, volume):
    (tmp_path / "out").write_text("a file of the user's")
    res = run("upsample", volume, "-O", tmp_path / "out", "--spec", layer)
    assert res.returncode == 2 and "-O takes a folder" in res.stderr
    assert (tmp_path / "out").read_text() == "a file of the user's"


def test_nan_stored_in_an_integer_type_is_counted(tmp_path):
    x = np.zeros((6, 6, 6), np.float32)
    x[2, 3, 1] = np.nan
    np.save(tmp_path / "nan.npy", x)
    res = run("upsample", tmp_path / "nan.npy", "-o", tmp_path / "o.npy", "--preset", "nearest", "--output-dtype",
              "int16", "--json")  # fmt: skip
    doc = one_json(res)
    assert doc["nan_voxels"] == 8 and doc["clipped_voxels"] == 0 and np.load(tmp_path / "o.npy").max() == 0


@pytest.mark.slow
@pytest.mark.xdist_group("dask")
def test_local_workers_are_capped_at_the_usable_cpus_and_leave_no_scratch(tmp_path, layer, volume):
    pytest.importorskip("distributed")
    pytest.importorskip("zarr", minversion="3")
    from deconv3d_cli.run.resources import usable_cpus

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "TQDM_DISABLE": "1"}
    res = subprocess.run(
        [
            *CLI,
            "upsample",
            str(volume),
            "-o",
            str(tmp_path / "o.zarr"),
            "--spec",
            str(layer),
            "--scheduler",
            "local:500",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert f"starting {usable_cpus()}" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert list(scratch.iterdir()) == []


def test_the_quick_exit_runs_atexit_handlers_flushes_stdout_and_keeps_the_bytes(tmp_path, layer, volume):
    """A command that loaded torch ends with os._exit after the atexit handlers and a flush (cli/main.py):
    the JSON document still arrives whole through a pipe, handlers registered by the caller still run,
    and the output is the one the ordinary exit gives, byte for byte."""
    marker = tmp_path / "atexit-ran"
    script = (
        "import atexit, sys; from pathlib import Path\n"
        f"atexit.register(lambda: Path({str(marker)!r}).write_text('yes'))\n"
        "from deconv3d_cli.cli import main\n"
        "sys.argv[0] = 'deconv3d'\n"
        "main()\n"
    )
    args = ["upsample", str(volume), "-o", str(tmp_path / "quick.npy"), "--spec", str(layer), "--json"]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    quick = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=300)
    assert quick.returncode == 0, quick.stderr
    assert one_json(quick)["status"] == "done" and marker.read_text() == "yes"
    slow = subprocess.run([*CLI, *args[:3], str(tmp_path / "slow.npy"), *args[4:]], capture_output=True, text=True,
                          env={**env, "DECONV3D_FAST_EXIT": "0"}, timeout=300)  # fmt: skip
    assert slow.returncode == 0 and one_json(slow)["status"] == "done"
    assert (tmp_path / "quick.npy").read_bytes() == (tmp_path / "slow.npy").read_bytes()
    failed = run("upsample", volume, "-o", tmp_path / "quick.npy", "--spec", layer, "--json")  # exists: exit 2
    assert failed.returncode == 2 and "exists" in one_json(failed)["error"]


def test_a_caller_that_passes_arguments_keeps_its_process(tmp_path, layer, volume):
    """The quick exit is for the program alone: Click's runner (or any caller passing arguments) with
    torch loaded gets an exit code back and its process goes on."""
    import torch  # noqa: F401 - loaded, as after any run in this process

    res = CliRunner().invoke(main, ["upsample", str(volume), "-o", str(tmp_path / "o.npy"), "--spec", str(layer)])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "o.npy").shape[:3] == (16, 18, 20)
