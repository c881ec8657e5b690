"""Hostile and damaged input volumes (.npy, HDF5, Zarr, non-regular files): one line, exit 2, nothing written.

Each case builds its file at test time and runs `upsample` (and `inspect` where the issue found it
silent) through the CLI: the exit status is 2, stderr is a single `deconv3d: error:` line naming the
file and what is wrong, no `.partial-*` is left beside the target, and an existing target given with
--overwrite is byte-identical afterwards. Cases that could hang or crash (FIFOs) run in a child
process with a timeout. Allowed external data and missing-chunk counting are checked on the reader.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from hostile_files import cli, npy_header, one_error_line, strays

from deconv3d_cli import InputError
from deconv3d_cli.cli import main
from deconv3d_cli.io import open_reader

TARGET_BYTES = b"a file the user owns\n"
zarr = pytest.importorskip("zarr", minversion="3")


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An output folder holding an existing target, which every refused run must leave as it was."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "out.npy").write_bytes(TARGET_BYTES)
    return folder


def untouched(out: Path) -> None:
    assert (out / "out.npy").read_bytes() == TARGET_BYTES
    assert strays(out) == []
    assert sorted(p.name for p in out.iterdir()) == ["out.npy"]


def refused(args: list, *fragments: str) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    return one_error_line(lines, *fragments)


def upsample_args(src: Path, out: Path, *extra: str) -> list:
    return [
        "upsample",
        src,
        "-o",
        out / "out.npy",
        "--preset",
        "nearest",
        "--scale",
        "2",
        "--overwrite",
        "--no-progress",
        *extra,
    ]


# ----------------------------------------------------------------------------------------- files
def npy_negative(tmp: Path) -> Path:
    path = tmp / "neg.npy"
    path.write_bytes(npy_header((8, -8, 8)) + bytes(2048))
    return path


def npy_promises_more(tmp: Path) -> Path:
    path = tmp / "big.npy"
    path.write_bytes(npy_header((4096, 4096, 4096)) + bytes(2048))
    return path


def npy_zero_axis(tmp: Path) -> Path:
    path = tmp / "zero.npy"
    np.save(path, np.ones((8, 8, 8, 0), np.float32))
    return path


def h5(tmp: Path, name: str, build: Callable[[h5py.File], None]) -> Path:
    path = tmp / name
    with h5py.File(path, "w") as f:
        build(f)
    return path


def h5_zero_axis(tmp: Path) -> Path:
    return h5(tmp, "zero.h5", lambda f: f.create_dataset("data", shape=(8, 0, 8), dtype="f4"))


def h5_null(tmp: Path) -> Path:
    return h5(tmp, "null.h5", lambda f: f.create_dataset("data", data=h5py.Empty("f4")))


def h5_scalar(tmp: Path) -> Path:
    return h5(tmp, "scalar.h5", lambda f: f.create_dataset("data", data=np.float32(3)))


def secret(tmp: Path) -> Path:
    path = tmp / "secret.txt"
    path.write_bytes(b"root:x:0:0:the password database\n" * 4)
    return path


def h5_external_raw(tmp: Path) -> Path:
    raw = secret(tmp)
    external = [(str(raw), 0, 64)]
    return h5(tmp, "ext.h5", lambda f: f.create_dataset("data", shape=(4, 4, 4), dtype="u1", external=external))


def source_h5(tmp: Path) -> Path:
    return h5(tmp, "src.h5", lambda f: f.create_dataset("data", data=np.arange(512, dtype=np.float32).reshape(8, 8, 8)))


def h5_external_link(tmp: Path) -> Path:
    source_h5(tmp)

    def build(f: h5py.File) -> None:
        f["data"] = h5py.ExternalLink("src.h5", "/data")

    return h5(tmp, "link.h5", build)


def h5_virtual(tmp: Path, source: str = "src.h5") -> Path:
    if source == "src.h5":
        source_h5(tmp)
    layout = h5py.VirtualLayout(shape=(8, 8, 8), dtype="f4")
    layout[:] = h5py.VirtualSource(source, "data", shape=(8, 8, 8))
    return h5(tmp, "vds.h5", lambda f: f.create_virtual_dataset("data", layout, fillvalue=-1))


def h5_lz4(tmp: Path) -> Path:
    """A gzip dataset whose filter pipeline is rewritten to say LZ4 (filter 32004), which h5py lacks."""
    path = h5(
        tmp,
        "lz4.h5",
        lambda f: f.create_dataset(
            "data", data=np.ones((16, 16, 16), np.float32), chunks=(8, 8, 8), compression="gzip"
        ),
    )
    raw = path.read_bytes()
    at = raw.index(b"deflate\x00")
    fid, name_len, flags, nvalues = struct.unpack("<HHHH", raw[at - 8 : at])
    assert fid == 1
    path.write_bytes(
        raw[: at - 8]
        + struct.pack("<HHHH", 32004, name_len, flags, nvalues)
        + b"lz4\x00\x00\x00\x00\x00"
        + raw[at + 8 :]
    )
    return path


def zarr_store(tmp: Path, name: str = "in.zarr", fmt: int = 3, **kw) -> Path:
    path = tmp / name
    arr = zarr.create_array(str(path), shape=(16, 16, 16), dtype="f4", chunks=(8, 8, 8), zarr_format=fmt, **kw)
    arr[:] = np.arange(16**3, dtype=np.float32).reshape(16, 16, 16) + 1
    return path


def zarr_truncated_chunk(tmp: Path) -> Path:
    path = zarr_store(tmp)
    chunk = path / "c" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    return path


def zarr_chunk_is_a_directory(tmp: Path) -> Path:
    path = zarr_store(tmp)
    chunk = path / "c" / "0" / "0" / "0"
    chunk.unlink()
    chunk.mkdir()
    return path


def zarr_zero_chunks(tmp: Path) -> Path:
    path = zarr_store(tmp, fmt=2)
    meta = json.loads((path / ".zarray").read_text())
    meta["chunks"] = [0, 8, 8]
    (path / ".zarray").write_text(json.dumps(meta))
    return path


def zarr_chunk_links_outside(tmp: Path) -> Path:
    path = zarr_store(tmp, compressors=None)
    chunk = path / "c" / "0" / "0" / "1"
    chunk.unlink()
    chunk.symlink_to(secret(tmp))
    return path


def zarr_metadata_is_a_list(tmp: Path) -> Path:
    path = zarr_store(tmp)
    (path / "zarr.json").write_text("[]")
    return path


def zarr_is_a_file(tmp: Path) -> Path:
    path = tmp / "in.zarr"
    path.write_bytes(b"not a store")
    return path


def directory(suffix: str) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        path = tmp / f"folder{suffix}"
        path.mkdir()
        (path / "user-file.txt").write_text("mine")
        return path

    return build


CASES = {
    "npy-negative-dim": (npy_negative, ["field 'shape'", "negative length"]),
    "npy-header-promises-more": (npy_promises_more, ["field 'shape'", "truncated", "(4096, 4096, 4096)"]),
    "npy-zero-length-axis": (npy_zero_axis, ["field 'shape'", "length 0 on axis 3"]),
    "h5-zero-length-axis": (h5_zero_axis, ["field 'shape'", "length 0 on axis 1"]),
    "h5-null-dataspace": (h5_null, ["field 'shape'", "null dataspace"]),
    "h5-scalar": (h5_scalar, ["field 'shape'", "scalar"]),
    "h5-external-raw-storage": (
        h5_external_raw,
        ["field '--allow-external-data'", "secret.txt", "outside the HDF5 file"],
    ),
    "h5-external-link-only": (h5_external_link, ["only external link", "src.h5:/data"]),
    "h5-virtual-dataset": (h5_virtual, ["virtual dataset", "src.h5", "allowed"]),
    "h5-unavailable-filter": (h5_lz4, ["filter 32004 (LZ4)", "cannot decode", "h5repack"]),
    "zarr-truncated-chunk": (zarr_truncated_chunk, ["chunk c/0/0/0 cannot be decoded", "damaged"]),
    "zarr-chunk-is-a-directory": (zarr_chunk_is_a_directory, ["chunk c/0/0/0 is a directory"]),
    "zarr-zero-chunk-shape": (zarr_zero_chunks, ["field 'chunks'", "(0, 8, 8)"]),
    "zarr-chunk-links-outside": (zarr_chunk_links_outside, ["chunk c/0/0/1", "secret.txt", "outside the store"]),
    "zarr-metadata-garbage": (zarr_metadata_is_a_list, ["not a readable Zarr store"]),
    "zarr-is-a-file": (zarr_is_a_file, ["a Zarr store (.zarr) is a directory"]),
    "npy-is-a-directory": (directory(".npy"), ["is a directory, not an .npy file"]),
    "h5-is-a-directory": (directory(".h5"), ["is a directory, not an HDF5 file"]),
    "nii-gz-is-a-directory": (directory(".nii.gz"), ["is a directory, not a NIfTI file"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_upsample_refuses_in_one_line(case, tmp_path, out):
    build, fragments = CASES[case]
    src = build(tmp_path)
    line = refused(upsample_args(src, out), str(src), *fragments)
    assert "Traceback" not in line
    untouched(out)
    if src.is_dir():
        assert src.exists() and any(src.iterdir())  # a user's folder is left alone


@pytest.mark.parametrize(
    "case",
    [
        "h5-external-raw-storage",
        "h5-external-link-only",
        "h5-virtual-dataset",
        "h5-null-dataspace",
        "npy-negative-dim",
        "zarr-zero-chunk-shape",
        "h5-zero-length-axis",
    ],
)
def test_inspect_refuses_in_one_line(case, tmp_path):
    build, fragments = CASES[case]
    src = build(tmp_path)
    refused(["inspect", src], str(src), *fragments)


def test_external_raw_storage_never_reaches_the_output(tmp_path, out):
    src = h5_external_raw(tmp_path)
    refused(upsample_args(src, out, "--json"), "outside the HDF5 file")
    for path in out.iterdir():
        assert b"password" not in path.read_bytes()


def test_external_link_named_with_dataset_is_refused(tmp_path, out):
    source_h5(tmp_path)
    src = h5(
        tmp_path,
        "mixed.h5",
        lambda f: (
            f.create_dataset("own", data=np.ones((4, 4, 4), np.float32)),
            f.__setitem__("far", h5py.ExternalLink("src.h5", "/data")),
        ),
    )
    refused(upsample_args(src, out, "--dataset", "far"), "external link to", "src.h5:/data")
    untouched(out)


# ------------------------------------------------------------------------- no hangs: child processes
def test_a_fifo_named_npy_is_refused_at_once(tmp_path, out):
    fifo = tmp_path / "x.npy"
    os.mkfifo(fifo)
    res = cli(*upsample_args(fifo, out), timeout=60)
    assert res.code == 2, res
    one_error_line(res.lines, str(fifo), "is a FIFO (named pipe), not an .npy file")
    untouched(out)


def test_a_fifo_inside_a_zarr_store_is_refused_at_once(tmp_path, out):
    src = zarr_store(tmp_path)
    (src / "zarr.json").unlink()
    os.mkfifo(src / "zarr.json")
    res = cli("inspect", src, timeout=60)
    assert res.code == 2, res
    one_error_line(res.lines, "metadata file zarr.json is a FIFO")


def test_a_socket_named_h5_is_refused(tmp_path, out):
    path = tmp_path / "s.h5"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(path))
        refused(upsample_args(path, out), "is a socket, not an HDF5 file")
    finally:
        sock.close()
    untouched(out)


# ------------------------------------------------------------------------- the reader, allowed data
def test_allow_external_reads_what_the_file_points_to(tmp_path):
    for build in (h5_external_link, h5_virtual):
        folder = tmp_path / build.__name__
        folder.mkdir()
        reader = open_reader(build(folder), allow_external=True)
        assert np.array_equal(reader.read((slice(None),) * 3), np.arange(512, dtype=np.float32).reshape(8, 8, 8))
        reader.close()
    reader = open_reader(h5_external_raw(tmp_path), allow_external=True)
    assert reader.read((slice(None),) * 3).tobytes() == (tmp_path / "secret.txt").read_bytes()[:64]
    reader.close()


def test_allowed_virtual_dataset_with_a_missing_source_names_it(tmp_path):
    path = h5_virtual(tmp_path, source="gone.h5")
    with pytest.raises(InputError, match="virtual source file gone.h5 is missing"):
        open_reader(path, allow_external=True)


def test_zarr_missing_chunks_are_counted_once_each(tmp_path):
    path = zarr_store(tmp_path)
    shutil.rmtree(path / "c" / "1")  # the 4 chunks with depth index 1
    reader = open_reader(path)
    assert reader.missing_chunks == 0
    top = reader.read((slice(0, 8), slice(None), slice(None)))
    assert reader.missing_chunks == 0 and top.min() > 0
    bottom = reader.read((slice(4, 16), slice(None), slice(None)))
    assert reader.missing_chunks == 4 and (bottom[4:] == 0).all() and (bottom[:4] > 0).all()
    reader.read((slice(8, 16), slice(0, 8), slice(None)))  # met again: not counted twice
    assert reader.missing_chunks == 4


def test_hdf5_unwritten_chunks_are_counted(tmp_path):
    def build(f: h5py.File) -> None:
        ds = f.create_dataset("data", shape=(16, 16, 16), dtype="f4", chunks=(8, 8, 8))
        ds[:8] = 1

    reader = open_reader(h5(tmp_path, "sparse.h5", build))
    reader.read((slice(None),) * 3)
    reader.read((slice(None),) * 3)
    assert reader.missing_chunks == 4
    reader.close()


def test_formats_without_chunks_report_zero_missing(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((4, 4, 4), np.float32))
    reader = open_reader(tmp_path / "x.npy")
    reader.read((slice(None),) * 3)
    assert reader.missing_chunks == 0


def test_zero_length_axes_are_refused_for_every_format_at_open(tmp_path):
    for src in (npy_zero_axis(tmp_path), h5_zero_axis(tmp_path)):
        with pytest.raises(InputError, match="length 0 on axis"):
            open_reader(src)
    store = tmp_path / "z.zarr"
    zarr.create_array(str(store), shape=(0, 4, 4), dtype="f4", chunks=(1, 4, 4))
    with pytest.raises(InputError, match="length 0 on axis 0"):
        open_reader(store)


if sys.platform != "linux":  # pragma: no cover - FIFOs, sockets and tmpfs are what the cases are about
    pytestmark = pytest.mark.skip("Linux only")


def test_npy_cut_short_while_open_is_an_error_not_a_sigbus(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.ones((64, 64, 64), np.float32))
    script = f"""
