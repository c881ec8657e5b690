"""The options of `deconv3d upsample`, in the groups its --help shows, each default from the constant the run uses.

Grouped with cloup's option groups: `--help` then reads as the kinds of choice a user makes (what goes
in and out, what to compute, the grid, how the run behaves, speed and memory, a cluster) instead of 45
flat lines. Every default a help text states is formatted from the constant the code applies
(tests/test_help.py checks both), and each help stays within two lines at 100 columns; the README holds
the rest. Nothing imported here loads torch, so `--help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import cloup

from ..geometry.sizes import DEFAULT_MEMORY_LIMIT, LIMIT_SHARE, format_bytes
from ..io.chunking import CHUNK_BYTES
from ..io.formats import DEFAULT_COMPRESSION_LEVEL
from ..layer import presets, resample
from ..run.options import ComputeOptions, ReadOptions, WriteOptions
from . import params

# engine.formulations.PATHS and engine.SEPARABLE, spelled out so that --help never imports torch
ENGINE_PATHS = ["auto", "transpose", "transpose_cl", "transpose_dnn", "transpose_dnn_cl", "phase", "phase_cl",
                "phase_dnn", "phase_dnn_cl", "separable"]  # fmt: skip
# layer.interpolators.INTERPOLATORS, spelled out so that --help imports nothing (a test keeps them in step)
INTERPOLATORS = ["nearest", "linear", "cubic", "bspline", "lanczos"]

# The boundary rule of each kind of job when --boundary is not given.
LAYER_BOUNDARY = ComputeOptions.boundary  # Keras's zero padding
BOUNDARY_DEFAULTS = {
    "specs": LAYER_BOUNDARY,
    "presets": presets.DEFAULT_BOUNDARY,
    "resamplings": resample.DEFAULT_BOUNDARY,
}

PATH = click.Path(path_type=Path)


def _boundary_default() -> str:
    """'[default: zeros for specs, replicate for presets and resamplings]', from the constants."""
    by_rule: dict[str, list[str]] = {}
    for kind, rule in BOUNDARY_DEFAULTS.items():
        by_rule.setdefault(rule, []).append(kind)
    return ", ".join(f"{rule} for {' and '.join(kinds)}" for rule, kinds in by_rule.items())


def _memory_default() -> str:
    share = "a quarter" if LIMIT_SHARE == 1 / 4 else f"{LIMIT_SHARE} of"
    return f"{format_bytes(DEFAULT_MEMORY_LIMIT)}, or {share} of a smaller cgroup/SLURM limit"


def _preset_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of --preset: the names `deconv3d presets` lists."""
    return [name for name in presets.PRESETS if name.startswith(incomplete.lower())]


def _choice(names: list[str]) -> click.Choice:
    return click.Choice(names, case_sensitive=False)


INPUT_OUTPUT = cloup.option_group(
    "Input and output",
    cloup.option("-o", "--output", type=PATH, help="Output file (.npy, .h5, .nii, .nii.gz, .zarr)."),
    cloup.option("-O", "--output-dir", type=PATH, help="Output folder for many inputs (created if missing)."),
    cloup.option("--from-list", type=click.File("r"), help="Read input paths from FILE, one a line ('-': stdin)."),
    cloup.option("--name-template", default="{stem}_x{scale}{ext}", show_default=True,
                 help="Output names with -O: {stem} {name} {ext} {scale} {parent} {index}."),
    cloup.option("--output-format", help="Output format with -O: npy, h5, nii, nii.gz or zarr [default: the input's]."),
    cloup.option("--dataset", help="HDF5/Zarr input dataset path (automatic when the file holds one)."),
    cloup.option("--output-dataset", help="HDF5/Zarr output dataset path."),
    cloup.option("--output-dtype", default=WriteOptions.dtype, show_default=True,
                 help="float32, float64, float16, keep (the input's), int16, uint8, ..."),
    cloup.option("--compression-level", type=click.IntRange(0, 9),
                 help="Compression of .h5, .nii.gz and .zarr output, 0 = none.  "
                 f"[default: {DEFAULT_COMPRESSION_LEVEL}]"),
    cloup.option("--chunks", callback=params.tile,
                 help=f"HDF5/Zarr output chunk D,H,W.  [default: about {format_bytes(CHUNK_BYTES)}]"),
    cloup.option("--fourth-axis", type=_choice(["auto", "channels", "series"]), default=ReadOptions.fourth_axis,
                 show_default=True, help="A 4-D NIfTI's 4th axis: channels, or a series of volumes."),
    cloup.option("--allow-external-data", "allow_external", is_flag=True,
                 help="Let an HDF5 input read external raw files, external links and virtual datasets."),
    cloup.option("--preview", "preview_png", type=PATH, help="Also draw input/output mid-slices to a new PNG."),
)  # fmt: skip

