"""`deconv3d upsample`: its options, turned into a run.dispatch.Request, and its report printed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from . import params
from .main import CONTEXT, emit_json, error_line, main
from .report import file_printer, lines

# engine.formulations.PATHS and engine.SEPARABLE, spelled out so that --help never imports torch
ENGINE_PATHS = ["auto", "transpose", "transpose_cl", "transpose_dnn", "transpose_dnn_cl", "phase", "phase_cl",
                "phase_dnn", "phase_dnn_cl", "separable"]  # fmt: skip
BATCH_ONLY = ("from_list", "skip_existing", "fail_fast", "shard", "output_format", "continue_run")
# layer.interpolators.INTERPOLATORS, spelled out so that --help imports nothing (a test keeps them in step)
INTERPOLATORS = ["nearest", "linear", "cubic", "bspline", "lanczos"]
GRID_FLAGS = ("voxel_size", "shape", "like", "interp")


PATH = click.Path(path_type=Path)
# The command's options, in the order --help lists them.
OPTIONS = [
    click.argument("inputs", nargs=-1, type=PATH),
    click.option("-o", "--output", type=PATH, help="Output file (.npy, .h5, .nii, .nii.gz, .zarr)."),
    click.option("-O", "--output-dir", type=PATH, help="Output folder for many inputs (created if missing)."),
    click.option("--from-list", type=click.File("r"), help="Read input paths from FILE, one a line ('-': stdin)."),
    click.option("--name-template", default="{stem}_x{scale}{ext}", show_default=True,
                 help="Output names with -O; placeholders {stem} {name} {ext} {scale} {parent} {index}."),
    click.option("--output-format",
                 help="Output format with -O: npy, h5, nii, nii.gz or zarr (default: the input's)."),
    click.option("--skip-existing", is_flag=True, help="With -O: leave finished outputs alone."),
    click.option("--fail-fast", is_flag=True, help="With -O: stop at the first failed file."),
    click.option("--continue-run", metavar="ID", help="With -O --overwrite: finish the stopped batch ID (its "
                 "continue line gives it): skip the outputs it rewrote."),
    click.option("--shard", callback=params.shard, help="With -O: process only part I of N of the inputs (I/N)."),
    click.option("-q", "--quiet", is_flag=True, help="Print errors only."),
    click.option("-v", "--verbose", is_flag=True, help="Print the plan of each file."),
    click.option("--spec", "spec_path", type=PATH, help="Layer spec (YAML) with its weights."),
    click.option("--preset",
                 help="Weight-free upsampling instead of a spec: nearest or trilinear (see `presets`)."),
    click.option("--scale", help="Scale per axis: 2, or D,H,W such as 2,2,3 (integers with --preset; real factors "
             ">= 1 such as 1.5 with --interp, which is linear by default)."),
click.option("--voxel-size", help="Resample to this voxel size: V or V,V,V in the file's units (mm for NIfTI)."),
click.option("--shape", help="Resample to this many voxels: D,H,W (at least the input's)."),
click.option("--like", type=PATH, help="Resample onto the grid of REF (its shape, spacing and origin)."),
click.option("--interp", type=click.Choice(INTERPOLATORS, case_sensitive=False),
             help="Interpolator for --voxel-size/--scale/--shape/--like: nearest, linear (default), cubic (Keys "
             "a=-0.5), bspline (cubic, prefiltered) or lanczos (SimpleITK's windowed sinc, radius 5)."),
    click.option("--boundary", type=click.Choice(["zeros", "replicate", "reflect"], case_sensitive=False),
                 help="Input boundary: zeros is Keras's padding.  "
                 "[default: replicate for presets, zeros for specs]"),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
    click.option("--precision", type=click.Choice(["fp32", "fp64", "bf16", "fp16"], case_sensitive=False),
                 default="fp32", show_default=True, help="Compute precision."),
    click.option("--memory-limit", callback=params.memory,
                 help="Memory budget for tiles: K/M/G/T (or KiB..TiB) are powers of 1024 as in SLURM, KB/MB/GB/TB "
                 "powers of 1000.  [default: 1GiB, or a quarter of the cgroup/SLURM memory limit when smaller]"),
    click.option("--tile", callback=params.tile,
                 help="Output tile D,H,W in voxels (default: sized from the budget)."),
    click.option("--dataset", help="HDF5/Zarr input dataset path (automatic when the file holds one)."),
    click.option("--output-dataset", help="HDF5/Zarr output dataset path."),
    click.option("--allow-external-data", "allow_external", is_flag=True,
                 help="Let an HDF5 input read external raw files, external links and virtual datasets."),
    click.option("--compression-level", type=click.IntRange(0, 9),
                 help="gzip level of .h5 and .nii.gz output, 0 = none.  [default: 1]"),
    click.option("--chunks", callback=params.tile, help="HDF5/Zarr output chunk D,H,W (default: about 1 MiB)."),
    click.option("--output-dtype", default="float32", show_default=True,
                 help="float32, float64, float16, keep, int16, ..."),
    click.option("--overwrite", "--force", "-f", "overwrite", is_flag=True, help="Replace an existing output."),
    click.option("--resume", is_flag=True, help="Continue the partial output of a stopped or killed run."),
    click.option("--dry-run", is_flag=True, help="Print the plan and write nothing (refuses what the run would)."),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON report on stdout, whatever happens."),
    click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr."),
    click.option("--threads", type=click.IntRange(min=1),
                 help="CPU threads for the engine (default: the CPUs this process may use)."),
    click.option("--engine-path", type=click.Choice(ENGINE_PATHS), default="auto", show_default=True,
                 help="Engine formulation. auto: decided once per machine and layer, recorded in the tuning cache "
                 "(DECONV3D_TUNING_DIR, default ~/.cache/deconv3d/tuning; DECONV3D_TUNING=off: a fixed rule), so "
                 "the same command writes the same bytes. All are exact; a different --memory-limit or --tile "
                 "changes the tiles, and outputs then agree to float rounding, not always to the bit."),
    click.option("--fourth-axis", type=click.Choice(["auto", "channels", "series"], case_sensitive=False),
                 default="auto", show_default=True, help="A 4-D NIfTI's 4th axis: channels, or a series of "
                 "volumes (auto: channels when its length is the layer's input channels)."),
    click.option("--preview", "preview_png", type=PATH, help="Also draw input/output mid-slices to a new PNG."),
    click.option("--checkpoint-every", type=click.FloatRange(min=0), default=2.0, show_default=True,
                 help="Seconds between making finished tiles durable for --resume (0: after every tile)."),
    click.option("--scheduler", help="Run the tiles as Dask tasks: a scheduler address (tcp://host:8786, or a "
                 "scheduler JSON file) or local[:N] for N local worker processes, each with its share of the CPUs "
                 "(all of them for transpose_dnn*, whose bytes depend on the thread count). Needs: pip install "
                 "'deconv3d-cli[dask]'."),
    click.option("--input-shape", help="With --dry-run: plan for a virtual input of this shape (and dtype), "
                 "e.g. 16384,16384,8192,1:uint8; INPUT need not exist."),
    params.debug_option,
]  # fmt: skip


def _options(f: Any) -> Any:
    for decorate in reversed(OPTIONS):
        f = decorate(f)
    return f


@main.command(context_settings=CONTEXT)
@_options
@click.pass_context
def upsample(ctx: click.Context, **p: Any) -> None:
    """Apply a Conv3DTranspose layer (or a preset) to INPUT... and write the upsampled volumes.

    \b
    Examples:
      deconv3d upsample scan.npy -o scan_x2.npy --spec sample_data/sample_spec.yaml
      deconv3d upsample 'scans/*.nii.gz' -O out/ --preset trilinear --scale 2 --json
      find scans -name '*.h5' | deconv3d upsample --from-list - -O out/ --spec layer.yaml --skip-existing
    \b
    Stopping (Ctrl-C, SIGTERM) keeps every finished tile: exit 130/143 and the command that continues
    (the same with --resume; a batch with --skip-existing --resume).
    """
    from ..run import dispatch
    from ..run.resources import preload_torch, process_age

    startup = process_age()
    _check_usage(p)
    if not p["dry_run"] or p["scheduler"] or p["input_shape"]:
        preload_torch()
    request = _request(p)
    if p["preview_png"] is not None:  # refused before the run, not after it
        from ..views.preview import check_preview_target

        check_preview_target(p["preview_png"], request.inputs[0], request.output, overwrite=p["overwrite"])
    debug = bool((ctx.find_root().obj or {}).get("debug"))
    if request.batch is not None:
        report = dispatch.upsample(request, file_printer(p["quiet"], p["verbose"]), error_line, debug)
        if p["as_json"]:
            emit_json({**report.as_json(), "error": None}, report.exit_code)  # type: ignore[union-attr]
        if not p["quiet"] or report.exit_code:  # type: ignore[union-attr]
            click.echo(report.summary(), err=True)  # type: ignore[union-attr]
        ctx.exit(report.exit_code)  # type: ignore[union-attr]
    # A person at a terminal sees the plan as the run starts; a log gets it with the outcome (and a failed
    # run's stderr is then its one error line).
    talk = not (p["as_json"] or p["quiet"] or p["dry_run"]) and sys.stderr.isatty()
    start = (lambda plan: click.echo("\n".join(lines(plan, None)), err=True)) if talk else None
    result = dispatch.upsample(request, error_line=error_line, debug=debug, on_start=start)
    assert isinstance(result, dict)
    if startup is not None and "timings" in result:
        result["timings"] = {"startup": round(startup, 4), **result["timings"]}
    if p["as_json"]:
        emit_json(result, 0)
    elif not p["quiet"]:
        shown = lines(result, result["status"] == "planned")
        click.echo("\n".join(shown if start is None else shown[_plan_lines(result) :]), err=True)
    if p["preview_png"] is not None:
        _preview(request, p)


def _plan_lines(report: dict[str, Any]) -> int:
    """How many of a report's lines are its plan (printed already when the run started)."""
    return len(lines(report, None))


