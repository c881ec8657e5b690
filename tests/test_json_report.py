"""One JSON schema per kind of document, on every exit: ok, usage error, input error, a failed file in
a batch, a stopped run, a dry run; and a SIGTERM at the very start still gets its document."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from helpers import random_spec

from deconv3d_cli.io.atomic import journal_path

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "deconv3d_cli" / "schemas"
CLI = [sys.executable, "-m", "deconv3d_cli"]
PRESET = ["--preset", "trilinear", "--scale", "2"]


def validate(document: dict, schema: str) -> None:
    schema_doc = json.loads((SCHEMAS / schema).read_text())
    jsonschema.Draft202012Validator.check_schema(schema_doc)
    jsonschema.Draft202012Validator(schema_doc).validate(document)


def run_json(*args: object, cwd: Path, env: dict | None = None) -> tuple[int, dict]:
    proc = subprocess.run([*CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env)
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    np.save(folder / "a.npy", np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6))
    (folder / "b.npy").write_bytes(b"not a volume at all\n" * 8)
    return folder


def test_every_document_kind_has_every_field(tmp_path, scans):
    a = scans / "a.npy"
    cases = {  # outcome -> (arguments, exit status)
        "ok": ([a, "-o", "o.npy", *PRESET, "--json"], 0),
        "dry run": ([a, "-o", "d.npy", *PRESET, "--json", "--dry-run"], 0),
        "usage error": ([a, "-o", "u.npy", "--json"], 2),
        "input error": ([tmp_path / "missing.npy", "-o", "m.npy", *PRESET, "--json"], 2),
        "batch ok": ([a, "-O", "out1", *PRESET, "--json"], 0),
        "batch dry run": ([a, "-O", "out1", "--name-template", "{stem}_dry{ext}", *PRESET, "--json", "--dry-run"], 0),
        "batch, a file failed": ([a, scans / "b.npy", "-O", "out3", *PRESET, "--json"], 1),
        "batch usage error": ([a, "-O", "out4", "--json"], 2),
        "batch input error": ([scans / "none*.npy", "-O", "out5", *PRESET, "--json"], 2),
    }
    for outcome, (args, code) in cases.items():
        rc, doc = run_json("upsample", *args, cwd=tmp_path)
        assert rc == code == doc["exit_code"], (outcome, doc)
        validate(doc, "report.schema.json")
        if "-O" in args:
            assert set(doc["totals"]) == {"files", "done", "skipped", "failed", "not_run", "planned", "stopped",
                                          "seconds"}, outcome  # fmt: skip
        else:  # the schema requires every field of one output's report
            assert "totals" not in doc and "seconds" in doc and "notes" in doc, outcome
    rc, doc = run_json("upsample", a, "-O", "out4", "--json", cwd=tmp_path)
    assert doc["totals"]["files"] == 0 and doc["files"] == [] and doc["status"] == "failed"
    rc, doc = run_json("upsample", a, scans / "b.npy", "-O", "out3b", *PRESET, "--json", cwd=tmp_path)
    assert (doc["status"], doc["totals"]["done"], doc["totals"]["failed"]) == ("failed", 1, 1)


def test_inspect_documents_follow_their_schema(tmp_path, scans):
    rc, doc = run_json("inspect", scans / "a.npy", "--json", cwd=tmp_path)
    assert rc == 0 and doc["shape"] == [4, 5, 6]
    validate(doc, "inspect.schema.json")
    rc, bad = run_json("inspect", scans / "b.npy", "--json", cwd=tmp_path)
    assert rc == 2 and bad["error"] and bad["shape"] is None
    validate(bad, "inspect.schema.json")
    assert set(bad) >= set(doc) - {"nifti"}


def test_the_schemas_are_package_data():
    """The schemas ship with the package (pyproject's package-data), where a user's script finds them."""
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "schemas/*.json" in data["deconv3d_cli"]
    assert {p.name for p in SCHEMAS.glob("*.json")} == {"report.schema.json", "inspect.schema.json"}


def _stop_at_start(tmp_path: Path, *args: object) -> tuple[int, str, str]:
    """Run the command, SIGTERM it at the pause hook (handlers in place, nothing parsed yet)."""
    ready = tmp_path / "ready"
    env = {**os.environ, "DECONV3D_TEST_PAUSE_AT_START": str(ready)}
    proc = subprocess.Popen([*CLI, *map(str, args)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert ready.exists(), "the command never reached its start"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


@pytest.mark.parametrize("where", ["-o", "-O"])
def test_sigterm_at_the_very_start_still_prints_one_document(tmp_path, scans, where):
    rc, out, err = _stop_at_start(tmp_path, "upsample", scans / "a.npy", where, "x.npy", *PRESET, "--json")
    assert rc == 143, err
    doc = json.loads(out)
    assert (doc["status"], doc["exit_code"]) == ("stopped", 143)
    assert doc["error"].startswith("stopped by SIGTERM")
    validate(doc, "report.schema.json")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x.npy").exists()


@pytest.mark.slow
def test_a_batch_stopped_mid_file_reports_every_file_in_the_schema(tmp_path):
    """SIGTERM once the first file has journaled some tiles (an exact point: the journal's lines)."""
    rng = np.random.default_rng(2)
    (tmp_path / "in").mkdir()
    for name in ("a", "b", "c"):
        np.save(tmp_path / "in" / f"{name}.npy", rng.standard_normal((40, 40, 40, 2)).astype(np.float32))
    layer = random_spec(rng, 2, filters=3, kernel_size=3, strides=2).save(tmp_path / "l.yaml")
    out = tmp_path / "out"
    args = ["upsample", tmp_path / "in" / "*.npy", "-O", out, "--spec", layer, "--tile", "8,8,8",
            "--checkpoint-every", "0", "--json"]  # fmt: skip
    proc = subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = journal_path(out / "a_x2.npy")
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if journal.exists() and journal.read_bytes().count(b"\n") > 3:
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the run finished before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    doc = json.loads(stdout)
    validate(doc, "report.schema.json")
    assert (proc.returncode, doc["exit_code"], doc["status"]) == (143, 143, "stopped"), stderr
    assert [f["status"] for f in doc["files"]] == ["stopped", "not_run", "not_run"]
    assert doc["totals"] == {**doc["totals"], "files": 3, "stopped": 1, "not_run": 2, "done": 0}
