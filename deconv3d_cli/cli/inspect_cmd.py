"""`deconv3d inspect`: what a file holds and where its voxels are, as text or JSON (and a preview)."""

from __future__ import annotations

from pathlib import Path

import click

from . import params
from .main import CONTEXT, emit_json, main


@main.command("inspect", context_settings=CONTEXT)
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--dataset", help="HDF5/Zarr dataset path (automatic when the file holds one).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--preview", "preview_png", type=click.Path(path_type=Path), help="Draw the mid-slices to a PNG.")
@click.option(
    "--fourth-axis",
    type=click.Choice(["auto", "channels", "series"], case_sensitive=False),
    default="auto",
    show_default=True,
    help="How to read a 4-D NIfTI's 4th axis.",
)
@click.option("--overwrite", "--force", "-f", "overwrite", is_flag=True, help="Replace an existing preview PNG.")
@params.debug_option
def inspect_cmd(
    file: Path, dataset: str | None, as_json: bool, preview_png: Path | None, fourth_axis: str, overwrite: bool
) -> None:
    """Describe FILE: format, shape, layout, dtype, spacing, orientation, affine, chunks, sizes.

    \b
    Example:
      deconv3d inspect sample_data/phantom.nii.gz --preview phantom.png
    """
    from ..views.describe import describe, format_text
    from ..views.preview import check_preview_target, preview_file

    if preview_png is not None:  # refused before anything is read or printed
        check_preview_target(preview_png, file, overwrite=overwrite)
    info = describe(file, dataset, fourth_axis=fourth_axis.lower())
    if as_json:
        emit_json(info, 0)
    else:
        click.echo(format_text(info))
    if preview_png is not None:
        preview_file(
            file, preview_png, dataset, fourth_axis=fourth_axis.lower(), data_format=info["data_format"],
            overwrite=overwrite,
        )  # fmt: skip
        click.echo(f"deconv3d: preview written to {preview_png}", err=True)
