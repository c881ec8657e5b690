"""Which formulations give the same bytes at 1 and 2 CPU threads: random layers and slabs, for a while.

    python benchmarks/thread_sweep.py SEED SECONDS MAX_EDGE     # e.g. 5 100 48

Every formulation `auto` may choose (engine/choice.py's eligible) computes each random layer (1-8
channels and filters, kernel 1-4, stride 1-3, same/valid) on a random slab (edges 1 to MAX_EDGE - 1,
half of them channels_last) at 1 and at 2 threads; the cases whose bytes differ are printed. This is
what README's "Same command, same bytes" says of thread counts (oneDNN's transposed convolution picks
its kernels by the thread count on some shapes; its forward convolution, in the phase formulations,
did not differ in any case tried).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import random_spec  # noqa: E402

from deconv3d_cli.engine import Engine, choice  # noqa: E402


def main() -> None:
    seed, seconds, edge = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(seed)
    fails, cases, t0 = [], 0, time.time()
    while time.time() - t0 < seconds:
        cin, f = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        k = tuple(int(v) for v in rng.integers(1, 5, 3))
        s = tuple(int(v) for v in rng.integers(1, 4, 3))
        pad = str(rng.choice(["valid", "same"]))
        size = tuple(int(v) for v in rng.integers(1, edge, 3))
        spec = random_spec(rng, cin, filters=f, kernel_size=k, strides=s, padding=pad)
        x = rng.standard_normal((1, cin, *size)).astype(np.float32)
        if rng.random() < 0.5:
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 4, 1)).transpose(0, 4, 1, 2, 3)
        engine = Engine(spec, cin)
        for path in choice.eligible(engine):
            engine.force_path(path)
            outs = []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                outs.append(engine.whole(x).contiguous().numpy())
            cases += 1
            if not np.array_equal(outs[0], outs[1]):
                fails.append((path, cin, f, k, s, pad, size, outs[0].size))
    print(f"cases {cases}, differing at 1 and 2 threads: {len(fails)}")
    for case in fails:
        path, cin, f, k, s, pad, size, n = case
        print(f"  path {path}, {cin} -> {f}, k {k}, s {s}, {pad}, slab {size}, {n} output elements")


if __name__ == "__main__":
    main()
