"""Resampling to real grids, in memory: deconv3d's Resampler beside SimpleITK, scipy, torch and Pillow.

    python benchmarks/resample_bench.py                 # both jobs, every interpolator, 3 repeats
    python benchmarks/resample_bench.py --quick         # 64^3 / smaller voxel job, peers slower than 20 s skipped
    python benchmarks/resample_bench.py --interp linear bspline

Jobs (float32, one channel, the same grid for every tool: voxel edges aligned, align_corners=False):
  scale1.5   128^3 at 1 mm, real factor 1.5 -> 192^3
  voxel0.5   80 x 80 x 32 at 1.2 x 1.2 x 3 mm -> 0.5 mm isotropic (192^3)
Tools, each timed on its own call after one warm-up (the median of --repeats; a peer whose warm-up
takes longer than --slow seconds is timed by that one call):
  deconv3d   api.resample (numpy in, numpy out; torch threads as set, 2 here)
  SimpleITK  ResampleImageFilter.Execute on a prebuilt image (all cores); sitkLinear, sitkBSpline,
             sitkNearestNeighbor, sitkLanczosWindowedSinc
  scipy      ndimage.zoom(grid_mode=True) orders 0, 1, 3 (single thread), mode nearest
  torch      interpolate nearest-exact / trilinear with size=
  Pillow     BICUBIC (Keys a = -0.5) per plane then along depth (the cubic test's peer)
  mrgrid     `mrgrid regrid` as a whole process, when MRtrix3 is installed (else the row is skipped)
Ratios are peer time / deconv3d time (> 1: deconv3d faster). Results also go to
benchmarks/results/resample.json. On a shared machine absolute times drift: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
INTERPS = ("nearest", "linear", "cubic", "bspline", "lanczos")
SITK_NAMES = {
    "nearest": "sitkNearestNeighbor",
    "linear": "sitkLinear",
    "bspline": "sitkBSpline",
    "lanczos": "sitkLanczosWindowedSinc",
}
SCIPY_ORDER = {"nearest": 0, "linear": 1, "bspline": 3}
TORCH_MODE = {"nearest": "nearest-exact", "linear": "trilinear"}
MRGRID_INTERP = {"nearest": "nearest", "linear": "linear", "cubic": "cubic", "lanczos": "sinc"}


def timed(fn, repeats: int, slow: float) -> float:
    """Median seconds of `fn()` over `repeats` calls after a warm-up; the warm-up alone when it is slow."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first > slow:
        return first
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def jobs(quick: bool) -> dict[str, dict]:
    n = 64 if quick else 128
    vx = (40, 40, 16) if quick else (80, 80, 32)
    return {
        "scale1.5": {"shape": (n,) * 3, "spacing": (1.0, 1.0, 1.0), "grid": {"scale": 1.5}},
        "voxel0.5": {"shape": vx, "spacing": (1.2, 1.2, 3.0), "grid": {"voxel_size": 0.5}},
    }


def peers(x: np.ndarray, spacing, grid, interp: str) -> dict:
    """name -> zero-argument callable computing the same grid with that tool (only tools with the mode)."""
    out: dict = {}
    try:
        import SimpleITK as sitk
    except ImportError:
        sitk = None
    if sitk is not None and interp in SITK_NAMES:
        img = sitk.GetImageFromArray(np.ascontiguousarray(x.transpose(2, 1, 0)))
        img.SetSpacing([float(v) for v in spacing])
        f = sitk.ResampleImageFilter()
        f.SetSize([int(m) for m in grid.shape])
        f.SetOutputSpacing([float(v) for v in grid.spacing])
        f.SetOutputOrigin([float(v) for v in grid.affine[:3, 3]])
        f.SetInterpolator(getattr(sitk, SITK_NAMES[interp]))
        out["SimpleITK"] = lambda: f.Execute(img)
    try:
        import scipy.ndimage as ndi
    except ImportError:
        ndi = None
    if ndi is not None and interp in SCIPY_ORDER:
        zoom = [m / n for m, n in zip(grid.shape, x.shape)]
        out["scipy zoom"] = lambda: ndi.zoom(x, zoom, order=SCIPY_ORDER[interp], mode="nearest", grid_mode=True)
    if interp in TORCH_MODE:
        import torch

        t = torch.from_numpy(x)[None, None]
        kw = {"align_corners": False} if interp == "linear" else {}
        out["torch interpolate"] = lambda: torch.nn.functional.interpolate(
            t, size=grid.shape, mode=TORCH_MODE[interp], **kw
        )
    if interp == "cubic":
        out["Pillow (per axis)"] = lambda: _pillow_cubic(x, grid.shape)
    return out


