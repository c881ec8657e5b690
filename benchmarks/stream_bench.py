"""Streaming benchmark: a file-to-file run whose output exceeds the memory budget many times over.

    python benchmarks/stream_bench.py                  # 256^3 x 1 -> 512^3 x 8 (4 GiB out), 256 MiB budget
    python benchmarks/stream_bench.py --size 128       # a quicker look

Measures, each in its own process (peak RSS from wait4):
  footprint  the interpreter + torch + this package after one tiny tile (what any run pays);
  in-memory  the whole-volume engine (deconv3d_cli.api) on a volume that fits, same layer;
  streaming  `deconv3d upsample` .npy -> .npy under --memory-limit;
  disk       the same number of bytes written to a new file, O_DIRECT + fsync (benchmarks/disk.py);
and prints throughput (output elements/s), the ratio streaming / in-memory, and peak RSS against
budget + footprint. Results also go to benchmarks/results/stream.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from disk import write_fresh  # benchmarks/disk.py, beside this script

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

LAYER = {"filters": 8, "kernel_size": 4, "strides": 2, "padding": "same", "activation": "relu"}


def run_child(args: list[str], env: dict | None = None) -> tuple[float, int, str]:
    """Wall seconds, peak RSS bytes and stdout of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    # communicate() reaped the child; its rusage is folded into RUSAGE_CHILDREN, so measure per child
    # with a wrapper instead: the child prints its own ru_maxrss on exit (see _rss_wrapper).
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}): {' '.join(args)}\n{err}")
    rss = 0
    for line in err.splitlines():
        if line.startswith("PEAK_RSS_KB="):
            rss = int(line.split("=")[1]) * 1024
    return wall, rss, out


def _rss_wrapper(code: str) -> list[str]:
    """Run `code`, then print the process's peak RSS on stderr."""
    tail = (
        "\nimport resource, sys;"
        "print(f'PEAK_RSS_KB={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)"
    )
    return [sys.executable, "-c", code + tail]