def _check_usage(p: dict[str, Any]) -> None:
    output, output_dir, inputs = p["output"], p["output_dir"], p["inputs"]
    if (output is None) == (output_dir is None):
        raise click.UsageError("give either -o OUTPUT (one input) or -O OUTDIR (any number of inputs)")
    if output is not None:
        for name in BATCH_ONLY:
            if p[name]:
                raise click.UsageError(f"--{name.replace('_', '-')} goes with -O OUTDIR")
        if len(inputs) != 1:
            raise click.UsageError(f"-o takes exactly one INPUT, got {len(inputs)}; use -O OUTDIR for several")
    elif not inputs and p["from_list"] is None:
        raise click.UsageError("give INPUT files, quoted globs, or --from-list FILE")
    if p["continue_run"] is not None and not p["overwrite"]:
        raise click.UsageError("--continue-run finishes a stopped --overwrite batch: give it with --overwrite")
    if p["input_shape"] is not None and (output is None or not p["dry_run"]):
        raise click.UsageError("--input-shape describes a virtual input for planning: use it with -o and --dry-run")
    if p["preview_png"] is not None and (output_dir is not None or p["dry_run"]):
        raise click.UsageError("--preview draws one finished run: use it with -o and without --dry-run")


def layer_of(spec_path: Path | None, preset: str | None, scale: str | None, grid: dict[str, Any] | None = None) -> Any:
    """What to compute: a LayerSpec, a preset (a factory of the input's channel count), or a resampling
    (any of --voxel-size, --shape, --like, --interp, or --scale without a layer)."""
    grid = {k: v for k, v in (grid or {}).items() if v is not None}
    if spec_path is not None and preset is not None:
        raise click.UsageError("give either --spec or --preset, not both")
    named = [f"--{k.replace('_', '-')}" for k in grid if k != "boundary"]
    if (spec_path is not None or preset is not None) and named:
        raise click.UsageError(f"{named[0]} resamples without a layer: use it without --spec and --preset")
    if spec_path is None and preset is None:
        if not named and scale is None:
            raise click.UsageError(
                "give the layer with --spec SPEC.yaml, a preset (--preset trilinear --scale 2), or a grid "
                "(--scale 1.5, --voxel-size 0.5, --shape D,H,W or --like REF)"
            )
        return _resampling(scale, grid)
    if preset is None:
        if scale is not None:
            raise click.UsageError("--scale goes with --preset or a resampling; a spec's scale is its strides")
        from ..layer.spec import LayerSpec

        return LayerSpec.from_yaml(spec_path)
    from ..layer.presets import Preset

    if scale is not None and any("." in part for part in scale.split(",")):
        raise click.UsageError(
            f"presets take integer factors; for --scale {scale}, leave out --preset (linear interpolation) or "
            "give --interp NAME"
        )
    return Preset.parse(preset, scale if scale is not None else 2)


