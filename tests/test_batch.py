"""Batch logic: input expansion, output names, shards (property-tested), skip/continue, exit codes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deconv3d_cli.errors import InputError, SpecError
from deconv3d_cli.run.batch import FilePair as Job
from deconv3d_cli.run.batch import FileResult, Report, run_batch
from deconv3d_cli.run.inputs import expand_inputs, output_name, parse_shard, plan_outputs, shard


@given(n=st.integers(0, 300), count=st.integers(1, 17))
def test_shards_are_disjoint_cover_the_list_and_balanced(n, count):
    paths = [Path(f"f{i:04d}.npy") for i in range(n)]
    parts = [shard(paths, i, count) for i in range(count)]
    flat = [p for part in parts for p in part]
    assert sorted(flat) == sorted(paths) and len(flat) == len(set(flat))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert parts == [shard(list(paths), i, count) for i in range(count)]  # deterministic


def test_parse_shard():
    assert parse_shard("0/4") == (0, 4) and parse_shard("3/4") == (3, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="I/N"):
            parse_shard(bad)


def test_expand_globs_lists_and_duplicates(tmp_path):
    for name in ("b.npy", "a.npy", "sub/c.npy"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    got = expand_inputs(
        [str(tmp_path / "*.npy"), str(tmp_path / "a.npy")], io.StringIO(f"# comment\n\n{tmp_path}/sub/c.npy\n")
    )
    assert [p.name for p in got] == ["a.npy", "b.npy", "c.npy"]
    assert [p.name for p in expand_inputs([str(tmp_path / "**" / "*.npy")])] == ["a.npy", "b.npy", "c.npy"]
    with pytest.raises(InputError, match="matched no files"):
        expand_inputs([str(tmp_path / "*.h5")])


def test_output_names_and_templates(tmp_path):
    assert output_name(Path("/d/scan.nii.gz"), "{stem}_x{scale}{ext}", (2, 2, 2), None, 0) == "scan_x2.nii.gz"
    assert output_name(Path("/d/scan.nii.gz"), "{stem}_x{scale}{ext}", (2, 2, 3), ".npy", 0) == "scan_x2x2x3.npy"
    assert output_name(Path("/d/p1/v.h5"), "{parent}-{index:03d}-{name}", (2, 2, 2), None, 7) == "p1-007-v.h5"
    with pytest.raises(SpecError, match="available: stem"):
        output_name(Path("a.npy"), "{nope}{ext}", (2, 2, 2), None, 0)
    with pytest.raises(SpecError, match="both be written"):
        plan_outputs([Path("x/a.npy"), Path("y/a.npy")], tmp_path, "{stem}{ext}", (2, 2, 2), None)
    jobs = plan_outputs([Path("x/a.npy"), Path("y/a.npy")], tmp_path, "{parent}_{stem}{ext}", (2, 2, 2), "nii.gz")
    assert [j.output.name for j in jobs] == ["x_a.nii.gz", "y_a.nii.gz"]


def _fake_run(tmp_path, names, fail=(), **kwargs):
    jobs = [Job(tmp_path / n, tmp_path / f"out_{n}") for n in names]
    calls = []

    def prepare(job):
        if job.input.name in fail:
            raise InputError("corrupt", source=str(job.input))
        return job

    def execute(job):
        calls.append(job.input.name)
        job.output.write_text("done")
        return {"output_shape": [2, 2, 2]}

    report = run_batch(jobs, prepare, execute, lambda j: {}, lambda j: None, **kwargs)
    return report, calls


def test_carry_on_skip_existing_and_fail_fast(tmp_path):
    report, calls = _fake_run(tmp_path, ["a", "b", "c", "d"], fail={"b"})
    assert [f.status for f in report.files] == ["done", "failed", "done", "done"]
    assert report.exit_code == 1 and "corrupt" in report.files[1].error
    report, calls = _fake_run(tmp_path, ["a", "b", "c", "d"], fail={"b"}, skip_existing=True)
    assert calls == [] and report.count("skipped") == 3 and report.count("failed") == 1
    report, calls = _fake_run(tmp_path, ["e", "f", "g"], fail={"f"}, fail_fast=True)
    assert [f.status for f in report.files] == ["done", "failed", "not_run"] and calls == ["e"]
    report, _ = _fake_run(tmp_path, ["a", "c"], skip_existing=True)
    assert report.exit_code == 0 and report.count("skipped") == 2


def test_report_json_keys_are_stable():
    r = Report()
    r.add(FileResult("a.npy", "b.npy", "done", details={"seconds": 1.0}))
    doc = r.as_json()
    assert set(doc) == {"version", "status", "files", "totals", "exit_code"} and doc["status"] == "done"
    assert set(doc["files"][0]) == {
        "input",
        "output",
        "status",
        "error",
        "input_shape",
        "output_shape",
        "input_dtype",
        "output_dtype",
        "spacing_in",
        "spacing_out",
        "tiles",
        "device",
        "seconds",
        "voxels_per_s",
        "engine_path",
        "constraints",
        "regularization",
    }
    assert doc["totals"]["done"] == 1 and doc["exit_code"] == 0
