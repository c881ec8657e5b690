"""`--preview PNG`: orthogonal mid-slices of one volume, or of an input and its upsampled output.

One row per volume, one column per plane (axial, coronal, sagittal when the file has a world affine;
the three array axes otherwise). All panels share one physical scale, in millimetres per pixel (or
voxels of the first volume when nothing is known about spacing): each voxel is drawn as a block of its
physical size, so an input voxel is `stride` times wider than an output voxel and an anisotropic volume
keeps its aspect. Within a column, both volumes are placed in the first volume's voxel frame, so a
structure that sits still between the rows is aligned. The output's slice is the one through the same
world plane as the input's middle slice. Each volume is windowed on its own robust percentiles
(1st to 99th, finite values); multichannel volumes show channel 0, series show their first volume.

With an affine, panels are drawn in world orientation (the voxel axes nearest to R, A, S point right and
up), with the direction letters at the panel edges; an oblique affine is shown on its voxel grid, not
resampled. Only Pillow is needed; slices are read through the format readers, so a preview of a large
file reads three planes, never the whole volume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import io as vio
from ..errors import InputError
from ..geometry.layout import Layout

MAX_PANEL = 360  # pixels along the longest panel side
MIN_PANEL = 200
MARGIN = 10
GAP = 8
PERCENTILES = (1.0, 99.0)
BACKGROUND = (18, 18, 18)
CANVAS = (44, 44, 52)  # panel area outside a volume's extent
TEXT = (230, 230, 230)
CAPTION = (255, 214, 90)
LETTERS = (120, 200, 255)
_WORLD = ("RL", "AP", "SI")  # (positive, negative) direction letters of world axes x, y, z


@dataclass
class Plane:
    name: str
    normal: int  # voxel axis held fixed
    h: int  # voxel axis drawn left to right
    v: int  # voxel axis drawn top to bottom
    h_desc: bool = False  # index increases to the left
    v_desc: bool = False  # index increases upwards
    letters: tuple[str, str, str, str] | None = None  # left, right, top, bottom


@dataclass
class Volume:
    """One volume to draw: its reader, the layout of the reader's array, and its voxel-to-physical map."""

    role: str
    reader: Any
    layout: Layout
    affine: np.ndarray  # 4x4, spatial voxel axes (in layout order) -> physical (mm, or the file's unit)
    world: bool  # the affine is a real world transform (not just spacing)
    spacing_known: bool = True
    units: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return self.layout.spatial_shape(self.reader.shape)

    @property
    def zooms(self) -> np.ndarray:
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))


def _font(size: int = 12) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw: Any, text: str, font: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)


def _layout_of(reader: Any, default: str) -> Layout:
    return Layout(len(reader.shape), getattr(reader, "data_format", None) or default)


def volume_from_reader(role: str, reader: Any, data_format: str = "channels_last") -> Volume:
    """A Volume for `reader`: its affine when it has one, else a diagonal from its spacing (or 1)."""
    if len(reader.shape) not in (3, 4, 5):
        raise InputError(
            f"shape {tuple(reader.shape)}: a preview needs a 3-, 4- or 5-D volume", source=str(reader.path)
        )
    layout = _layout_of(reader, data_format)
    meta = reader.meta
    world = meta.affine is not None
    if world:
        affine = np.asarray(meta.affine, dtype=np.float64)
    else:
        spacing = meta.spacing if meta.spacing is not None else (1.0, 1.0, 1.0)
        affine = np.diag([*map(float, spacing), 1.0])
    vol = Volume(role, reader, layout, affine, world, world or meta.spacing is not None, _units(reader))
    shape = tuple(reader.shape)
    channels = layout.channels(shape)
    if channels > 1:
        vol.notes.append(f"channel 0 of {channels}")
    if layout.has_batch and layout.batch(shape) > 1:
        vol.notes.append(f"volume 0 of {layout.batch(shape)}")
    return vol


