"""The preview picture: laid out first (`plan`: every panel, text and mark with its place), then drawn.

One row per volume, one column per plane. All panels share one physical scale (units per pixel): each
voxel is drawn as a block of its physical size, so an input voxel is `stride` times wider than an
output voxel and an anisotropic volume keeps its aspect. Within a column, both volumes are placed in the
first volume's voxel frame, so a structure that sits still between the rows is aligned; the output's
slice is the one through the same plane as the input's middle slice.

Scale: the shorter side of every panel is at least MIN_PANEL pixels, with a whole number of pixels per
smallest voxel, unless that would make a longer side exceed MAX_PANEL (a volume much longer on one axis
than another); MAX_PANEL then wins. Large volumes are shrunk (box-averaged) to MAX_PANEL.

Grey levels: one window for every row, the 1st to 99th percentile of the finite values of all slices
shown, so that equal values are equal greys in the input and the output; the window's values are
printed beside a grey ramp. A scale bar in the file's unit (or in voxels of the first volume) and the
scale itself are printed under the panels. Text is at least 15 px high in Pillow's scalable font.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from . import labels
from .volumes import Volume, frame, planes_for, read_slice, shared_window, to_grey

MIN_PANEL = 256  # pixels on a panel's shorter side, at least
MAX_PANEL = 640  # pixels on a panel's longer side, at most
MARGIN = 14
GAP = 14
TEXT_PX = 16
CAPTION_PX = 15
LETTER_PX = 18
RAMP = (256, 14)  # the grey ramp beside the window values
PERCENTILES = (1.0, 99.0)
BACKGROUND = (18, 18, 18)
CANVAS = (44, 44, 52)  # panel area outside a volume's extent
TEXT = (230, 230, 230)
CAPTION = (255, 214, 90)
LETTERS = (120, 200, 255)
OUTLINE = (0, 0, 0)


@dataclass
class Text:
    kind: str  # title, row, caption, letter, axis, scale, window
    text: str
    xy: tuple[int, int]
    size: int
    fill: tuple[int, int, int] = TEXT
    outlined: bool = False  # drawn over image data: a dark outline keeps it readable
    row: int | None = None
    plane: str | None = None


@dataclass
class Tile:
    row: int
    plane: str
    box: tuple[int, int, int, int]  # the panel (x0, y0, x1, y1): the union of the volumes' extents
    grey: np.ndarray  # the slice in grey levels, oriented as drawn, one entry per voxel
    size: tuple[int, int]  # drawn size of the slice (w, h) in pixels
    at: tuple[int, int]  # where its top-left corner goes


@dataclass
class Sheet:
    width: int
    height: int
    units_per_px: float
    unit: str
    window: tuple[float, float]
    bar: tuple[int, str]
    tiles: list[Tile] = field(default_factory=list)
    texts: list[Text] = field(default_factory=list)
    lines: list[tuple[list[tuple[int, int]], tuple[int, int, int], int]] = field(default_factory=list)
    ramp: tuple[int, int] = (0, 0)  # top-left corner of the grey ramp

    def strings(self, kind: str | None = None) -> list[str]:
        return [t.text for t in self.texts if kind is None or t.kind == kind]

    def boxes(self) -> list[tuple[int, str, tuple[int, int, int, int]]]:
        return [(t.row, t.plane, t.box) for t in self.tiles]


@lru_cache(maxsize=8)
def font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 (or no FreeType): the fixed bitmap font
        return ImageFont.load_default()


def measure(text: str, size: int) -> tuple[int, int]:
    left, top, right, bottom = font(size).getbbox(text)
    return int(right - left), int(bottom)


def choose_scale(sides: Sequence[tuple[float, float]], voxel: float) -> float:
    """Physical units per pixel for panels of physical `sides` (w, h), the smallest voxel `voxel`."""
    short = min(min(w, h) for w, h in sides)
    long = max(max(w, h) for w, h in sides)
    if long / voxel > MAX_PANEL and short / voxel >= MIN_PANEL:
        return long / MAX_PANEL  # a large volume, shrunk
    factor = max(1, math.ceil(MIN_PANEL * voxel / short - 1e-9))  # whole pixels per smallest voxel
    if long * factor / voxel > MAX_PANEL:
        fit = math.floor(MAX_PANEL * voxel / long + 1e-9)
        return voxel / fit if fit >= 1 else long / MAX_PANEL
    return voxel / factor


def plan(volumes: Sequence[Volume], title: str | None = None) -> Sheet:
    """Where everything of the preview goes, and what it says."""
    ref = volumes[0]
    planes = planes_for(ref)
    frames = [frame(ref, v) for v in volumes]
    zoom = ref.zooms
    ext = _extents(volumes, frames)
    lo_u = np.min([e[0] for e in ext], axis=0)
    hi_u = np.max([e[1] for e in ext], axis=0)
    extent = (hi_u - lo_u) * zoom
    voxel = min(float(np.min(zoom * np.abs(scale))) for scale, _ in frames)
    per_px = choose_scale([(extent[p.h], extent[p.v]) for p in planes], voxel)

    def pix(length: float) -> int:
        return max(1, int(round(length / per_px)))

    panel = [(pix(extent[p.h]), pix(extent[p.v])) for p in planes]
    reads = _reads(volumes, frames, planes)
    window = shared_window([s for slices, _ in reads for s in slices], PERCENTILES)
    rows = len(volumes)
    bar = labels.scale_bar(per_px, ref.units, max(1, min(w for w, _ in panel) // 3), rows)
    sheet = Sheet(0, 0, per_px, ref.units, window, bar)

    line_h, cap_h = TEXT_PX + 8, CAPTION_PX + 5
    captions = max(len(labels.caption_lines(p, 0, 1)) for p in planes)
    panel_h = max(h for _, h in panel)
    y = MARGIN
    if title:
        sheet.texts.append(Text("title", title, (MARGIN, y), TEXT_PX))
        y += line_h
    for row, (vol, (scale, _), (lo_v, hi_v), (slices, indices)) in enumerate(zip(volumes, frames, ext, reads)):
        sheet.texts.append(Text("row", labels.row_text(vol, Path(vol.reader.path).name), (MARGIN, y), TEXT_PX, row=row))
        y += line_h
        x = MARGIN
        for p, (pw, ph), sl, idx in zip(planes, panel, slices, indices):
            grey = to_grey(sl, *window)
            if p.h_desc != (scale[p.h] < 0):
                grey = grey[:, ::-1]
            if p.v_desc != (scale[p.v] < 0):
                grey = grey[::-1, :]
            ox = (hi_u[p.h] - hi_v[p.h]) if p.h_desc else (lo_v[p.h] - lo_u[p.h])
            oy = (hi_u[p.v] - hi_v[p.v]) if p.v_desc else (lo_v[p.v] - lo_u[p.v])
            at = (x + int(round(ox * zoom[p.h] / per_px)), y + int(round(oy * zoom[p.v] / per_px)))
            size = (pix((hi_v[p.h] - lo_v[p.h]) * zoom[p.h]), pix((hi_v[p.v] - lo_v[p.v]) * zoom[p.v]))
            box = (x, y, x + pw, y + ph)
            sheet.tiles.append(Tile(row, p.name, box, np.ascontiguousarray(grey), size, at))
            _panel_marks(sheet, row, p, box)
            count = vol.spatial_shape[p.normal]
            for i, text in enumerate(labels.caption_lines(p, idx, count)):
                xy, fill = (x, y + ph + 4 + i * cap_h), CAPTION if i == 0 else TEXT
                sheet.texts.append(Text("caption", text, xy, CAPTION_PX, fill, row=row, plane=p.name))
            x += pw + GAP
        y += panel_h + 4 + captions * cap_h + GAP
    y = _footer(sheet, y, rows)
    widths = [sum(w for w, _ in panel) + GAP * (len(planes) - 1)]
    widths += [t.xy[0] - MARGIN + measure(t.text, t.size)[0] for t in sheet.texts]
    sheet.width, sheet.height = 2 * MARGIN + max(widths), y + MARGIN
    return sheet


def _extents(volumes: Sequence[Volume], frames: Sequence[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each volume's extent in the reference voxel frame, per axis: (lo, hi)."""
    ext = []
    for vol, (scale, shift) in zip(volumes, frames):
        n = np.array(vol.spatial_shape, float)
        a, b = shift - 0.5 * scale, shift + (n - 0.5) * scale
        ext.append((np.minimum(a, b), np.maximum(a, b)))
    return ext


