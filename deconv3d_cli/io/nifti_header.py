"""NIfTI headers: read and checked, their geometry made usable, and the output's header built.

Hostile or broken headers are refused with one line naming the field, or, for geometry, handled as
the NIfTI standard orders the transforms: the sform when its code is set and it is usable (finite,
invertible), else the qform under the same test, else the voxel sizes in ``pixdim`` (nibabel's
"base affine", as nibabel uses when both codes are 0), with non-finite or non-positive voxel sizes
taken as 1. Each fallback leaves a sentence in `Geometry.notes` (shown by `inspect` and the run), and
a transform that was not usable is written to the output with code 0, so it is never passed on.

The output header keeps the input's flavour (NIfTI-1, or NIfTI-2 also whenever a dimension exceeds
NIfTI-1's 32767), units, description and codes; qform and sform both hold the output affine. Several
output channels follow the vector convention (5-D, intent ``NIFTI_INTENT_VECTOR``). Scaled integer
outputs carry the slope and intercept the run core chose (`fit_scaling` fits a value range to an
integer type as nibabel's ``SlopeInterArrayWriter`` does).

A NIfTI input converted to another format keeps these header facts as a plain dict (`carried_fields`,
stored by the Zarr writer as the array attribute ``nifti``), and a NIfTI output made from such a file
takes them back (`output_header`), so a ``.nii`` -> ``.zarr`` -> ``.nii`` round trip keeps them.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .base import VolumeMeta

NIFTI1_MAX_DIM = 32767
INTENT_VECTOR = 1007
# Intents whose meaning is "a vector per voxel": an output with one channel no longer is one.
VECTOR_INTENTS = (1006, 1007, 1011, 2003, 2004)
# header fields the output copies from a NIfTI input (slice timing and display range are not kept: the
# slices and the values change)
KEPT_FIELDS = (
    "intent_code",
    "intent_p1",
    "intent_p2",
    "intent_p3",
    "intent_name",
    "xyzt_units",
    "descrip",
    "aux_file",
    "toffset",
    "dim_info",
)
CARRIED_ATTR = "nifti"  # the attribute name other formats keep these fields under
_XFORM_NAMES = {0: "unknown", 1: "scanner", 2: "aligned", 3: "talairach", 4: "mni", 5: "template"}
_TEXT_FIELDS = ("intent_name", "descrip", "aux_file")


def nib() -> Any:
    import nibabel

    return nibabel


def xform_name(code: int) -> str:
    return _XFORM_NAMES.get(int(code), f"code {int(code)}")


def read_header(path: Path, compressed: bool) -> Any:
    """The file's nibabel header (Nifti1Header or Nifti2Header), chosen by `sizeof_hdr` in either byte order."""
    from nibabel.spatialimages import HeaderDataError

    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4:
                raise InputError("not a NIfTI file: too short for a header", source=str(path))
            sizes = {int.from_bytes(head, "little"), int.from_bytes(head, "big")}
            if 348 in sizes:
                klass = nib().Nifti1Header
            elif 540 in sizes:
                klass = nib().Nifti2Header
            else:
                raise InputError("not a NIfTI file (sizeof_hdr is neither 348 nor 540)", source=str(path))
            f.seek(0)
            header = klass.from_fileobj(f, check=False)
    except InputError:
        raise
    except (OSError, EOFError) as exc:
        raise InputError(f"not a readable NIfTI file: {exc}", source=str(path)) from None
    except (HeaderDataError, ValueError) as exc:
        raise InputError(f"invalid NIfTI header: {exc}", source=str(path)) from None
    pixdim = header["pixdim"]
    if pixdim[0] not in (-1, 1):  # qfac: 0 in many old files; nibabel's check sets it to 1 likewise
        pixdim[0] = 1
        header["pixdim"] = pixdim
    if header["magic"].item() not in (b"n+1", b"n+2"):
        raise InputError(
            "is a NIfTI header/image pair header (magic ni1/ni2); only single-file .nii/.nii.gz are read",
            source=str(path),
            field="magic",
        )
    return header