def _units(reader: Any) -> str:
    header = getattr(reader.meta, "header", None)
    if header is not None and hasattr(header, "get_xyzt_units"):
        space = header.get_xyzt_units()[0]
        return {"mm": "mm", "micron": "um", "meter": "m"}.get(space, "")
    if "element_size_um" in (reader.meta.attrs or {}):
        return "um"
    return ""


def planes_for(vol: Volume) -> list[Plane]:
    """Axial, coronal and sagittal planes from the affine's nearest axes; the array axes without one."""
    if not vol.world:
        return [
            Plane("axis 0", 0, 2, 1),
            Plane("axis 1", 1, 2, 0),
            Plane("axis 2", 2, 1, 0),
        ]
    from nibabel.orientations import io_orientation

    ornt = io_orientation(vol.affine)
    vox_of = {int(w): i for i, (w, _) in enumerate(ornt)}
    sign = {int(w): float(s) for w, s in ornt}

    def plane(name: str, normal_w: int, h_w: int, v_w: int) -> Plane:
        letters = (_WORLD[h_w][1], _WORLD[h_w][0], _WORLD[v_w][0], _WORLD[v_w][1])
        return Plane(name, vox_of[normal_w], vox_of[h_w], vox_of[v_w], sign[h_w] < 0, sign[v_w] > 0, letters)

    return [plane("axial", 2, 0, 1), plane("coronal", 1, 0, 2), plane("sagittal", 0, 1, 2)]


