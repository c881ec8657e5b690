"""`make bench`: this engine and this tool side by side with their peers, in one run.

    python benchmarks/run.py                 # the whole grid (a few minutes)
    python benchmarks/run.py --quick         # three layers and one preset
    python benchmarks/run.py --only engine,torch

Every implementation runs in a process of its own (so thread pools and allocators do not interfere)
over the same inputs, fp32, batch 1, whole volume in memory unless said otherwise; each time is the
median of --repeats calls after one warm-up. Ratios are peer time / our time (above 1: we are faster).

Layers: `engine` (deconv3d_cli's in-memory API), `tool` (the streaming pipeline, .npy file to .npy
file, default 1 GiB budget), `tf` (tf.keras Conv3DTranspose, from the `bench` extra), `torch` (plain
conv_transpose3d), and `disk`: writing the output's bytes to a fresh file and fsyncing it, O_DIRECT in
8 MiB blocks like `dd oflag=direct` (buffered where the filesystem refuses), the best a file-to-file
run can do on this disk. `bound/tool` is max(engine, disk) / tool: how close streaming comes to
whichever of compute and disk limits it. Presets: `preset` (ours, replicate boundary), `interpolate` (torch), `sitk`
(SimpleITK's linear resampler), `scipy` (ndimage.zoom, order 1), and `copy`: a memory copy of the
output's size, the bandwidth bound. Results: a table on stdout and benchmarks/results/bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

# (in channels, filters, kernel, stride, padding, input edge)
LAYERS = [
    (1, 1, 4, 2, "same", 128),
    (1, 1, 2, 2, "valid", 160),
    (1, 8, 3, 3, "same", 96),
    (1, 8, 4, 2, "same", 96),
    (8, 8, 4, 2, "same", 64),
    (8, 8, 3, 1, "same", 64),
    (8, 8, 3, 3, "valid", 48),
    (16, 16, 3, 2, "same", 64),
    (16, 16, 2, 2, "valid", 64),
    (32, 16, 4, 2, "valid", 48),
]
QUICK_LAYERS = [LAYERS[0], LAYERS[4], LAYERS[7]]
# (preset, scale, input edge)
PRESETS = [("trilinear", 2, 128), ("nearest", 2, 128), ("trilinear", 3, 96)]
LAYER_IMPLS = ("engine", "tool", "disk", "tf", "torch")
PRESET_IMPLS = ("preset", "interpolate", "sitk", "scipy", "copy")


def layer_name(c) -> str:
    return f"{c[0]}->{c[1]} k{c[2]} s{c[3]} {c[4]} {c[5]}^3"


def preset_name(p) -> str:
    return f"{p[0]} x{p[1]} {p[2]}^3"


# ----------------------------------------------------------------------------- worker side
def _median_ms(fn, repeats: int, warmup: int = 3) -> float:
    """Median after `warmup` calls: allocators (glibc's heap here, TensorFlow's BFC) reach their steady
    state only once a few volume-sized buffers have been freed and reused."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2] * 1e3


def _arrays(c):
    import numpy as np

    rng = np.random.default_rng(0)
    cin, f, k, s, pad, e = c
    x = rng.standard_normal((1, e, e, e, cin)).astype(np.float32)
    kernel = rng.normal(0, 0.1, (k, k, k, f, cin)).astype(np.float32)
    bias = rng.normal(0, 0.1, f).astype(np.float32)
    return x, kernel, bias


