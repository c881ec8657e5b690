"""The `deconv3d` command: parse, call the library, turn its errors into one clear line.

Nothing heavy is imported at module level, so `deconv3d --help` answers at once; torch loads only
when a command computes. Exit codes: 0 done, 1 a run failed, 2 a usage or input error, 130 on Ctrl-C.
"""

from __future__ import annotations

import json
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..errors import Deconv3dError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _fail(message: str, code: int) -> None:
    click.echo(f"deconv3d: error: {message}", err=True)
    sys.exit(code)


class Deconv3dGroup(click.Group):
    """Turns library errors into one line on stderr and an exit code; `--debug` shows the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Deconv3dError as exc:
            if _debug(ctx):
                traceback.print_exc()
            _fail(exc.line(flag_of), exc.exit_code)
        except KeyboardInterrupt:
            click.echo("deconv3d: interrupted; no output was written", err=True)
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except MemoryError:
            if _debug(ctx):
                traceback.print_exc()
            _fail("out of memory; lower --memory-limit or --tile", 1)
        except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
            if _debug(ctx):
                traceback.print_exc()
            _fail(f"{type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 1)


def flag_of(param: str) -> str:
    """The flag that sets library parameter `param` (`memory_limit` -> `--memory-limit`), else `param`."""
    stack: list[click.Command] = [main]
    while stack:
        command = stack.pop()
        if isinstance(command, click.Group):
            stack.extend(command.commands.values())
        for p in command.params:
            if isinstance(p, click.Option) and p.name == param:
                return max(p.opts, key=len)
    return param


def _debug(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool((root.obj or {}).get("debug")) or "--debug" in sys.argv


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@click.group(cls=Deconv3dGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="deconv3d")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Upsample 3-D volumes with a Keras Conv3DTranspose layer, exactly, on CPU or CUDA.

    \b
    Examples:
      deconv3d upsample scan.npy -o scan_x2.npy --spec layer.yaml
      deconv3d spec validate layer.yaml
    """
    ctx.obj = {"debug": debug}
    if threading_main():
        signal.signal(signal.SIGTERM, _sigterm)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _debug_option(f: Any) -> Any:
    def callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            ctx.find_root().obj = {**(ctx.find_root().obj or {}), "debug": True}

    return click.option("--debug", is_flag=True, expose_value=False, callback=callback, help="Show tracebacks.")(f)


def _parse_tile(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int, int] | None:
    if value is None:
        return None
    parts = value.replace("x", ",").split(",")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"{value!r}: use D,H,W output voxels, e.g. 64,64,64 (or one number)") from None
    if len(nums) == 1:
        nums *= 3
    if len(nums) != 3 or any(n < 1 for n in nums):
        raise click.BadParameter(f"{value!r}: use three positive integers D,H,W, e.g. 64,64,64")
    return tuple(nums)  # type: ignore[return-value]


