"""Zarr stores (v2 and v3): reading, chunk-aligned writing, OME-NGFF geometry, atomic directory outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

zarr = pytest.importorskip("zarr", minversion="3")

import helpers  # noqa: E402
from helpers import options as Options  # noqa: E402
from helpers import random_spec, reference  # noqa: E402

from deconv3d_cli import InputError, LayerSpec  # noqa: E402
from deconv3d_cli.cli import main  # noqa: E402
from deconv3d_cli.io import VolumeMeta, create_writer, format_of, open_reader  # noqa: E402
from deconv3d_cli.io import zarr as zio  # noqa: E402
from deconv3d_cli.io.atomic import journal_path, partial_path  # noqa: E402
from deconv3d_cli.run.job import prepare  # noqa: E402
from deconv3d_cli.run.local import execute, run_job  # noqa: E402

RNG = np.random.default_rng(11)


def make_spec(rng: np.random.Generator, in_ch: int = 1, **hyper) -> LayerSpec:
    return random_spec(rng, in_ch, **hyper)


def assert_close(a: np.ndarray, b: np.ndarray, rel: float = 1e-5) -> None:
    helpers.assert_close(a, b, rel)


def crop(i: int, k: int, s: int, padding: str) -> int:
    """SEMANTICS.md's crop offset, written out here (no dilation, no output padding)."""
    if padding == "valid":
        return 0
    return max((i - 1) * s + k - i * s, 0) // 2


def forced_run(spec: LayerSpec, src: Path, dst: Path, opts: Options, path: str) -> dict:
    """A single-process run with the engine formulation fixed (runs choose theirs by timing)."""
    from deconv3d_cli.engine import Engine

    job = prepare(spec, src, dst, opts)
    return execute(job, Engine(job.spec, job.in_layout.channels(job.reader.shape), "cpu", "fp32", path=path), opts)


def load(path: Path, array: str = "0") -> np.ndarray:
    return zarr.open_group(str(path), mode="r")[array][:]


def ngff(path: Path) -> dict:
    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    return attrs["ome"]["multiscales"][0] if "ome" in attrs else attrs["multiscales"][0]


def make_ngff(path: Path, data: np.ndarray, axes: list, transforms: list, fmt: int, outer: list | None = None) -> Path:
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    root.create_array("s0", data=data, chunks=tuple(min(n, 5) for n in data.shape))
    ms = {"axes": axes, "datasets": [{"path": "s0", "coordinateTransformations": transforms}], "name": "img"}
    if outer:
        ms["coordinateTransformations"] = outer
    if fmt == 2:
        root.attrs.update({"multiscales": [{"version": "0.4", **ms}], "lab": "kept"})
    else:
        root.attrs.update({"ome": {"version": "0.5", "multiscales": [ms]}, "lab": "kept"})
    return path


# ------------------------------------------------------------------------------------------- io


@pytest.mark.parametrize("fmt", [2, 3])
def test_writer_and_reader_round_trip(tmp_path, fmt):
    x = RNG.standard_normal((9, 7, 6, 2)).astype(np.float32)
    path = tmp_path / "out.zarr"
    assert format_of(path) == "zarr" and format_of(str(path) + "/") == "zarr"
    w = create_writer(path, "zarr", x.shape, x.dtype, VolumeMeta(), chunks=(4, 4, 4), zarr_format=fmt)
    assert w.chunks == (4, 4, 4, 2)
    for d in range(0, 9, 4):
        w.write((slice(d, d + 4), slice(None), slice(None), slice(None)), x[d : d + 4])
    w.flush()
    w.close()
    r = open_reader(path)
    try:
        assert (r.format, r.shape, r.dtype, r.chunks, r.dataset) == ("zarr", x.shape, np.float32, (4, 4, 4, 2), "/0")
        box = (slice(1, 8), slice(2, 5), slice(0, 6), slice(None))
        assert np.array_equal(r.read(box), x[box])
        assert zarr.open_group(str(path), mode="r").metadata.zarr_format == fmt
    finally:
        r.close()
    # channels_last with channels is not an NGFF axis order: plain attributes instead
    assert "multiscales" not in json.dumps(dict(zarr.open_group(str(path), mode="r").attrs))


