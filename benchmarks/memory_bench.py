"""Peak memory per output format against `--memory-limit`: does every format stay within the budget
plus the fixed footprint?

    python benchmarks/memory_bench.py                     # 192^3 -> 384^3 float32 under 256 MiB
    python benchmarks/memory_bench.py --size 128 --budget 64MiB

The fixed footprint is what every run pays whatever its budget: the interpreter, torch, the package and
the format's libraries (h5py, nibabel, zarr), with their thread pools started. It is measured as the peak
RSS of a tiny run (8^3 -> 16^3) of the same layer to the same format, in its own process. A row holds
when the big run's peak RSS (whole process, `ru_maxrss` from wait4, benchmarks/harness.py) is at most
budget + footprint. Rows: .npy, .h5, .h5 in small chunks (--chunks 4,4,4), .nii, .nii.gz, .zarr, each
for the trilinear preset (x2) and the sample spec (a 1 -> 1 k4 s2 layer); then a chunking whose
bookkeeping alone cannot fit (--chunks 1,1,1), which must be refused (exit 2) before anything runs.
On a machine shared with other jobs the peaks move by some tens of MiB from run to run (the threads'
timing decides how many buffers are alive at once); the load average is printed with the table.

`.zarr` outputs: with the same tiles a Zarr output peaks about two tiles above `.npy` (freed chunk
buffers of zarr's event-loop and codec threads stay in their own heaps), which io/buffers.py counts
(ZARR_TILE_COPIES); before that the trilinear row peaked 50-80 MiB over budget + footprint.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from harness import machine_line, measure  # benchmarks/harness.py, beside this script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
MIB = 1 << 20

FORMATS = [  # (row label, output suffix, extra options)
    (".npy", ".npy", []),
    (".h5", ".h5", []),
    (".h5 chunks 4^3", ".h5", ["--chunks", "4,4,4"]),
    (".nii", ".nii", []),
    (".nii.gz", ".nii.gz", []),
    (".zarr", ".zarr", []),
]
LAYERS = {
    "trilinear x2": ["--preset", "trilinear", "--scale", "2"],
    "sample spec": ["--spec", str(ROOT / "sample_data" / "sample_spec.yaml")],
}


def cli() -> list[str]:
    return [sys.executable, "-m", "deconv3d_cli"]


def peak(src: Path, out: Path, layer: list[str], extra: list[str], budget: str | None) -> tuple[int, int, str]:
    """(peak RSS bytes, exit code, last stderr line) of one run, its output removed afterwards."""
    limit = ["--memory-limit", budget] if budget else []
    sample = measure([*cli(), "upsample", str(src), "-o", str(out), *layer, *extra, *limit, "-q"], cwd=str(ROOT))
    shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
    tail = (sample.stderr.strip().splitlines() or [""])[-1]
    return sample.rss, sample.code, tail


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=192, help="input edge (float32 cube); the output is twice that")
    ap.add_argument("--budget", default="256MiB", help="--memory-limit of the big runs")
    args = ap.parse_args()
    from deconv3d_cli.geometry.sizes import parse_bytes

    budget = parse_bytes(args.budget)
    rows, held = [], True
    print(f"# memory_bench: {args.size}^3 -> {2 * args.size}^3 float32 under --memory-limit {args.budget}")
    print(f"# {machine_line()}; other jobs may share this machine")
    print(f"{'format':<16}{'layer':<14}{'budget':>9}{'footprint':>11}{'peak':>9}{'limit':>9}{'over':>8}  holds")
    with tempfile.TemporaryDirectory(prefix="memory_bench-") as tmp:
        work = Path(tmp)
        rng = np.random.default_rng(0)
        big, tiny = work / "in_big.npy", work / "in_tiny.npy"
        np.save(big, rng.random((args.size,) * 3, dtype=np.float32))
        np.save(tiny, rng.random((8, 8, 8), dtype=np.float32))
        for label, suffix, extra in FORMATS:
            for name, layer in LAYERS.items():
                foot, code0, tail0 = peak(tiny, work / f"out_tiny{suffix}", layer, [], None)
                rss, code, tail = peak(big, work / f"out_big{suffix}", layer, extra, args.budget)
                ok = code == 0 and code0 == 0 and rss <= budget + foot
                held &= ok
                over = (rss - budget - foot) / MIB
                print(f"{label:<16}{name:<14}{budget / MIB:>8.0f}M{foot / MIB:>10.0f}M{rss / MIB:>8.0f}M"
                      f"{(budget + foot) / MIB:>8.0f}M{over:>+7.0f}M  {'yes' if ok else 'NO'}"
                      + ("" if code == 0 and code0 == 0 else f"  (exit {code}/{code0}: {tail or tail0})"))  # fmt: skip
                rows.append({"format": label, "layer": name, "budget": budget, "footprint": foot, "peak": rss,
                             "holds": ok, "exit": code})  # fmt: skip
        # A chunking whose bookkeeping cannot fit: refused, one line, exit 2, nothing written.
        out = work / "refused.h5"
        rss, code, tail = peak(big, out, LAYERS["trilinear x2"], ["--chunks", "1,1,1"], "16MiB")
        refused = code == 2 and not out.exists() and "--chunks" in tail
        held &= refused
        print(f".h5 chunks 1^3 under 16 MiB: exit {code}, {'refused' if refused else 'NOT refused'}: {tail}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps({"size": args.size, "rows": rows, "refused": refused}, indent=1))
    print("all rows hold" if held else "SOME ROWS DO NOT HOLD")
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