import os
from deconv3d_cli.io import open_reader
from deconv3d_cli import InputError
r = open_reader({str(path)!r})
os.truncate({str(path)!r}, 4096)  # another process rewriting the input
try:
    r.read((slice(None),) * 3)
except InputError as exc:
    print(exc)
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, (res.returncode, res.stderr)  # was -7 (SIGBUS)
    assert res.stdout.strip() == f"{path}: the file was truncated while it was being read"


def test_an_input_with_absurd_channels_is_refused_before_weights_are_drawn():
    from deconv3d_cli import LayerSpec, SpecError

    spec = LayerSpec.create(filters=64, kernel_size=8, strides=2)
    with pytest.raises(SpecError, match="field 'in_channels': 100000 is over the limit of 65536"):
        spec.materialise(100_000)
    with pytest.raises(SpecError, match="weights, over the limit"):
        spec.materialise(60_000)


def test_hdf5_missing_chunks_in_many_small_chunks_match_a_brute_force_count(tmp_path):
    # 24^3 in 1x2x3 chunks: 12 x 12 x 8 = 1152 chunks, a scattered third of them never written
    rng = np.random.default_rng(7)
    written = rng.random((24, 12, 8)) < 0.66

    def build(f: h5py.File) -> None:
        ds = f.create_dataset("data", shape=(24, 24, 24), dtype="u1", chunks=(1, 2, 3))
        for k in zip(*np.nonzero(written)):
            ds[k[0], 2 * k[1] : 2 * k[1] + 2, 3 * k[2] : 3 * k[2] + 3] = 1

    reader = open_reader(h5(tmp_path, "many.h5", build))
    boxes = [(slice(0, 5), slice(3, 17), slice(0, 24)), (slice(4, 24), slice(0, 9), slice(10, 11))]
    seen = np.zeros_like(written)
    for box in boxes:
        reader.read(box)
        seen[box[0], box[1].start // 2 : -(-box[1].stop // 2), box[2].start // 3 : -(-box[2].stop // 3)] = True
        assert reader.missing_chunks == int(np.count_nonzero(seen & ~written))
    reader.close()


def test_hdf5_input_truncated_while_read_is_refused_not_read_as_zeros(tmp_path):
    path = tmp_path / "cut.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.arange(32 * 32 * 32, dtype=np.float32).reshape(32, 32, 32) + 1)
    reader = open_reader(path)
    first = reader.read((slice(0, 16), slice(None), slice(None)))
    assert first.min() > 0
    os.truncate(path, path.stat().st_size // 2)  # another process cuts the file short mid-run
    with pytest.raises(InputError, match="truncated while it was being read"):
        reader.read((slice(16, 32), slice(None), slice(None)))
    reader.close()