def _resampling(scale: str | None, grid: dict[str, Any]) -> Any:
    from ..layer.resample import ResampleSpec
    from ..run.job import reference_grid

    like = reference_grid(grid["like"]) if "like" in grid else None
    return ResampleSpec.create(
        voxel_size=grid.get("voxel_size"),
        scale=scale,
        shape=grid.get("shape"),
        like=like,
        interp=(grid.get("interp") or "linear").lower(),
        boundary=(grid.get("boundary") or "replicate").lower(),
    )


def _options_of(p: dict[str, Any]) -> Any:
    from ..run.options import ClusterOptions, ComputeOptions, Options, ReadOptions, WriteOptions

    boundary = (p["boundary"] or ("zeros" if p["preset"] is None else "replicate")).lower()
    return Options(
        read=ReadOptions(dataset=p["dataset"], fourth_axis=p["fourth_axis"].lower(),
                         allow_external=p["allow_external"]),
        write=WriteOptions(dataset=p["output_dataset"], dtype=p["output_dtype"], overwrite=p["overwrite"],
                           resume=p["resume"], compression_level=p["compression_level"], chunks=p["chunks"],
                           checkpoint_every=p["checkpoint_every"]),
        compute=ComputeOptions(device=p["device"], precision=p["precision"].lower(), memory_limit=p["memory_limit"],
                               tile=p["tile"], boundary=boundary, engine_path=p["engine_path"], threads=p["threads"]),
        cluster=ClusterOptions(scheduler=p["scheduler"]),
        progress=p["progress"],
    )  # fmt: skip


