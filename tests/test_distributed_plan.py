"""The Dask runner's planning side, which needs no cluster and no extra: --dry-run sizing, options, refusals."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import options as Options

from deconv3d_cli import InputError, LayerSpec
from deconv3d_cli.cli import main
from deconv3d_cli.run import dask as dd


def spec_file(tmp_path, **hyper):
    rng = np.random.default_rng(0)
    hyper = {"filters": 2, "kernel_size": 4, "strides": 2, "padding": "same", **hyper}
    k = LayerSpec.create(**hyper).kernel_size
    kernel = rng.standard_normal((*k, hyper["filters"], 1)).astype(np.float32)
    return LayerSpec.create(**hyper, kernel=kernel, bias=np.zeros(hyper["filters"], np.float32)).save(
        tmp_path / "layer.yaml"
    )


def run(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def test_parse_scheduler_and_input_shape():
    assert dd.parse_scheduler("local:3") == ("local", 3)
    assert dd.parse_scheduler("LOCAL[2]") == ("local", 2)
    assert dd.parse_scheduler("local")[0] == "local"
    assert dd.parse_scheduler("tcp://10.0.0.1:8786") == ("address", "tcp://10.0.0.1:8786")
    assert dd.parse_scheduler("/shared/scheduler.json") == ("file", "/shared/scheduler.json")
    for bad in ("local:0", "local:x", ""):
        with pytest.raises(InputError, match="scheduler"):
            dd.parse_scheduler(bad)
    assert dd.parse_input_shape("16384,16384,8192,1") == ((16384, 16384, 8192, 1), "float32")
    assert dd.parse_input_shape("64x64x64:uint16") == ((64, 64, 64), "uint16")
    for bad in ("1,2", "0,4,4", "4,4,4:object", "a,b,c"):
        with pytest.raises(InputError, match="input_shape"):
            dd.parse_input_shape(bad)


def test_dry_run_of_a_virtual_volume_larger_than_any_machine(tmp_path):
    """Tasks, bytes per task, memory per worker and an estimated time, without the input or a cluster."""
    layer = spec_file(tmp_path)
    out = tmp_path / "big.zarr"
    res = run(
        "upsample", "virtual.zarr", "-o", out, "--spec", layer, "--dry-run", "--json",
        "--input-shape", "16384,16384,8192,1:uint8", "--scheduler", "local:2", "--memory-limit", "512MiB",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    d = report["distributed"]
    assert report["output_shape"] == [32768, 32768, 16384, 2] and report["input_virtual"]
    assert d["tasks"] == report["tiles"] == math.prod(report["tile_grid"]) > 100_000
    tile = report["tile_shape"]
    assert d["bytes_written_per_task"] == math.prod(tile) * 2 * 4
    assert 0 < d["bytes_read_per_task"] <= math.prod(-(-t // 2) + 2 for t in tile)  # uint8, halo 1
    assert d["bytes_written_total"] == 32768 * 32768 * 16384 * 2 * 4
    assert d["bytes_read_total"] >= 16384 * 16384 * 8192  # every input voxel, halos re-read
    assert d["peak_memory_per_worker_bytes"] <= d["memory_limit_per_worker_bytes"] == 512 << 20
    assert d["workers"] == 2 and d["seconds_per_tile"] > 0
    per_task = d["seconds_per_tile"] + d["scheduler_overhead_s_per_task"]
    assert d["estimated_seconds_one_worker"] == pytest.approx(per_task * d["tasks"], rel=1e-3)
    assert d["estimated_seconds"] == pytest.approx(d["estimated_seconds_one_worker"] / 2, rel=1e-3)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["layer.npz", "layer.yaml"]
    text = run(
        "upsample", "virtual.zarr", "-o", out, "--spec", layer, "--dry-run", "--input-shape", "512,512,512,1"
    )  # fmt: skip
    assert text.exit_code == 0 and "estimated time:" in text.output and "tasks: " in text.output


def test_usage_errors_and_refused_outputs(tmp_path):
    layer = spec_file(tmp_path)
    np.save(tmp_path / "in.npy", np.zeros((8, 8, 8, 1), np.float32))
    res = run("upsample", tmp_path / "in.npy", "-o", tmp_path / "o.npy", "--spec", layer, "--input-shape", "8,8,8")
    assert res.exit_code == 2 and "--dry-run" in res.output
    # Another output format than Zarr / .npy is refused before any cluster starts, saying how to convert.
    for name in ("out.h5", "out.nii.gz"):
        res = run("upsample", tmp_path / "in.npy", "-o", tmp_path / name, "--spec", layer, "--scheduler", "local:2")
        assert res.exit_code == 2, res.output
        assert "--preset nearest --scale 1" in res.output and name.split(".")[0] + ".zarr" in res.output
        assert not (tmp_path / name).exists()


def test_missing_extra_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(InputError, match=r"pip install 'deconv3d-cli\[dask\]'"):
        with dd.connect("local:1"):
            pass


def test_align_chunks_divides_the_tiles(tmp_path):
    """A budget too small for chunk-aligned tiles gets chunks that divide the tiles (the user gave none)."""
    from deconv3d_cli.run.job import prepare

    layer = LayerSpec.from_yaml(spec_file(tmp_path, filters=1))
    reader = dd.VirtualReader(tmp_path / "v.npy", (40, 48, 44))
    job = prepare(layer, tmp_path / "v.npy", tmp_path / "o.zarr", Options(memory_limit=8 << 20), reader=reader)
    assert dd.chunk_misalignment(job, {})
    opts = dd.align_chunks(job, Options(memory_limit=8 << 20))
    assert dd.chunk_misalignment(job, opts.write.writer_options) is None
    assert all(t % c == 0 for t, c in zip(job.plan.tile_shape, opts.write.writer_options["chunks"]))
    given = Options(memory_limit=8 << 20, writer_options={"chunks": (64, 64, 64)})
    assert dd.align_chunks(job, given) is given  # the user's chunks are never changed: refused instead
    with pytest.raises(InputError, match="not aligned"):
        dd.refuse_output(job, given.write.writer_options)
