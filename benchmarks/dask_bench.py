"""Dask runner benchmark: the same plan on 1 and 2 local worker processes against the single-process pipeline.

    python benchmarks/dask_bench.py                 # 128^3 x 1 -> 256^3 x 8 float32 Zarr, 64 MiB per worker
    python benchmarks/dask_bench.py --size 96       # a quicker look

Needs the dask extra (pip install 'deconv3d-cli[dask]'). Measures, file to file (.npy in, .zarr out):
  single     the threaded pipeline in this process (reader, engine and writer threads; torch on all cores);
  local:1    `--scheduler local:1`: one worker process with one task thread, torch on all cores;
  local:2    `--scheduler local:2`: two worker processes, torch on half the cores each.
Each configuration runs once to warm up (worker start-up imports torch) and then `--repeats` times; the
best wall time counts. Reported: output voxels/s, the scaling factor local:2 / local:1 and local:2 /
single, cluster start-up, and the scheduler overhead per task: the wall time not spent inside tasks,
(wall - sum(task seconds) / workers) / tasks, measured on the main plan and on a plan of many tiny tasks.
Results also go to benchmarks/results/dask.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
LAYER = {"filters": 8, "kernel_size": 4, "strides": 2, "padding": "same", "activation": "relu"}


def make_spec(in_ch: int = 1):
    from deconv3d_cli import LayerSpec

    rng = np.random.default_rng(0)
    k = LAYER["kernel_size"]
    kernel = rng.normal(0, 0.1, (k, k, k, LAYER["filters"], in_ch)).astype(np.float32)
    bias = rng.normal(0, 0.1, LAYER["filters"]).astype(np.float32)
    return LayerSpec.create(**LAYER, kernel=kernel, bias=bias)


def clean(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def run_single(spec, src: Path, dst: Path, options, path: str | None) -> dict:
    from deconv3d_cli.engine import Engine
    from deconv3d_cli.run.local import execute, prepare

    clean(dst)
    t0 = time.perf_counter()
    job = prepare(spec, src, dst, options)
    engine = Engine(
        job.spec, job.in_layout.channels(job.reader.shape), "cpu", "fp32", **({"path": path} if path else {})
    )
    report = execute(job, engine, options)
    report["wall"] = time.perf_counter() - t0
    return report


def run_cluster(spec, src: Path, dst: Path, options, client, path: str | None) -> dict:
    from deconv3d_cli.run.dask import runner as dd

    clean(dst)
    t0 = time.perf_counter()
    report = dd.run_one(spec, src, dst, options, client=client, engine_path=path)
    report["wall"] = time.perf_counter() - t0
    return report


def best(reports: list[dict]) -> dict:
    return min(reports, key=lambda r: r["wall"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128, help="input edge length (one channel)")
    ap.add_argument("--memory-limit", default="64MiB", help="per worker, and for the single process")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tiny", type=int, default=32, help="input edge of the many-tiny-tasks plan (8^3 tiles)")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument(
        "--engine-path",
        default="same",
        help="engine formulation for every run: 'same' (the single process's measured choice), 'auto' (each "
        "run measures its own), or transpose, transpose_cl, phase, phase_cl",
    )
    args = ap.parse_args()

    import distributed

    from deconv3d_cli.geometry.tiling import format_bytes, parse_bytes
    from deconv3d_cli.run.local import Options

    budget = parse_bytes(args.memory_limit)
    cores = os.cpu_count() or 1
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dask-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    spec = make_spec()
    rng = np.random.default_rng(1)
    src = work / "in.npy"
    np.save(src, rng.standard_normal((args.size,) * 3, dtype=np.float32))
    tiny = work / "tiny.npy"
    np.save(tiny, rng.standard_normal((args.tiny,) * 3, dtype=np.float32))
    out_voxels = (2 * args.size) ** 3 * LAYER["filters"]
    results: dict = {
        "machine": {"cores": cores},
        "layer": LAYER,
        "input_shape": [args.size] * 3,
        "output_shape": [2 * args.size] * 3 + [LAYER["filters"]],
        "memory_limit": budget,
        "runs": {},
    }

    def record(name: str, reports: list[dict], workers: int) -> dict:
        r = best(reports)
        entry = {
            "wall_s": round(r["wall"], 3),
            "output_voxels_per_s": round(out_voxels / r["wall"], 1),
            "tiles": r["tiles"],
            "tile_shape": r["tile_shape"],
            "engine_path": r.get("engine_path"),
            "walls_s": [round(x["wall"], 3) for x in reports],
        }
        if "task_seconds" in r:
            busy = r["task_seconds"] / workers
            entry.update(
                task_seconds_sum=round(r["task_seconds"], 3),
                overhead_per_task_ms=round(1000 * (r["wall"] - busy) / max(r["tasks"], 1), 2),
                worker_peak_memory_bytes=r["worker_peak_memory_bytes"],
            )
        results["runs"][name] = entry
        return entry

    options = Options(progress=False, memory_limit=budget)
    path = None if args.engine_path in ("same", "auto") else args.engine_path
    first = run_single(spec, src, work / "single.zarr", options, path)
    if args.engine_path == "same":
        path = first["engine_path"]
    single = [run_single(spec, src, work / "single.zarr", options, path) for _ in range(args.repeats)]
    record("single", single, 1)
    results["engine_path"] = args.engine_path if args.engine_path != "same" else f"same ({path})"

    for workers in (1, 2):
        t0 = time.perf_counter()
        cluster = distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )
        client = distributed.Client(cluster)
        client.wait_for_workers(workers)
        startup = time.perf_counter() - t0
        try:
            scheduled = Options(progress=False, memory_limit=budget, scheduler=f"local:{workers}")
            cold = run_cluster(spec, src, work / "cluster.zarr", scheduled, client, path)
            warm = [run_cluster(spec, src, work / "cluster.zarr", scheduled, client, path) for _ in range(args.repeats)]
            entry = record(f"local:{workers}", warm, workers)
            entry["cluster_startup_s"] = round(startup, 3)
            entry["first_run_wall_s"] = round(cold["wall"], 3)
            tiny_opts = Options(progress=False, tile=(8, 8, 8), scheduler=f"local:{workers}")
            tiny_runs = [run_cluster(spec, tiny, work / "tiny.zarr", tiny_opts, client, path) for _ in range(2)]
            t = best(tiny_runs)
            entry["tiny_tasks"] = t["tasks"]
            entry["tiny_overhead_per_task_ms"] = round(
                1000 * (t["wall"] - t["task_seconds"] / workers) / max(t["tasks"], 1), 2
            )
            entry["tiny_tasks_per_s"] = round(t["tasks"] / t["wall"], 1)
        finally:
            client.close()
            cluster.close()

    runs = results["runs"]
    results["scaling_local2_over_local1"] = round(runs["local:1"]["wall_s"] / runs["local:2"]["wall_s"], 3)
    results["local2_over_single"] = round(runs["single"]["wall_s"] / runs["local:2"]["wall_s"], 3)
    results["local1_over_single"] = round(runs["single"]["wall_s"] / runs["local:1"]["wall_s"], 3)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dask.json").write_text(json.dumps(results, indent=2) + "\n")

    print(
        f"{args.size}^3 x 1 -> {2 * args.size}^3 x {LAYER['filters']} float32 Zarr, "
        f"{format_bytes(budget)} per worker, {cores} cores"
    )
    print(f"{'run':<9} {'wall s':>8} {'Mvox/s':>8} {'tiles':>6} {'path':>13} {'overhead/task':>14} {'worker peak':>12}")
    for name, r in runs.items():
        over = f"{r['overhead_per_task_ms']:.1f} ms" if "overhead_per_task_ms" in r else "-"
        peak = format_bytes(r["worker_peak_memory_bytes"]) if "worker_peak_memory_bytes" in r else "-"
        print(
            f"{name:<9} {r['wall_s']:>8.2f} {r['output_voxels_per_s'] / 1e6:>8.1f} {r['tiles']:>6} "
            f"{str(r['engine_path']):>13} {over:>14} {peak:>12}"
        )
    for name in ("local:1", "local:2"):
        r = runs[name]
        print(
            f"{name}: cluster start-up {r['cluster_startup_s']:.1f} s, first run {r['first_run_wall_s']:.2f} s; "
            f"{r['tiny_tasks']} tiny tasks: {r['tiny_tasks_per_s']:.0f} tasks/s, "
            f"{r['tiny_overhead_per_task_ms']:.1f} ms overhead per task"
        )
    print(
        f"scaling local:2 / local:1 = {results['scaling_local2_over_local1']:.2f}x; "
        f"local:2 / single = {results['local2_over_single']:.2f}x; "
        f"local:1 / single = {results['local1_over_single']:.2f}x"
    )
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