def _frame(ref: Volume, vol: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Scale and shift per axis taking `vol`'s voxel indices to `ref`'s voxel coordinates.

    Exact when both have a world affine (an output's is the input's composed with the layer's geometry);
    from the spacings, centres aligned, when both know their spacing; otherwise the two grids are assumed
    to cover the same field of view (an .npy input has no geometry to compare with).
    """
    if vol is ref:
        return np.ones(3), np.zeros(3)
    n_ref, n_vol = np.array(ref.spatial_shape, float), np.array(vol.spatial_shape, float)
    m = np.linalg.solve(ref.affine, vol.affine)
    scale, shift = np.diag(m)[:3].copy(), m[:3, 3].copy()
    diagonal = np.all(np.abs(scale) > 1e-9) and np.allclose(m[:3, :3], np.diag(scale), atol=1e-3 * np.abs(scale).max())
    if diagonal and vol.world and ref.world:
        return scale, shift
    if not (diagonal and ref.spacing_known and vol.spacing_known):
        scale = n_ref / n_vol
    return scale, (n_ref - 1) / 2 - scale * (n_vol - 1) / 2


def _read_slice(vol: Volume, plane: Plane, index: int) -> np.ndarray:
    """The 2-D slice (rows = plane.v, columns = plane.h) of batch 0, channel 0, as float64."""
    spatial = [slice(None)] * 3
    spatial[plane.normal] = slice(index, index + 1)
    region = vol.layout.region(spatial, slice(0, 1))
    data = vol.layout.to_ncdhw(np.asarray(vol.reader.read(region)))[0, 0]
    data = np.take(data, 0, axis=plane.normal).astype(np.float64)
    rest = [a for a in range(3) if a != plane.normal]  # the remaining axes, in order
    return data if rest == [plane.v, plane.h] else data.T


def _window(slices: Sequence[np.ndarray]) -> tuple[float, float]:
    values = np.concatenate([s[np.isfinite(s)].ravel() for s in slices])
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, PERCENTILES))
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def _to_uint8(data: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = (np.nan_to_num(data, nan=lo) - lo) / (hi - lo)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _fmt_spacing(zooms: Sequence[float], units: str) -> str:
    return " x ".join(f"{z:.4g}" for z in zooms) + (f" {units}" if units else "")


def render(volumes: Sequence[Volume], title: str | None = None, boxes: list | None = None) -> Any:
    """The preview as a PIL image (RGB). `boxes`, when given, receives (row, plane, (x0, y0, x1, y1)) of
    each panel: the area that stands for the union of the volumes' extents."""
    from PIL import Image, ImageDraw

    ref = volumes[0]
    planes = planes_for(ref)
    frames = [_frame(ref, v) for v in volumes]
    n_ref = np.array(ref.spatial_shape, float)
    zoom_ref = ref.zooms
    # extents of each volume in the reference voxel frame, per axis: [lo, hi]
    ext = []
    for vol, (scale, shift) in zip(volumes, frames):
        n = np.array(vol.spatial_shape, float)
        a, b = shift - 0.5 * scale, shift + (n - 0.5) * scale
        ext.append((np.minimum(a, b), np.maximum(a, b)))
    lo_u = np.min([e[0] for e in ext], axis=0)
    hi_u = np.max([e[1] for e in ext], axis=0)
    extent_mm = (hi_u - lo_u) * zoom_ref
    voxel_mm = min(float(np.min(zoom_ref * np.abs(scale))) for scale, _ in frames)
    longest = max(max(extent_mm[p.h], extent_mm[p.v]) for p in planes)
    px = longest / voxel_mm
    if px > MAX_PANEL:
        mm_per_px = longest / MAX_PANEL
    elif px < MIN_PANEL:
        mm_per_px = voxel_mm / math.ceil(MIN_PANEL / px)
    else:
        mm_per_px = voxel_mm

    def pix(mm: float) -> int:
        return max(1, int(round(mm / mm_per_px)))

    panel_sizes = [(pix(extent_mm[p.h]), pix(extent_mm[p.v])) for p in planes]

    # the slices: the reference's middle, and the same world plane in the others
    rows = []
    for vol, (scale, shift) in zip(volumes, frames):
        slices, indices = [], []
        for p in planes:
            mid = float(n_ref[p.normal] // 2)
            idx = int(round((mid - shift[p.normal]) / scale[p.normal]))
            idx = min(max(idx, 0), vol.spatial_shape[p.normal] - 1)
            indices.append(idx)
            slices.append(_read_slice(vol, p, idx))
        rows.append((slices, indices, _window(slices)))

    font = _font(12)
    small = _font(11)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = _text_size(probe, "Ag(0)", font)[1] + 6
    labels = []
    for vol, (_, _, (lo, hi)) in zip(volumes, rows):
        shape = tuple(int(n) for n in vol.reader.shape)
        text = (
            f"{vol.role}: {Path(vol.reader.path).name}  {shape} {vol.reader.dtype}  "
            f"voxel {_fmt_spacing(vol.zooms, vol.units)}  window [{lo:.4g}, {hi:.4g}]"
        )
        if vol.notes:
            text += "  (" + ", ".join(vol.notes) + ")"
        labels.append(text)
    panels_w = sum(w for w, _ in panel_sizes) + GAP * (len(planes) - 1)
    text_w = max(_text_size(probe, t, font)[0] for t in labels + [title or ""])
    width = 2 * MARGIN + max(panels_w, text_w)
    panel_h = max(h for _, h in panel_sizes)
    cap_h = _text_size(probe, "Ag(0)", small)[1] + 6
    height = MARGIN + (line_h if title else 0) + len(volumes) * (line_h + panel_h + cap_h + GAP) - GAP + MARGIN
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    y = MARGIN
    if title:
        draw.text((MARGIN, y), title, fill=TEXT, font=font)
        y += line_h
    for row, ((scale, _), (lo_v, hi_v), label, (slices, indices, (lo, hi))) in enumerate(
        zip(frames, ext, labels, rows)
    ):
        draw.text((MARGIN, y), label, fill=TEXT, font=font)
        y += line_h
        x = MARGIN
        for p, (pw, ph), sl, idx in zip(planes, panel_sizes, slices, indices):
            draw.rectangle([x, y, x + pw - 1, y + ph - 1], fill=CANVAS)
            if boxes is not None:
                boxes.append((row, p.name, (x, y, x + pw, y + ph)))
            tile = _to_uint8(sl, lo, hi)
            flip_h = p.h_desc != (scale[p.h] < 0)
            flip_v = p.v_desc != (scale[p.v] < 0)
            if flip_h:
                tile = tile[:, ::-1]
            if flip_v:
                tile = tile[::-1, :]
            w = pix((hi_v[p.h] - lo_v[p.h]) * zoom_ref[p.h])
            h = pix((hi_v[p.v] - lo_v[p.v]) * zoom_ref[p.v])
            ox = (hi_u[p.h] - hi_v[p.h]) if p.h_desc else (lo_v[p.h] - lo_u[p.h])
            oy = (hi_u[p.v] - hi_v[p.v]) if p.v_desc else (lo_v[p.v] - lo_u[p.v])
            px0 = x + int(round(ox * zoom_ref[p.h] / mm_per_px))
            py0 = y + int(round(oy * zoom_ref[p.v] / mm_per_px))
            img = Image.fromarray(np.ascontiguousarray(tile), mode="L").resize((w, h), Image.NEAREST)
            image.paste(img.crop((0, 0, min(w, x + pw - px0), min(h, y + ph - py0))), (px0, py0))
            draw.text((x, y + ph + 3), f"{p.name} {idx}", fill=CAPTION, font=small)
            if p.letters:
                left, right, top, bottom = p.letters
                tw, th = _text_size(draw, right, small)
                draw.text((x + 3, y + ph // 2 - th // 2), left, fill=LETTERS, font=small)
                draw.text((x + pw - tw - 4, y + ph // 2 - th // 2), right, fill=LETTERS, font=small)
                tw, th = _text_size(draw, top, small)
                draw.text((x + pw // 2 - tw // 2, y + 2), top, fill=LETTERS, font=small)
                tw, th = _text_size(draw, bottom, small)
                draw.text((x + pw // 2 - tw // 2, y + ph - th - 5), bottom, fill=LETTERS, font=small)
            x += pw + GAP
        y += panel_h + cap_h + GAP
    return image


def _save(image: Any, png: Path) -> Path:
    png = Path(png)
    if not png.parent.is_dir():
        raise InputError("preview directory does not exist", source=str(png.parent))
    try:
        image.save(png, format="PNG")
    except OSError as exc:
        raise InputError(f"cannot write the preview: {exc}", source=str(png)) from None
    return png


def preview_file(
    path: Path | str,
    png: Path | str,
    dataset: str | None = None,
    fourth_axis: str = "auto",
    data_format: str | None = None,
) -> Path:
    """Mid-slices of one volume (what `inspect --preview` draws)."""
    from .describe import guess_data_format

    reader = vio.open_reader(Path(path), dataset, fourth_axis=fourth_axis)
    try:
        fmt = data_format or getattr(reader, "data_format", None) or guess_data_format(reader.shape)
        vol = volume_from_reader("file", reader, fmt)
        return _save(render([vol]), Path(png))
    finally:
        reader.close()


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
) -> Path:
    """Input and output mid-slices, side by side at one physical scale (what `upsample --preview` draws)."""
    reader = vio.open_reader(Path(input_path), dataset, fourth_axis=fourth_axis, in_channels=in_channels)
    out_reader = None
    try:
        hints: dict[str, Any] = {}
        if vio.format_of(output_path) == "nifti":
            mode = getattr(reader, "fourth_axis", None)
            hints = {"fourth_axis": "series" if mode == "series" else "channels", "in_channels": filters}
        out_reader = vio.open_reader(Path(output_path), output_dataset, **hints)
        vols = [volume_from_reader("input", reader, data_format), volume_from_reader("output", out_reader, data_format)]
        scale, _ = _frame(vols[0], vols[1])
        title = "deconv3d upsample: " + " x ".join(f"{1 / s:.3g}" for s in scale) + " per axis"
        return _save(render(vols, title), Path(png))
    finally:
        reader.close()
        if out_reader is not None:
            out_reader.close()