def data_offset(header: Any, path: Path) -> int:
    """`vox_offset`, refused when it is not a whole number of bytes past the header."""
    raw = float(np.asarray(header["vox_offset"]).item())
    size = int(header.single_vox_offset)
    if not math.isfinite(raw) or raw != int(raw) or raw < size - 4:
        raise InputError(
            f"vox_offset is {raw:g}; a single-file NIfTI's data start at byte {size} or later (a whole number)",
            source=str(path),
            field="vox_offset",
        )
    return int(raw)


def scaling(header: Any, path: Path) -> tuple[float, float] | None:
    """(slope, intercept) when the stored values are scaled; None for none (slope 0, NaN or 1 with inter 0)."""
    slope = float(np.asarray(header["scl_slope"]).item())
    inter = float(np.asarray(header["scl_inter"]).item())
    if slope == 0 or not math.isfinite(slope):
        return None  # the NIfTI standard: no scaling (nibabel reads it the same way)
    if not math.isfinite(inter):
        raise InputError(
            f"scl_inter is {inter} while scl_slope is {slope:g}: the values cannot be scaled; "
            "set scl_inter to a number (0 for none)",
            source=str(path),
            field="scl_inter",
        )
    if slope == 1.0 and inter == 0.0:
        return None
    return slope, inter


@dataclass
class Geometry:
    """Where the voxels are: the affine to use, the voxel sizes, the usable codes and what was set aside."""

    affine: np.ndarray
    spacing: tuple[float, float, float]
    qform_code: int
    sform_code: int
    notes: list[str] = field(default_factory=list)


def _usable(matrix: np.ndarray) -> bool:
    return bool(np.isfinite(matrix).all()) and abs(float(np.linalg.det(matrix[:3, :3]))) > 1e-12


def geometry(header: Any, name: str) -> Geometry:
    """The header's geometry by the NIfTI rules, with fallbacks for unusable transforms (module docstring)."""
    notes: list[str] = []
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    pixdim = np.asarray(header["pixdim"], dtype=np.float64)[1:4]
    zooms = [float(z) if math.isfinite(z) and z > 0 else 1.0 for z in pixdim]
    if any(not (math.isfinite(z) and z > 0) for z in pixdim):
        bad = ", ".join(f"{z:g}" for z in pixdim)
        notes.append(f"pixdim of {name} holds voxel sizes {bad}: 1 is used for those not finite and positive")
    affine = None
    with np.errstate(all="ignore"):
        sform = np.asarray(header.get_sform(), dtype=np.float64) if scode else None
        try:
            qform = np.asarray(header.get_qform(), dtype=np.float64) if qcode else None
        except Exception:  # noqa: BLE001 - nibabel cannot build a rotation from NaN quaternions
            qform = np.full((4, 4), np.nan)
    if sform is not None:
        if _usable(sform):
            affine = sform
        else:
            notes.append(f"sform of {name} is not finite or not invertible: set aside (code {scode} -> 0)")
            scode = 0
    if qform is not None:
        if _usable(qform):
            affine = qform if affine is None else affine
        else:
            notes.append(f"qform of {name} is not finite or not invertible: set aside (code {qcode} -> 0)")
            qcode = 0
    if affine is None:
        shape = ([int(n) for n in header.get_data_shape()[:3]] + [1, 1, 1])[:3]
        affine = _base_affine(shape, zooms)
        if notes:
            notes.append(f"{name}: geometry from pixdim alone (centred voxels, x flipped, as nibabel)")
    spacing = tuple(zooms) if all(math.isfinite(z) and z > 0 for z in pixdim) else _column_norms(affine, zooms)
    return Geometry(affine, spacing, qcode, scode, notes)  # type: ignore[arg-type]


