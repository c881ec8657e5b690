"""NIfTI-1 and NIfTI-2 (`.nii`, `.nii.gz`), read and written a box at a time.

Reading
-------
nibabel parses the header (either NIfTI version, either byte order); the voxels are then read through
a `numpy.memmap` of the data block at `vox_offset`, in the file's own Fortran order, so a tile costs
only the bytes of its box. `scl_slope`/`scl_inter` are applied on read (the reader then reports
float32, or float64 for float64 data); without scaling the stored dtype is reported, in native byte
order.

A `.nii.gz` cannot be read at random offsets: gzip has no index, so every tile would decompress the
file from its start. It is therefore *staged* once, on the first read, into an anonymous temporary
file in the system temp directory (``tempfile.TemporaryFile``: unlinked from the start, so it goes
away on close and even when the process is killed), and that file is memory-mapped. We chose this
over `indexed_gzip`: a tile of a Fortran-ordered volume is thousands of short runs spread over the
whole file, and indexed_gzip restarts decompression at the nearest seek point (about 1 MiB apart) for
each run, which makes tiled reading of a large volume slower than decompressing it once; staging is
one sequential pass (python-isal's igzip when installed, else zlib) and needs no extra native
package. The cost is temporary disk space equal to the uncompressed volume, checked before staging.
Opening a `.nii.gz` only reads its header, so `inspect` and `--dry-run` never stage.

Array layout
------------
The reader declares ``data_format = "channels_last"`` and presents:

- 3-D ``(x, y, z)`` as it is;
- 4-D ``(x, y, z, n)`` as channels ``(X, Y, Z, C)`` when ``n`` equals the layer's input channels
  (hint ``in_channels``; when that is unknown, only ``n == 1`` counts as channels), else as a series
  ``(T, X, Y, Z, 1)``: a batch of one-channel volumes, each upsampled on its own;
  ``fourth_axis="channels"`` or ``"series"`` forces the choice;
- 5-D ``(x, y, z, t, c)`` (NIfTI keeps vector components on the 5th axis) as ``(X, Y, Z, C)`` when
  ``t == 1``, else ``(T, X, Y, Z, C)``.

`fourth_axis_choice` holds a sentence saying what was chosen and why (None for 3-D files).

Writing
-------
The writer takes boxes in the same layout (3-D, ``(X, Y, Z, F)``, or a series ``(T, X, Y, Z, F)``)
and stores them in NIfTI order ``(x, y, z[, t][, f])``. It writes the header first and then memory-maps
the data block, so the output is written tile by tile; `flush` makes the tiles durable. The header
keeps the input's flavour (NIfTI-1 or NIfTI-2; NIfTI-2 whenever a dimension exceeds NIfTI-1's 32767),
qform and sform both hold the output affine with the input's codes, units, description and intent
are kept, the zooms follow from the affine, data are little-endian with ``scl_slope 1, scl_inter 0``.
A `.nii.gz` output is staged uncompressed beside the partial file and compressed on close.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import InputError, RunError
from .atomic import fsync_path
from .base import VolumeMeta

FOURTH_AXIS_CHOICES = ("auto", "channels", "series")
NIFTI1_MAX_DIM = 32767
STAGING_SUFFIX = ".uncompressed"
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
_COPY_BLOCK = 16 << 20
_GZIP_MAGIC = b"\x1f\x8b"
_XFORM_NAMES = {0: "unknown", 1: "scanner", 2: "aligned", 3: "talairach", 4: "mni", 5: "template"}


# ----------------------------------------------------------------------------------------------------
# gzip helpers: python-isal when installed (several times faster than zlib), else the standard library.


def _gzip_open(path: Path, mode: str, level: int = 1) -> BinaryIO:
    try:
        from isal import igzip
    except ImportError:  # pragma: no cover - isal is a dependency, but the stdlib fallback must work
        if "w" in mode:
            return gzip.open(path, mode, compresslevel=max(0, min(level, 9)))  # type: ignore[return-value]
        return gzip.open(path, mode)  # type: ignore[return-value]
    if "w" in mode:
        # isal's levels are 0..3 (its 1 compresses about as well as zlib's 1, much faster); above 3 its best.
        return igzip.open(path, mode, compresslevel=max(0, min(level, 3)))  # type: ignore[return-value]
    return igzip.open(path, mode)  # type: ignore[return-value]


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


# ----------------------------------------------------------------------------------------------------
# headers


def _nib() -> Any:
    import nibabel

    return nibabel


def _read_header(path: Path, compressed: bool) -> Any:
    """The file's nibabel header (Nifti1Header or Nifti2Header), chosen by `sizeof_hdr` in either byte order."""
    nib = _nib()
    from nibabel.spatialimages import HeaderDataError

    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4:
                raise InputError("not a NIfTI file: too short for a header", source=str(path))
            sizes = {int.from_bytes(head, "little"), int.from_bytes(head, "big")}
            if 348 in sizes:
                klass = nib.Nifti1Header
            elif 540 in sizes:
                klass = nib.Nifti2Header
            else:
                raise InputError("not a NIfTI file (sizeof_hdr is neither 348 nor 540)", source=str(path))
            f.seek(0)
            header = klass.from_fileobj(f)
    except InputError:
        raise
    except (OSError, EOFError) as exc:
        raise InputError(f"not a readable NIfTI file: {exc}", source=str(path)) from None
    except (HeaderDataError, ValueError) as exc:
        raise InputError(f"invalid NIfTI header: {exc}", source=str(path)) from None
    if header["magic"].item() not in (b"n+1", b"n+2"):
        raise InputError(
            "is a NIfTI header/image pair header (magic ni1/ni2); only single-file .nii/.nii.gz are read",
            source=str(path),
        )
    return header


