"""Same command, same input, same machine: the same bytes (compared as bytes, never with allclose).

Runs are separate processes (as a user's are), sharing one tuning cache per test: the first run
decides the formulation by timing and records it, every later one follows the record.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import options as Options
from helpers import random_spec

from deconv3d_cli import LayerSpec, conv3d_transpose
from deconv3d_cli.engine import Engine, tuning
from deconv3d_cli.io.atomic import journal_path, partial_path
from deconv3d_cli.run.local import run_job

CLI = [sys.executable, "-m", "deconv3d_cli"]


def env_for(tmp: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "DECONV3D_TUNING_DIR": str(tmp / "tuning"), "TQDM_DISABLE": "1", **extra}


def cli(env: dict[str, str], *args: object, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([*CLI, *map(str, args)], env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def contents(path: Path) -> dict[str, bytes]:
    """Every file of an output (a Zarr store is a folder), by relative name."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def save_input(path: Path, x: np.ndarray) -> Path:
    if path.suffix == ".npy":
        np.save(path, x)
    elif path.suffix == ".h5":
        import h5py

        with h5py.File(path, "w") as f:
            f.create_dataset("vol", data=x)
    else:
        import nibabel as nib

        nib.save(nib.Nifti1Image(x, np.diag([1.2, 1.0, 0.8, 1.0])), str(path))
    return path


def spec_file(tmp: Path, rng: np.random.Generator, in_ch: int, filters: int, k: int = 3) -> Path:
    spec = random_spec(rng, in_ch, filters=filters, kernel_size=k, strides=2, padding="same")
    return spec.save(tmp / "layer.yaml")


