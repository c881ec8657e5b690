"""Every word and number the preview prints, as plain functions (tested without reading pixels).

The scale bar's length is one of 1, 2, 5 times a power of ten in the file's unit; the window is
printed with four significant digits; captions name the plane and the slice and, for array-axis
panels, which array axis runs down and which across.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .volumes import VOXELS, Plane, Volume

METRIC = ("nm", "um", "mm", "m")  # each 1000 of one is one of the next


def nice_length(most: float) -> float:
    """The largest 1, 2 or 5 times a power of ten that is at most `most` (> 0)."""
    exponent = math.floor(math.log10(most))
    for step in (5, 2, 1):
        value = step * 10.0**exponent
        if value <= most * (1 + 1e-9):
            return value
    return 10.0 ** (exponent - 1) * 5  # unreachable: 1 * 10**floor(log10(most)) <= most


def unit_label(unit: str, rows: int) -> str:
    """What one unit of the scale is called: the file's unit, or the first volume's voxels."""
    if unit == VOXELS:
        return "input voxels" if rows > 1 else "voxels"
    return unit or "(spacing units)"


def scale_bar(units_per_px: float, unit: str, longest_px: int, rows: int = 1) -> tuple[int, str]:
    """(length in pixels, label) of a scale bar no longer than `longest_px`, e.g. (80, '10 mm')."""
    most = longest_px * units_per_px
    value = nice_length(most)
    if unit == VOXELS:
        value = max(1.0, float(math.floor(value)))  # whole voxels
    px = max(1, int(round(value / units_per_px)))
    name = unit_label(unit, rows)
    if unit == VOXELS and value == 1:
        name = name.rstrip("s")
    shown = value
    while name in METRIC[:-1] and shown >= 1000:  # '10 mm', not '10000 um'
        shown, name = shown / 1000, METRIC[METRIC.index(name) + 1]
    return px, f"{shown:g} {name}"


def scale_note(units_per_px: float, unit: str, rows: int) -> str:
    """The scale every panel shares: 'all panels at 8 pixels per mm', '... at 2.5 mm per pixel'."""
    name = unit_label(unit, rows)
    if units_per_px < 1:
        single = name[:-1] if name.endswith("voxels") else name
        return f"all panels at {1 / units_per_px:.3g} pixels per {single}"
    return f"all panels at {units_per_px:.3g} {name} per pixel"


def window_text(lo: float, hi: float, rows: int) -> str:
    """The grey-level window, e.g. 'window 0 to 806.2 (1st-99th percentile of both rows)'."""
    who = "of both rows, one window for both" if rows == 2 else ("of all rows" if rows > 2 else "of the slices")
    return f"window {lo:.4g} to {hi:.4g} (1st-99th percentile {who})"


def spacing_text(vol: Volume) -> str:
    """'voxel 1 x 1.2 x 1.1 mm', or 'voxel size unknown'."""
    if vol.units == VOXELS:
        return "voxel size unknown"
    unit = f" {vol.units}" if vol.units else " (unit unknown)"
    return "voxel " + " x ".join(f"{z:.4g}" for z in vol.zooms) + unit


def row_text(vol: Volume, name: str) -> str:
    """The line above a row: role, file, shape, dtype, voxel size, notes."""
    shape = tuple(int(n) for n in vol.reader.shape)
    text = f"{vol.role}: {name}  {shape} {vol.reader.dtype}  {spacing_text(vol)}"
    if vol.notes:
        text += "  (" + ", ".join(vol.notes) + ")"
    return text


def caption_lines(plane: Plane, index: int, count: int) -> list[str]:
    """Under a panel: the plane and slice; for array planes also the axis running down and across."""
    if plane.letters is not None:
        return [f"{plane.name}, slice {index} of {count}"]
    return [f"{plane.name} = {index} of {count}", f"down: axis {plane.v}, across: axis {plane.h}"]


def edge_labels(plane: Plane) -> tuple[str, str, str, str] | None:
    """Anatomical letters at the left, right, top and bottom edges (None for array planes)."""
    return plane.letters


def axis_arrow_labels(plane: Plane) -> tuple[str, str] | None:
    """Labels of the arrows drawn in an array plane's corner: (across, down), e.g. ('axis 2', 'axis 1')."""
    if plane.letters is not None:
        return None
    return f"axis {plane.h}", f"axis {plane.v}"


def title_text(scales: Sequence[float]) -> str:
    """The upsampling title from the output-to-input scale per axis, e.g. 'deconv3d upsample: 2 x 2 x 2'."""
    return "deconv3d upsample: " + " x ".join(f"{1 / s:.3g}" for s in scales) + " per axis"