COMPUTE = cloup.option_group(
    "What to compute (a layer, a preset, or a grid below)",
    cloup.option("--spec", "spec_path", type=PATH, help="Conv3DTranspose layer spec (YAML) with its weights."),
    cloup.option("--preset", shell_complete=_preset_names,
                 help="Weight-free upsampling with --scale: nearest or trilinear (see `deconv3d presets`)."),
    cloup.option("--boundary", type=_choice(["zeros", "replicate", "reflect"]),
                 help=f"Values beyond the input's edge.  [default: {_boundary_default()}]"),
)  # fmt: skip

GRID = cloup.option_group(
    "Grid (resampling without a layer; give one)",
    cloup.option("--scale", help="Factor per axis: 2 or D,H,W such as 1.5,1.5,2 (integers with --preset)."),
    cloup.option("--voxel-size", help="Voxel size: V or V,V,V in the file's units (mm for NIfTI)."),
    cloup.option("--shape", help="Voxels per axis: D,H,W (at least the input's)."),
    cloup.option("--like", type=PATH, help="The grid of file REF (its shape, spacing and origin)."),
    cloup.option("--interp", type=_choice(INTERPOLATORS),
                 help=f"Interpolator: {', '.join(INTERPOLATORS)}.  [default: {resample.DEFAULT_INTERP}]"),
)  # fmt: skip

RUN_CONTROL = cloup.option_group(
    "Run control",
    cloup.option("--overwrite", "--force", "-f", "overwrite", is_flag=True, help="Replace an existing output."),
    cloup.option("--resume", is_flag=True, help="Continue the partial output of a stopped or killed run."),
    cloup.option("--skip-existing", is_flag=True, help="With -O: leave finished outputs alone."),
    cloup.option("--fail-fast", is_flag=True, help="With -O: stop at the first failed file."),
    cloup.option("--continue-run", metavar="ID", help="With -O --overwrite: finish the stopped batch ID (its "
                 "continue line gives it): skip the outputs it rewrote."),  # fmt: skip
    cloup.option("--shard", callback=params.shard, help="With -O: process only part I of N of the inputs (I/N)."),
    cloup.option("--dry-run", is_flag=True, help="Print the plan and write nothing (refuses what the run would)."),
    cloup.option("--input-shape",
                 help="With --dry-run: plan for a virtual input, e.g. 16384,16384,8192,1:uint8."),
    cloup.option("--json", "as_json", is_flag=True, help="Print one JSON report on stdout, whatever happens."),
    cloup.option("-q", "--quiet", is_flag=True, help="Print errors only."),
    cloup.option("-v", "--verbose", is_flag=True, help="Print the plan of each file."),
    cloup.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr."),
    cloup.option("--checkpoint-every", type=click.FloatRange(min=0), default=WriteOptions.checkpoint_every,
                 show_default=True, help="Seconds between making finished tiles durable for --resume."),
)  # fmt: skip

PERFORMANCE = cloup.option_group(
    "Performance",
    cloup.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
    cloup.option("--precision", type=_choice(["fp32", "fp64", "bf16", "fp16"]), default=ComputeOptions.precision,
                 show_default=True, help="Compute precision."),
    cloup.option("--memory-limit", callback=params.memory,
                 help=f"Tile budget, e.g. 512M or 2G (K/M/G/T: powers of 1024; KB/MB/GB/TB: of 1000).  "
                 f"[default: {_memory_default()}]"),
    cloup.option("--tile", callback=params.tile, help="Output tile D,H,W in voxels.  [default: sized from the budget]"),
    cloup.option("--threads", type=click.IntRange(min=1),
                 help="CPU threads for the engine.  [default: the CPUs this process may use]"),
    cloup.option("--engine-path", type=click.Choice(ENGINE_PATHS), default=ComputeOptions.engine_path,
                 show_default=True, metavar="NAME",
                 help="Engine formulation, all exact: auto (measured once per machine; see the README), "
                 "transpose[_dnn][_cl], phase[_dnn][_cl], separable."),
)  # fmt: skip

CLUSTER = cloup.option_group(
    "Cluster (pip install 'deconv3d-cli[dask]')",
    cloup.option("--scheduler",
                 help="Run the tiles as Dask tasks: tcp://host:8786, a scheduler JSON file, or local[:N] processes."),
)  # fmt: skip

GROUPS = (INPUT_OUTPUT, COMPUTE, GRID, RUN_CONTROL, PERFORMANCE, CLUSTER)


def upsample_options(f: Any) -> Any:
    """Decorate `f` with INPUT... and every group, in the order --help lists them (then --debug)."""
    f = params.debug_option(f)
    for group in reversed(GROUPS):
        f = group(f)
    return click.argument("inputs", nargs=-1, type=PATH)(f)
