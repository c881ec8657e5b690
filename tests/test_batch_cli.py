"""Batch runs through the command line: mixed formats, corrupt files, skip-existing, README recipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from deconv3d_cli.api import upsample
from deconv3d_cli.cli import main
from deconv3d_cli.io import formats

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"


def make_inputs(folder: Path, n: int = 30, corrupt: tuple[int, ...] = (6, 9)) -> dict[Path, np.ndarray]:
    """n small volumes cycling through .npy, .h5, .nii and .nii.gz; `corrupt` indices are garbage."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    volumes = {}
    for i in range(n):
        x = rng.uniform(0, 100, (6, 5, 4)).astype(np.float32)
        kind = ("npy", "h5", "nii", "nii.gz")[i % 4]
        path = folder / f"vol{i:02d}.{kind}"
        if i in corrupt:
            path.write_bytes(b"this is not a volume\n" * 10)
        elif kind == "npy":
            np.save(path, x)
        elif kind == "h5":
            with h5py.File(path, "w") as f:
                f["volume"] = x
        else:
            nib.save(nib.Nifti1Image(x, np.diag([1.0, 1.0, 2.0, 1.0])), path)
        volumes[path] = x
    return volumes


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input)


def test_thirty_mixed_files_two_corrupt_then_skip_existing(tmp_path):
    volumes = make_inputs(tmp_path / "in")
    out = tmp_path / "out"
    args = ["upsample", str(tmp_path / "in" / "*"), "-O", str(out), "--preset", "trilinear", "--scale", "2", "--json"]
    r = invoke(*args)
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert doc["totals"] == {**doc["totals"], "files": 30, "done": 28, "failed": 2, "skipped": 0}
    failed = [f for f in doc["files"] if f["status"] == "failed"]
    assert sorted(Path(f["input"]).name for f in failed) == ["vol06.nii", "vol09.h5"]
    assert all(f["error"] and Path(f["input"]).name in f["error"] for f in failed)
    written = sorted(out.iterdir())
    assert len(written) == 28 and not [p for p in written if p.name.startswith(".")]
    for f in doc["files"]:
        if f["status"] != "done":
            continue
        src, dst = Path(f["input"]), Path(f["output"])
        assert dst.name == src.name.replace(".", "_x2.", 1)
        y = (
            nib.load(dst).get_fdata()
            if ".nii" in dst.name
            else (h5py.File(dst)["data"][...] if dst.suffix == ".h5" else np.load(dst))
        )
        ref = upsample(volumes[src], "trilinear", 2)
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4)
        assert f["output_shape"] == [12, 10, 8] and f["seconds"] >= 0
    mtimes = {p: p.stat().st_mtime_ns for p in written}
    r = invoke(*args, "--skip-existing")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["totals"]["skipped"] == 28 and doc["totals"]["failed"] == 2 and doc["totals"]["done"] == 0
    assert {p: p.stat().st_mtime_ns for p in sorted(out.iterdir())} == mtimes