def _pillow_cubic(x: np.ndarray, shape) -> np.ndarray:
    from PIL import Image

    m0, m1, m2 = shape
    planes = np.stack([np.asarray(Image.fromarray(s).resize((m2, m1), Image.Resampling.BICUBIC)) for s in x])
    flat = Image.fromarray(np.ascontiguousarray(planes.reshape(planes.shape[0], -1)))
    return np.asarray(flat.resize((m1 * m2, m0), Image.Resampling.BICUBIC)).reshape(shape)


def mrgrid_process(x: np.ndarray, spacing, grid, interp: str, folder: Path) -> float | None:
    """Whole-process seconds of `mrgrid IN regrid -size ... OUT` (file to file), or None without MRtrix3."""
    exe = shutil.which("mrgrid")
    if exe is None or interp not in MRGRID_INTERP:
        return None
    import nibabel as nib

    src = folder / "in.nii"
    nib.save(nib.Nifti1Image(x, np.diag([*spacing, 1.0])), src)
    dst = folder / "out.nii"
    size = ",".join(str(m) for m in grid.shape)
    args = [exe, str(src), "regrid", str(dst), "-size", size, "-interp", MRGRID_INTERP[interp], "-force", "-quiet"]
    t0 = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interp", nargs="*", default=list(INTERPS), choices=INTERPS)
    ap.add_argument("--jobs", nargs="*", default=None, help="scale1.5 and/or voxel0.5")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slow", type=float, default=10.0, help="seconds past which a warm-up is the measurement")
    ap.add_argument("--skip-over", type=float, default=None, help="skip a peer whose warm-up exceeds this (s)")
    ap.add_argument("--quick", action="store_true", help="smaller volumes; peers over 20 s skipped")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for deconv3d (default: torch's)")
    ap.add_argument("--load", action="store_true", help="one busy process pinned to one CPU throughout (harness.py)")
    args = ap.parse_args()
    from harness import Load, loadavg  # benchmarks/harness.py, beside this script

    with Load(1 if args.load else 0) as load:
        print(f"# load average {loadavg()} at start; {load.describe()}")
        _run(args)


def _run(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from deconv3d_cli.api import resample
    from deconv3d_cli.geometry.grid import output_grid

    skip_over = args.skip_over if args.skip_over is not None else (20.0 if args.quick else None)
    print(
        f"# {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), device "
        f"{args.device}; medians of {args.repeats} after a warm-up. Shared machines drift: compare within a run."
    )
    rows = []
    chosen = jobs(args.quick)
    for job_name, job in chosen.items():
        if args.jobs and job_name not in args.jobs:
            continue
        x = np.random.default_rng(0).uniform(0, 1000, job["shape"]).astype(np.float32)
        affine = np.diag([*job["spacing"], 1.0])
        grid = output_grid(x.shape, affine, **job["grid"])
        mvox = np.prod(grid.shape) / 1e6
        print(f"\n## {job_name}: {x.shape} at {job['spacing']} -> {grid.shape} ({mvox:.1f} M voxels)")
        print(f"{'interp':8s} {'tool':20s} {'median ms':>10s} {'peer/ours':>10s}")
        for interp in args.interp:
            kw = dict(affine=affine, interp=interp, device=args.device, **job["grid"])
            ours = timed(lambda x=x, kw=kw: resample(x, **kw), args.repeats, args.slow)
            rows.append({"job": job_name, "interp": interp, "tool": "deconv3d", "seconds": ours})
            print(f"{interp:8s} {'deconv3d':20s} {ours * 1e3:10.1f} {'1.00':>10s}", flush=True)
            for tool, fn in peers(x, job["spacing"], grid, interp).items():
                if skip_over is not None:
                    t0 = time.perf_counter()
                    fn()
                    if time.perf_counter() - t0 > skip_over:
                        print(f"{interp:8s} {tool:20s} {'skipped':>10s} (warm-up over {skip_over:g} s)", flush=True)
                        continue
                sec = timed(fn, args.repeats, args.slow)
                rows.append({"job": job_name, "interp": interp, "tool": tool, "seconds": sec, "ratio": sec / ours})
                print(f"{interp:8s} {tool:20s} {sec * 1e3:10.1f} {sec / ours:10.2f}", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                sec = mrgrid_process(x, job["spacing"], grid, interp, Path(tmp))
            if sec is not None:
                rows.append({"job": job_name, "interp": interp, "tool": "mrgrid (process)", "seconds": sec})
                print(f"{interp:8s} {'mrgrid (process)':20s} {sec * 1e3:10.1f} {sec / ours:10.2f}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "resample.json").write_text(json.dumps({"argv": sys.argv[1:], "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