def write_spec(folder: Path, in_ch: int) -> Path:
    from deconv3d_cli import LayerSpec

    rng = np.random.default_rng(0)
    k = LAYER["kernel_size"]
    kernel = rng.normal(0, 0.1, (k, k, k, LAYER["filters"], in_ch)).astype(np.float32)
    bias = rng.normal(0, 0.1, LAYER["filters"]).astype(np.float32)
    return LayerSpec.create(**LAYER, kernel=kernel, bias=bias).save(folder / "layer.yaml")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="input edge length for the streaming run")
    ap.add_argument("--fit-size", type=int, default=96, help="input edge length for the in-memory run")
    ap.add_argument("--mid-size", type=int, default=160, help="input edge for the file-to-file comparison")
    ap.add_argument("--memory-limit", default="256MiB")
    ap.add_argument("--workdir", type=Path, default=None, help="where the big files go (default: a temp dir)")
    args = ap.parse_args()
    from deconv3d_cli.geometry.tiling import format_bytes, parse_bytes

    budget = parse_bytes(args.memory_limit)
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        spec = write_spec(tmp, 1)
        rng = np.random.default_rng(1)
        big = tmp / "big.npy"
        np.save(big, rng.standard_normal((args.size,) * 3).astype(np.float32))
        small = tmp / "small.npy"
        np.save(small, rng.standard_normal((args.fit_size,) * 3).astype(np.float32))

        footprint_code = (
            "import numpy as np, torch; from deconv3d_cli import LayerSpec; from deconv3d_cli.engine import Engine;"
            f"s = LayerSpec.from_yaml({str(spec)!r}); e = Engine(s, 1);"
            "e.whole(np.zeros((1, 1, 4, 4, 4), np.float32))"
        )
        _, footprint, _ = run_child(_rss_wrapper(footprint_code))

        mem_code = (
            "import time, numpy as np, torch; from deconv3d_cli import LayerSpec;"
            "from deconv3d_cli.engine import Engine;"
            f"s = LayerSpec.from_yaml({str(spec)!r}); e = Engine(s, 1);"
            f"x = np.load({str(small)!r})[None, None]; e.whole(x); ts = []\n"
            "for _ in range(3):\n"
            "    t = time.perf_counter(); y = e.whole(x); ts.append(time.perf_counter() - t)\n"
            "print(sorted(ts)[1], y.numel())"
        )
        _, mem_rss, out = run_child(_rss_wrapper(mem_code))
        mem_s, mem_elems = float(out.split()[0]), int(out.split()[1])

        mid = tmp / "mid.npy"
        np.save(mid, rng.standard_normal((args.mid_size,) * 3).astype(np.float32))
        f2f_code = (
            "import os, time, numpy as np, torch; from deconv3d_cli import LayerSpec;"
            "from deconv3d_cli.engine import Engine, to_numpy;"
            f"s = LayerSpec.from_yaml({str(spec)!r}); e = Engine(s, 1)\n"
            "e.whole(np.zeros((1, 1, 4, 4, 4), np.float32))\n"
            f"t = time.perf_counter(); x = np.load({str(mid)!r})[None, None]; y = to_numpy(e.whole(x))\n"
            f"with open({str(tmp / 'mid_mem.npy')!r}, 'wb') as f:\n"
            "    np.save(f, np.moveaxis(y[0], 0, -1)); f.flush(); os.fsync(f.fileno())\n"
            "print(time.perf_counter() - t, y.size)"
        )
        _, f2f_rss, out = run_child(_rss_wrapper(f2f_code))
        f2f_s, f2f_elems = float(out.split()[0]), int(out.split()[1])
        (tmp / "mid_mem.npy").unlink()
        mid_cli = (
            "import sys; from deconv3d_cli.cli import main; sys.argv = ['deconv3d', 'upsample',"
            f" {str(mid)!r}, '-o', {str(tmp / 'mid_up.npy')!r}, '--spec', {str(spec)!r}, '--memory-limit', "
            f"{args.memory_limit!r}, '--no-progress', '--json', '--device', 'cpu']\n"
            "code = main.main(standalone_mode=False)\nassert not code, code"  # no os._exit: the tail reports
        )
        _, mid_rss, out = run_child(_rss_wrapper(mid_cli))
        mid_s = json.loads(out)["seconds"]
        (tmp / "mid_up.npy").unlink()

        out_path = tmp / "big_up.npy"
        cli = (
            "import sys; from deconv3d_cli.cli import main; sys.argv = ['deconv3d', 'upsample',"
            f" {str(big)!r}, '-o', {str(out_path)!r}, '--spec', {str(spec)!r}, '--memory-limit', "
            f"{args.memory_limit!r}, '--no-progress', '--json', '--device', 'cpu']\n"
            "code = main.main(standalone_mode=False)\nassert not code, code"  # no os._exit: the tail reports
        )
        wall, stream_rss, out = run_child(_rss_wrapper(cli))
        report = json.loads(out)
        out_bytes = out_path.stat().st_size
        stream_elems = int(np.prod(report["output_shape"]))
        stream_s = report["seconds"]
        out_path.unlink()
        disk_s = write_fresh(tmp / "disk.bin", out_bytes)

    mem_rate, stream_rate = mem_elems / mem_s, stream_elems / stream_s
    rows = {
        "machine": f"{os.cpu_count()} cores",
        "layer": LAYER,
        "footprint_rss": footprint,
        "in_memory": {"input": [args.fit_size] * 3, "seconds": mem_s, "elements_per_s": mem_rate, "peak_rss": mem_rss},
        "streaming": {
            "input": [args.size] * 3,
            "output_bytes": out_bytes,
            "memory_limit": budget,
            "tiles": report["tiles"],
            "tile_shape": report["tile_shape"],
            "seconds": stream_s,
            "process_wall_s": wall,
            "elements_per_s": stream_rate,
            "peak_rss": stream_rss,
            "peak_rss_over_footprint": stream_rss - footprint,
        },
        "ratio_streaming_over_in_memory": stream_rate / mem_rate,
        # The disk alone, writing the same bytes O_DIRECT + fsync (benchmarks/disk.py), and streaming
        # against the slower of it and the in-memory engine at the streaming size.
        "disk_seconds": disk_s,
        "ratio_streaming_over_bound": max(disk_s, stream_elems / mem_rate) / stream_s,
        "file_to_file": {
            "input": [args.mid_size] * 3,
            "in_memory_seconds": f2f_s,
            "in_memory_peak_rss": f2f_rss,
            "streaming_seconds": mid_s,
            "streaming_peak_rss": mid_rss,
            "ratio": f2f_s / mid_s,
        },
    }
    (RESULTS / "stream.json").write_text(json.dumps(rows, indent=2))
    print(f"layer: 1 -> {LAYER['filters']} channels, k{LAYER['kernel_size']} s{LAYER['strides']} {LAYER['padding']}")
    print(f"footprint (python + torch + package, one tiny tile): {format_bytes(footprint)}")
    print(
        f"in-memory engine, {args.fit_size}^3: {mem_s * 1e3:.0f} ms, {mem_rate / 1e6:.1f} M elements/s, "
        f"peak RSS {format_bytes(mem_rss)}"
    )
    print(
        f"streaming {args.size}^3 -> {format_bytes(out_bytes)} file, --memory-limit {args.memory_limit}: "
        f"{stream_s:.2f} s in {report['tiles']} tiles of {report['tile_shape']}, {stream_rate / 1e6:.1f} M elements/s"
    )
    print(
        f"  peak RSS {format_bytes(stream_rss)} = footprint + {format_bytes(stream_rss - footprint)} "
        f"(budget {format_bytes(budget)}: {'within' if stream_rss - footprint <= budget else 'OVER'})"
    )
    print(f"  throughput ratio streaming / in-memory engine: {stream_rate / mem_rate:.2f}x (target >= 0.9x)")
    bound = max(disk_s, stream_elems / mem_rate)
    print(
        f"  the disk alone writes those bytes (O_DIRECT + fsync) in {disk_s:.2f} s, the in-memory engine would "
        f"compute them in {stream_elems / mem_rate:.2f} s: streaming / the slower of the two "
        f"{bound / stream_s:.2f}x"
    )
    print(
        f"file to file, {args.mid_size}^3 ({format_bytes(f2f_elems * 4)} out): load + whole-volume engine + save "
        f"{f2f_s:.2f} s (peak RSS {format_bytes(f2f_rss)}) vs streaming {mid_s:.2f} s "
        f"(peak RSS {format_bytes(mid_rss)}): {f2f_s / mid_s:.2f}x"
    )


if __name__ == "__main__":
    main()