def _parse_memory(ctx: click.Context, param: click.Parameter, value: str) -> int:
    from ..geometry.tiling import parse_bytes

    try:
        return parse_bytes(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command(context_settings=CONTEXT)
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output file (.npy, .h5, .nii, .nii.gz, .zarr).")
@click.option(
    "-O", "--output-dir", type=click.Path(path_type=Path), help="Output folder for many inputs (created if missing)."
)
@click.option("--from-list", type=click.File("r"), help="Read input paths from FILE, one a line ('-' for stdin).")
@click.option(
    "--name-template",
    default="{stem}_x{scale}{ext}",
    show_default=True,
    help="Output names with -O; placeholders {stem} {name} {ext} {scale} {parent} {index}.",
)
@click.option("--output-format", help="Output format with -O: npy, h5, nii, nii.gz or zarr (default: the input's).")
@click.option("--skip-existing", is_flag=True, help="With -O: leave finished outputs alone.")
@click.option("--fail-fast", is_flag=True, help="With -O: stop at the first failed file.")
@click.option("--shard", help="With -O: process only part I of N of the inputs (I/N, 0 <= I < N).")
@click.option("-q", "--quiet", is_flag=True, help="Print errors only.")
@click.option("-v", "--verbose", is_flag=True, help="Print the plan of each file.")
@click.option("--spec", "spec_path", type=click.Path(path_type=Path), help="Layer spec (YAML) with its weights.")
@click.option("--preset", help="Weight-free upsampling instead of a spec: nearest or trilinear (see `presets`).")
@click.option("--scale", help="Preset scale per axis: 2, or D,H,W such as 2,2,3.")
@click.option(
    "--boundary",
    type=click.Choice(["zeros", "replicate", "reflect"], case_sensitive=False),
    help="Input boundary: zeros is Keras's padding.  [default: replicate for presets, zeros for specs]",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp64", "bf16", "fp16"], case_sensitive=False),
    default="fp32",
    show_default=True,
    help="Compute precision.",
)
@click.option(
    "--memory-limit", default="1GiB", show_default=True, callback=_parse_memory, help="Memory budget for tiles."
)
@click.option("--tile", callback=_parse_tile, help="Output tile D,H,W in voxels (default: sized from the budget).")
@click.option("--dataset", help="HDF5/Zarr input dataset path (automatic when the file holds one).")
@click.option("--output-dataset", help="HDF5/Zarr output dataset path.")
@click.option(
    "--compression-level",
    type=click.IntRange(0, 9),
    help="gzip level of .h5 and .nii.gz output, 0 = none.  [default: 1]",
)
@click.option("--chunks", callback=_parse_tile, help="HDF5 output chunk D,H,W (default: about 1 MiB each).")
@click.option(
    "--output-dtype", default="float32", show_default=True, help="float32, float64, float16, keep, int16, ..."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--resume", is_flag=True, help="Continue a partial output left by a killed run.")
@click.option("--dry-run", is_flag=True, help="Print the plan and write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for the engine.")
@click.option(
    "--engine-path",
    # engine.paths.PATHS and engine.SEPARABLE, spelled out so that --help never imports torch
    type=click.Choice(
        [
            "auto",
            "transpose",
            "transpose_cl",
            "transpose_dnn",
            "transpose_dnn_cl",
            "phase",
            "phase_cl",
            "phase_dnn",
            "phase_dnn_cl",
            "separable",
        ]
    ),
    default="auto",
    show_default=True,
    help="Engine formulation (auto: the fastest on the first slab). All are exact; fixing one, with the same "
    "--threads, makes separate runs agree to the last bit.",
)
@click.option(
    "--fourth-axis",
    type=click.Choice(["auto", "channels", "series"], case_sensitive=False),
    default="auto",
    show_default=True,
    help="A 4-D NIfTI's 4th axis: channels, or a series of volumes (auto: channels when its length is the "
    "layer's input channels).",
)
@click.option("--preview", "preview_png", type=click.Path(path_type=Path), help="Also draw input/output mid-slices.")
@click.option(
    "--checkpoint-every",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Seconds between making finished tiles durable for --resume (0: after every tile).",
)
@click.option(
    "--scheduler",
    help="Run the tiles as Dask tasks: a scheduler address (tcp://host:8786, or a scheduler JSON file) or "
    "local[:N] for N local worker processes. Needs: pip install 'deconv3d-cli[dask]'.",
)
@click.option(
    "--input-shape",
    help="With --dry-run: plan for a virtual input of this shape (and dtype), e.g. 16384,16384,8192,1:uint8; "
    "INPUT need not exist.",
)
@_debug_option
def upsample(
    inputs: tuple[Path, ...],
    output: Path | None,
    output_dir: Path | None,
    from_list: Any,
    name_template: str,
    output_format: str | None,
    skip_existing: bool,
    fail_fast: bool,
    shard: str | None,
    quiet: bool,
    verbose: bool,
    spec_path: Path | None,
    preset: str | None,
    scale: str | None,
    boundary: str | None,
    device: str,
    precision: str,
    memory_limit: int,
    tile: tuple[int, int, int] | None,
    dataset: str | None,
    output_dataset: str | None,
    compression_level: int | None,
    chunks: tuple[int, int, int] | None,
    output_dtype: str,
    overwrite: bool,
    resume: bool,
    dry_run: bool,
    as_json: bool,
    progress: bool,
    threads: int | None,
    engine_path: str,
    checkpoint_every: float,
    fourth_axis: str = "auto",
    preview_png: Path | None = None,
    scheduler: str | None = None,
    input_shape: str | None = None,
) -> None:
    """Apply a Conv3DTranspose layer (or a preset) to INPUT... and write the upsampled volumes.

    \b
    Examples:
      deconv3d upsample scan.npy -o scan_x2.npy --spec sample_data/sample_spec.yaml
      deconv3d upsample 'scans/*.nii.gz' -O out/ --preset trilinear --scale 2 --json
      find scans -name '*.h5' | deconv3d upsample --from-list - -O out/ --spec layer.yaml --skip-existing
    """
    if (output is None) == (output_dir is None):
        raise click.UsageError("give either -o OUTPUT (one input) or -O OUTDIR (any number of inputs)")
    if output is not None:
        batch_only = [
            ("--from-list", from_list),
            ("--skip-existing", skip_existing),
            ("--fail-fast", fail_fast),
            ("--shard", shard),
            ("--output-format", output_format),
        ]
        for flag, value in batch_only:
            if value:
                raise click.UsageError(f"{flag} goes with -O OUTDIR")
        if len(inputs) != 1:
            raise click.UsageError(f"-o takes exactly one INPUT, got {len(inputs)}; use -O OUTDIR for several")
    elif not inputs and from_list is None:
        raise click.UsageError("give INPUT files, quoted globs, or --from-list FILE")
    if input_shape is not None and (output is None or not dry_run):
        raise click.UsageError("--input-shape describes a virtual input for planning: use it with -o and --dry-run")
    if preview_png is not None and (output_dir is not None or dry_run):
        raise click.UsageError("--preview draws one finished run: use it with -o and without --dry-run")
    spec = _layer(spec_path, preset, scale)
    from ..run import local as pipeline

    opts = pipeline.Options(
        device=device,
        precision=precision.lower(),
        memory_limit=memory_limit,
        tile=tile,
        dataset=dataset,
        output_dataset=output_dataset,
        output_dtype=output_dtype,
        overwrite=overwrite,
        resume=resume,
        progress=progress,
        fourth_axis=fourth_axis.lower(),
        writer_options={
            k: v for k, v in {"compression_level": compression_level, "chunks": chunks}.items() if v is not None
        },
        flush_every=checkpoint_every,
        engine_path=engine_path,
        boundary=(boundary or ("zeros" if preset is None else "replicate")).lower(),
        scheduler=scheduler,
    )
    if threads:
        import torch

        torch.set_num_threads(threads)
    if output_dir is not None:
        _upsample_many(
            spec,
            preset,
            scale,
            inputs,
            from_list,
            output_dir,
            name_template,
            output_format,
            shard,
            skip_existing,
            fail_fast,
            dry_run,
            as_json,
            quiet,
            verbose,
            opts,
        )
        return
    if scheduler or input_shape is not None:
        from ..run.dask import runner as distributed

        if dry_run:
            report = distributed.dry_run(spec, inputs[0], output, opts, input_shape=input_shape, threads=threads)
        else:
            report = distributed.run_one(spec, inputs[0], output, opts, threads=threads)
        _emit(report, as_json, dry_run=dry_run, quiet=quiet)
        if not as_json and not quiet:
            click.echo("\n".join(distributed.describe_lines(report)), err=True)
        if preview_png is not None:
            _upsample_preview(spec, inputs[0], output, preview_png, dataset, output_dataset, opts.fourth_axis)
        return
    if dry_run:
        job = pipeline.prepare(spec, inputs[0], output, opts)
        job.reader.close()
        report = job.describe()
        report["status"] = "planned"
        _emit(report, as_json, dry_run=True, quiet=quiet)
        return
    result = pipeline.run_job(spec, inputs[0], output, opts)
    _emit(result, as_json, quiet=quiet)
    if preview_png is not None:
        _upsample_preview(spec, inputs[0], output, preview_png, dataset, output_dataset, opts.fourth_axis)


def _layer(spec_path: Path | None, preset: str | None, scale: str | None) -> Any:
    """The layer to run: a LayerSpec, or for presets a factory of the input's channel count."""
    from ..layer.spec import LayerSpec

    if spec_path is not None and preset is not None:
        raise click.UsageError("give either --spec or --preset, not both")
    if preset is None:
        if scale is not None:
            raise click.UsageError("--scale goes with --preset; a spec's scale is its strides")
        if spec_path is None:
            raise click.UsageError("give the layer with --spec SPEC.yaml, or --preset trilinear --scale 2")
        return LayerSpec.from_yaml(spec_path)
    from ..layer import presets

    factor = presets.parse_scale(scale if scale is not None else 2)
    presets.make_spec(preset, factor)  # refuse an unknown preset before any file is opened
    return lambda channels: presets.make_spec(preset, factor, channels)


def _spec_channels(spec: Any) -> tuple[int | None, int | None, str]:
    """(input channels, filters, data_format) of a LayerSpec; unknown for a preset factory."""
    from ..layer.spec import LayerSpec

    if not isinstance(spec, LayerSpec):
        return None, None, "channels_last"
    in_channels = spec.kernel.shape[4] if spec.kernel is not None else spec.in_channels
    return in_channels, spec.filters, spec.data_format


def _upsample_preview(
    spec: Any, src: Path, dst: Path, png: Path, dataset: str | None, output_dataset: str | None, fourth_axis: str
) -> None:
    from ..errors import RunError
    from ..views.preview import preview_upsample

    in_channels, filters, data_format = _spec_channels(spec)
    try:
        preview_upsample(src, dst, png, dataset, output_dataset, fourth_axis, in_channels, filters, data_format)
    except Deconv3dError as exc:
        raise RunError(f"the output was written, but the preview failed: {exc.line(flag_of)}") from None
    click.echo(f"deconv3d: preview written to {png}", err=True)


def _emit(report: dict[str, Any], as_json: bool, dry_run: bool = False, quiet: bool = False) -> None:
    if as_json:
        click.echo(json.dumps(report, indent=2))
    elif not quiet:
        click.echo("\n".join(_describe_lines(report, dry_run)), err=True)


def _describe_lines(report: dict[str, Any], dry_run: bool) -> list[str]:
    from ..geometry.tiling import format_bytes

    lines = [
        f"{report['input']}: {tuple(report['input_shape'])} {report['input_dtype']}"
        f" -> {report['output']}: {tuple(report['output_shape'])} {report['output_dtype']}",
        f"  layer: {report['layer']}",
        f"  tiles: {report['tiles']} of {tuple(report['tile_shape'])} (grid {tuple(report['tile_grid'])}, "
        f"halo {tuple(report['halo'])}), memory estimate {format_bytes(report['memory_estimate_bytes'])}",
    ]
    if report.get("fourth_axis"):
        lines.insert(1, f"  {report['fourth_axis']}")
    if dry_run:
        lines.append(f"  dry run: nothing written (output would be {format_bytes(report['output_bytes'])})")
    else:
        lines.append(
            f"  done in {report['seconds']:.2f} s on {report['device']} "
            f"({(report['voxels_per_s'] or 0) / 1e6:.1f} Mvox/s)"
            + (f", {report['resumed_tiles']} tiles resumed" if report.get("resumed_tiles") else "")
            + (f", {report['clipped_voxels']} voxels clipped" if report.get("clipped_voxels") else "")
        )
    if report.get("constraints"):  # the spec's constraints, applied to its loaded weights
        from ..layer.constraints import format_report

        lines.append(f"  constraints: {format_report(report['constraints'])}")
    if report.get("regularization"):  # penalty values; they do not change the output
        from ..layer.regularizers import format_report as format_penalties

        lines.append(f"  regularization: {format_penalties(report)}")
    return lines


def _upsample_many(
    spec: Any,
    preset: str | None,
    scale: str | None,
    patterns: tuple[Path, ...],
    from_list: Any,
    output_dir: Path,
    template: str,
    output_format: str | None,
    shard_text: str | None,
    skip_existing: bool,
    fail_fast: bool,
    dry_run: bool,
    as_json: bool,
    quiet: bool,
    verbose: bool,
    opts: Any,
) -> None:
    """Every input through one process and one engine per channel count; exit 1 if any file failed."""
    from ..layer import presets
    from ..layer.spec import LayerSpec
    from ..run import batch
    from ..run import local as pipeline

    inputs = batch.expand_inputs([str(p) for p in patterns], from_list)
    if shard_text:
        try:
            index, count = batch.parse_shard(shard_text)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--shard") from None
        inputs = batch.shard(inputs, index, count)
    factor = spec.strides if isinstance(spec, LayerSpec) else presets.parse_scale(scale if scale else 2)
    jobs = batch.plan_outputs(inputs, output_dir, template, factor, output_format)
    if not dry_run:
        output_dir.mkdir(parents=True, exist_ok=True)
    engines: dict[int, Any] = {}

    def on_file(result: Any) -> None:
        if quiet and result.status != "failed":
            return
        if result.status == "failed":
            error = result.error if result.input in (result.error or "") else f"{result.input}: {result.error}"
            click.echo(f"FAILED {error}", err=True)
        elif verbose and result.status in ("done", "planned"):
            click.echo("\n".join(_describe_lines(result.details, result.status == "planned")), err=True)
        elif result.status == "done":
            d = result.details
            click.echo(
                f"done   {result.input} -> {result.output} {tuple(d['output_shape'])} {d['seconds']:.2f} s", err=True
            )
        else:
            click.echo(f"{result.status:<6} {result.input} -> {result.output}", err=True)

    run = batch.run_batch
    if opts.scheduler:  # the same report from Dask tasks (distributed.py)
        from ..run.dask import runner as distributed

        run = distributed.batch_runner(spec, opts, click.get_current_context().params.get("threads"))
    report = run(
        jobs,
        prepare=lambda job: pipeline.prepare(spec, job.input, job.output, opts),
        execute=lambda job: pipeline.execute(job, pipeline.engine_for(job, opts, engines), opts),
        describe=lambda job: job.describe(),
        close=lambda job: job.reader.close(),
        skip_existing=skip_existing,
        fail_fast=fail_fast,
        dry_run=dry_run,
        on_file=on_file,
        debug=_debug(click.get_current_context()),
    )
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2))
    if not quiet or report.exit_code:
        click.echo(report.summary(), err=True)
    sys.exit(report.exit_code)


