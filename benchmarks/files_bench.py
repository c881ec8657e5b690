"""Whole processes, file to file: `deconv3d upsample` against the scripts users would otherwise run.

    python benchmarks/files_bench.py                       # every row, 3 alternated rounds, quiet
    python benchmarks/files_bench.py --load                # the same under the bench's fixed load
    python benchmarks/files_bench.py --rows preset,spec --formats .nii,.nii.gz --pairs 5
    python benchmarks/files_bench.py --rows resample --limits 64M     # the default budget against 64 MiB

Rows (inputs: a float32 phantom, ellipsoids of different intensities plus noise, deterministic):
  preset    `--preset trilinear --scale 2`, 256^3 in (512 MiB out) as .nii, .nii.gz, .h5 and .npy,
            against SimpleITK (ReadImage, ResampleImageFilter sitkLinear on the same grid, WriteImage)
            and nibabel + torch interpolate (peers.py); .nii.gz and .h5 written at gzip level 1 by all.
  spec      an 8-filter k3 s2 `same` spec (seeded random weights) on a 128^3 .nii.gz, against a
            tf.keras script (nibabel load, the layer, nibabel save).
  resample  `--scale 1.5` (256^3 at 1 mm) and `--voxel-size 0.5` (160 x 160 x 64 at 1.2 x 1.2 x 3 mm),
            `--interp linear` and `bspline`, .nii to .nii, against SimpleITK and `mrgrid regrid -size`
            (MRtrix3, linear only: it has no B-spline; its row is skipped when mrgrid is absent).
Every side of a row is a child process measured by wait4 (benchmarks/harness.py): wall seconds, CPU
seconds (user + system, all threads) and peak RSS. The sides take turns, order reversed every other
round; the figures are medians over rounds and each ratio is the median of the rounds' peer / ours
(above 1: deconv3d is better). Outputs are removed between runs, outside the timing. Under each row,
deconv3d's own `--json` timings (median per phase) say where its time went; `other` is the wall time
the report does not cover: interpreter start before the command runs is `startup`, so `other` is
mostly waiting for `import torch` and the process's exit. Results: benchmarks/results/files.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import Load, Sample, alternate, fail_line, gib, machine_line, measure  # noqa: E402

RESULTS = HERE / "results"
PY = sys.executable
OURS = [PY, "-m", "deconv3d_cli", "upsample"]
PEERS = [PY, str(HERE / "peers.py")]
FORMATS = (".nii", ".nii.gz", ".h5", ".npy")
PHASES = ("startup", "open", "plan", "formulation", "compute", "write", "compress", "commit", "run")


def phantom(shape, seed: int = 0) -> np.ndarray:
    """Ellipsoids of a few intensities on a dark background, plus noise: float32, like a scan."""
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    vol = np.zeros(shape, np.float32)
    for _ in range(6):
        c = rng.uniform(-0.4, 0.4, 3)
        r = rng.uniform(0.2, 0.6, 3)
        inside = ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1
        vol[inside] += rng.uniform(100, 400)
    vol += rng.normal(0, 20, shape).astype(np.float32)
    return vol


def save_input(x: np.ndarray, path: Path, spacing=(1.0, 1.0, 1.0)) -> Path:
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    if suffix == ".npy":
        np.save(path, x)
    elif suffix == ".h5":
        import h5py

        with h5py.File(path, "w") as f:
            f.create_dataset("data", data=x, chunks=(64, 64, 64), compression="gzip", compression_opts=1)
            f["data"].attrs["element_size_um"] = np.asarray(spacing, np.float64)
    else:
        import nibabel as nib

        nib.save(nib.Nifti1Image(x, np.diag([*spacing, 1.0])), path)
    return path


def grid_args(shape, spacing, **grid) -> list[str]:
    """The peers' grid: the tool's own output grid (geometry.grid), as sizes and per-axis maps."""
    from deconv3d_cli.geometry.grid import output_grid

    g = output_grid(shape, np.diag([*spacing, 1.0]), **grid)
    flat = [v for m in g.maps for v in (m.scale, m.shift)]
    return ["--size", ",".join(map(str, g.shape)), "--map", ",".join(repr(float(v)) for v in flat)]


def preset_rows(folder: Path, n: int, formats) -> list[dict]:
    x = phantom((n,) * 3)
    rows = []
    for fmt in formats:
        src = save_input(x, folder / f"phantom{n}{fmt}")
        out = str(folder / f"out{fmt}")
        rows.append({
            "name": f"trilinear x2 {n}^3 {fmt}",
            "out": out,
            "sides": {
                "deconv3d": [*OURS, str(src), "-o", out, "--preset", "trilinear", "--scale", "2"],
                "SimpleITK": [*PEERS, "sitk", str(src), out, *grid_args(x.shape, (1, 1, 1), scale=2)],
                "nibabel+torch": [*PEERS, "torch", str(src), out, "--scale", "2"],
            },
        })
    return rows


def spec_rows(folder: Path, n: int) -> list[dict]:
    from deconv3d_cli import LayerSpec

    rng = np.random.default_rng(1)
    kernel = rng.normal(0, 0.1, (3, 3, 3, 8, 1)).astype(np.float32)
    bias = rng.normal(0, 0.1, 8).astype(np.float32)
    spec = LayerSpec.create(filters=8, kernel_size=3, strides=2, padding="same", kernel=kernel, bias=bias)
    spec_path = spec.save(folder / "k3s2f8.yaml")
    src = save_input(phantom((n,) * 3, seed=2), folder / f"spec_in{n}.nii.gz")
    out = str(folder / "spec_out.nii.gz")
    return [{
        "name": f"8-filter k3 s2 {n}^3 .nii.gz",
        "out": out,
        "sides": {
            "deconv3d": [*OURS, str(src), "-o", out, "--spec", str(spec_path)],
            "tf.keras": [*PEERS, "keras", str(src), out, "--spec", str(spec_path)],
        },
    }]


RESAMPLE_JOBS = {
    "scale 1.5": {"shape": (256, 256, 256), "spacing": (1.0, 1.0, 1.0), "grid": {"scale": 1.5},
                  "flags": ["--scale", "1.5"]},
    "voxel 0.5": {"shape": (160, 160, 64), "spacing": (1.2, 1.2, 3.0), "grid": {"voxel_size": 0.5},
                  "flags": ["--voxel-size", "0.5"]},
}


def resample_rows(folder: Path, interps) -> list[dict]:
    rows = []
    mrgrid = shutil.which("mrgrid")
    for name, job in RESAMPLE_JOBS.items():
        src = save_input(phantom(job["shape"], seed=3), folder / f"rs_{name.replace(' ', '')}.nii", job["spacing"])
        grid = grid_args(job["shape"], job["spacing"], **job["grid"])
        for interp in interps:
            out = str(folder / "rs_out.nii")
            sides = {
                "deconv3d": [*OURS, str(src), "-o", out, *job["flags"], "--interp", interp],
                "SimpleITK": [*PEERS, "sitk", str(src), out, *grid, "--interp", interp],
            }
            if mrgrid and interp == "linear":
                sides["mrgrid"] = [mrgrid, str(src), "regrid", out, "-size", grid[1], "-interp", interp, "-quiet"]
            rows.append({"name": f"{name} {interp} {'x'.join(map(str, job['shape']))} .nii", "out": out,
                         "sides": sides})
    return rows


def run_side(argv: list[str], out: str) -> Sample:
    ours = argv[:4] == OURS
    if ours:
        argv = [*argv, "--json", "--no-progress", "--device", "cpu"]
    for p in (out, out + ".partial"):
        Path(p).unlink(missing_ok=True)
    sample = measure(argv, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if ours and sample.code == 0:
        sample.extra = json.loads(sample.stdout).get("timings", {})
    Path(out).unlink(missing_ok=True)
    return sample


def report(row: dict, rounds: dict[str, list[Sample]]) -> list[str]:
    lines = []
    ours = rounds["deconv3d"]
    failed = {side: s for side, samples in rounds.items() for s in samples if s.code != 0}
    for side, samples in rounds.items():
        if side in failed:
            lines.append(f"  {side:<14} {fail_line(failed[side])}")
            continue
        wall = statistics.median(s.wall for s in samples)
        cpu = statistics.median(s.cpu for s in samples)
        rss = statistics.median(s.rss for s in samples)
        cells = f"  {side:<14}{wall:8.2f}{cpu:8.2f}{gib(rss):>9}"
        if side != "deconv3d" and "deconv3d" not in failed:
            rw = statistics.median(p.wall / o.wall for p, o in zip(samples, ours))
            rc = statistics.median(p.cpu / o.cpu for p, o in zip(samples, ours))
            rm = statistics.median(p.rss / o.rss for p, o in zip(samples, ours))
            cells += f"{rw:9.2f}x{rc:8.2f}x{rm:8.2f}x"
        lines.append(cells)
    if "deconv3d" not in failed:
        phases = {k: statistics.median(s.extra.get(k, 0.0) for s in ours) for k in PHASES}
        covered = phases["startup"] + phases["open"] + phases["plan"] + phases["formulation"] + phases["run"]
        other = statistics.median(s.wall for s in ours) - covered
        shown = " ".join(f"{k} {v:.2f}" for k, v in phases.items() if v >= 0.005 or k == "startup")
        lines.append(f"  deconv3d timings (s): {shown}; other {other:.2f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="preset,spec,resample", help="preset, spec, resample")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--interps", default="linear,bspline")
    ap.add_argument("--size", type=int, default=256, help="preset input edge")
    ap.add_argument("--spec-size", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=3, help="alternated rounds per row")
    ap.add_argument("--load", action="store_true", help="one busy process pinned to one CPU throughout")
    ap.add_argument("--workdir", type=Path, default=None, help="where inputs and outputs go (default: a temp dir)")
    ap.add_argument("--limits", default="", help="also deconv3d at these --memory-limit values, e.g. 64M,32M "
                    "(one more side each, alternated with the rest: how the default budget compares; presets and "
                    "resamplings keep within 128 MiB tiles whatever the limit, run/planning.py)")
    args = ap.parse_args()
    wanted = set(args.rows.split(","))
    doc: dict = {"machine": machine_line(), "load": args.load, "rows": []}
    print(doc["machine"])
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        rows = []
        if "preset" in wanted:
            rows += preset_rows(folder, args.size, args.formats.split(","))
        if "spec" in wanted:
            rows += spec_rows(folder, args.spec_size)
        if "resample" in wanted:
            rows += resample_rows(folder, args.interps.split(","))
        for row in rows:
            for limit in filter(None, args.limits.split(",")):
                row["sides"][f"deconv3d {limit}"] = [*row["sides"]["deconv3d"], "--memory-limit", limit]
        with Load(1 if args.load else 0) as load:
            print(load.describe())
            head = f"  {'side':<14}{'wall s':>8}{'CPU s':>8}{'peak GiB':>9}{'wall':>10}{'CPU':>9}{'peak':>9}"
            print(f"\nmedians of {args.pairs} alternated rounds; ratios peer / deconv3d (above 1: deconv3d better)")
            for row in rows:
                sides = {k: (lambda a=a, o=row["out"]: run_side(a, o)) for k, a in row["sides"].items()}
                rounds = alternate(sides, args.pairs)
                lines = [f"\n{row['name']}", head, *report(row, rounds)]
                print("\n".join(lines), flush=True)
                doc["rows"].append({
                    "name": row["name"],
                    "argv": row["sides"],
                    "lines": lines,
                    "samples": {k: [{"wall": s.wall, "cpu": s.cpu, "rss": s.rss, "code": s.code, "timings": s.extra}
                                    for s in v] for k, v in rounds.items()},
                })
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"files_{'load' if args.load else 'quiet'}.json").write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