def _reads(volumes: Sequence[Volume], frames: Sequence[Any], planes: Sequence[Any]) -> list[tuple[list, list]]:
    """Per row: (slices, indices), the reference's middle plane and the same plane in the others."""
    n_ref = np.array(volumes[0].spatial_shape, float)
    reads = []
    for vol, (scale, shift) in zip(volumes, frames):
        slices, indices = [], []
        for p in planes:
            mid = float(n_ref[p.normal] // 2)
            idx = int(round((mid - shift[p.normal]) / scale[p.normal]))
            idx = min(max(idx, 0), vol.spatial_shape[p.normal] - 1)
            indices.append(idx)
            slices.append(read_slice(vol, p, idx))
        reads.append((slices, indices))
    return reads


def _panel_marks(sheet: Sheet, row: int, p: Any, box: tuple[int, int, int, int]) -> None:
    """Anatomical letters at the edges (NIfTI), or arrows naming the array axes across and down."""
    x0, y0, x1, y1 = box
    letters = labels.edge_labels(p)
    if letters is not None:
        left, right, top, bottom = letters
        lw, lh = measure(left, LETTER_PX)
        rw, rh = measure(right, LETTER_PX)
        tw, th = measure(top, LETTER_PX)
        bw, bh = measure(bottom, LETTER_PX)
        cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
        for text, xy in (
            (left, (x0 + 5, cy - lh // 2)),
            (right, (x1 - rw - 6, cy - rh // 2)),
            (top, (cx - tw // 2, y0 + 3)),
            (bottom, (cx - bw // 2, y1 - bh - 5)),
        ):
            sheet.texts.append(Text("letter", text, xy, LETTER_PX, LETTERS, True, row, p.name))
        return
    across, down = labels.axis_arrow_labels(p)  # type: ignore[misc]
    ox, oy, length = x0 + 10, y0 + 10, 34
    sheet.lines.append(([(ox, oy), (ox + length, oy)], LETTERS, 2))
    sheet.lines.append(([(ox + length - 6, oy - 4), (ox + length, oy), (ox + length - 6, oy + 4)], LETTERS, 2))
    sheet.lines.append(([(ox, oy), (ox, oy + length)], LETTERS, 2))
    sheet.lines.append(([(ox - 4, oy + length - 6), (ox, oy + length), (ox + 4, oy + length - 6)], LETTERS, 2))
    at = (ox + length + 5, oy - measure(across, CAPTION_PX)[1] // 2 - 1)
    sheet.texts.append(Text("axis", across, at, CAPTION_PX, LETTERS, True, row, p.name))
    sheet.texts.append(Text("axis", down, (ox - 3, oy + length + 3), CAPTION_PX, LETTERS, True, row, p.name))


def _footer(sheet: Sheet, y: int, rows: int) -> int:
    """The scale bar with its length and the shared scale; the grey ramp with the window's values."""
    px, text = sheet.bar
    mid = y + TEXT_PX // 2 + 1
    sheet.lines.append(([(MARGIN, mid), (MARGIN + px, mid)], TEXT, 5))
    sheet.lines.append(([(MARGIN, mid - 6), (MARGIN, mid + 6)], TEXT, 2))
    sheet.lines.append(([(MARGIN + px, mid - 6), (MARGIN + px, mid + 6)], TEXT, 2))
    x = MARGIN + px + 10
    sheet.texts.append(Text("scale", text, (x, y), TEXT_PX))
    x += measure(text, TEXT_PX)[0] + 16
    sheet.texts.append(Text("scale", labels.scale_note(sheet.units_per_px, sheet.unit, rows), (x, y), TEXT_PX, CAPTION))
    y += TEXT_PX + 14
    lo, hi = sheet.window
    lo_text, hi_text = f"{lo:.4g}", f"{hi:.4g}"
    sheet.texts.append(Text("window", lo_text, (MARGIN, y), TEXT_PX))
    ramp_x = MARGIN + measure(lo_text, TEXT_PX)[0] + 8
    sheet.ramp = (ramp_x, y + (TEXT_PX - RAMP[1]) // 2 + 2)
    x = ramp_x + RAMP[0] + 8
    sheet.texts.append(Text("window", hi_text, (x, y), TEXT_PX))
    x += measure(hi_text, TEXT_PX)[0] + 16
    sheet.texts.append(Text("window", labels.window_text(lo, hi, rows), (x, y), TEXT_PX, CAPTION))
    return y + TEXT_PX + 6


def draw(sheet: Sheet) -> Any:
    """The sheet as a PIL image (RGB)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (sheet.width, sheet.height), BACKGROUND)
    pen = ImageDraw.Draw(image)
    for tile in sheet.tiles:
        x0, y0, x1, y1 = tile.box
        pen.rectangle([x0, y0, x1 - 1, y1 - 1], fill=CANVAS)
        grey = Image.fromarray(tile.grey, mode="L")
        shrink = tile.size[0] < grey.size[0] or tile.size[1] < grey.size[1]
        grey = grey.resize(tile.size, Image.BOX if shrink else Image.NEAREST)
        ax, ay = tile.at  # inside the panel by construction; cropped to it against rounding
        crop = (max(0, x0 - ax), max(0, y0 - ay), min(tile.size[0], x1 - ax), min(tile.size[1], y1 - ay))
        image.paste(grey.crop(crop), (max(ax, x0), max(ay, y0)))
    ramp = np.tile(np.linspace(0, 255, RAMP[0]).round().astype(np.uint8), (RAMP[1], 1))
    if sheet.ramp != (0, 0):
        image.paste(Image.fromarray(ramp, mode="L"), sheet.ramp)
    for points, _, width in sheet.lines:  # all outlines first, so none covers another line
        pen.line(points, fill=OUTLINE, width=width + 2)
    for points, fill, width in sheet.lines:
        pen.line(points, fill=fill, width=width)
    for t in sheet.texts:
        stroke = {"stroke_width": 2, "stroke_fill": OUTLINE} if t.outlined else {}
        pen.text(t.xy, t.text, fill=t.fill, font=font(t.size), **stroke)
    return image