def _scaling(header: Any) -> tuple[float, float] | None:
    slope, inter = header.get_slope_inter()
    if slope is None:
        return None
    inter = 0.0 if inter is None else float(inter)
    if float(slope) == 1.0 and inter == 0.0:
        return None
    return float(slope), inter


def xform_name(code: int) -> str:
    return _XFORM_NAMES.get(int(code), f"code {int(code)}")


# ----------------------------------------------------------------------------------------------------
# the presented layout <-> file axes


class _AxisMap:
    """Presented axis i is file axis `axes[i]`, or a virtual length-1 axis when that is None.

    File axes not named in `axes` have length 1 and are indexed with 0.
    """

    def __init__(self, axes: Sequence[int | None], file_shape: Sequence[int]) -> None:
        self.axes = tuple(axes)
        self.file_shape = tuple(int(n) for n in file_shape)
        self.shape = tuple(1 if a is None else self.file_shape[a] for a in self.axes)
        self._mapped = [i for i, a in enumerate(self.axes) if a is not None]
        # order in which the mapped presented axes appear in the file
        in_file = sorted(self._mapped, key=lambda i: self.axes[i])
        self._to_presented = [in_file.index(i) for i in self._mapped]
        self._to_file = [self._mapped.index(i) for i in in_file]

    def _file_index(self, index: Sequence[slice]) -> tuple[Any, ...]:
        if len(index) != len(self.axes) or not all(isinstance(s, slice) for s in index):
            raise IndexError(f"expected {len(self.axes)} slices, got {index!r}")
        out: list[Any] = [0] * len(self.file_shape)
        for s, a in zip(index, self.axes):
            if a is not None:
                out[a] = s
        return tuple(out)

    def get(self, array: np.ndarray, index: Sequence[slice]) -> np.ndarray:
        """array[index] in the presented layout (a view of the file-ordered block)."""
        block = array[self._file_index(index)].transpose(self._to_presented)
        for i, a in enumerate(self.axes):
            if a is None:
                block = np.expand_dims(block, i)[(slice(None),) * i + (index[i],)]
        return block

    def put(self, array: np.ndarray, index: Sequence[slice], data: np.ndarray) -> None:
        data = np.asarray(data)
        if data.ndim != len(self.axes):
            raise ValueError(f"expected a {len(self.axes)}-D block, got shape {data.shape}")
        if any(data.shape[i] != 1 for i, a in enumerate(self.axes) if a is None):
            raise ValueError(f"block {data.shape} does not fit the output layout {self.shape}")
        squeezed = data[tuple(slice(None) if a is not None else 0 for a in self.axes)]
        array[self._file_index(index)] = squeezed.transpose(self._to_file)