@main.command("presets", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the presets as JSON.")
def presets_cmd(as_json: bool) -> None:
    """List the weight-free upsampling presets."""
    from ..layer.presets import DEFAULT_BOUNDARY, PRESETS

    if as_json:
        click.echo(json.dumps({"presets": PRESETS, "default_boundary": DEFAULT_BOUNDARY}, indent=2))
        return
    width = max(map(len, PRESETS))
    for name, text in PRESETS.items():
        click.echo(f"{name:<{width}}  {text}")
    click.echo(f"(use with --preset NAME --scale S; boundary defaults to {DEFAULT_BOUNDARY})")


@main.group(context_settings=CONTEXT)
def spec() -> None:
    """Check, import and create layer specs."""


@spec.command("validate", context_settings=CONTEXT)
@click.argument("spec_path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the normalised config as JSON.")
@_debug_option
def spec_validate(spec_path: Path, as_json: bool) -> None:
    """Check SPEC (YAML, or Keras's serialised form) and its weights; exit 2 if invalid."""
    from ..layer.spec import LayerSpec

    layer = LayerSpec.from_yaml(spec_path)
    if as_json:
        config = layer.to_config()
        config["in_channels"] = layer.in_channels
        config["weights_loaded"] = layer.kernel is not None
        click.echo(json.dumps(config, indent=2))
    else:
        click.echo(f"{spec_path}: ok: {layer.describe()}")
    if layer.constraints_applied:
        from ..layer.constraints import format_report

        click.echo(f"  constraints applied to the loaded weights: {format_report(list(layer.constraints_applied))}")


def _triple_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """'2' -> 2, '2,2,1' -> [2, 2, 1] (None stays None)."""
    if value is None:
        return None
    try:
        nums = [int(v) for v in value.replace("x", ",").split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: use an integer or three, e.g. 2 or 2,2,1") from None
    if len(nums) not in (1, 3):
        raise click.BadParameter(f"{value!r}: use an integer or three, e.g. 2 or 2,2,1")
    return nums[0] if len(nums) == 1 else nums


def _named_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    from ..layer.named import parse_option

    if value is None:
        return None
    try:
        return parse_option(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@spec.command("import", context_settings=CONTEXT)
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="SPEC.yaml to write (its .npz goes beside it).")
@click.option("--layer", help="Which layer (name, or path such as sub/up for nested models; torch: the key prefix).")
@click.option("--list", "list_only", is_flag=True, help="List the importable layers and exit.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Keras: config for a weights-only .h5.")
@click.option(
    "--weights", "weights_path", type=click.Path(path_type=Path), help="Keras: weights (.h5/.npz) for a config."
)
@click.option(
    "--keras2-dilation",
    type=click.Choice(["keep", "drop"], case_sensitive=False),
    default="keep",
    show_default=True,
    help="A tf.keras 2 layer's dilation_rate (which tf.keras 2 ignored): keep it (applied) or drop it.",
)
@click.option("--sidecar", type=click.Path(path_type=Path), help="PyTorch: YAML/JSON of ConvTranspose3d arguments.")
@click.option("--stride", callback=_triple_option, help="PyTorch: stride (S or D,H,W).")
@click.option("--padding", "torch_padding", callback=_triple_option, help="PyTorch: padding (P or D,H,W).")
@click.option("--output-padding", callback=_triple_option, help="PyTorch: output_padding.")
@click.option("--dilation", callback=_triple_option, help="PyTorch: dilation.")
@click.option("--groups", type=click.IntRange(min=1), help="PyTorch: groups.")
@click.option("--activation", help="PyTorch: activation to apply after the layer (default linear).")
@click.option(
    "--data-format",
    type=click.Choice(["channels_last", "channels_first"], case_sensitive=False),
    help="PyTorch: the layout of the volumes the spec will read (default channels_last).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing SPEC.yaml / .npz.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout.")
@_debug_option
def spec_import(
    source: Path,
    output: Path | None,
    layer: str | None,
    list_only: bool,
    config_path: Path | None,
    weights_path: Path | None,
    keras2_dilation: str,
    sidecar: Path | None,
    stride: Any,
    torch_padding: Any,
    output_padding: Any,
    dilation: Any,
    groups: int | None,
    activation: str | None,
    data_format: str | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Import a Conv3DTranspose layer from a Keras or PyTorch file into SPEC.yaml + SPEC.npz.

    \b
    SOURCE: a Keras .keras archive, a Keras .h5 model (or a weights-only .h5 with --config), a Keras
    config as JSON/YAML (model.to_json() or layer.get_config(); weights with --weights), or a PyTorch
    ConvTranspose3d state dict (.pt; stride, padding, ... from options or --sidecar).
    \b
    Examples:
      deconv3d spec import model.keras --list
      deconv3d spec import model.keras --layer decoder/up1 -o up1.yaml
      deconv3d spec import up.pt --stride 2 --padding 1 --output-padding 1 -o up.yaml
    """
    from .. import importers

    if list_only:
        kind, candidates = importers.list_layers(source, config=config_path)
        if as_json:
            click.echo(json.dumps({"source": str(source), "format": kind, "layers": [c.__dict__ for c in candidates]}))
        else:
            click.echo(f"{source}: {kind}, {len(candidates)} layer(s)")
            for c in candidates:
                click.echo(f"  {c.line()}")
        return
    if output is None:
        raise click.UsageError("give the spec to write with -o SPEC.yaml (or --list to see the layers)")
    torch_options = {
        "stride": stride,
        "padding": torch_padding,
        "output_padding": output_padding,
        "dilation": dilation,
        "groups": groups,
    }
    try:
        result = importers.import_layer(
            source,
            layer,
            config=config_path,
            weights=weights_path,
            keras2_dilation=keras2_dilation.lower(),
            torch_options=torch_options,
            sidecar=sidecar,
            activation=activation,
            data_format=None if data_format is None else data_format.lower(),
        )
    except importers.LayerChoiceError as exc:
        click.echo(f"{source}: layers that can be imported:", err=True)
        for c in exc.candidates:
            click.echo(f"  {c.line()}", err=True)
        raise
    for warning in result.warnings:
        click.echo(f"deconv3d: warning: {warning}", err=True)
    written = importers.save_spec(result.spec, output, overwrite=overwrite, source=source)
    if as_json:
        click.echo(json.dumps({**result.as_json(), "written": [str(p) for p in written]}, indent=2))
        return
    click.echo(f"{source}: imported layer {result.layer or '(top level)'} ({result.format})", err=True)
    click.echo(f"  {result.spec.describe()}", err=True)
    for note in result.notes:
        click.echo(f"  note: {note}", err=True)
    click.echo(f"  wrote {', '.join(str(p) for p in written)}", err=True)


@spec.command("init", context_settings=CONTEXT)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="SPEC.yaml to write.")
@click.option("--filters", type=click.IntRange(min=1), required=True, help="Output channels.")
@click.option("--kernel-size", callback=_triple_option, required=True, help="K or D,H,W.")
@click.option("--strides", callback=_triple_option, default="1", show_default=True, help="S or D,H,W.")
@click.option("--padding", default="valid", show_default=True, help="valid, same, or P,P,P (PyTorch's padding).")
@click.option("--output-padding", callback=_triple_option, help="OP or D,H,W (default: none).")
@click.option("--dilation-rate", callback=_triple_option, default="1", show_default=True, help="D or D,H,W.")
@click.option(
    "--data-format",
    type=click.Choice(["channels_last", "channels_first"], case_sensitive=False),
    default="channels_last",
    show_default=True,
)
@click.option("--activation", default="linear", show_default=True, help="Activation name.")
@click.option("--use-bias/--no-use-bias", default=True, show_default=True)
@click.option("--in-channels", type=click.IntRange(min=1), required=True, help="Input channels of the kernel.")
@click.option("--seed", type=int, help="Seed of the draw (the bias uses seed + 1).")
@click.option(
    "--kernel-initializer",
    callback=_named_option,
    default="glorot_uniform",
    show_default=True,
    help="NAME, NAME:key=value,... (e.g. variance_scaling:scale=2,mode=fan_out) or a YAML mapping.",
)
@click.option("--bias-initializer", callback=_named_option, default="zeros", show_default=True)
@click.option("--kernel-regularizer", callback=_named_option, help="l1, l2, l1_l2, orthogonal_regularizer[:...].")
@click.option("--bias-regularizer", callback=_named_option)
@click.option("--activity-regularizer", callback=_named_option)
@click.option("--kernel-constraint", callback=_named_option, help="max_norm, min_max_norm, non_neg, unit_norm[:...].")
@click.option("--bias-constraint", callback=_named_option)
@click.option("--name", help="Layer name.")
@click.option("--no-weights", is_flag=True, help="Write no .npz: draw the weights at run time (from --seed).")
@click.option("--overwrite", is_flag=True, help="Replace an existing SPEC.yaml / .npz.")
@click.option("--json", "as_json", is_flag=True, help="Print the spec's config and weight statistics as JSON.")
@_debug_option
def spec_init(
    output: Path, padding: str, in_channels: int, no_weights: bool, overwrite: bool, as_json: bool, **kw: Any
) -> None:
    """Write a spec whose weights come from Keras initializers (no trained model needed).

    \b
    Example:
      deconv3d spec init --filters 8 --kernel-size 3 --strides 2 --padding same --in-channels 1 \\
          --kernel-initializer he_normal --seed 0 -o layer.yaml
    """
    from .. import importers
    from ..layer.spec import LayerSpec

    padding_value: Any = padding
    if "," in padding:  # P,P,P: PyTorch's padding, the spec's [p_d, p_h, p_w] extension
        padding_value = _triple_option(None, None, padding)  # type: ignore[arg-type]
    layer = LayerSpec.create(source="spec init", padding=padding_value, in_channels=in_channels, **kw)
    stats = {}
    if not no_weights:
        kernel, bias = layer.materialise(in_channels)
        layer = layer.with_weights(kernel, bias)
        for which, arr in (("kernel", kernel), ("bias", bias)):
            if arr is not None:
                a = arr.astype("float64")
                stats[which] = {
                    "shape": list(arr.shape),
                    "mean": float(a.mean()),
                    "std": float(a.std()),
                    "min": float(a.min()),
                    "max": float(a.max()),
                }
    written = importers.save_spec(layer, output, overwrite=overwrite)
    if as_json:
        config = layer.to_config()
        config.update(in_channels=in_channels, seed=layer.seed)
        click.echo(json.dumps({"config": config, "weights": stats, "written": [str(p) for p in written]}, indent=2))
        return
    click.echo(f"{output}: {layer.describe()}", err=True)
    for which, st in stats.items():
        click.echo(
            f"  {which} {tuple(st['shape'])}: mean {st['mean']:.4g}, std {st['std']:.4g}, "
            f"range [{st['min']:.4g}, {st['max']:.4g}]",
            err=True,
        )
    click.echo(f"  wrote {', '.join(str(p) for p in written)}", err=True)


@main.command("inspect", context_settings=CONTEXT)
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--dataset", help="HDF5 dataset path (automatic when the file holds one).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--preview", "preview_png", type=click.Path(path_type=Path), help="Draw the mid-slices to a PNG.")
@click.option(
    "--fourth-axis",
    type=click.Choice(["auto", "channels", "series"], case_sensitive=False),
    default="auto",
    show_default=True,
    help="How to read a 4-D NIfTI's 4th axis.",
)
@_debug_option
def inspect_cmd(file: Path, dataset: str | None, as_json: bool, preview_png: Path | None, fourth_axis: str) -> None:
    """Describe FILE: format, shape, layout, dtype, spacing, orientation, affine, chunks, sizes.

    \b
    Example:
      deconv3d inspect sample_data/phantom.nii.gz --preview phantom.png
    """
    from ..views.describe import describe, format_text

    info = describe(file, dataset, fourth_axis=fourth_axis.lower())
    click.echo(json.dumps(info, indent=2) if as_json else format_text(info))
    if preview_png is not None:
        from ..views.preview import preview_file

        preview_file(file, preview_png, dataset, fourth_axis=fourth_axis.lower(), data_format=info["data_format"])
        click.echo(f"deconv3d: preview written to {preview_png}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
