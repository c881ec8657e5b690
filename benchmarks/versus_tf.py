"""The engine against tf.keras Conv3DTranspose in memory, alternating processes, quiet and under load.

    python benchmarks/versus_tf.py                    # the bench grid and the held-out layers, quiet
    python benchmarks/versus_tf.py --load             # the same with the bench's fixed competing load
    python benchmarks/versus_tf.py --set grid --pairs 5 --env OMP_WAIT_POLICY=passive

Each round runs one process for the engine (deconv3d_cli.Conv3DTranspose, numpy in, numpy out, as a
user calls it) and one for tf.keras (the layer on a tf constant, `.numpy()` of the result), over every
layer of the set, the order of the two processes reversed every other round; a process times each
layer as the median of --repeats calls after three warm-ups (benchmarks/run.py's worker). The ratio of
a layer is the median over rounds of tf / engine (above 1: the engine is faster).

The grid is benchmarks/run.py's LAYERS. The held-out layers were fixed before any tuning against this
bench and are not used while tuning: they check that what was tuned on the grid holds off it.
`--variant NAME:VAR=VALUE,VAR=VALUE` adds an engine side run with those environment variables (thread-pool
experiments, e.g. `--variant passive:OMP_WAIT_POLICY=PASSIVE`), alternated with the others in every round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import Load, alternate, machine_line, measure  # noqa: E402
from run import LAYERS, layer_name  # noqa: E402

RESULTS = HERE / "results"
# (in channels, filters, kernel, stride, padding, input edge): shapes users run that the grid lacks
# (odd channel counts, stride 4, kernel 5, anisotropy of channel width); fixed before any tuning.
HELD_OUT = [
    (1, 1, 3, 2, "same", 160),
    (1, 4, 5, 2, "same", 80),
    (2, 16, 2, 2, "same", 64),
    (3, 8, 3, 2, "valid", 56),
    (4, 8, 4, 4, "valid", 40),
    (8, 1, 4, 2, "same", 64),
    (16, 8, 5, 3, "same", 32),
    (24, 12, 3, 2, "same", 40),
]
SETS = {"grid": LAYERS, "held-out": HELD_OUT}


def child(impl: str, layers, repeats: int, env: dict[str, str]) -> dict:
    argv = [sys.executable, str(HERE / "run.py"), "--worker", impl, "--worker-jobs",
            json.dumps([["layer", list(c)] for c in layers]), "--repeats", str(repeats)]
    sample = measure(argv, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})
    if sample.code != 0:
        raise SystemExit(f"{impl} worker failed: {sample.stderr.strip()[-400:]}")
    return json.loads(sample.stdout.strip().splitlines()[-1])


def run(layers, pairs: int, repeats: int, variants: dict[str, dict[str, str]]) -> dict[str, list[dict]]:
    sides = {name: (lambda env=env: child("engine", layers, repeats, env)) for name, env in variants.items()}
    sides["tf"] = lambda: child("tf", layers, repeats, {})
    rounds = alternate({k: (lambda f=f: _wrap(f)) for k, f in sides.items()}, pairs)
    return {side: [r.extra for r in samples] for side, samples in rounds.items()}


def _wrap(fn):
    from harness import Sample

    return Sample(0.0, 0.0, 0, extra=fn())


def table(layers, rounds: dict[str, list[dict]], side: str) -> tuple[list[str], list[float]]:
    lines = [f"{'layer':<28}{side + ' ms':>14}{'tf ms':>10}{'tf/' + side:>16}  per round"]
    ratios = []
    for c in layers:
        key = layer_name(c)
        ours = [r[key] for r in rounds[side]]
        peer = [r[key] for r in rounds["tf"]]
        if not all(isinstance(v, (int, float)) for v in ours + peer):
            lines.append(f"{key:<28} error: {[v for v in ours + peer if isinstance(v, str)][:1]}")
            continue
        each = [p / o for p, o in zip(peer, ours)]
        ratio = statistics.median(each)
        ratios.append(ratio)
        lines.append(
            f"{key:<28}{statistics.median(ours):14.1f}{statistics.median(peer):10.1f}{ratio:15.2f}x  "
            + " ".join(f"{r:.2f}" for r in each)
        )
    return lines, ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=[*SETS, "all"], default="all")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--load", action="store_true", help="one busy process pinned to one CPU throughout")
    ap.add_argument("--variant", action="append", default=[], help="NAME:VAR=VALUE,... another engine side")
    ap.add_argument("--only", help="comma-separated indices into the set (experiments)")
    args = ap.parse_args()
    variants: dict[str, dict[str, str]] = {"engine": {}}
    for v in args.variant:
        name, _, assigns = v.partition(":")
        variants[name] = dict(a.split("=", 1) for a in assigns.split(",") if a)
    names = list(SETS) if args.set == "all" else [args.set]
    doc: dict = {"machine": machine_line(), "load": args.load, "variants": variants, "sets": {}}
    print(doc["machine"])
    with Load(1 if args.load else 0) as load:
        print(load.describe() + (f"; engine variants {variants}" if len(variants) > 1 else ""))
        for name in names:
            layers = SETS[name]
            if args.only:
                layers = [layers[int(i)] for i in args.only.split(",")]
            rounds = run(layers, args.pairs, args.repeats, variants)
            print(f"\n## {name}: median of {args.pairs} alternated rounds, ms per call (median of {args.repeats})")
            tables = {}
            for side in variants:
                lines, ratios = table(layers, rounds, side)
                if ratios:
                    lines.append(f"range {min(ratios):.2f}-{max(ratios):.2f}x, geometric mean "
                                 f"{statistics.geometric_mean(ratios):.2f}x")
                print("\n".join(lines) + "\n")
                tables[side] = lines
            doc["sets"][name] = {"layers": layers, "rounds": rounds, "tables": tables}
    RESULTS.mkdir(exist_ok=True)
    tag = "load" if args.load else "quiet"
    (RESULTS / f"versus_tf_{tag}.json").write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