def _reader_axes(
    file_shape: tuple[int, ...], fourth_axis: str, in_channels: int | None, path: Path
) -> tuple[list[int | None], str | None, str | None]:
    """(presented -> file axes, 'channels'/'series'/None, sentence saying why)."""
    nd = len(file_shape)
    if nd == 3:
        return [0, 1, 2], None, None
    if nd == 4:
        n = file_shape[3]
        if fourth_axis == "channels":
            mode, why = "channels", "as asked (--fourth-axis channels)"
        elif fourth_axis == "series":
            mode, why = "series", "as asked (--fourth-axis series)"
        elif in_channels is not None:
            if n == in_channels:
                mode, why = "channels", f"its length equals the layer's {in_channels} input channel(s)"
            else:
                mode, why = "series", f"its length differs from the layer's {in_channels} input channel(s)"
        elif n == 1:
            mode, why = "channels", "it has length 1"
        else:
            mode, why = "series", "the layer's input channels are not known"
        if mode == "channels":
            sentence = f"4th axis of {path.name} ({n}) read as {n} channel(s): {why}"
            return [0, 1, 2, 3], mode, sentence
        sentence = f"4th axis of {path.name} read as a series of {n} volume(s), each upsampled alone: {why}"
        return [3, 0, 1, 2, None], mode, sentence
    # 5-D: (x, y, z, t, c), vector components on the 5th axis as NIfTI defines them
    t, c = file_shape[3], file_shape[4]
    if t == 1:
        if fourth_axis == "series":
            raise InputError(
                f"shape {file_shape}: the 5th axis holds {c} components of one volume, not a series",
                source=str(path),
                param="fourth_axis",
            )
        return [0, 1, 2, 4], "channels", f"5th axis of {path.name} read as {c} channel(s) (NIfTI vector components)"
    if fourth_axis == "channels":
        raise InputError(
            f"shape {file_shape}: a series of {t} volumes of {c} components cannot be read as channels",
            source=str(path),
            param="fourth_axis",
        )
    sentence = f"{path.name} read as a series of {t} volume(s) of {c} channel(s) (NIfTI's 4th and 5th axes)"
    return [3, 0, 1, 2, 4], "series", sentence


def _normalise_shape(shape: tuple[int, ...], path: Path) -> tuple[int, ...]:
    """Pad 1-D/2-D images to 3-D and drop trailing length-1 axes past the 5th."""
    shape = tuple(int(n) for n in shape)
    while len(shape) > 5 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 5:
        raise InputError(f"shape {shape}: NIfTI images of more than 5 dimensions are not supported", source=str(path))
    if any(n < 1 for n in shape):
        raise InputError(f"shape {shape} is empty", source=str(path))
    return shape + (1,) * (3 - len(shape))


# ----------------------------------------------------------------------------------------------------
# reader