def work_layer(impl: str, c, repeats: int, tmp: Path) -> float | None:
    import numpy as np

    cin, f, k, s, pad, e = c
    x, kernel, bias = _arrays(c)
    if impl == "engine":
        from deconv3d_cli import Conv3DTranspose

        # The public API as a user calls it: channels_last numpy in, numpy out, like the tf.keras layer.
        layer = Conv3DTranspose(f, k, strides=s, padding=pad)
        layer.build(x.shape)
        layer.set_weights([kernel, bias])
        return _median_ms(lambda: layer(x), repeats)
    if impl == "tool":
        from deconv3d_cli import LayerSpec
        from deconv3d_cli.run.local import Options, run_job

        spec = LayerSpec.create(filters=f, kernel_size=k, strides=s, padding=pad, kernel=kernel, bias=bias)
        src = tmp / "in.npy"
        np.save(src, x[0])
        opts = Options(progress=False)
        engines: dict = {}
        times = []
        for _ in range(repeats + 1):
            # A new output each time, the last one removed outside the timing (as `disk` does): a run
            # replacing an old file would also pay for freeing its blocks.
            (tmp / "out.npy").unlink(missing_ok=True)
            times.append(run_job(spec, src, tmp / "out.npy", opts, engines)["seconds"] * 1e3)
        return sorted(times[1:])[len(times[1:]) // 2]
    if impl == "disk":
        from disk import write_fresh  # benchmarks/disk.py, beside this script

        out = [e * s if pad == "same" else (e - 1) * s + k for _ in range(3)]
        times = [write_fresh(tmp / "disk.bin", f * out[0] * out[1] * out[2] * 4) for _ in range(repeats + 1)]
        return sorted(times[1:])[len(times[1:]) // 2] * 1e3
    if impl == "torch":
        import torch
        import torch.nn.functional as F

        xt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
        w = torch.from_numpy(np.ascontiguousarray(kernel.transpose(4, 3, 0, 1, 2)))
        b = torch.from_numpy(bias)
        with torch.inference_mode():
            return _median_ms(lambda: F.conv_transpose3d(xt, w, b, stride=s), repeats)
    if impl == "tf":
        try:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
            import tensorflow as tf
            import tf_keras as keras
        except ImportError:
            return None
        layer = keras.layers.Conv3DTranspose(f, k, strides=s, padding=pad)
        layer.build(x.shape)
        layer.set_weights([kernel, bias])
        xt = tf.constant(x)
        return _median_ms(lambda: layer(xt).numpy(), repeats)
    raise ValueError(impl)


def work_preset(impl: str, p, repeats: int) -> float | None:
    import numpy as np

    name, scale, e = p
    x = np.random.default_rng(0).uniform(0, 1000, (e, e, e)).astype(np.float32)
    if impl == "preset":
        from deconv3d_cli.api import upsample

        return _median_ms(lambda: upsample(x, name, scale), repeats)
    if impl == "interpolate":
        import torch

        xt = torch.from_numpy(x)[None, None]
        kw = {"align_corners": False} if name == "trilinear" else {}
        mode = "trilinear" if name == "trilinear" else "nearest"
        with torch.inference_mode():
            return _median_ms(
                lambda: torch.nn.functional.interpolate(xt, scale_factor=scale, mode=mode, **kw).numpy(), repeats
            )
    if impl == "scipy":
        try:
            from scipy import ndimage
        except ImportError:
            return None
        return _median_ms(
            lambda: ndimage.zoom(x, scale, order=1 if name == "trilinear" else 0, grid_mode=True, mode="nearest"),
            repeats,
        )
    if impl == "sitk":
        try:
            import SimpleITK as sitk
        except ImportError:
            return None
        img = sitk.GetImageFromArray(x)

        def run():
            f = sitk.ResampleImageFilter()
            f.SetSize([n * scale for n in img.GetSize()])
            f.SetOutputSpacing([1.0 / scale] * 3)
            f.SetOutputOrigin([(1.0 / scale - 1.0) / 2] * 3)
            f.SetInterpolator(sitk.sitkLinear if name == "trilinear" else sitk.sitkNearestNeighbor)
            return sitk.GetArrayViewFromImage(f.Execute(img))

        return _median_ms(run, repeats)
    if impl == "copy":
        src = np.ones(x.size * scale**3, np.float32)
        dst = np.empty_like(src)
        return _median_ms(lambda: np.copyto(dst, src), repeats)
    raise ValueError(impl)


def worker(args) -> None:
    jobs = json.loads(args.worker_jobs)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, item in jobs:
            key = layer_name(item) if kind == "layer" else preset_name(item)
            try:
                if kind == "layer":
                    out[key] = work_layer(args.worker, item, args.repeats, Path(tmp))
                else:
                    out[key] = work_preset(args.worker, item, args.repeats)
            except Exception as exc:  # noqa: BLE001 - a peer's failure is a table cell, not a crash
                out[key] = f"error: {type(exc).__name__}: {exc}"
    print(json.dumps(out))


# ----------------------------------------------------------------------------- parent side
def run_impl(impl: str, jobs, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--worker-jobs", json.dumps(jobs), "--repeats", str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"__error__": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt(v) -> str:
    return f"{v:9.1f}" if isinstance(v, (int, float)) else f"{'-':>9}"


def ratio(peer, ours) -> str:
    if isinstance(peer, (int, float)) and isinstance(ours, (int, float)) and ours > 0:
        return f"{peer / ours:6.2f}x"
    return f"{'-':>7}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="comma-separated implementations to run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="where the results go (default benchmarks/results/bench.json)")
    ap.add_argument("--load", action="store_true", help="one busy process pinned to one CPU throughout (harness.py)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-jobs", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    layers = QUICK_LAYERS if args.quick else LAYERS
    presets = PRESETS[:1] if args.quick else PRESETS
    only = set(args.only.split(",")) if args.only else None
    results: dict[str, dict] = {}
    from harness import Load, loadavg  # benchmarks/harness.py, beside this script

    start_load = loadavg()
    with Load(1 if args.load else 0) as load:
        for impl in LAYER_IMPLS:
            if only is None or impl in only:
                print(f"running {impl} ...", file=sys.stderr, flush=True)
                results[impl] = run_impl(impl, [["layer", c] for c in layers], args.repeats)
        for impl in PRESET_IMPLS:
            if only is None or impl in only:
                print(f"running {impl} ...", file=sys.stderr, flush=True)
                results[impl] = run_impl(impl, [["preset", p] for p in presets], args.repeats)

    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}; fp32, ms (median); "
        f"load average {start_load} at start; {load.describe()}"
    ]
    head = (
        f"{'layer':<28}" + "".join(f"{i:>10}" for i in LAYER_IMPLS) + "   tf/engine torch/engine engine/tool bound/tool"
    )
    lines += ["", head, "-" * len(head)]
    for c in layers:
        key = layer_name(c)
        row = {i: results.get(i, {}).get(key) for i in LAYER_IMPLS}
        numbers = [v for v in (row["engine"], row["disk"]) if isinstance(v, (int, float))]
        bound = max(numbers) if numbers else None
        lines.append(
            f"{key:<28}"
            + "".join(f" {fmt(row[i])}" for i in LAYER_IMPLS)
            + f"   {ratio(row['tf'], row['engine'])}    {ratio(row['torch'], row['engine'])}     "
            + f"{ratio(row['engine'], row['tool'])}    {ratio(bound, row['tool'])}"
        )
    head = f"{'preset':<28}" + "".join(f"{i:>12}" for i in PRESET_IMPLS) + "   sitk/ours interp/ours copy/ours"
    lines += ["", head, "-" * len(head)]
    for p in presets:
        key = preset_name(p)
        row = {i: results.get(i, {}).get(key) for i in PRESET_IMPLS}
        lines.append(
            f"{key:<28}"
            + "".join(f"   {fmt(row[i])}" for i in PRESET_IMPLS)
            + f"   {ratio(row['sitk'], row['preset'])}   {ratio(row['interpolate'], row['preset'])}   "
            + f"{ratio(row['copy'], row['preset'])}"
        )
    lines.append("")
    lines.append("ratios are peer / ours; copy/ours is the fraction of memory-copy bandwidth the preset reaches")
    errors = {i: r["__error__"] for i, r in results.items() if "__error__" in r}
    for impl, msg in errors.items():
        lines.append(f"{impl}: {msg}")
    table = "\n".join(lines)
    print(table)
    doc = {"machine": lines[0], "layers": layers, "presets": presets, "results": results, "table": table}
    out = args.json or RESULTS / "bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
