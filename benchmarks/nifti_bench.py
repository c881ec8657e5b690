"""Whole-process NIfTI file-to-file timings: this checkout against another (before) and SimpleITK.

    .venv/bin/python benchmarks/nifti_bench.py [--pairs 3] [--before /work/main/.venv/bin/python]
        [--tile 512,512,64] [--work build/nifti-bench]

Jobs (issue 15): trilinear x2 of a 256^3 float32 `.nii` to `.nii`, and of a 256^3 int16 `.nii.gz` to
`.nii.gz`. Each is run as a whole process under /usr/bin/time -v (wall, user + system CPU, peak RSS),
the commands alternated (ours, before, SimpleITK; ours, before, SimpleITK; ...), and the median of each
reported with the ratios to ours. SimpleITK's peer reads, resamples linearly onto the same grid (the
grid our output has: half the spacing, origin a quarter input voxel back) and writes, as a user would
without this tool. `--tile` is passed to ours only (z slabs emulate the planner's NIfTI slabs).

Inputs are generated here (smooth values plus noise) the first time; timings on a shared machine
drift: compare within one run.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SITK = r"""
import sys, SimpleITK as sitk
src, dst = sys.argv[1], sys.argv[2]
img = sitk.ReadImage(src, sitk.sitkFloat32)
size = [2 * n for n in img.GetSize()]
spacing = [s / 2 for s in img.GetSpacing()]
origin = img.TransformContinuousIndexToPhysicalPoint([-0.25, -0.25, -0.25])
out = sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, origin, spacing, img.GetDirection(), 0.0,
                    sitk.sitkFloat32)
sitk.WriteImage(out, dst)
"""


def make_inputs(work: Path) -> dict[str, Path]:
    import nibabel as nib
    import numpy as np

    paths = {"f32": work / "f32_256.nii", "i16": work / "i16_256.nii.gz"}
    if all(p.exists() for p in paths.values()):
        return paths
    rng = np.random.default_rng(0)
    n = 256
    base = sum(np.sin(i * (0.02 + 0.01 * k)) for k, i in enumerate(np.indices((n, n, n), sparse=True))) * 300 + 500
    data = (base + rng.normal(0, 10, (n, n, n))).astype(np.float32)
    affine = np.diag([0.9, 1.0, 1.1, 1.0])
    nib.Nifti1Image(data, affine).to_filename(paths["f32"])
    nib.Nifti1Image(np.round(data).astype(np.int16), affine).to_filename(paths["i16"])
    return paths


def timed(cmd: list[str], cwd: Path | None = None) -> dict[str, float]:
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, cwd=cwd)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
    text = done.stderr
    wall = re.search(r"Elapsed \(wall clock\) time .*?: (?:(\d+):)?(\d+):([\d.]+)", text)
    assert wall is not None
    h, m, s = wall.groups()
    seconds = (int(h) * 3600 if h else 0) + int(m) * 60 + float(s)
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", text).group(1))  # type: ignore[union-attr]
    system = float(re.search(r"System time \(seconds\): ([\d.]+)", text).group(1))  # type: ignore[union-attr]
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))  # type: ignore[union-attr]
    return {"wall": seconds, "cpu": user + system, "peak_mib": rss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--before", help="python of another checkout (its venv), e.g. /work/main/.venv/bin/python")
    ap.add_argument("--tile", help="--tile for ours, e.g. 512,512,64")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "nifti-bench")
    ap.add_argument("--no-sitk", action="store_true")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs(args.work)
    sitk_script = Path(tempfile.mkdtemp()) / "sitk_resample.py"
    sitk_script.write_text(SITK)
    jobs = {"f32 .nii -> .nii": (inputs["f32"], ".nii"), "i16 .nii.gz -> .nii.gz": (inputs["i16"], ".nii.gz")}
    for job, (src, suffix) in jobs.items():
        runners: dict[str, tuple[list[str], Path | None]] = {}
        up = ["upsample", str(src), "--preset", "trilinear", "--scale", "2", "--overwrite", "--no-progress"]
        tile = ["--tile", args.tile] if args.tile else []
        ours_cmd = [sys.executable, "-m", "deconv3d_cli", *up, "-o", str(args.work / f"ours{suffix}"), *tile]
        runners["ours"] = (ours_cmd, None)
        if args.before:
            before = Path(args.before).absolute()  # not resolved: a venv's python is a link
            cmd = [str(before), "-m", "deconv3d_cli", *up, "-o", str(args.work / f"before{suffix}")]
            runners["before"] = (cmd, before.parents[2])
        if not args.no_sitk:
            peer = [sys.executable, str(sitk_script), str(src), str(args.work / f"sitk{suffix}")]
            runners["SimpleITK"] = (peer, None)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in runners}
        for _ in range(args.pairs):
            for name, (cmd, cwd) in runners.items():
                results[name].append(timed(cmd, cwd))
        print(f"\n{job} ({args.pairs} alternated runs each, median)")
        ours = {k: statistics.median(r[k] for r in results["ours"]) for k in ("wall", "cpu", "peak_mib")}
        for name, rows in results.items():
            med = {k: statistics.median(r[k] for r in rows) for k in ("wall", "cpu", "peak_mib")}
            ratio = med["wall"] / ours["wall"]
            print(
                f"  {name:10s} wall {med['wall']:6.2f} s  cpu {med['cpu']:6.2f} s  peak {med['peak_mib']:7.0f} MiB"
                f"  (its wall / ours: {ratio:.2f}x)  walls {[round(r['wall'], 2) for r in rows]}"
            )


if __name__ == "__main__":
    main()