class NiftiReader:
    """One NIfTI file, read a box at a time (see the module docstring for the layout rules)."""

    format = "nifti"
    data_format = "channels_last"
    chunks = None

    def __init__(self, path: Path, fourth_axis: str | None = "auto", in_channels: int | None = None) -> None:
        self.path = Path(path)
        fourth_axis = (fourth_axis or "auto").lower()
        if fourth_axis not in FOURTH_AXIS_CHOICES:
            raise InputError(f"{fourth_axis!r}; use auto, channels or series", param="fourth_axis")
        self.compressed = _is_gzip(self.path)
        header = _read_header(self.path, self.compressed)
        self.header = header
        self.nifti_version = 2 if isinstance(header, _nib().Nifti2Header) else 1
        stored = header.get_data_dtype()
        if stored.kind not in "fiub" or stored.fields is not None:
            raise InputError(
                f"data type {header.get_value_label('datatype')} is not a real number type", source=str(path)
            )
        self.stored_dtype = stored
        self.stored_shape = tuple(int(n) for n in header.get_data_shape())
        self.offset = int(header.get_data_offset())
        self.scaling = _scaling(header)
        if self.scaling is not None:
            self.dtype = np.dtype(np.float64 if stored == np.float64 else np.float32)
        else:
            self.dtype = stored.newbyteorder("=")
        self._file_shape = _normalise_shape(self.stored_shape, self.path)
        axes, self.fourth_axis, self.fourth_axis_choice = _reader_axes(
            self._file_shape, fourth_axis, in_channels, self.path
        )
        self._map = _AxisMap(axes, self._file_shape)
        self.shape = self._map.shape
        zooms = [float(z) for z in header.get_zooms()[:3]]
        zooms += [1.0] * (3 - len(zooms))
        self.meta = VolumeMeta(
            spacing=tuple(zooms),  # type: ignore[arg-type]
            affine=np.asarray(header.get_best_affine(), dtype=np.float64),
            header=header,
        )
        self._staged: BinaryIO | None = None
        self._lock = threading.Lock()
        self._closed = False
        if not self.compressed:
            need = self.offset + self.nbytes
            if self.path.stat().st_size < need:
                raise InputError(
                    f"truncated: {self.path.stat().st_size} bytes, the header needs {need}", source=str(self.path)
                )

    @property
    def nbytes(self) -> int:
        return int(np.prod(self._file_shape, dtype=np.int64)) * self.stored_dtype.itemsize

    def _map_data(self) -> np.memmap:
        """A fresh map of the data block. Maps are short-lived (one per box, as for .npy): a map held for
        the whole run would keep every page it touched resident."""
        with self._lock:
            if self._closed:
                raise RunError("reader is closed", source=str(self.path))
            source: Any = self.path
            if self.compressed:
                source = self._staged if self._staged is not None else self._stage()
            return np.memmap(
                source, dtype=self.stored_dtype, mode="r", offset=self.offset, shape=self._file_shape, order="F"
            )

    def _stage(self) -> BinaryIO:
        """Decompress the whole file once into an anonymous temporary file (see the module docstring)."""
        need = self.offset + self.nbytes
        tmpdir = tempfile.gettempdir()
        free = shutil.disk_usage(tmpdir).free
        if free < need + (64 << 20):
            raise InputError(
                f"staging this .nii.gz needs {need / 2**20:.0f} MiB in {tmpdir} but {free / 2**20:.0f} MiB are free; "
                "set TMPDIR to a larger disk or decompress the file first",
                source=str(self.path),
            )
        tmp = tempfile.TemporaryFile(prefix="deconv3d-", suffix=".nii")
        try:
            with _gzip_open(self.path, "rb") as src:
                shutil.copyfileobj(src, tmp, _COPY_BLOCK)
            tmp.flush()
            size = tmp.seek(0, io.SEEK_END)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            tmp.close()
            raise InputError(f"cannot decompress: {exc}", source=str(self.path)) from None
        except BaseException:
            tmp.close()
            raise
        if size < need:
            tmp.close()
            raise InputError(f"truncated: {size} bytes uncompressed, the header needs {need}", source=str(self.path))
        self._staged = tmp
        return tmp

    def read(self, index: tuple[slice, ...]) -> np.ndarray:
        """A copy of the box, in the file's memory order (Fortran); scaled when the header says so."""
        mm = self._map_data()
        try:
            block = self._map.get(mm, index)
            if self.scaling is None:
                return np.array(block, dtype=self.dtype, order="K")
            out = np.array(block, dtype=np.float64, order="K")
        finally:
            del mm
        slope, inter = self.scaling
        out *= slope
        out += inter
        return out.astype(self.dtype, copy=False)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._staged is not None:
                self._staged.close()
                self._staged = None

    def __enter__(self) -> NiftiReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_reader(
    path: Path, dataset: str | None = None, fourth_axis: str | None = "auto", in_channels: int | None = None
) -> NiftiReader:
    if dataset:
        raise InputError("--dataset applies to HDF5 inputs, not NIfTI", source=str(path), param="dataset")
    return NiftiReader(path, fourth_axis=fourth_axis, in_channels=in_channels)


# ----------------------------------------------------------------------------------------------------
# writer


