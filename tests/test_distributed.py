"""--scheduler: tile plans as Dask tasks on a LocalCluster of worker processes (the dask extra).

One cluster of two one-thread worker processes serves the whole module (starting one takes seconds).
Runs choose their engine formulation by timing, so "exact" compares a cluster run with a single-process
run of the same plan and the same formulation (the cluster run reports which it used).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st

distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr", minversion="3")

from helpers import options as Options  # noqa: E402
from helpers import random_spec  # noqa: E402

from deconv3d_cli import InputError, LayerSpec, conv3d_transpose  # noqa: E402
from deconv3d_cli.cli import main  # noqa: E402
from deconv3d_cli.engine import Engine  # noqa: E402
from deconv3d_cli.io.atomic import journal_path, partial_path  # noqa: E402
from deconv3d_cli.run import dask as dd  # noqa: E402
from deconv3d_cli.run.batch import FilePair as Job  # noqa: E402
from deconv3d_cli.run.job import prepare  # noqa: E402
from deconv3d_cli.run.local import execute  # noqa: E402

pytestmark = pytest.mark.xdist_group("dask")  # with --dist loadgroup: one cluster, on one test worker


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
    )
    c = distributed.Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


def make_spec(rng: np.random.Generator, in_ch: int, **hyper) -> LayerSpec:
    return random_spec(rng, in_ch, **hyper)


def opts(**kw) -> Options:
    return Options(progress=False, scheduler="local:2", flush_every=0, **kw)


def single_process(spec: LayerSpec, src: Path, dst: Path, options: Options, report: dict) -> np.ndarray:
    """The threaded pipeline in this process, with the cluster run's engine formulation and thread count
    (the engine picks its formulation by timing; oneDNN's forward convolution, used by the phase
    formulations, sums in an order that depends on the thread count)."""
    import torch

    local = options.with_(cluster={"scheduler": None}, write={"overwrite": True},
                          compute={"threads": report["torch_threads"]})  # fmt: skip
    job = prepare(spec, src, dst, local)
    engine = Engine(job.spec, job.in_layout.channels(job.reader.shape), "cpu", "fp32", path=report["engine_path"])
    before = torch.get_num_threads()
    torch.set_num_threads(report["torch_threads"])
    try:
        execute(job, engine, local)
    finally:
        torch.set_num_threads(before)
    return read(dst)


def read(path: Path) -> np.ndarray:
    return zarr.open_group(str(path), mode="r")["0"][:] if path.suffix == ".zarr" else np.load(path)


def write_input(path: Path, x: np.ndarray) -> Path:
    if path.suffix == ".npy":
        np.save(path, x)
    elif path.suffix == ".h5":
        import h5py

        with h5py.File(path, "w") as f:
            f.create_dataset("vol", data=x, chunks=True)
    else:
        zarr.open_array(str(path), mode="w", shape=x.shape, dtype=x.dtype, chunks=(4,) * x.ndim)[...] = x
    return path


@settings(max_examples=10, deadline=None)
@example(fmt="npy", out_fmt="zarr", shape=(7, 3, 5), k=(1, 1, 2), s=(1, 2, 1), padding="valid", tile=(7, 5, 5),
         channels_first=False, seed=0)  # a tiny slab: torch's generic GEMM would sum per thread count  # fmt: skip
@example(fmt="npy", out_fmt="zarr", shape=(8, 3, 3), k=(1, 1, 3), s=(1, 3, 1), padding="valid", tile=(7, 5, 5),
         channels_first=False, seed=0)  # transpose_dnn_cl differs between 1 and 2 threads here  # fmt: skip
@given(
    fmt=st.sampled_from(["npy", "h5", "zarr"]),
    out_fmt=st.sampled_from(["zarr", "npy"]),
    shape=st.tuples(*[st.integers(3, 8)] * 3),
    k=st.tuples(*[st.integers(1, 4)] * 3),
    s=st.tuples(*[st.integers(1, 3)] * 3),
    padding=st.sampled_from(["valid", "same"]),
    tile=st.tuples(*[st.integers(5, 12)] * 3),
    channels_first=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_local_cluster_equals_single_process_exactly(
    client, tmp_path_factory, fmt, out_fmt, shape, k, s, padding, tile, channels_first, seed
):
    tmp = tmp_path_factory.mktemp("eq")
    rng = np.random.default_rng(seed)
    data_format = "channels_first" if channels_first else "channels_last"
    spec = make_spec(rng, 2, filters=3, kernel_size=k, strides=s, padding=padding, data_format=data_format)
    x = rng.standard_normal((2, *shape) if channels_first else (*shape, 2)).astype(np.float32)
    src = write_input(tmp / f"in.{fmt}", x)
    options = opts(tile=tile)
    report = dd.run_one(spec, src, tmp / f"out.{out_fmt}", options, client=client)
    assert report["status"] == "done" and report["tasks"] == report["tiles"]
    got = read(tmp / f"out.{out_fmt}")
    assert np.array_equal(got, single_process(spec, src, tmp / f"ref.{out_fmt}", options, report))
    cfg = spec.to_config()
    want = conv3d_transpose(
        x, spec.kernel, spec.bias, strides=s, padding=padding, data_format=cfg["data_format"], precision="fp64"
    )
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    assert not partial_path(tmp / f"out.{out_fmt}").exists() and not journal_path(tmp / f"out.{out_fmt}").exists()


def test_a_killed_worker_is_replaced_and_the_result_is_exact(client, tmp_path):
    rng = np.random.default_rng(1)
    spec = make_spec(rng, 2, filters=4, kernel_size=4)
    src = write_input(tmp_path / "in.h5", rng.standard_normal((24, 24, 24, 2)).astype(np.float32))
    pids = client.run(os.getpid)
    killed: list[int] = []
    seen = [0]

    def on_progress(voxels: int) -> None:
        seen[0] += 1
        if seen[0] == 4 and not killed:
            busy = [addr for addr, keys in client.processing().items() if keys and addr in pids]
            pid = pids[busy[0] if busy else next(iter(pids))]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    options = opts(tile=(12, 12, 12))
    report = dd.run_one(spec, src, tmp_path / "out.zarr", options, client=client, on_progress=on_progress)
    assert killed and report["tasks"] == 64
    assert np.array_equal(read(tmp_path / "out.zarr"), single_process(spec, src, tmp_path / "ref.npy", options, report))
    client.wait_for_workers(2, timeout=120)
    assert killed[0] not in client.run(os.getpid).values()
    assert not [n for _, _, files in os.walk(tmp_path / "out.zarr") for n in files if n.endswith(".partial")]


def test_worker_memory_stays_within_the_limit_and_the_window_is_bounded(client, tmp_path):
    client.restart()  # fresh workers: their peak above the footprint before the first tile is this run's
    rng = np.random.default_rng(2)
    l1l2 = {"class_name": "L1L2", "config": {"l1": 0.3, "l2": 0.2}}
    spec = make_spec(rng, 2, filters=4, kernel_size=4, activity_regularizer=l1l2)
    src = write_input(tmp_path / "in.npy", rng.standard_normal((48, 48, 48, 2)).astype(np.float32))
    limit = 20 << 20  # whole-plane slab tiles: 12 of them under this budget
    report = dd.run_one(spec, src, tmp_path / "out.zarr", opts(memory_limit=limit), client=client, window=3)
    assert report["tasks"] > 10 and report["max_tasks_in_flight"] <= 3
    assert report["memory_estimate_bytes"] <= limit
    assert 0 < report["worker_peak_memory_bytes"] <= limit, report["worker_memory_bytes"]
    assert len(report["worker_memory_bytes"]) == 2  # both workers took tasks
    y = read(tmp_path / "out.zarr").astype(np.float64)  # the activity penalty, summed over every task's tiles
    want = 0.3 * np.abs(y).sum() + 0.2 * (y**2).sum()
    assert report["regularization"]["activity"]["value"] == pytest.approx(want, rel=1e-6)


@pytest.mark.slow
def test_resume_skips_regions_a_killed_run_completed(client, tmp_path):
    """A run killed with -9 leaves its partial store and journal; the cluster run resumes it."""
    rng = np.random.default_rng(3)
    spec = make_spec(rng, 2, filters=4, kernel_size=3)
    layer = spec.save(tmp_path / "layer.yaml")
    src = write_input(tmp_path / "in.npy", rng.standard_normal((48, 48, 48, 2)).astype(np.float32))
    target = tmp_path / "out.zarr"
    common = [
        "--spec",
        str(layer),
        "--tile",
        "16,16,16",
        "--chunks",
        "16,16,8",
        "--no-progress",
        "--checkpoint-every",
        "0",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "deconv3d_cli", "upsample", str(src), "-o", str(target), *common],
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if journal_path(target).exists() and journal_path(target).read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial_path(target).is_dir() and not target.exists()
    with pytest.raises(InputError, match="another tile_shape"):
        dd.run_one(spec, src, target, opts(tile=(8, 8, 8), resume=True), client=client)
    options = opts(tile=(16, 16, 16), resume=True)
    # The killed run's tiles were computed with this process's thread count: the rest must be too.
    report = dd.run_one(spec, src, target, options, client=client, threads=torch.get_num_threads())
    assert report["resumed_tiles"] > 0 and report["tasks"] == report["tiles"] - report["resumed_tiles"]
    assert np.array_equal(read(target), single_process(spec, src, tmp_path / "ref.npy", options, report))


def test_batch_on_the_cluster_has_the_local_report(client, tmp_path):
    rng = np.random.default_rng(4)
    spec = make_spec(rng, 1, filters=1, kernel_size=4)
    (tmp_path / "in").mkdir()
    inputs = [
        write_input(tmp_path / "in" / f"s{i}.npy", rng.standard_normal((6, 7, 5)).astype(np.float32)) for i in range(3)
    ]
    inputs.append(write_input(tmp_path / "in" / "big.h5", rng.standard_normal((30, 28, 26)).astype(np.float32)))
    (tmp_path / "in" / "bad.npy").write_bytes(b"junk")
    inputs.append(tmp_path / "in" / "bad.npy")
    outputs = [tmp_path / "out" / f"{p.stem}.zarr" for p in inputs[:-1]] + [tmp_path / "out" / "bad.nii.gz"]
    (tmp_path / "out").mkdir()
    options = opts(memory_limit=2 << 20)
    jobs = [Job(i, o) for i, o in zip(inputs, outputs)]
    seen = []
    report = dd.run_many(
        jobs, lambda job: prepare(spec, job.input, job.output, options), options, client, on_file=seen.append
    )
    statuses = [(Path(f.input).name, f.status) for f in report.files]
    assert statuses == [("s0.npy", "done"), ("s1.npy", "done"), ("s2.npy", "done"), ("big.h5", "done"),
                        ("bad.npy", "failed")]  # fmt: skip
    assert report.exit_code == 1 and len(seen) == 5 and "not a readable .npy" in report.files[-1].error
    assert report.files[3].details["tasks"] > 1  # the large file ran as tile tasks
    for src, dst in zip(inputs[:-1], outputs[:-1]):
        x = np.load(src) if src.suffix == ".npy" else __import__("h5py").File(src)["vol"][:]
        want = conv3d_transpose(x, spec.kernel, spec.bias, strides=2, padding="same", precision="fp64")
        assert np.abs(read(dst) - want).max() <= 1e-5 * max(1.0, np.abs(want).max())
    json.dumps(report.as_json())


@pytest.mark.slow
def test_cli_scheduler_local_and_batch_output_format(tmp_path):
    """The command line starts its own cluster; a small file in a batch may write any format."""
    rng = np.random.default_rng(5)
    layer = make_spec(rng, 1, filters=1, kernel_size=4).save(tmp_path / "layer.yaml")
    write_input(tmp_path / "a.npy", rng.standard_normal((12, 10, 8)).astype(np.float32))
    res = CliRunner().invoke(
        main,
        ["upsample", str(tmp_path / "a.npy"), "-o", str(tmp_path / "a.zarr"), "--spec", str(layer),
         "--scheduler", "local:1", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["status"] == "done" and report["scheduler"] == "local:1"
    assert read(tmp_path / "a.zarr").shape == (24, 20, 16)
    with pytest.raises(InputError, match="--preset nearest --scale 1"):
        dd.run_one(LayerSpec.from_yaml(layer), tmp_path / "a.npy", tmp_path / "a.h5", opts())
    write_input(tmp_path / "b.npy", rng.standard_normal((5, 6, 7)).astype(np.float32))
    res = CliRunner().invoke(
        main,
        ["upsample", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "-O", str(tmp_path / "out"),
         "--spec", str(layer), "--output-format", "nii.gz", "--scheduler", "local:1", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    files = json.loads(res.stdout)["files"]
    assert [f["status"] for f in files] == ["done", "done"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_x2.nii.gz", "b_x2.nii.gz"]
