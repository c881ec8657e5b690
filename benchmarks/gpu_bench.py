"""GPU benchmark: one short script to run on a lent CUDA machine (a few minutes at most).

    python benchmarks/gpu_bench.py            # the grid of benchmarks/run.py at fp32 and bf16
    python benchmarks/gpu_bench.py --quick

For each layer: the engine's time (whole volume on the device, input already there; CUDA events),
output voxels/s, the path the engine chose, and the fraction of the device's memory bandwidth reached
(bytes the layer must move at least -- input read once, output written once -- over time, against a
measured device-to-device copy). Then the tool end to end on the device, .npy file to .npy file.
Results also go to benchmarks/results/gpu.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import LAYERS, QUICK_LAYERS, layer_name  # noqa: E402

from deconv3d_cli import LayerSpec  # noqa: E402
from deconv3d_cli.engine import Engine  # noqa: E402
from deconv3d_cli.run.local import Options, run_job  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def cuda_ms(fn, repeats: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def copy_bandwidth() -> float:
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = cuda_ms(lambda: b.copy_(a))
    return 2 * a.numel() / (ms / 1e3)  # read + write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    bw = copy_bandwidth()
    name = torch.cuda.get_device_name()
    print(f"device: {name}; device-to-device copy {bw / 1e9:.0f} GB/s")
    rows = []
    layers = QUICK_LAYERS if args.quick else LAYERS
    rng = np.random.default_rng(0)
    for c in layers:
        cin, f, k, s, pad, e = c
        kernel = rng.normal(0, 0.1, (k, k, k, f, cin)).astype(np.float32)
        bias = rng.normal(0, 0.1, f).astype(np.float32)
        spec = LayerSpec.create(filters=f, kernel_size=k, strides=s, padding=pad, kernel=kernel, bias=bias)
        for precision in ("fp32", "bf16"):
            engine = Engine(spec, cin, device="cuda", precision=precision)
            x = torch.randn(1, cin, e, e, e, device="cuda").to(engine.dtype)
            engine.choose_path(x)
            y = engine.whole(x)
            ms = cuda_ms(lambda engine=engine, x=x: engine.whole(x))
            moved = x.numel() * x.element_size() + y.numel() * y.element_size()
            row = {
                "layer": layer_name(c),
                "precision": precision,
                "path": engine.path,
                "ms": ms,
                "out_voxels_per_s": y.numel() / (ms / 1e3),
                "bandwidth_fraction": moved / (ms / 1e3) / bw,
            }
            rows.append(row)
            print(
                f"{row['layer']:<28} {precision:>5} {engine.path:<13} {ms:8.2f} ms "
                f"{row['out_voxels_per_s'] / 1e9:7.2f} Gvox/s  "
                f"{100 * row['bandwidth_fraction']:5.1f}% of copy bandwidth",
                flush=True,
            )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        c = (8, 8, 4, 2, "same", 192)
        cin, f, k, s, pad, e = c
        kernel = rng.normal(0, 0.1, (k, k, k, f, cin)).astype(np.float32)
        spec = LayerSpec.create(
            filters=f, kernel_size=k, strides=s, padding=pad, kernel=kernel, bias=np.zeros(f, np.float32)
        )
        np.save(tmp / "in.npy", rng.standard_normal((e, e, e, cin)).astype(np.float32))
        engines: dict = {}
        for precision in ("fp32", "bf16"):
            opts = Options(device="cuda", precision=precision, progress=False, overwrite=True)
            run_job(spec, tmp / "in.npy", tmp / "out.npy", opts, engines)
            t = time.perf_counter()
            report = run_job(spec, tmp / "in.npy", tmp / "out.npy", opts, engines)
            wall = time.perf_counter() - t
            out_bytes = (tmp / "out.npy").stat().st_size
            print(
                f"tool end to end {layer_name(c)} {precision}: {wall:.2f} s, {report['tiles']} tiles, "
                f"{report['voxels_per_s'] / 1e6:.0f} Mvox/s, {out_bytes / wall / 1e9:.2f} GB/s written"
            )
            rows.append({"tool": layer_name(c), "precision": precision, "seconds": wall, "tiles": report["tiles"]})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gpu.json").write_text(json.dumps({"device": name, "copy_bandwidth": bw, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