def _writer_axes(shape: tuple[int, ...], data_format: str, five_d_vectors: bool) -> tuple[list[int | None], tuple]:
    """(presented -> file axes, file shape) for an output block layout."""
    nd = len(shape)
    first = data_format == "channels_first"
    if nd == 3:
        return [0, 1, 2], tuple(shape)
    if nd == 4:
        if first:
            f, x, y, z = shape
            axes = [4, 0, 1, 2] if five_d_vectors else [3, 0, 1, 2]
        else:
            x, y, z, f = shape
            axes = [0, 1, 2, 4] if five_d_vectors else [0, 1, 2, 3]
        return axes, ((x, y, z, 1, f) if five_d_vectors else (x, y, z, f))  # type: ignore[return-value]
    if nd == 5:
        if first:
            t, f, x, y, z = shape
            chan = 1
        else:
            t, x, y, z, f = shape
            chan = 4
        spatial = [2, 3, 4] if first else [1, 2, 3]
        axes: list[int | None] = [None] * 5
        axes[0] = 3
        for a, p in zip((0, 1, 2), spatial):
            axes[p] = a
        if f == 1:
            return axes, (x, y, z, t)
        axes[chan] = 4
        return axes, (x, y, z, t, f)
    raise InputError(f"cannot write a {nd}-D array as NIfTI; expected 3, 4 or 5 dimensions")


def _output_header(file_shape: tuple[int, ...], dtype: np.dtype, meta: VolumeMeta) -> Any:
    nib = _nib()
    src = meta.header if isinstance(meta.header, nib.Nifti1Header) else None
    wants_2 = isinstance(src, nib.Nifti2Header) or max(file_shape) > NIFTI1_MAX_DIM
    klass = nib.Nifti2Header if wants_2 else nib.Nifti1Header
    hdr = klass(endianness="<")
    hdr.set_data_shape(file_shape)
    try:
        hdr.set_data_dtype(dtype.newbyteorder("<"))
    except Exception:  # nibabel's HeaderDataError: a type NIfTI has no code for (float16, ...)
        raise InputError(
            f"NIfTI cannot store {dtype}; use float32, float64 or an integer type", param="output_dtype"
        ) from None
    if meta.affine is not None:
        affine = np.asarray(meta.affine, dtype=np.float64)
    elif meta.spacing is not None:
        affine = np.diag([*map(float, meta.spacing), 1.0])
    else:
        affine = np.eye(4)
    if src is not None:
        for name in KEPT_FIELDS:
            hdr[name] = src[name]
        qcode, scode = int(src["qform_code"]), int(src["sform_code"])
        if qcode == 0 and scode == 0:
            # The input had no stored transform: its geometry was the implied default, which is not that of a
            # grid of another size, so the output says explicitly where its voxels are.
            qcode = 1
        src_zooms = list(src.get_zooms())
    else:
        qcode = scode = 2  # aligned: the transform comes from the input's spacing/affine, not a scanner
        src_zooms = []
        if "element_size_um" in (meta.attrs or {}):
            hdr.set_xyzt_units("micron")
        hdr["descrip"] = b"deconv3d-cli"
    hdr.set_qform(affine, code=qcode)
    hdr.set_sform(affine, code=scode)
    # zooms of the axes past x, y, z: the input's time step for a series, else 1
    pixdim = hdr["pixdim"]
    for a in range(3, len(file_shape)):
        pixdim[a + 1] = src_zooms[a] if a < len(src_zooms) and src_zooms[a] > 0 else 1.0
    hdr["pixdim"] = pixdim
    hdr.set_slope_inter(1.0, 0.0)
    hdr["cal_min"] = 0
    hdr["cal_max"] = 0
    hdr["vox_offset"] = klass.single_vox_offset
    return hdr