def _base_affine(shape: list[int], zooms: list[float]) -> np.ndarray:
    """nibabel's `shape_zoom_affine(shape, zooms, x_flip=True)`: what it uses when both codes are 0."""
    from nibabel.affines import from_matvec

    origin = (np.asarray(shape, dtype=np.float64) - 1) / 2.0
    z = np.asarray(zooms, dtype=np.float64)
    z[0] *= -1
    return from_matvec(np.diag(z), -origin * z)


def _column_norms(affine: np.ndarray, fallback: list[float]) -> tuple[float, float, float]:
    norms = np.linalg.norm(affine[:3, :3], axis=0)
    return tuple(float(n) if math.isfinite(n) and n > 0 else f for n, f in zip(norms, fallback))  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------
# carried fields (NIfTI -> another format -> NIfTI)


def carried_fields(header: Any) -> dict[str, Any]:
    """The header facts another format keeps for a later NIfTI output (plain JSON types)."""
    out: dict[str, Any] = {}
    for name in KEPT_FIELDS:
        value = np.asarray(header[name]).item()
        if isinstance(value, bytes):
            value = value.rstrip(b"\x00").decode("latin-1")
        elif isinstance(value, float) and not math.isfinite(value):
            continue
        out[name] = value
    g = geometry(header, "input")
    out["qform_code"], out["sform_code"] = g.qform_code, g.sform_code
    pixdim = np.asarray(header["pixdim"], dtype=np.float64)
    if math.isfinite(pixdim[4]) and pixdim[4] > 0:
        out["time_step"] = float(pixdim[4])
    return out


def _apply_carried(hdr: Any, fields: dict[str, Any]) -> tuple[int, int, float | None]:
    """Set the kept fields of a carried dict on `hdr`; (qform code, sform code, time step) from it."""
    for name in KEPT_FIELDS:
        if name not in fields:
            continue
        value = fields[name]
        try:
            hdr[name] = value.encode("latin-1")[: hdr[name].dtype.itemsize] if name in _TEXT_FIELDS else value
        except (TypeError, ValueError, AttributeError, UnicodeEncodeError):
            continue  # a value another tool put there that NIfTI cannot hold: left at its default
    codes = []
    for name in ("qform_code", "sform_code"):
        value = fields.get(name)
        codes.append(int(value) if isinstance(value, int) and 0 <= value <= 5 else 2)
    step = fields.get("time_step")
    return codes[0], codes[1], float(step) if isinstance(step, (int, float)) and step > 0 else None


# ----------------------------------------------------------------------------------------------------
# the output header