def test_partial_leftover_does_not_count_as_finished(tmp_path):
    make_inputs(tmp_path / "in", n=2, corrupt=())
    out = tmp_path / "out"
    out.mkdir()
    (out / ".partial-vol00_x2.npy").write_bytes(b"half")
    r = invoke(
        "upsample", str(tmp_path / "in" / "*"), "-O", str(out), "--preset", "nearest", "--skip-existing", "--json"
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["totals"]["done"] == 2
    assert np.load(out / "vol00_x2.npy").shape == (12, 10, 8)


def test_fail_fast_stops_and_reports_the_rest(tmp_path):
    make_inputs(tmp_path / "in", n=5, corrupt=(1,))
    r = invoke(
        "upsample",
        str(tmp_path / "in" / "*"),
        "-O",
        str(tmp_path / "out"),
        "--preset",
        "nearest",
        "--fail-fast",
        "--json",
    )
    assert r.exit_code == 1
    statuses = [f["status"] for f in json.loads(r.stdout)["files"]]
    assert statuses == ["done", "failed", "not_run", "not_run", "not_run"]


def test_shards_split_the_work(tmp_path):
    make_inputs(tmp_path / "in", n=7, corrupt=())
    outputs = []
    for i in range(3):
        r = invoke(
            "upsample",
            str(tmp_path / "in" / "*"),
            "-O",
            str(tmp_path / f"o{i}"),
            "--preset",
            "nearest",
            "--shard",
            f"{i}/3",
            "--json",
        )
        assert r.exit_code == 0, r.output
        outputs += [f["input"] for f in json.loads(r.stdout)["files"]]
    assert sorted(outputs) == sorted(str(p) for p in (tmp_path / "in").iterdir())
    assert invoke("upsample", "x.npy", "-O", "o", "--preset", "nearest", "--shard", "3/3").exit_code == 2


def test_output_format_and_template(tmp_path):
    make_inputs(tmp_path / "in", n=2, corrupt=())
    r = invoke(
        "upsample",
        str(tmp_path / "in" / "*"),
        "-O",
        str(tmp_path / "out"),
        "--preset",
        "nearest",
        "--scale",
        "2,2,3",
        "--output-format",
        "nii.gz",
        "--name-template",
        "{index:02d}-{stem}-x{scale}{ext}",
    )
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["00-vol00-x2x2x3.nii.gz", "01-vol01-x2x2x3.nii.gz"]
    assert nib.load(tmp_path / "out" / names[0]).shape == (12, 10, 12)


def test_usage_errors_in_batch(tmp_path):
    assert invoke("upsample", "a.npy", "b.npy", "-o", "c.npy", "--preset", "nearest").exit_code == 2
    assert invoke("upsample", "a.npy", "-o", "c.npy", "-O", "d", "--preset", "nearest").exit_code == 2
    r = invoke("upsample", str(tmp_path / "*.npy"), "-O", str(tmp_path / "o"), "--preset", "nearest")
    assert r.exit_code == 2 and "matched no files" in r.stderr
    r = invoke("upsample", "a.npy", "-O", str(tmp_path / "o"), "--preset", "nearest", "--name-template", "{oops}")
    assert r.exit_code == 2 and "{oops}" in r.stderr or "oops" in r.stderr


def test_a_batch_says_what_it_left_out(tmp_path):
    """A glob's non-volumes (a folder, a notes.txt) are skipped and reported alike; an input given twice
    runs once, with a line and a JSON entry saying so; a non-volume named itself fails as that file."""
    scans = tmp_path / "scans"
    (scans / "sub-01").mkdir(parents=True)
    (scans / "notes.txt").write_text("acquired on the 3T\n")
    np.save(scans / "a.npy", np.ones((3, 4, 5), np.float32))
    a = str(scans / "a.npy")
    r = invoke("upsample", str(scans / "*"), a, os.path.relpath(a), "-O", str(tmp_path / "out"),
               "--preset", "nearest", "--scale", "2", "--json")  # fmt: skip
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    why = {(Path(f["input"]).name, f["status"], f["error"]) for f in doc["files"]}
    assert ("notes.txt", "skipped", "not a volume file; volumes end in " + ", ".join(formats.suffixes())) in why
    assert ("sub-01", "skipped", "a folder, not a volume file") in why
    assert sum(f["status"] == "skipped" and f["error"].startswith("given twice") for f in doc["files"]) == 2
    assert doc["totals"] == {**doc["totals"], "files": 5, "done": 1, "skipped": 4, "failed": 0}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_x2.npy"]
    r = invoke("upsample", a, a, "-O", str(tmp_path / "out2"), "--preset", "nearest", "--scale", "2")
    assert r.exit_code == 0 and f"skipped {a} (given twice; processed once)" in r.stderr.splitlines()
    named = invoke("upsample", str(scans / "notes.txt"), "-O", str(tmp_path / "out3"), "--preset", "nearest",
                   "--json")  # fmt: skip
    assert named.exit_code == 1 and json.loads(named.stdout)["files"][0]["status"] == "failed"
    folder = invoke("upsample", str(scans / "sub-01"), "-O", str(tmp_path / "out4"), "--preset", "nearest")
    assert folder.exit_code == 1 and f"FAILED {scans / 'sub-01'}: unknown file type" in folder.stderr


# ---------------------------------------------------------------- README recipes, run as written


def _sh(script: str, cwd: Path) -> subprocess.CompletedProcess:
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "TQDM_DISABLE": "1"}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True, text=True)


def _readme_block(marker: str) -> str:
    """The shell block that follows `<!-- marker -->` in the README."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"<!-- {marker} -->")
    block = text[start:].split("```sh\n", 1)[1].split("```", 1)[0]
    return block


@pytest.mark.slow
@pytest.mark.parametrize("marker", ["batch-loop", "batch-find", "batch-ci"])
def test_readme_batch_recipes(tmp_path, marker):
    make_inputs(tmp_path / "scans", n=4, corrupt=())
    proc = _sh(_readme_block(marker), tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outs = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file() and not p.name.endswith(".json"))
    assert len(outs) == 4, outs