class NiftiWriter:
    """Writes a NIfTI file a box at a time through a memory map of its data block."""

    chunks = None

    def __init__(
        self,
        path: Path,
        shape: tuple[int, ...],
        dtype: np.dtype,
        meta: VolumeMeta,
        resume: bool = False,
        data_format: str = "channels_last",
        compression_level: int = 1,
    ) -> None:
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind not in "fiu":
            raise InputError(f"cannot write {self.dtype} as NIfTI", source=str(path), param="output_dtype")
        self.compress = self.path.name.lower().endswith(".gz")
        self.compression_level = int(compression_level)
        self.data_path = self.path.with_name(self.path.name + STAGING_SUFFIX) if self.compress else self.path
        src_shape = getattr(meta.header, "get_data_shape", lambda: ())()
        five_d_vectors = len(src_shape) == 5 and src_shape[3] == 1
        axes, file_shape = _writer_axes(self.shape, data_format, five_d_vectors)
        self._map = _AxisMap(axes, file_shape)
        self.file_shape = tuple(int(n) for n in file_shape)
        disk_dtype = self.dtype.newbyteorder("<")
        if resume:
            self.header = self._check_partial(disk_dtype)
        else:
            self.header = _output_header(self.file_shape, self.dtype, meta)
            with open(self.data_path, "wb") as f:
                self.header.write_to(f)
                f.truncate(int(self.header["vox_offset"]) + self.nbytes)
            if self.compress:
                self.path.write_bytes(b"")  # the partial exists from the start, so a killed run can resume
        self.offset = int(self.header["vox_offset"])
        self._disk_dtype = disk_dtype
        self._fd: int | None = os.open(self.data_path, os.O_RDWR)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.file_shape, dtype=np.int64)) * self.dtype.itemsize

    def _check_partial(self, disk_dtype: np.dtype) -> Any:
        if not self.data_path.exists():
            raise InputError(
                f"no partial data to resume ({self.data_path.name} is missing); run without --resume",
                source=str(self.path),
            )
        header = _read_header(self.data_path, compressed=False)
        if tuple(header.get_data_shape()) != self.file_shape or header.get_data_dtype() != disk_dtype:
            raise InputError(
                f"partial output holds {tuple(header.get_data_shape())} {header.get_data_dtype()}, expected "
                f"{self.file_shape} {disk_dtype}; run without --resume",
                source=str(self.path),
            )
        return header

    def write(self, index: tuple[slice, ...], data: np.ndarray) -> None:
        if self._fd is None:
            raise RunError("writer is closed", source=str(self.path))
        # one short-lived shared map per box (see NiftiReader._map_data); fsync on the file makes it durable
        mm = np.memmap(
            self.data_path, dtype=self._disk_dtype, mode="r+", offset=self.offset, shape=self.file_shape, order="F"
        )
        try:
            self._map.put(mm, index, np.asarray(data, dtype=self.dtype))
        finally:
            del mm

    def flush(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def _release(self) -> bool:
        if self._fd is None:
            return False
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        return True

    def close(self) -> None:
        """Make the file complete: fsync, and for `.nii.gz` compress the staged data into `path`."""
        if not self._release() or not self.compress:
            return
        tmp = self.path.with_name(self.path.name + ".gz-tmp")
        try:
            with open(self.data_path, "rb") as src, _gzip_open(tmp, "wb", self.compression_level) as dst:
                shutil.copyfileobj(src, dst, _COPY_BLOCK)
            fsync_path(tmp)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.data_path.unlink()

    def abort(self) -> None:
        """Drop what was written (a failed run): nothing is compressed and the staging file is removed."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.compress:
            self.data_path.unlink(missing_ok=True)


def create_writer(
    path: Path,
    shape: tuple[int, ...],
    dtype: np.dtype,
    meta: VolumeMeta,
    resume: bool = False,
    dataset: str | None = None,
    **options: Any,
) -> NiftiWriter:
    """options: `compression_level` (gzip level for .nii.gz, default 1 as nibabel); `layout` (a Layout) or
    `data_format` of the boxes (default channels_last, the layout NiftiReader presents)."""
    if dataset:
        raise InputError(
            "--output-dataset applies to HDF5 outputs, not NIfTI", source=str(path), param="output_dataset"
        )
    return NiftiWriter(
        path,
        shape,
        dtype,
        meta,
        resume=resume,
        data_format=str(
            getattr(options.get("layout"), "data_format", None) or options.get("data_format") or "channels_last"
        ),
        compression_level=int(options.get("compression_level", 1)),
    )
