"""Batch benchmark: many small volumes through one process against one process per file.

    python benchmarks/batch_bench.py            # 200 volumes of 32^3, trilinear x2
    python benchmarks/batch_bench.py --files 50

One process pays for `import torch` and the engine set-up once and opens the next file while the
current one computes; a shell loop pays for them per file. Prints files/s both ways and the ratio
(target: at least 5x); results also go to benchmarks/results/batch.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
CLI = [sys.executable, "-m", "deconv3d_cli"]
LAYER = ["--preset", "trilinear", "--scale", "2", "--no-progress", "--device", "cpu"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--per-file-sample", type=int, default=20, help="files timed one process each (then scaled)")
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "in"
        src.mkdir()
        for i in range(args.files):
            np.save(src / f"v{i:04d}.npy", rng.standard_normal((args.size,) * 3).astype(np.float32))
        one = tmp / "one"
        t = time.perf_counter()
        proc = subprocess.run(
            [*CLI, "upsample", str(src / "*.npy"), "-O", str(one), *LAYER, "--json"],
            capture_output=True,
            text=True,
        )
        single = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        assert json.loads(proc.stdout)["totals"]["done"] == args.files
        many = tmp / "many"
        many.mkdir()
        sample = sorted(src.glob("*.npy"))[: args.per_file_sample]
        t = time.perf_counter()
        for path in sample:
            subprocess.run([*CLI, "upsample", str(path), "-o", str(many / path.name), *LAYER, "-q"], check=True)
        per_file = (time.perf_counter() - t) / len(sample)
    single_rate = args.files / single
    loop_rate = 1.0 / per_file
    result = {
        "files": args.files,
        "size": args.size,
        "one_process_s": single,
        "one_process_files_per_s": single_rate,
        "process_per_file_s_each": per_file,
        "process_per_file_files_per_s": loop_rate,
        "ratio": single_rate / loop_rate,
    }
    (RESULTS / "batch.json").write_text(json.dumps(result, indent=2))
    print(f"{args.files} volumes of {args.size}^3, trilinear x2")
    print(f"  one process:        {single:.2f} s, {single_rate:.1f} files/s")
    print(f"  process per file:   {per_file:.2f} s each (timed on {len(sample)}), {loop_rate:.2f} files/s")
    print(f"  ratio: {single_rate / loop_rate:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
