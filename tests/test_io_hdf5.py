"""HDF5 reader and writer, on their own and end to end through the `deconv3d upsample` command."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import reference

from deconv3d_cli import InputError, LayerSpec
from deconv3d_cli.cli import main
from deconv3d_cli.geometry.layout import Layout
from deconv3d_cli.io import VolumeMeta, create_writer, open_reader, output_chunks
from deconv3d_cli.io import hdf5 as h5io

RNG = np.random.default_rng(7)


def make_h5(path: Path, datasets: dict[str, np.ndarray], attrs: dict[str, dict] | None = None) -> Path:
    """A file with the given datasets; `attrs` maps an object path (dataset or group) to attributes."""
    with h5py.File(path, "w") as f:
        for name, data in datasets.items():
            f.create_dataset(name, data=data)
        for name, values in (attrs or {}).items():
            obj = f.require_group(name) if name not in f else f[name]
            obj.attrs.update(values)
    return path


def vol(shape=(6, 7, 8), dtype="float32") -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


# ------------------------------------------------------------------------------------------- reader


def test_reader_picks_the_only_dataset_in_nested_groups(tmp_path):
    x = vol()
    path = make_h5(tmp_path / "in.h5", {"scan/raw/volume": x})
    r = open_reader(path)
    try:
        assert (r.format, r.dataset, r.shape, r.dtype) == ("hdf5", "/scan/raw/volume", x.shape, np.float32)
        box = (slice(1, 4), slice(0, 7), slice(2, 5))
        got = r.read(box)
        assert isinstance(got, np.ndarray) and np.array_equal(got, x[box])
        assert r.meta.spacing is None and r.meta.affine is None
    finally:
        r.close()


def test_reader_picks_the_only_volume_beside_small_datasets(tmp_path):
    x = vol()
    path = make_h5(tmp_path / "in.h5", {"volume": x, "labels": np.arange(3), "note": np.array(b"hi")})
    r = open_reader(path)
    assert r.dataset == "/volume" and np.array_equal(r.read((slice(None),) * 3), x)
    r.close()


def test_reader_dataset_choice(tmp_path):
    a, b = vol(), vol((4, 5, 6, 2), "int16")
    path = make_h5(tmp_path / "in.h5", {"a": a, "g/b": b})
    r = open_reader(path, "/g/b")
    assert r.shape == (4, 5, 6, 2) and r.dtype == np.int16 and np.array_equal(r.read((slice(None),) * 4), b)
    r.close()
    r = open_reader(path, "a")
    assert np.array_equal(r.read((slice(None),) * 3), a)
    r.close()


def test_several_datasets_are_listed_with_shapes(tmp_path):
    path = make_h5(tmp_path / "in.h5", {"a": vol(), "g/b": vol((4, 5, 6))})
    with pytest.raises(InputError) as err:
        open_reader(path)
    text = str(err.value)
    assert str(path) in text and "--dataset" in text
    assert "/a (6, 7, 8) float32" in text and "/g/b (4, 5, 6) float32" in text


def test_missing_dataset_lists_the_available_ones(tmp_path):
    path = make_h5(tmp_path / "in.h5", {"a": vol(), "g/b": vol((4, 5, 6))})
    with pytest.raises(InputError, match=r"no dataset 'nope'; available: /a \(6, 7, 8\).*/g/b") as err:
        open_reader(path, "nope")
    assert err.value.param == "dataset"
    with pytest.raises(InputError, match=r"'g' is a group, not a dataset; datasets: /g/b \(4, 5, 6\)"):
        open_reader(path, "g")


def test_non_numeric_dataset_refused(tmp_path):
    path = make_h5(tmp_path / "in.h5", {"names": np.array([b"a", b"b", b"c"])})
    with pytest.raises(InputError, match="not numeric"):
        open_reader(path)


def test_empty_file_refused(tmp_path):
    path = make_h5(tmp_path / "in.h5", {})
    with pytest.raises(InputError, match="holds no datasets"):
        open_reader(path)


def test_corrupt_files_give_one_clear_error(tmp_path):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file at all" * 50)
    with pytest.raises(InputError, match="not a readable HDF5 file") as err:
        open_reader(garbage)
    assert str(garbage) in str(err.value)

    good = make_h5(tmp_path / "good.h5", {"a": vol((20, 20, 20))})
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(InputError) as err:
        r = open_reader(cut)
        r.read((slice(None),) * 3)
    assert str(cut) in str(err.value)


def test_big_endian_is_read_in_native_order(tmp_path):
    x = vol().astype(">f4")
    r = open_reader(make_h5(tmp_path / "in.h5", {"a": x}))
    got = r.read((slice(None),) * 3)
    assert r.dtype == np.float32 and got.dtype.isnative and np.array_equal(got, x)
    r.close()


def test_spacing_on_the_dataset(tmp_path):
    path = make_h5(tmp_path / "in.h5", {"a": vol()}, {"a": {"element_size_um": [2.0, 0.5, 0.25], "units": "um"}})
    r = open_reader(path)
    assert r.meta.spacing == (2.0, 0.5, 0.25)
    assert r.meta.attrs["units"] == "um" and list(r.meta.attrs["element_size_um"]) == [2.0, 0.5, 0.25]
    r.close()


def test_spacing_on_a_parent_group(tmp_path):
    path = make_h5(tmp_path / "in.h5", {"g/h/a": vol()}, {"g": {"voxel_size": [3, 2, 1]}, "/": {"spacing": [9, 9, 9]}})
    r = open_reader(path)
    assert r.meta.spacing == (3.0, 2.0, 1.0)
    assert list(r.meta.attrs["voxel_size"]) == [3, 2, 1]  # carried so the output dataset keeps it
    r.close()


@pytest.mark.parametrize(
    "shape, value, spacing",
    [
        ((6, 7, 8), 0.5, (0.5, 0.5, 0.5)),
        ((6, 7, 8, 2), [4.0, 3.0, 2.0, 1.0], (4.0, 3.0, 2.0)),
        ((2, 6, 7, 8, 1), [1.0, 4.0, 3.0, 2.0, 1.0], (4.0, 3.0, 2.0)),
        ((6, 7, 8), [1.0, 2.0], None),
        ((6, 7, 8), [1.0, 0.0, 2.0], None),
    ],
)
def test_spacing_forms(tmp_path, shape, value, spacing):
    r = open_reader(make_h5(tmp_path / "in.h5", {"a": vol(shape)}, {"a": {"resolution": value}}))
    assert r.meta.spacing == spacing
    r.close()


def test_attributes_copied_and_references_skipped(tmp_path):
    path = make_h5(tmp_path / "in.h5", {"a": vol(), "b": np.arange(3)}, {"a": {"n": 3, "names": ["x", "yy"]}})
    with h5py.File(path, "r+") as f:
        f["a"].attrs["link"] = f["b"].ref
        f["a"].attrs["affine"] = np.diag([2.0, 2.0, 2.0, 1.0])
    r = open_reader(path, "a")
    assert set(r.meta.attrs) == {"n", "names", "affine"}
    assert np.array_equal(r.meta.affine, np.diag([2.0, 2.0, 2.0, 1.0]))
    r.close()


# ------------------------------------------------------------------------------------------- writer


def write_all(path, x, meta=None, **options):
    w = create_writer(path, "hdf5", x.shape, x.dtype, meta or VolumeMeta(), **options)
    half = x.shape[0] // 2
    w.write((slice(0, half),), x[:half])
    w.flush()
    w.write((slice(half, None),), x[half:])
    w.close()
    return w


def test_writer_round_trip_compressed_and_chunked(tmp_path):
    x = vol((20, 18, 16, 2))
    path = tmp_path / "out.h5"
    w = write_all(path, x, compression_level=6, chunks=(8, 4, 16))
    assert w.chunks == (8, 4, 16, 2)
    with h5py.File(path, "r") as f:
        ds = f["data"]
        assert np.array_equal(ds[()], x) and ds.dtype == np.float32
        assert ds.chunks == (8, 4, 16, 2)
        assert (ds.compression, ds.compression_opts, ds.shuffle) == ("gzip", 6, True)


def test_writer_uncompressed_and_named_dataset(tmp_path):
    x = vol().astype(np.int16)
    path = tmp_path / "out.h5"
    write_all(path, x, compression_level=0, dataset="/results/up")
    with h5py.File(path, "r") as f:
        ds = f["results/up"]
        assert np.array_equal(ds[()], x) and ds.compression is None and not ds.shuffle and ds.chunks is not None
    with pytest.raises(InputError, match="0 \\(none\\) to 9"):
        create_writer(tmp_path / "bad.h5", "hdf5", x.shape, x.dtype, VolumeMeta(), compression_level=10)


def test_default_chunks_about_one_mib():
    assert output_chunks("hdf5", (200, 200, 200), "float32", Layout(3), {}) == (64, 64, 64)
    assert output_chunks("hdf5", (200, 200, 200), "float64", Layout(3), {}) == (32, 64, 64)
    assert output_chunks("hdf5", (10, 300, 5), "float32", Layout(3), {}) == (10, 64, 5)
    # channels whole, batch one entry; 8 channels of float32 leave 32K voxels
    assert output_chunks("hdf5", (3, 100, 100, 100, 8), "float32", Layout(5), {}) == (1, 32, 32, 32, 8)
    assert output_chunks("hdf5", (8, 100, 100, 100), "float32", Layout(4, "channels_first"), {}) == (8, 32, 32, 32)
    for shape in [(1, 1, 1), (300, 2, 7), (2, 5, 9, 3, 4)]:
        chunks = output_chunks("hdf5", shape, "uint8", Layout(len(shape)), {})
        assert len(chunks) == len(shape) and all(1 <= c <= n for c, n in zip(chunks, shape))


def test_asked_chunks_expanded_and_clipped():
    opts = {"chunks": (16, 16, 100)}
    assert output_chunks("hdf5", (40, 40, 40, 3), "float32", Layout(4), opts) == (16, 16, 40, 3)
    assert output_chunks("hdf5", (2, 3, 40, 40, 40), "float32", Layout(5, "channels_first"), opts) == (1, 3, 16, 16, 40)
    with pytest.raises(InputError, match="three positive integers"):
        output_chunks("hdf5", (40, 40, 40), "float32", Layout(3), {"chunks": (0, 4, 4)})


def test_writer_chunks_follow_the_layout_it_is_given(tmp_path):
    x = vol((3, 20, 20, 20))
    w = write_all(tmp_path / "out.h5", x, chunks=(8, 8, 8), layout=Layout(4, "channels_first"))
    assert w.chunks == (3, 8, 8, 8)


def test_writer_copies_attrs_and_scales_spacing(tmp_path):
    attrs = {
        "element_size_um": np.array([2.0, 1.0, 1.0, 7.0], np.float32),  # a 4-D, channels_last form
        "voxel_size": [2, 1, 1],
        "resolution": 1.0,
        "units": "um",
        "names": np.array(["a", "bb"]),
        "count": np.int64(3),
    }
    meta = VolumeMeta(spacing=(1.0, 0.5, 0.5), attrs=attrs, affine=np.eye(4) * 0.5)
    path = tmp_path / "out.h5"
    write_all(path, vol((6, 8, 8, 2)), meta)
    with h5py.File(path, "r") as f:
        a = f["data"].attrs
        assert a["element_size_um"].dtype == np.float32 and list(a["element_size_um"]) == [1.0, 0.5, 0.5, 7.0]
        assert list(a["voxel_size"]) == [1.0, 0.5, 0.5]
        assert list(a["resolution"]) == [1.0, 0.5, 0.5]  # no longer isotropic
        assert a["units"] == "um" and list(a["names"]) == ["a", "bb"] and a["count"] == 3
        assert np.array_equal(a["affine"], np.eye(4) * 0.5) and a["affine"].dtype == np.float64
        assert "spacing" not in a


def test_writer_adds_spacing_when_input_had_no_attribute(tmp_path):
    path = tmp_path / "out.h5"
    write_all(path, vol(), VolumeMeta(spacing=(1.5, 1.0, 0.5)))
    with h5py.File(path, "r") as f:
        assert list(f["data"].attrs["spacing"]) == [1.5, 1.0, 0.5]


def test_writer_resume_reopens(tmp_path):
    x = vol((10, 6, 6))
    path = tmp_path / "out.h5"
    w = create_writer(path, "hdf5", x.shape, x.dtype, VolumeMeta(attrs={"k": 1}), dataset="d", chunks=(5, 6, 6))
    w.write((slice(0, 5),), x[:5])
    w.flush()
    w.close()
    w = create_writer(path, "hdf5", x.shape, x.dtype, VolumeMeta(), resume=True, dataset="d")
    assert w.chunks == (5, 6, 6)
    w.write((slice(5, 10),), x[5:])
    w.close()
    with h5py.File(path, "r") as f:
        assert np.array_equal(f["d"][()], x) and f["d"].attrs["k"] == 1
    with pytest.raises(InputError, match="expected \\(10, 6, 7\\)"):
        create_writer(path, "hdf5", (10, 6, 7), x.dtype, VolumeMeta(), resume=True, dataset="d")
    with pytest.raises(InputError, match="no such dataset"):
        create_writer(path, "hdf5", x.shape, x.dtype, VolumeMeta(), resume=True)
    (tmp_path / "junk.h5").write_bytes(b"junk" * 100)
    with pytest.raises(InputError, match="without --resume"):
        create_writer(tmp_path / "junk.h5", "hdf5", x.shape, x.dtype, VolumeMeta(), resume=True)


# ------------------------------------------------------------------------------------ command line


def save_spec(tmp_path, in_channels=1, filters=2, kernel_size=3, strides=(2, 2, 1)) -> tuple[Path, LayerSpec]:
    ks = (kernel_size,) * 3
    kernel = RNG.standard_normal((*ks, filters, in_channels)).astype(np.float32)
    bias = RNG.standard_normal(filters).astype(np.float32)
    spec = LayerSpec.create(filters=filters, kernel_size=ks, strides=strides, padding="same", kernel=kernel, bias=bias)
    return spec.save(tmp_path / "layer.yaml"), spec


def upsample(*args: str) -> dict:
    result = CliRunner().invoke(main, ["upsample", *args, "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_cli_h5_to_h5_tiled_equals_whole_array(tmp_path):
    x = vol((24, 20, 18))
    spacing = np.array([2.0, 1.0, 0.8])
    src = make_h5(
        tmp_path / "in.h5",
        {"scan/raw": x, "scan/mask_sum": np.arange(4)},
        {"scan": {"element_size_um": spacing}, "scan/raw": {"origin": "scanner"}},
    )
    spec_path, spec = save_spec(tmp_path)
    out = tmp_path / "out.h5"
    report = upsample(
        str(src),
        "-o",
        str(out),
        "--spec",
        str(spec_path),
        "--memory-limit",
        "2MiB",
        "--chunks",
        "16,16,16",
        "--compression-level",
        "1",
    )
    assert report["tiles"] > 1
    want = reference(spec, x)
    with h5py.File(out, "r") as f:
        ds = f["data"]
        assert ds.shape == want.shape == (48, 40, 18, 2)
        assert ds.chunks == (16, 16, 16, 2) and ds.compression == "gzip" and ds.compression_opts == 1
        np.testing.assert_allclose(ds[()], want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
        np.testing.assert_allclose(ds.attrs["element_size_um"], spacing / np.array(spec.strides))
        assert ds.attrs["origin"] == "scanner"
    assert not list(tmp_path.glob(".partial-*"))


def test_cli_default_chunks_and_small_memory_limit(tmp_path):
    x = vol((12, 10, 8))
    src = make_h5(tmp_path / "in.h5", {"v": x})
    spec_path, spec = save_spec(tmp_path, filters=1, kernel_size=2, strides=2)
    out = tmp_path / "out.h5"
    upsample(str(src), "-o", str(out), "--spec", str(spec_path), "--memory-limit", "2MiB")
    want = reference(spec, x)
    with h5py.File(out, "r") as f:
        assert f["data"].chunks == (24, 20, 16) and f["data"].compression_opts == 1
        np.testing.assert_allclose(f["data"][()], want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_cli_npy_to_h5_with_output_dataset(tmp_path):
    x = vol((10, 12, 9, 3))
    np.save(tmp_path / "in.npy", x)
    spec_path, spec = save_spec(tmp_path, in_channels=3, filters=2, strides=(1, 2, 3))
    out = tmp_path / "out.hdf5"
    upsample(
        str(tmp_path / "in.npy"),
        "-o",
        str(out),
        "--spec",
        str(spec_path),
        "--output-dataset",
        "up/x",
        "--compression-level",
        "0",
        "--tile",
        "4,8,9",
    )
    want = reference(spec, x)
    with h5py.File(out, "r") as f:
        ds = f["up/x"]
        assert ds.shape == want.shape == (10, 24, 27, 2) and ds.compression is None
        np.testing.assert_allclose(ds[()], want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
        assert "spacing" not in ds.attrs and "element_size_um" not in ds.attrs


def test_cli_h5_to_npy_and_dataset_errors(tmp_path):
    x = vol((8, 8, 8))
    src = make_h5(tmp_path / "in.h5", {"a": x, "b": x + 1})
    spec_path, spec = save_spec(tmp_path, filters=1)
    out = tmp_path / "out.npy"
    result = CliRunner().invoke(main, ["upsample", str(src), "-o", str(out), "--spec", str(spec_path)])
    assert result.exit_code == 2 and "/a (8, 8, 8) float32" in result.output and "--dataset" in result.output
    upsample(str(src), "-o", str(out), "--spec", str(spec_path), "--dataset", "b")
    want = reference(spec, x + 1)
    np.testing.assert_allclose(np.load(out), want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_output_chunks_module_level_is_the_writers_choice():
    assert h5io.output_chunks((100, 100, 100), np.dtype("float32"), Layout(3), {"chunks": 8}) == (8, 8, 8)


def test_cli_channels_first_chunks_match_the_plan(tmp_path):
    x = vol((2, 12, 12, 12))
    src = make_h5(tmp_path / "in.h5", {"v": x})
    kernel = RNG.standard_normal((3, 3, 3, 3, 2)).astype(np.float32)
    spec = LayerSpec.create(
        filters=3,
        kernel_size=3,
        strides=2,
        padding="same",
        data_format="channels_first",
        kernel=kernel,
        bias=np.zeros(3),
    )
    spec_path = spec.save(tmp_path / "cf.yaml")
    out = tmp_path / "out.h5"
    upsample(str(src), "-o", str(out), "--spec", str(spec_path), "--chunks", "8,8,8")
    with h5py.File(out, "r") as f:
        assert f["data"].chunks == (3, 8, 8, 8)


@pytest.mark.parametrize("shape, chunks", [((40, 70, 90), (16, 32, 32)), ((33, 17, 65, 2), (8, 8, 16, 2))])
def test_chunks_deflated_on_threads_read_back_exactly(tmp_path, shape, chunks):
    """Boxes on chunk boundaries go through the threaded encoder (edge chunks padded); others through h5py."""
    from deconv3d_cli.io.hdf5_chunks import ChunkEncoder

    x = (np.random.default_rng(5).standard_normal(shape) * 50).astype(np.float32)
    w = create_writer(tmp_path / "o.h5", "hdf5", shape, np.float32, VolumeMeta(), compression_level=3, chunks=chunks)
    assert w._encoder is not None or len(__import__("os").sched_getaffinity(0)) < 2
    step = chunks[0] * 2
    for z in range(0, shape[0], step):  # whole-chunk slabs, the last one ending at the dataset's end
        w.write((slice(z, min(z + step, shape[0])),), x[z : z + step])
    w.write((slice(3, 5), slice(1, 4)), np.full((2, 3, *shape[2:]), 7.0, np.float32))  # not on chunk edges
    x[3:5, 1:4] = 7.0
    w.close()
    with h5py.File(tmp_path / "o.h5") as f:
        ds = f["data"]
        assert ds.compression == "gzip" and ds.shuffle and ds.chunks == chunks
        assert np.array_equal(ds[...], x)
    encoder = ChunkEncoder.of(h5py.File(tmp_path / "o.h5")["data"], 2)
    assert encoder is not None and encoder.covers((slice(0, chunks[0]),) * 1 + (slice(None),) * (len(shape) - 1))
    encoder.close()


def test_threaded_chunk_writes_while_other_threads_read_and_flush_read_back_exactly(tmp_path):
    """As in a run: the reader thread reads a gzipped input (h5py releases the GIL inside H5Dread, holding
    its library lock) and the sync thread flushes the output while the writer thread stores chunks. The
    chunk writes hold that lock too (h5py's write_direct_chunk takes none), so HDF5, which is not
    thread-safe, never runs two calls at once (io/hdf5_chunks.py says what was seen without it)."""
    import threading

    with h5py.File(tmp_path / "in.h5", "w") as f:
        f.create_dataset("data", data=np.random.default_rng(7).standard_normal((64, 64, 64)).astype(np.float32),
                         chunks=(16, 64, 64), compression="gzip", compression_opts=6)  # fmt: skip
    shape, chunks = (96, 64, 64), (4, 64, 64)
    x = (np.random.default_rng(6).standard_normal(shape) * 50).astype(np.float32)
    w = create_writer(tmp_path / "o.h5", "hdf5", shape, np.float32, VolumeMeta(), compression_level=1, chunks=chunks)
    done = threading.Event()
    source = h5py.File(tmp_path / "in.h5", "r")

    def reader() -> None:
        while not done.is_set():
            source["data"][...]

    def flusher() -> None:
        while not done.is_set():
            w.flush()

    others = [threading.Thread(target=reader), threading.Thread(target=flusher)]
    for t in others:
        t.start()
    try:
        for _ in range(3):
            for z in range(0, shape[0], 16):  # 1 MiB boxes: the threaded encoder's path
                w.write((slice(z, z + 16),), x[z : z + 16])
    finally:
        done.set()
        for t in others:
            t.join()
        source.close()
    w.close()
    with h5py.File(tmp_path / "o.h5") as f:
        assert np.array_equal(f["data"][...], x)