def test_reader_picks_arrays_and_refuses_what_it_cannot_read(tmp_path, monkeypatch):
    root = zarr.open_group(str(tmp_path / "two.zarr"), mode="w")
    root.create_array("a", data=np.zeros((4, 4, 4), np.float32))
    root.create_array("b/c", data=np.ones((3, 4, 5), np.int16))
    with pytest.raises(InputError, match="pass --dataset"):
        open_reader(tmp_path / "two.zarr")
    r = open_reader(tmp_path / "two.zarr", "/b/c")
    assert r.shape == (3, 4, 5) and r.dtype == np.int16 and r.read((slice(None),) * 3).sum() == 60
    with pytest.raises(InputError, match="no array 'x'"):
        open_reader(tmp_path / "two.zarr", "x")
    zarr.open_array(str(tmp_path / "one.zarr"), mode="w", shape=(5, 5, 5), dtype="f4")
    assert open_reader(tmp_path / "one.zarr").shape == (5, 5, 5)
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(InputError, match="not a readable Zarr"):
        open_reader(tmp_path / "empty.zarr")
    monkeypatch.setitem(sys.modules, "zarr", None)
    with pytest.raises(InputError, match=r"pip install 'deconv3d-cli\[dask\]'"):
        open_reader(tmp_path / "one.zarr")


# --------------------------------------------------------------------------------- pipeline