CASES = {
    "spec on .npy": ("in.npy", "out.npy", (40, 36, 44, 2), 2, 3),
    "spec on .nii.gz": ("in.nii.gz", "out.nii.gz", (30, 32, 28), 1, 1),
    "preset on .h5": ("in.h5", "out.h5", (30, 26, 34), 1, None),
    "multi-filter spec into Zarr": ("in.npy", "out.zarr", (24, 28, 20, 2), 2, 4),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_runs_of_the_same_command_write_the_same_bytes(tmp_path, case):
    src_name, out_name, shape, in_ch, filters = CASES[case]
    rng = np.random.default_rng(len(case))
    src = save_input(tmp_path / src_name, rng.standard_normal(shape).astype(np.float32))
    layer = (
        ["--preset", "trilinear", "--scale", "2"]
        if filters is None
        else ["--spec", spec_file(tmp_path, rng, in_ch, filters)]
    )
    env = env_for(tmp_path)
    outputs = []
    for run in range(3):
        target = tmp_path / f"{run}{out_name}"
        report = json.loads(cli(env, "upsample", src, "-o", target, *layer, "--memory-limit", "4MiB", "--json").stdout)
        assert report["tiles"] > 1 and report["exit_code"] == 0
        outputs.append((contents(target), report["engine_path"]))
    assert outputs[0] == outputs[1] == outputs[2]  # bytes and formulation, in three processes


# The stopped run's writer holds its tile `at + 2` until a stop is asked for (a slow disk, as it were):
# the tiles before it are journalled, and however loaded the machine, the run cannot finish before the
# test's signal arrives. Nothing is timed; the bytes written are the program's own.
HELD_WRITER = """
import sys
from deconv3d_cli.run import local
from deconv3d_cli.run.stop import STOP
at, write, seen = int(sys.argv[1]), local.write_tile, []
def held(job, writer, tile, data):
    seen.append(tile.index)
    if len(seen) == at + 2:  # tiles 1 .. at + 1 reach the journal, which the test waits for
        STOP.event.wait()
    return write(job, writer, tile, data)
local.write_tile = held
from deconv3d_cli.cli.main import main
sys.argv = ["deconv3d", *sys.argv[2:]]
main()
"""


def _journalled(target: Path) -> int:
    """Tiles the journal names so far (after its header line, each line lists tile numbers)."""
    try:
        lines = journal_path(target).read_bytes().splitlines()[1:]
    except OSError:
        return 0
    return sum(len(line.split()) for line in lines)


def _killed_then_resumed(tmp: Path, out_name: str, signum: int, seed: int) -> tuple[dict, dict, str]:
    """A clean run's bytes, and those of a run stopped at a random tile by `signum` then resumed."""
    import signal as sig
    import time

    rng = np.random.default_rng(seed)
    src = save_input(tmp / "in.npy", rng.standard_normal((40, 40, 40, 2)).astype(np.float32))
    layer = spec_file(tmp, rng, 2, 3)
    env = env_for(tmp)
    common = ["--spec", layer, "--tile", "8,8,8", "--checkpoint-every", "0"]
    cli(env, "upsample", src, "-o", tmp / f"clean{out_name}", *common)
    target = tmp / out_name
    at = int(rng.integers(2, 40))  # of 1000 tiles
    held = [sys.executable, "-c", HELD_WRITER, str(at)]  # the run cannot end before it is stopped
    proc = subprocess.Popen([*held, "upsample", src, "-o", target, *common], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120  # bounds the test only: the held run cannot end by itself
    while time.monotonic() < deadline and proc.poll() is None and _journalled(target) <= at:
        time.sleep(0.002)
    assert proc.poll() is None, "the run finished before it could be stopped"
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    if signum == sig.SIGTERM:
        assert proc.returncode == 143, stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].endswith("--resume") and "tiles of" in lines[0], stderr
    else:
        assert proc.returncode == -sig.SIGKILL
    assert partial_path(target).exists() and journal_path(target).exists() and not target.exists()
    refused = cli(env, "upsample", src, "-o", target, *common, check=False)
    assert refused.returncode == 2 and "--resume" in refused.stderr and "--overwrite" in refused.stderr
    report = json.loads(cli(env, "upsample", src, "-o", target, *common, "--resume", "--json").stdout)
    assert report["resumed_tiles"] > 0
    strays = sorted(p.name for p in tmp.iterdir() if p.name.startswith("."))
    return contents(tmp / f"clean{out_name}"), contents(target), ",".join(strays)


@pytest.mark.slow
@pytest.mark.parametrize("out_name", ["out.npy", "out.h5", "out.nii", "out.nii.gz", "out.zarr"])
@pytest.mark.parametrize("signum", ["SIGKILL", "SIGTERM"])
def test_stopped_then_resumed_equals_an_uninterrupted_run(tmp_path, out_name, signum):
    import signal as sig

    clean, resumed, strays = _killed_then_resumed(tmp_path, out_name, getattr(sig, signum), hash(out_name) % 97)
    assert resumed == clean and strays == ""


@pytest.mark.slow
@pytest.mark.xdist_group("dask")
def test_local_cluster_into_zarr_equals_the_single_process_npy(tmp_path):
    pytest.importorskip("distributed")
    zarr = pytest.importorskip("zarr", minversion="3")
    rng = np.random.default_rng(21)
    src = save_input(tmp_path / "in.npy", rng.standard_normal((32, 30, 28, 2)).astype(np.float32))
    layer = spec_file(tmp_path, rng, 2, 4)
    env = env_for(tmp_path)
    cli(env, "upsample", src, "-o", tmp_path / "one.npy", "--spec", layer, "--memory-limit", "8MiB")
    report = json.loads(cli(env, "upsample", src, "-o", tmp_path / "two.zarr", "--spec", layer, "--memory-limit",
                            "8MiB", "--scheduler", "local:2", "--json").stdout)  # fmt: skip
    assert report["tasks"] > 1
    one = np.load(tmp_path / "one.npy")
    two = zarr.open_group(str(tmp_path / "two.zarr"), mode="r")["0"][:]
    assert one.dtype == two.dtype and one.tobytes() == two.tobytes()


@pytest.mark.slow
@pytest.mark.xdist_group("dask")
@pytest.mark.parametrize("path", ["transpose_dnn", "phase_dnn_cl"])
def test_local_workers_compute_a_thread_count_dependent_formulation_at_the_single_process_count(tmp_path, path):
    """oneDNN's transposed convolution picks its kernels by the thread count: on this layer and slab
    a one-thread worker and a two-thread process differed in 142,496 of 413,440 values. A local:N
    worker runs it at the single process's count; a thread-invariant formulation at its share."""
    pytest.importorskip("distributed")
    zarr = pytest.importorskip("zarr", minversion="3")
    rng = np.random.default_rng(5)
    src = save_input(tmp_path / "in.npy", rng.standard_normal((19, 17, 40, 5)).astype(np.float32))
    layer = random_spec(rng, 5, filters=4, kernel_size=4, strides=2, padding="same").save(tmp_path / "layer.yaml")
    env = env_for(tmp_path)
    common = ["--spec", layer, "--engine-path", path, "--json"]
    one = json.loads(cli(env, "upsample", src, "-o", tmp_path / "one.npy", *common).stdout)
    two = json.loads(cli(env, "upsample", src, "-o", tmp_path / "two.zarr", *common, "--scheduler", "local:2").stdout)
    cpus = one["torch_threads"]
    assert two["torch_threads"] == (cpus if path == "transpose_dnn" else max(1, cpus // 2))
    got = zarr.open_group(str(tmp_path / "two.zarr"), mode="r")["0"][:]
    assert np.load(tmp_path / "one.npy").tobytes() == got.tobytes()


def test_a_separable_kernel_then_a_dense_one_of_the_same_geometry(tmp_path, fresh_tuning):
    """The decision for a separable kernel ('separable') is never handed to a dense one (API and run_job)."""
    rng = np.random.default_rng(3)
    taps = np.array([0.25, 0.75, 0.75, 0.25])
    separable = (taps[:, None, None] * taps[None, :, None] * taps[None, None, :])[..., None, None].astype(np.float32)
    dense = rng.standard_normal((4, 4, 4, 1, 1)).astype(np.float32)
    x = rng.standard_normal((1, 20, 20, 20, 1)).astype(np.float32)
    for kernel in (separable, dense):
        y = conv3d_transpose(x, kernel, None, strides=2, padding="same")
        want = conv3d_transpose(x, kernel, None, strides=2, padding="same", precision="fp64")
        assert np.abs(y - want).max() <= 1e-5 * np.abs(want).max()
    np.save(tmp_path / "in.npy", x[0, ..., 0])
    for name, kernel in (("a", separable), ("b", dense)):
        spec = LayerSpec.create(filters=1, kernel_size=4, strides=2, padding="same", use_bias=False, kernel=kernel)
        report = run_job(spec, tmp_path / "in.npy", tmp_path / f"{name}.npy", Options(progress=False))
        assert (report["engine_path"] == "separable") == (name == "a")


@pytest.mark.parametrize(
    "cin, f, k, s, pad, size",
    [(1, 1, 4, 2, "same", (24, 22, 20)), (2, 4, 3, 2, "same", (24, 22, 20)), (8, 8, 3, 1, "same", (24, 22, 20)),
     (16, 8, 2, 2, "same", (24, 22, 20)), (2, 3, (1, 1, 2), (1, 2, 1), "valid", (7, 3, 5)),
     (2, 3, 3, 2, "same", (3, 4, 2)), (4, 2, 2, 1, "valid", (5, 6, 7)),
     # oneDNN's transposed convolution differs between 1 and 2 threads on these
     (5, 3, (1, 2, 2), (1, 2, 1), "same", (1, 1, 6)), (4, 2, (4, 3, 4), (1, 1, 2), "same", (8, 35, 18)),
     (3, 1, (2, 4, 3), (2, 2, 1), "same", (1, 19, 39)), (2, 3, (1, 1, 3), (1, 3, 1), "valid", (1, 2, 3))],
)  # fmt: skip
def test_the_phase_formulations_give_the_same_bytes_at_any_thread_count(cin, f, k, s, pad, size):
    """What lets a one-thread Dask worker compute what a process with all its cores computes, tiny slabs
    too (there torch's own dispatch would take its generic GEMM, which is not eligible). oneDNN's
    transposed convolution (transpose_dnn*) is not thread-invariant on every shape (the last four
    cases differ at 1 and 2 threads): at a given thread count it is deterministic, checked here too."""
    from deconv3d_cli.engine import choice
    from deconv3d_cli.engine.formulations import THREAD_INVARIANT

    rng = np.random.default_rng(4)
    before = torch.get_num_threads()
    try:
        spec = random_spec(rng, cin, filters=f, kernel_size=k, strides=s, padding=pad)
        x = rng.standard_normal((1, cin, *size)).astype(np.float32)
        engine = Engine(spec, cin)
        for path in choice.eligible(engine):
            engine.force_path(path)
            results = {}
            for threads in (1, 2, 2, 1):
                torch.set_num_threads(threads)
                results.setdefault(threads, set()).add(engine.whole(x).contiguous().numpy().tobytes())
            assert all(len(r) == 1 for r in results.values()), path  # deterministic at each thread count
            if path in THREAD_INVARIANT:
                assert results[1] == results[2], path
    finally:
        torch.set_num_threads(before)


def test_decisions_are_recorded_once_and_followed(tmp_path, fresh_tuning):
    rng = np.random.default_rng(5)
    spec = random_spec(rng, 2, filters=3, kernel_size=3, strides=2, padding="same")
    x = np.zeros((1, 2, 12, 12, 12), np.float32)
    engine = Engine(spec, 2)
    first = engine.choose_path(x)
    assert engine.path_source == tuning.TIMED
    entries = list(fresh_tuning.glob("*.json"))
    assert len(entries) == 1 and json.loads(entries[0].read_text())["path"] == first
    # Another process would read it: forget this one's memory, and pretend the record says otherwise.
    entry = json.loads(entries[0].read_text())
    other = next(p for p in engine.available_paths() if p != first)
    entries[0].write_text(json.dumps({**entry, "path": other}))
    tuning.forget()
    assert Engine(spec, 2).choose_path(x) == other


def test_a_corrupt_entry_is_ignored_with_one_warning_and_replaced(tmp_path, fresh_tuning):
    rng = np.random.default_rng(6)
    spec = random_spec(rng, 2, filters=2, kernel_size=3, strides=2, padding="same")
    x = np.zeros((1, 2, 10, 10, 10), np.float32)
    Engine(spec, 2).choose_path(x)
    entry = next(fresh_tuning.glob("*.json"))
    entry.write_text("{not json")
    tuning.forget()
    with pytest.warns(Warning, match="unreadable tuning entry") as caught:
        path = Engine(spec, 2).choose_path(x)
    assert len(caught) == 1 and json.loads(entry.read_text())["path"] == path


def test_without_a_cache_the_rule_decides_without_timing(tmp_path, fresh_tuning, monkeypatch):
    rng = np.random.default_rng(7)
    spec = random_spec(rng, 2, filters=2, kernel_size=3, strides=2, padding="same")
    x = np.zeros((1, 2, 10, 10, 10), np.float32)
    monkeypatch.setenv("DECONV3D_TUNING", "off")
    engine = Engine(spec, 2)
    path = engine.choose_path(x)
    assert engine.path_source == tuning.RULE and path in engine.available_paths()
    assert not fresh_tuning.exists()
    monkeypatch.delenv("DECONV3D_TUNING")
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # a cache folder inside a file cannot be made, even by root
    monkeypatch.setenv("DECONV3D_TUNING_DIR", str(blocked / "tuning"))
    with pytest.warns(Warning, match="cannot be written"):
        assert Engine(spec, 2).choose_path(x) == path


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset")
def test_a_local_worker_shares_the_cpus_only_where_the_bytes_allow():
    """local:N gives each worker its share of the CPUs (worker_threads) for thread-invariant
    formulations; a thread-count dependent one runs at the single process's count; --threads wins."""
    from types import SimpleNamespace

    from deconv3d_cli.run.dask import cluster_options
    from deconv3d_cli.run.engines import cpu_threads
    from deconv3d_cli.run.options import ComputeOptions
    from deconv3d_cli.run.resources import usable_cpus

    def job(**kw):
        return SimpleNamespace(options=SimpleNamespace(compute=ComputeOptions(**kw)))

    cpus = usable_cpus()
    shared = job(worker_threads=1)
    assert [cpu_threads(shared, p) for p in ("phase_dnn", "phase_dnn_cl", "separable", "resample")] == [1] * 4
    assert [cpu_threads(shared, p) for p in ("transpose_dnn", "transpose_dnn_cl", "transpose", None)] == [cpus] * 4
    assert cpu_threads(job(threads=3, worker_threads=1), "transpose_dnn") == 3
    assert cpu_threads(job(), "phase_dnn") == cpus
    compute = cluster_options(Options(scheduler="local:2")).compute
    assert compute.threads is None and compute.worker_threads == max(1, cpus // min(2, cpus))
    compute = cluster_options(Options(scheduler="local:2", threads=3)).compute
    assert compute.threads == 3 and compute.worker_threads is None


def test_threads_follow_the_cpus_the_process_may_use(tmp_path):
    np.save(tmp_path / "in.npy", np.zeros((8, 8, 8), np.float32))
    env = env_for(tmp_path)
    res = subprocess.run(
        ["taskset", "-c", "0", *CLI, "upsample", tmp_path / "in.npy", "-o", tmp_path / "out.npy", "--preset",
         "trilinear", "--json"], env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["torch_threads"] == 1