def output_header(
    file_shape: tuple[int, ...],
    dtype: np.dtype,
    meta: VolumeMeta,
    scaling: tuple[float, float] | None = None,
) -> Any:
    """The header of an output of `file_shape` (NIfTI order) and `dtype`, from the input's `meta`."""
    n = nib()
    src = meta.header if isinstance(meta.header, n.Nifti1Header) else None
    wants_2 = isinstance(src, n.Nifti2Header) or max(file_shape) > NIFTI1_MAX_DIM
    klass = n.Nifti2Header if wants_2 else n.Nifti1Header
    hdr = klass(endianness="<")
    hdr.set_data_shape(file_shape)
    try:
        hdr.set_data_dtype(dtype.newbyteorder("<"))
    except Exception:  # noqa: BLE001 - nibabel's HeaderDataError: a type NIfTI has no code for (float16, ...)
        raise InputError(
            f"NIfTI cannot store {dtype}; use float32, float64 or an integer type", param="output_dtype"
        ) from None
    affine = _output_affine(meta)
    step: float | None = None
    carried = (meta.attrs or {}).get(CARRIED_ATTR)
    if src is not None:
        for name in KEPT_FIELDS:
            hdr[name] = src[name]
        g = geometry(src, "input")
        qcode, scode = g.qform_code, g.sform_code
        pix = np.asarray(src["pixdim"], dtype=np.float64)
        step = float(pix[4]) if len(file_shape) > 3 and math.isfinite(pix[4]) and pix[4] > 0 else None
    elif isinstance(carried, dict):
        qcode, scode, step = _apply_carried(hdr, carried)
    else:
        qcode = scode = 2  # aligned: the transform comes from the input's spacing/affine, not a scanner
        if "element_size_um" in (meta.attrs or {}):
            hdr.set_xyzt_units("micron")
        hdr["descrip"] = b"deconv3d-cli"
    if qcode == 0 and scode == 0:
        # The input had no stored transform: its geometry was the implied default, which is not that of a
        # grid of another size, so the output says explicitly where its voxels are.
        qcode = 1
    if not _usable(affine):
        raise InputError(
            "the output's affine is not finite or not invertible; fix the input's geometry fields",
            field="sform",
        )
    hdr.set_qform(affine, code=qcode)
    hdr.set_sform(affine, code=scode)
    _set_intent(hdr, file_shape)
    pixdim = hdr["pixdim"]
    for a in range(3, len(file_shape)):
        pixdim[a + 1] = step if a == 3 and step else 1.0
    hdr["pixdim"] = pixdim
    _set_scaling(hdr, scaling)
    hdr["cal_min"] = 0
    hdr["cal_max"] = 0
    hdr["vox_offset"] = klass.single_vox_offset
    return hdr


def _output_affine(meta: VolumeMeta) -> np.ndarray:
    """The output's voxel-to-world transform: the input's affine, else its spacing, else identity."""
    if meta.affine is not None:
        return np.asarray(meta.affine, dtype=np.float64)
    if meta.spacing is not None:
        return np.diag([*map(float, meta.spacing), 1.0])
    return np.eye(4)


def _set_scaling(hdr: Any, scaling: tuple[float, float] | None) -> None:
    """scl_slope/scl_inter: stored = (value - intercept) / slope; none is (1, 0)."""
    slope, inter = scaling if scaling is not None else (1.0, 0.0)
    if not (math.isfinite(slope) and slope != 0 and math.isfinite(inter)):
        raise InputError(f"scaling ({slope}, {inter}) needs a finite, non-zero slope", param="scaling")
    hdr["scl_slope"] = slope
    hdr["scl_inter"] = inter


def _set_intent(hdr: Any, file_shape: tuple[int, ...]) -> None:
    """Vector intent for several components; a vector intent dropped when one component remains."""
    code = int(hdr["intent_code"])
    vector = len(file_shape) == 5 and file_shape[4] > 1
    if vector and code not in VECTOR_INTENTS:
        code = INTENT_VECTOR
    elif not vector and code in VECTOR_INTENTS:
        code = 0
    else:
        return
    hdr["intent_code"] = code
    for p in ("intent_p1", "intent_p2", "intent_p3"):
        hdr[p] = 0
    hdr["intent_name"] = b""


def fit_scaling(dtype: Any, lo: float, hi: float) -> tuple[float, float]:
    """(scl_slope, scl_inter) that map the values lo..hi onto the integer `dtype`, as nibabel saves floats.

    nibabel's SlopeInterArrayWriter on a float array holding lo and hi: the slope spans the type's
    range shared with float32 (the header stores slope and intercept as float32), an unsigned type takes
    the smaller magnitude to 0, one value gives slope 1 and that value as intercept. Float types need no
    scaling: (1.0, 0.0).
    """
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return 1.0, 0.0
    if dt.kind not in "iu":
        raise ValueError(f"cannot scale values to {dt}")
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        raise ValueError(f"the range {lo}..{hi} is not a finite interval")
    from nibabel.arraywriters import SlopeInterArrayWriter

    writer = SlopeInterArrayWriter(np.array([lo, hi], dtype=np.float64), dt, scaler_dtype=np.float32)
    return float(writer.slope), float(writer.inter)
