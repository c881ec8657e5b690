"""`deconv3d inspect FILE`: what a volume on disk is, before anything is computed from it.

`describe` opens the file through the same reader the pipeline uses (so what it reports is what
`upsample` will see) and returns a plain dict: format, shape, a guess at its layout, dtype, spacing,
orientation codes and affine (when the format has one), chunks, and sizes on disk and in memory.
Only the reader protocol (`path`, `shape`, `dtype`, `chunks`, `meta`, `format`) is relied on for every
format; NIfTI adds its header fields. `format_text` renders the dict for people; the CLI prints the
dict itself as JSON with `--json`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import io as vio
from ..geometry.layout import CHANNELS_FIRST, CHANNELS_LAST
from ..io.nifti_layout import file_axes

SMALL_AXIS = 16  # a channel axis is rarely longer than this; spatial axes rarely shorter
NIFTI_LAYOUTS = {
    3: "x, y, z (one channel)",
    4: "x, y, z, c (channels on the 4th axis)",
    5: "t, x, y, z, c (a series of volumes, each upsampled alone)",
}


def guess_data_format(shape: tuple[int, ...] | list[int]) -> str:
    """channels_last unless only the leading (non-batch) axis looks like channels."""
    return guess_layout(tuple(shape), None)[0]


def guess_layout(shape: tuple[int, ...], declared: str | None) -> tuple[str | None, str, str | None]:
    """(data_format, axes in words, a note when the guess is uncertain) for a reader's array."""
    nd = len(shape)
    if nd == 3:
        return None, "D, H, W (one channel)", None
    if nd not in (4, 5):
        return None, f"{nd}-D (not a volume this tool reads)", None
    batch = "N, " if nd == 5 else ""
    if declared is not None:
        if declared == CHANNELS_LAST:
            return declared, f"{batch}D, H, W, C (channels_last, declared by the format)", None
        return declared, f"{batch}C, D, H, W (channels_first, declared by the format)", None
    first, last = shape[nd - 4], shape[-1]
    if last <= SMALL_AXIS and (first > SMALL_AXIS or last <= first):
        return CHANNELS_LAST, f"{batch}D, H, W, C (channels_last: the last axis is short)", None
    if first <= SMALL_AXIS < last:
        return (
            CHANNELS_FIRST,
            f"{batch}C, D, H, W (channels_first: the first axis is short)",
            ("set data_format: channels_first in the spec to read it this way"),
        )
    return (
        CHANNELS_LAST,
        f"{batch}D, H, W, C (channels_last, the default)",
        ("no axis looks like channels; the spec's data_format decides"),
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else f"<array {value.shape} {value.dtype}>"
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _bytes_of(text: Any) -> str:
    raw = text.item() if hasattr(text, "item") else text
    return raw.decode("latin-1").rstrip("\x00").strip() if isinstance(raw, bytes) else str(raw)


def _finite_or_none(values: Any) -> Any:
    arr = np.asarray(values, dtype=np.float64)
    return arr.tolist() if np.isfinite(arr).all() else None


def _nifti_fields(reader: Any) -> dict[str, Any]:
    from ..io.nifti_header import INTENT_VECTOR, geometry, xform_name

    hdr = reader.header
    space, time = hdr.get_xyzt_units()
    code = int(hdr["intent_code"])
    try:
        intent = hdr.get_intent()[0]
    except (KeyError, ValueError):
        intent = f"code {code}"
    g = geometry(hdr, reader.path.name)  # codes of transforms that are not usable read as 0
    qcode, scode = int(hdr["qform_code"]), int(hdr["sform_code"])
    with np.errstate(all="ignore"):
        qform = _finite_or_none(hdr.get_qform()) if g.qform_code else None
        sform = _finite_or_none(hdr.get_sform()) if g.sform_code else None
    stored = list(reader.stored_shape)
    return {
        "version": reader.nifti_version,
        "compressed": reader.compressed,
        "stored_shape": stored,
        "stored_dtype": reader.stored_dtype.str,
        "byte_order": "big-endian" if reader.stored_dtype.byteorder == ">" else "little-endian",
        "scl_slope": None if reader.scaling is None else reader.scaling[0],
        "scl_inter": None if reader.scaling is None else reader.scaling[1],
        "qform_code": qcode,
        "qform_name": xform_name(qcode),
        "sform_code": scode,
        "sform_name": xform_name(scode),
        "qform": qform,
        "sform": sform,
        "zooms": [float(z) if np.isfinite(z) else None for z in hdr.get_zooms()],
        "units": [space, time],
        "intent": intent,
        "intent_code": code,
        "vector": code == INTENT_VECTOR or (len(stored) == 5 and stored[3] == 1),
        "descrip": _bytes_of(hdr["descrip"]),
        "fourth_axis": reader.fourth_axis_choice,
        "geometry_notes": list(getattr(reader, "notes", [])),
    }


def _nifti_layout(info: dict[str, Any]) -> str:
    n, stored = info["nifti"], info["nifti"]["stored_shape"]
    if len(info["shape"]) == 4 and n["vector"] and len(stored) == 5:
        return f"x, y, z, c (vector: {stored[4]} components on NIfTI's 5th axis)"
    if len(info["shape"]) == 5 and len(stored) == 5:
        return f"t, x, y, z, c (a series of {stored[3]} volumes of {stored[4]} components, each upsampled alone)"
    return NIFTI_LAYOUTS[len(info["shape"])]


def describe(path: Path | str, dataset: str | None = None, fourth_axis: str = "auto") -> dict[str, Any]:
    """Everything `inspect` reports about one file, JSON-ready."""
    path = Path(path)
    reader = vio.open_reader(path, dataset, fourth_axis=fourth_axis)
    try:
        shape = tuple(int(n) for n in reader.shape)
        dtype = np.dtype(reader.dtype)
        meta = reader.meta
        data_format, layout, note = guess_layout(shape, getattr(reader, "data_format", None))
        affine = None if meta.affine is None else np.asarray(meta.affine, dtype=np.float64)
        orientation = None
        if affine is not None and np.isfinite(affine).all():
            import nibabel as nib

            try:
                orientation = "".join(nib.aff2axcodes(affine))
            except (np.linalg.LinAlgError, ValueError):  # a singular affine has no orientation
                orientation = None
        units = None
        if reader.format == "nifti":
            units = reader.header.get_xyzt_units()[0]
        elif "element_size_um" in (meta.attrs or {}):
            units = "micron"
        info: dict[str, Any] = {
            "path": str(path),
            "format": reader.format,
            "dataset": getattr(reader, "dataset", None),
            "shape": list(shape),
            "layout": layout,
            "data_format": data_format,
            "layout_note": note,
            "dtype": dtype.name,
            "spacing": None if meta.spacing is None else [float(v) for v in meta.spacing],
            "spacing_units": units,
            "orientation": orientation,
            "affine": None if affine is None else affine.tolist(),
            "chunks": None if reader.chunks is None else [int(c) for c in reader.chunks],
            "size_on_disk": _size_on_disk(path),
            "size_in_memory": int(np.prod(shape, dtype=np.int64)) * dtype.itemsize,
        }
        if reader.format == "nifti":
            info["nifti"] = _nifti_fields(reader)
            info["layout"] = _nifti_layout(info)
        elif meta.attrs:
            info["attributes"] = _jsonable(dict(meta.attrs))
        return _jsonable(info)
    finally:
        reader.close()


def _size_on_disk(path: Path | str) -> int:
    """Bytes of a file, or of every file in a directory store (Zarr)."""
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def format_text(info: dict[str, Any]) -> str:
    """The human-readable report."""
    from ..geometry.tiling import format_bytes

    def num(v: float) -> str:
        return f"{v:.6g}"

    head = f"{info['path']}: {info['format']}"
    nifti = info.get("nifti")
    if nifti:
        head = f"{info['path']}: NIfTI-{nifti['version']}" + (" (gzip)" if nifti["compressed"] else "")
    if info.get("dataset"):
        head += f", dataset {info['dataset']}"
    rows = [("shape", f"{tuple(info['shape'])}  {info['layout']}")]
    if nifti and list(nifti["stored_shape"]) != list(info["shape"]):  # the file's order first, as nibabel shows it
        stored = tuple(nifti["stored_shape"])
        rows = [("shape", f"{stored}  {file_axes(len(stored))} (the file's order)"),
                ("read as", f"{tuple(info['shape'])}  {info['layout']}")]  # fmt: skip
    if info.get("layout_note"):
        rows.append(("", info["layout_note"]))
    dtype = info["dtype"]
    if nifti:
        stored = f"stored {nifti['stored_dtype']} {nifti['byte_order']}"
        if nifti["scl_slope"] is not None:
            stored += f", scaled by {num(nifti['scl_slope'])} + {num(nifti['scl_inter'])}"
        dtype += f"  ({stored})"
        if nifti["fourth_axis"]:
            rows.append(("5th axis" if nifti.get("vector") else "4th axis", nifti["fourth_axis"]))
    rows.append(("dtype", dtype))
    if info["spacing"] is not None:
        unit = {"micron": "um", "unknown": ""}.get(info["spacing_units"] or "", info["spacing_units"] or "")
        rows.append(("spacing", " x ".join(num(v) for v in info["spacing"]) + (f" {unit}" if unit else "")))
    if info["orientation"] is not None:
        rows.append(("orientation", f"{info['orientation']} (voxel axes' nearest world directions)"))
    if nifti:
        rows.append(
            (
                "qform/sform",
                f"{nifti['qform_code']} ({nifti['qform_name']}) / {nifti['sform_code']} ({nifti['sform_name']})",
            )
        )
    for i, text in enumerate((nifti or {}).get("geometry_notes") or []):
        rows.append(("geometry" if i == 0 else "", text))
    if info["affine"] is not None:
        for i, row in enumerate(info["affine"]):
            rows.append(("affine" if i == 0 else "", "[" + "  ".join(f"{v:10.4f}" for v in row) + " ]"))
    rows.append(("chunks", "none (contiguous)" if info["chunks"] is None else str(tuple(info["chunks"]))))
    rows.append(("on disk", format_bytes(info["size_on_disk"])))
    rows.append(("in memory", format_bytes(info["size_in_memory"])))
    if nifti:
        if nifti["descrip"]:
            rows.append(("descrip", nifti["descrip"]))
        if nifti["intent"] not in ("none", None):
            rows.append(("intent", str(nifti["intent"])))
    width = max(len(k) for k, _ in rows)
    return "\n".join([head] + [f"  {k:<{width}}  {v}" for k, v in rows])
