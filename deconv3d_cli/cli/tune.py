"""`deconv3d tune`: decide (and record) the formulation for a layer and inputs before the real runs.

A cluster job or a batch of thousands of files then starts without any timing, and every process on
this machine follows the same recorded decision (engine/tuning.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from . import params
from .main import CONTEXT, emit_json, error_line, main


@main.command("tune", context_settings=CONTEXT)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--spec", "spec_path", type=click.Path(path_type=Path), help="Layer spec (YAML) with its weights.")
@click.option("--preset", help="A preset instead of a spec (presets need no tuning: they are separable).")
@click.option("--scale", help="Preset scale per axis.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["fp32", "fp64", "bf16", "fp16"], case_sensitive=False),
              default="fp32", show_default=True)  # fmt: skip
@click.option("--memory-limit", callback=params.memory, help="As for upsample.")
@click.option("--tile", callback=params.tile, help="As for upsample.")
@click.option("--output-format", default="npy", show_default=True, help="The output format the runs will write.")
@click.option("--json", "as_json", is_flag=True, help="Print the decisions as JSON.")
@params.debug_option
def tune_cmd(
    inputs: tuple[Path, ...],
    spec_path: Path | None,
    preset: str | None,
    scale: str | None,
    device: str,
    precision: str,
    memory_limit: int,
    tile: tuple[int, int, int] | None,
    output_format: str,
    as_json: bool,
) -> None:
    """Record the engine formulation for INPUT... (their plans) with this layer, as `upsample` would choose it.

    \b
    Example:
      deconv3d tune scan.nii.gz --spec layer.yaml     # then: deconv3d upsample ... (no timing)
    """
    from ..errors import Deconv3dError
    from ..io import formats
    from ..run.engines import engine_for, settle
    from ..run.job import prepare
    from ..run.options import ComputeOptions, Options
    from .upsample import layer_of

    layer = layer_of(spec_path, preset, scale)
    opts = Options(compute=ComputeOptions(device=device, precision=precision.lower(), memory_limit=memory_limit,
                                          tile=tile), progress=False)  # fmt: skip
    suffix = formats.extension_for(output_format)
    decisions = []
    scratch = tempfile.TemporaryDirectory(prefix="deconv3d-tune-")  # outputs are planned, never written
    for src in inputs:
        try:
            job = prepare(layer, src, Path(scratch.name) / f"{src.name}{suffix}", opts)
        except Deconv3dError as exc:
            raise click.ClickException(error_line(exc)) from None
        try:
            decision = settle(job, engine_for(job))
        finally:
            job.close()
        decisions.append({"input": str(src), "slab": list(job.first_slab_shape()), **decision})
        if not as_json:
            click.echo(f"{src}: {decision['engine_path']} ({decision['engine_path_source']})", err=True)
    if as_json:
        emit_json({"decisions": decisions}, 0)
