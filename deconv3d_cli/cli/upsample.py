"""`deconv3d upsample`: its options, turned into a run.dispatch.Request, and its report printed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import cloup

from ..layer import presets, resample
from .main import CONTEXT, emit_json, error_line, main
from .report import file_printer, lines
from .upsample_options import LAYER_BOUNDARY, upsample_options

BATCH_ONLY = ("from_list", "skip_existing", "fail_fast", "shard", "output_format", "continue_run")
GRID_FLAGS = ("voxel_size", "shape", "like", "interp")


@main.command(cls=cloup.Command, context_settings=CONTEXT)
@upsample_options
@click.pass_context
def upsample(ctx: click.Context, **p: Any) -> None:
    """Upsample INPUT... with a layer or a preset, or resample it onto a finer grid.

    \b
    Examples:
      deconv3d upsample scan.npy -o scan_x2.npy --spec layer.yaml            # a Keras layer
      deconv3d upsample scan.nii.gz -o x2.nii.gz --preset trilinear --scale 2  # a preset
      deconv3d upsample scan.nii.gz -o iso.nii.gz --voxel-size 0.5 --interp bspline  # 0.5 mm voxels
      deconv3d upsample scan.nii.gz -o on_ref.nii.gz --like ref.nii.gz       # another file's grid
      deconv3d upsample 'scans/*.nii.gz' -O out/ --preset trilinear --scale 2 --json   # a batch
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
        if named == ["--interp"] and scale is None:
            raise click.UsageError("--interp needs a grid option: --voxel-size, --scale, --shape or --like")
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
        interp=(grid.get("interp") or resample.DEFAULT_INTERP).lower(),
        boundary=(grid.get("boundary") or resample.DEFAULT_BOUNDARY).lower(),
    )


def _options_of(p: dict[str, Any]) -> Any:
    from ..run.options import ClusterOptions, ComputeOptions, Options, ReadOptions, WriteOptions

    boundary = (p["boundary"] or (LAYER_BOUNDARY if p["preset"] is None else presets.DEFAULT_BOUNDARY)).lower()
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
