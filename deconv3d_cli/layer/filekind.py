"""What a file is from its first bytes, and what to do with one given where YAML/JSON text was expected.

A spec or a Keras config is text. The files users mistake for one are binary: a Keras `.keras`
archive or `.h5` model, a weights `.npz`, a PyTorch `.pt`, or a volume. Decoding those as UTF-8 fails
with a codec message that names neither the file's kind nor the command that reads it, so the content
is recognised here (magic bytes, then zip member names or the HDF5 root's attributes, nothing executed
or extracted) and the error says what would work. The magic numbers live here, once; the importers'
sniffer uses them too.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
NPY_MAGIC = b"\x93NUMPY"
GZIP_MAGIC = b"\x1f\x8b"
NIFTI_MAGICS = (b"n+1\x00", b"ni1\x00", b"n+2\x00", b"ni2\x00")  # at byte 344 (NIfTI-1) or 4 (NIfTI-2)
RUN_WHOLE_MODEL = "running a whole model is not supported yet"


def magic(head: bytes) -> str | None:
    """'hdf5', 'zip', 'pickle', 'npy', 'gzip', 'nifti' or None (not a binary kind known here)."""
    if head.startswith(HDF5_MAGIC):
        return "hdf5"
    if head.startswith(ZIP_MAGICS):
        return "zip"
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head[344:348] in NIFTI_MAGICS or head[4:8] in NIFTI_MAGICS:
        return "nifti"
    if head[:1] == b"\x80" or head.startswith(b"\x8a\x0a"):  # pickle protocol >= 2, or torch's legacy magic
        return "pickle"
    return None


def zip_kind(names: list[str]) -> str:
    """'keras-archive', 'torch', 'npz' or 'zip', from an archive's member names."""
    if "config.json" in names:
        return "keras-archive"
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "torch"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    return "zip"


def _hdf5_kind(path: Path) -> str:
    """'keras-h5' (a whole model), 'keras-weights' (save_weights) or 'hdf5' (anything else: a volume?)."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            if "model_config" in f.attrs:
                return "keras-h5"
            if "layer_names" in f.attrs or "layers" in f or "vars" in f:
                return "keras-weights"
    except (OSError, ValueError, KeyError):
        pass
    return "hdf5"


def _zip_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            return zip_kind(archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return "zip"


def kind_of(path: Path, head: bytes) -> str | None:
    """The binary kind of `path` (see `advice`), or None where its first bytes match none known here."""
    kind = magic(head)
    if kind == "hdf5":
        return _hdf5_kind(path)
    if kind == "zip":
        return _zip_kind(path)
    return kind


def advice(path: Path, kind: str, expected: str) -> str:
    """One line: what the file is, that it is not `expected`, and the command that reads it."""
    f = str(path)
    imp = f"deconv3d spec import {f}"
    what = {
        "keras-archive": f"a Keras model (.keras archive), not {expected}: import its Conv3DTranspose layer "
        f"with `{imp} -o spec.yaml` (add --layer NAME where it has several; --list names them); "
        f"{RUN_WHOLE_MODEL}",
        "keras-h5": f"a Keras .h5 model, not {expected}: import its Conv3DTranspose layer with "
        f"`{imp} -o spec.yaml` (add --layer NAME where it has several; --list names them); {RUN_WHOLE_MODEL}",
        "keras-weights": f"Keras weights (save_weights), not {expected}: import a layer with "
        f"`{imp} --config MODEL.json -o spec.yaml` (MODEL.json from model.to_json())",
        "npz": f"an .npz of weights, not {expected}: name it as `weights: {path.name}` in a spec YAML, or "
        f"import it with `deconv3d spec import CONFIG.json --weights {f} -o spec.yaml`",
        "torch": f"a PyTorch file, not {expected}: import its ConvTranspose3d with "
        f"`{imp} --stride S --padding P -o spec.yaml`",
        "pickle": f"a pickle (a PyTorch .pt?), not {expected}: import a ConvTranspose3d state dict with "
        f"`{imp} --stride S --padding P -o spec.yaml`",
        "npy": f"a volume (.npy), not {expected}: give it as INPUT; a spec is YAML (`deconv3d spec init` writes one)",
        "gzip": f"a gzip file (a .nii.gz volume?), not {expected}: give a volume as INPUT; a spec is YAML",
        "nifti": f"a NIfTI volume, not {expected}: give it as INPUT; a spec is YAML (`deconv3d spec init` writes one)",
        "hdf5": f"an HDF5 file with no Keras model in it (a volume?), not {expected}: give a volume as INPUT; "
        "a spec is YAML (`deconv3d spec init` writes one)",
        "zip": f"a zip archive that is no Keras, PyTorch or .npz file, not {expected}",
    }
    return "is " + what.get(kind, f"a binary file, not {expected}")
