"""`--preview PNG`: orthogonal mid-slices of one volume, or of an input and its upsampled output.

The parts: `volumes` (what to draw from each file: planes, orientation, units, alignment), `labels`
(every word and number printed), `sheet` (the layout and the drawing) and `target` (where the PNG may
go, and writing it atomically). This module is the door: `preview_file` (what `inspect --preview`
draws), `preview_upsample` (what `upsample --preview` draws), and `check_preview_target`, which the
command calls before a run so that a preview path that would be refused is refused before any work.

A preview never replaces an existing file unless `overwrite=True`, and never the input or the output
it draws, nor a directory (see `target`). Only Pillow is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import io as vio
from . import labels
from .sheet import Sheet, draw, plan
from .target import check_target, write_png
from .volumes import Volume, frame, volume_from_reader

__all__ = [
    "Volume",
    "check_preview_target",
    "plan",
    "preview_file",
    "preview_upsample",
    "render",
    "volume_from_reader",
]


def check_preview_target(
    png: Path | str, input_path: Path | str, output_path: Path | str | None = None, *, overwrite: bool = False
) -> Path:
    """Refuse (InputError) a preview path that is a directory, the input or the output of the command
    (also through a symlink or a hard link), in a missing folder, or an existing file without
    `overwrite`. Cheap: meant to be called before a run as well as by the preview itself."""
    protected = {"input": Path(input_path)}
    if output_path is not None:
        protected["output"] = Path(output_path)
    return check_target(png, protected, overwrite)


def render(volumes: Sequence[Volume], title: str | None = None) -> Any:
    """The preview of `volumes` (first one the reference) as a PIL image (RGB)."""
    return draw(plan(volumes, title))


def _save(sheet: Sheet, png: Path, protected: dict[str, Path], overwrite: bool) -> Path:
    check_target(png, protected, overwrite)  # again: the run may have taken a while
    return write_png(draw(sheet), png, overwrite)


def preview_file(
    path: Path | str,
    png: Path | str,
    dataset: str | None = None,
    fourth_axis: str = "auto",
    data_format: str | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Mid-slices of one volume (what `inspect --preview` draws); returns the PNG's path."""
    from .describe import guess_data_format

    path, png = Path(path), Path(png)
    protected = {"input": path}
    check_target(png, protected, overwrite)
    reader = vio.open_reader(path, dataset, fourth_axis=fourth_axis)
    try:
        fmt = data_format or getattr(reader, "data_format", None) or guess_data_format(reader.shape)
        sheet = plan([volume_from_reader("file", reader, fmt)])
    finally:
        reader.close()
    return _save(sheet, png, protected, overwrite)


def preview_upsample(
    input_path: Path | str,
    output_path: Path | str,
    png: Path | str,
    dataset: str | None = None,
    output_dataset: str | None = None,
    fourth_axis: str = "auto",
    in_channels: int | None = None,
    filters: int | None = None,
    data_format: str = "channels_last",
    *,
    overwrite: bool = False,
) -> Path:
    """Input and output mid-slices, at one physical scale and one grey window (what `upsample --preview`
    draws); returns the PNG's path."""
    input_path, output_path, png = Path(input_path), Path(output_path), Path(png)
    protected = {"input": input_path, "output": output_path}
    check_target(png, protected, overwrite)
    reader = vio.open_reader(input_path, dataset, fourth_axis=fourth_axis, in_channels=in_channels)
    out_reader = None
    try:
        hints: dict[str, Any] = {}
        if vio.format_of(output_path) == "nifti":
            mode = getattr(reader, "fourth_axis", None)
            hints = {"fourth_axis": "series" if mode == "series" else "channels", "in_channels": filters}
        out_reader = vio.open_reader(output_path, output_dataset, **hints)
        vols = [volume_from_reader("input", reader, data_format), volume_from_reader("output", out_reader, data_format)]
        scale, _ = frame(vols[0], vols[1])
        sheet = plan(vols, labels.title_text(scale))
    finally:
        reader.close()
        if out_reader is not None:
            out_reader.close()
    return _save(sheet, png, protected, overwrite)