@pytest.mark.parametrize("fmt", [2, 3])
def test_tiled_zarr_output_equals_npy_output_and_tiles_align_to_chunks(tmp_path, fmt):
    spec = make_spec(RNG, in_ch=2, filters=3, kernel_size=(3, 4, 2), strides=(2, 2, 1))
    x = RNG.standard_normal((21, 17, 15, 2)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    opts = Options(progress=False, memory_limit=900 << 10, writer_options={"chunks": (8, 8, 6), "zarr_format": fmt})
    engines: dict = {}
    job = prepare(spec, tmp_path / "in.npy", tmp_path / "out.zarr", opts)
    job.reader.close()
    tiles, out = job.plan.tile_shape, job.plan.out_shape
    assert len(job.plan) > 1 and all(t % c == 0 or t == n for t, c, n in zip(tiles, (8, 8, 6), out))
    report = run_job(spec, tmp_path / "in.npy", tmp_path / "out.zarr", opts, engines)
    # The same tiles (an .npy plan would cut slabs), so the two writers get bit-identical data.
    npy_opts = Options(progress=False, memory_limit=900 << 10, tile=tiles)
    run_job(spec, tmp_path / "in.npy", tmp_path / "out.npy", npy_opts, engines)
    assert report["tiles"] == len(job.plan)
    assert np.array_equal(load(tmp_path / "out.zarr"), np.load(tmp_path / "out.npy"))
    assert_close(load(tmp_path / "out.zarr"), reference(spec, x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy", "out.npy", "out.zarr"]
    assert not [n for _, _, files in os.walk(tmp_path / "out.zarr") for n in files if n.endswith(".partial")]


@pytest.mark.parametrize("fmt", [2, 3])
def test_ngff_axes_and_geometry_follow_semantics(tmp_path, fmt):
    """(c, z, y, x) is read channels_first; scale divides by the strides, translation moves by the crop."""
    x = RNG.standard_normal((2, 8, 9, 7)).astype(np.float32)
    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    scale, shift = [1.0, 2.0, 0.5, 0.25], [0.0, 10.0, -3.0, 1.5]
    outer = [{"type": "scale", "scale": [1.0, 1.0, 2.0, 1.0]}] if fmt == 2 else None  # applied after
    transforms = [{"type": "scale", "scale": scale}, {"type": "translation", "translation": shift}]
    src = make_ngff(tmp_path / "in.zarr", x, axes, transforms, fmt, outer)
    k, s = (3, 4, 2), (2, 2, 1)
    spec = make_spec(RNG, in_ch=2, filters=3, kernel_size=k, strides=s, padding="same")  # channels_last spec
    r = open_reader(src)
    assert r.data_format == "channels_first" and r.dataset == "/s0"
    r.close()
    run_job(spec, src, tmp_path / "out.zarr", Options(progress=False, memory_limit=2 << 20))
    y = load(tmp_path / "out.zarr")
    assert_close(y, reference(spec, x, data_format="channels_first"))
    ms = ngff(tmp_path / "out.zarr")
    assert ms["axes"] == axes and ms["name"] == "img" and ms["datasets"][0]["path"] == "0"
    after = outer[0]["scale"] if outer else [1.0] * 4
    world_scale = [a * b for a, b in zip(scale, after)]
    world_shift = [a * b for a, b in zip(shift, after)]
    want_scale, want_shift = [1.0], [0.0]
    for a in range(3):
        i, sc, t = x.shape[a + 1], world_scale[a + 1], world_shift[a + 1]
        want_scale.append(sc / s[a])
        want_shift.append(t + sc * (crop(i, k[a], s[a], "same") - (k[a] - 1) / 2) / s[a])
    ts = {t["type"]: t[t["type"]] for t in ms["datasets"][0]["coordinateTransformations"]}
    np.testing.assert_allclose(ts["scale"], want_scale, rtol=1e-12)
    np.testing.assert_allclose(ts["translation"], want_shift, rtol=1e-12)
    root = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert root.attrs["lab"] == "kept" and root.metadata.zarr_format == fmt
    if fmt == 3:
        assert list(root["0"].metadata.dimension_names) == ["c", "z", "y", "x"]


def test_time_axis_without_channels_is_refused(tmp_path):
    axes = [{"name": "t", "type": "time"}] + [{"name": n, "type": "space"} for n in "zyx"]
    src = make_ngff(tmp_path / "t.zarr", np.zeros((2, 4, 4, 4), np.float32), axes, [], 3)
    with pytest.raises(InputError, match="time axis without a channel axis"):
        open_reader(src)


def test_hdf5_and_nifti_geometry_map_into_ngff_and_back(tmp_path):
    import h5py
    import nibabel as nib

    k, s = 4, 2
    spec = make_spec(RNG, in_ch=1, filters=1, kernel_size=k, strides=s, padding="same")
    x = RNG.standard_normal((6, 8, 5)).astype(np.float32)
    shift = [(crop(n, k, s, "same") - (k - 1) / 2) / s for n in x.shape]
    with h5py.File(tmp_path / "in.h5", "w") as f:
        f["data"] = x
        f["data"].attrs["element_size_um"] = [1.0, 2.0, 3.0]
    run_job(spec, tmp_path / "in.h5", tmp_path / "h.zarr", Options(progress=False))
    ms = ngff(tmp_path / "h.zarr")
    ts = {t["type"]: t[t["type"]] for t in ms["datasets"][0]["coordinateTransformations"]}
    assert ts["scale"] == [0.5, 1.0, 1.5] and {a.get("unit") for a in ms["axes"]} == {"micrometer"}
    np.testing.assert_allclose(ts["translation"], [v * sh for v, sh in zip((1.0, 2.0, 3.0), shift)])
    assert list(zarr.open_group(str(tmp_path / "h.zarr"), mode="r")["0"].attrs["element_size_um"]) == [0.5, 1.0, 1.5]

    # NIfTI, axis-aligned: NGFF scale + translation; zarr -> NIfTI gives the composed affine back
    aligned = np.diag([0.9, 1.1, 1.3, 1.0])
    aligned[:3, 3] = [-20.0, 5.0, 7.5]
    nib.Nifti1Image(x, aligned).to_filename(tmp_path / "a.nii")
    run_job(spec, tmp_path / "a.nii", tmp_path / "a.zarr", Options(progress=False))
    ms = ngff(tmp_path / "a.zarr")
    assert [a["name"] for a in ms["axes"]] == ["x", "y", "z"]
    t_out = np.eye(4)
    t_out[[0, 1, 2], [0, 1, 2]] = 1 / s
    t_out[:3, 3] = shift
    want = aligned @ t_out
    ts = {t["type"]: t[t["type"]] for t in ms["datasets"][0]["coordinateTransformations"]}
    np.testing.assert_allclose(ts["scale"], np.diag(want)[:3])
    np.testing.assert_allclose(ts["translation"], want[:3, 3])
    run_job(spec, tmp_path / "a.zarr", tmp_path / "back.nii", Options(progress=False))
    shift2 = [(crop(2 * n, k, s, "same") - (k - 1) / 2) / s for n in x.shape]
    t2 = np.eye(4)
    t2[[0, 1, 2], [0, 1, 2]] = 1 / s
    t2[:3, 3] = shift2
    np.testing.assert_allclose(nib.load(tmp_path / "back.nii").affine, want @ t2, atol=1e-6)

    # NIfTI, oblique: NGFF can only say the voxel size; the affine itself is kept as an attribute
    c, sn = np.cos(0.3), np.sin(0.3)
    oblique = np.array([[c, -sn, 0, 1.0], [sn, c, 0, 2.0], [0, 0, 1.2, 3.0], [0, 0, 0, 1]])
    nib.Nifti1Image(x, oblique).to_filename(tmp_path / "o.nii")
    run_job(spec, tmp_path / "o.nii", tmp_path / "o.zarr", Options(progress=False))
    arr = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["0"]
    np.testing.assert_allclose(np.array(arr.attrs["affine"]), oblique @ t_out, atol=1e-6)
    r = open_reader(tmp_path / "o.zarr")
    np.testing.assert_allclose(r.meta.affine, oblique @ t_out, atol=1e-6)
    r.close()


# ------------------------------------------------------------------------------------ safe output


def test_overwrite_replaces_a_store_and_a_failure_leaves_it_whole(tmp_path, monkeypatch):
    spec = make_spec(RNG, in_ch=1, filters=1)
    x = RNG.standard_normal((12, 12, 12)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    target = tmp_path / "out.zarr"
    target.mkdir()
    (target / "zarr.json").write_text("{}")  # a store of the user's (only stores are ever replaced)
    (target / "marker").write_text("old")
    opts = Options(progress=False, tile=(4, 4, 4), writer_options={"chunks": (4, 4, 4)})
    with pytest.raises(InputError, match="--overwrite"):
        run_job(spec, tmp_path / "in.npy", target, opts)
    from deconv3d_cli import engine as engine_mod

    real, calls = engine_mod.Engine.tile, {"n": 0}

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("device lost")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(engine_mod.Engine, "tile", failing)
    with pytest.raises(RuntimeError, match="device lost"):
        run_job(spec, tmp_path / "in.npy", target, opts.with_(write={"overwrite": True}))
    assert (target / "marker").read_text() == "old"
    assert not partial_path(target).exists() and not journal_path(target).exists()
    monkeypatch.setattr(engine_mod.Engine, "tile", real)
    run_job(spec, tmp_path / "in.npy", target, opts.with_(write={"overwrite": True}))
    assert not (target / "marker").exists()
    assert_close(load(target), reference(spec, x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy", "out.zarr"]


def test_a_folder_that_is_not_a_store_is_never_replaced(tmp_path):
    """--overwrite replaces our own outputs; a folder of the user's at the output's path stays, whole."""
    spec = make_spec(RNG, in_ch=1, filters=1)
    np.save(tmp_path / "in.npy", RNG.standard_normal((6, 6, 6)).astype(np.float32))
    for name in ("out.zarr", "out.npy", "out.h5", "out.nii.gz"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "thesis.tex").write_text("years of work")
        with pytest.raises(InputError, match="never replaced|is a folder"):
            run_job(spec, tmp_path / "in.npy", folder, Options(progress=False, overwrite=True))
        assert (folder / "thesis.tex").read_text() == "years of work"
        assert not partial_path(folder).exists() and not journal_path(folder).exists()


def test_cli_writes_chunked_store_and_inspect_reads_it(tmp_path):
    spec = make_spec(RNG, in_ch=1, filters=1)
    spec_path = spec.save(tmp_path / "layer.yaml")
    x = RNG.standard_normal((10, 12, 9)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    args = ["upsample", str(tmp_path / "in.npy"), "-o", str(tmp_path / "out.zarr"), "--spec", str(spec_path)]
    res = CliRunner().invoke(main, [*args, "--chunks", "8,8,6", "--compression-level", "0", "--output-dataset", "s0"])
    assert res.exit_code == 0, res.output
    assert_close(load(tmp_path / "out.zarr", "s0"), reference(spec, x))
    info = json.loads(CliRunner().invoke(main, ["inspect", str(tmp_path / "out.zarr"), "--json"]).output)
    assert info["format"] == "zarr" and info["chunks"] == [8, 8, 6] and info["dataset"] == "/s0"
    assert info["size_on_disk"] >= 20 * 24 * 18 * 4  # uncompressed
    res = CliRunner().invoke(main, [*args, "--overwrite", "--fourth-axis", "series"])
    assert res.exit_code == 2 and "NIfTI" in res.output


@pytest.mark.slow
def test_sigkill_then_resume_a_zarr_output(tmp_path):
    """The partial store survives a kill -9; --resume finishes it identically to an uninterrupted run."""
    spec = make_spec(np.random.default_rng(5), in_ch=2, filters=4)
    spec_path = spec.save(tmp_path / "layer.yaml")
    x = np.random.default_rng(6).standard_normal((32, 32, 32, 2)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    common = [
        "--spec",
        str(spec_path),
        "--tile",
        "16,16,16",
        "--chunks",
        "16,16,16",
        "--no-progress",
        "--device",
        "cpu",
    ]
    cli = [sys.executable, "-m", "deconv3d_cli", "upsample", str(tmp_path / "in.npy")]
    target = tmp_path / "out.zarr"
    proc = subprocess.Popen([*cli, "-o", str(target), "--checkpoint-every", "0", *common], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if journal_path(target).exists() and journal_path(target).read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.002)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not target.exists() and partial_path(target).is_dir()
    done = subprocess.run([*cli, "-o", str(target), "--resume", "--json", *common], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["resumed_tiles"] > 0
    forced_run(
        spec,
        tmp_path / "in.npy",
        tmp_path / "ref.npy",
        Options(progress=False, tile=(16, 16, 16)),
        report["engine_path"],
    )
    assert np.array_equal(load(target), np.load(tmp_path / "ref.npy"))
    assert not partial_path(target).exists() and not journal_path(target).exists()
    assert zio.sweep(target) == 0