def _request(p: dict[str, Any]) -> Any:
    from ..run.dispatch import Batch, Request

    batch = None
    if p["output_dir"] is not None:
        batch = Batch(p["output_dir"], p["name_template"], p["output_format"], p["shard"], p["skip_existing"],
                      p["fail_fast"], p["continue_run"])  # fmt: skip
    listed = tuple(p["from_list"]) if p["from_list"] is not None else ()
    return Request(
        layer=layer_of(p["spec_path"], p["preset"], p["scale"], {k: p[k] for k in (*GRID_FLAGS, "boundary")}),
        inputs=tuple(str(i) for i in p["inputs"]),
        options=_options_of(p),
        output=p["output"],
        batch=batch,
        listed=listed,
        dry_run=p["dry_run"],
        input_shape=p["input_shape"],
    )


def _preview(request: Any, p: dict[str, Any]) -> None:
    from ..errors import Deconv3dError, RunError
    from ..layer.spec import LayerSpec
    from ..run.job import layer_channels
    from ..views.preview import preview_upsample

    layer = request.layer
    in_channels, filters, data_format = layer_channels(layer), None, "channels_last"
    if isinstance(layer, LayerSpec):
        filters, data_format = layer.filters, layer.data_format
    try:
        preview_upsample(Path(request.inputs[0]), request.output, p["preview_png"], p["dataset"], p["output_dataset"],
                         p["fourth_axis"].lower(), in_channels, filters, data_format,
                         overwrite=p["overwrite"])  # fmt: skip
    except Deconv3dError as exc:
        raise RunError(f"the output was written, but the preview failed: {error_line(exc)}") from None
    click.echo(f"deconv3d: preview written to {p['preview_png']}", err=True)
