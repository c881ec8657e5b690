"""The output writers' buffers are part of the memory budget: counted in the plan, bounded in the writers,
and a chunking whose HDF5 bookkeeping alone cannot fit is refused (peak RSS per format: benchmarks/memory_bench.py)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from deconv3d_cli.cli.main import main
from deconv3d_cli.geometry.tiling import Costs, make_plan
from deconv3d_cli.io import buffers, formats, gzip_stream, hdf5_chunks
from deconv3d_cli.layer.presets import make_spec

MIB = 1 << 20


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_tile_bytes_count_the_writer_buffers():
    """Whole tile copies, copies capped at a bound, and fixed bytes: each adds to the estimate."""
    spec = make_spec("trilinear", 2)
    axes = spec.axes((32, 32, 32))
    bare = make_plan(axes, 1, 1, 1, spec.kernel_size, memory_limit=1 << 40, tile_shape=(16, 64, 64))
    written = 16 * 64 * 64 * 4
    for tiles, per_tile, cap, fixed in [(1, 0, 0, 0), (0, 2, 5 * MIB, 0), (0, 2, 100 * MIB, 0), (1, 2, 3 * MIB, 7)]:
        costs = Costs(writer_tiles=tiles, writer_per_tile=per_tile, writer_cap=cap, writer_fixed=fixed)
        plan = make_plan(axes, 1, 1, 1, spec.kernel_size, memory_limit=1 << 40, tile_shape=(16, 64, 64), costs=costs)
        assert plan.tile_bytes() - bare.tile_bytes() == tiles * written + min(cap, per_tile * written) + fixed


@pytest.mark.parametrize("suffix", [".npy", ".h5", ".nii", ".nii.gz", ".zarr"])
def test_the_job_plan_counts_its_writer_and_fits_the_budget(tmp_path, suffix):
    """The plan's costs are the writer's of the output format, and its estimate stays within the budget."""
    from deconv3d_cli.run.job import prepare
    from deconv3d_cli.run.options import ComputeOptions, Options

    np.save(tmp_path / "in.npy", np.zeros((48, 48, 48), np.float32))
    limit = 24 * MIB
    opts = Options(compute=ComputeOptions(memory_limit=limit, boundary="replicate"), progress=False)
    job = prepare(make_spec("trilinear", 2), tmp_path / "in.npy", tmp_path / f"o{suffix}", opts)
    job.close()
    facts = formats.facts_of(f"o{suffix}")
    want = buffers.writer_memory(facts, job.out_shape, job.out_dtype, job.out_layout, {})
    c = job.plan.costs
    assert (c.writer_tiles, c.writer_per_tile, c.writer_cap, c.writer_fixed) == (
        want.tiles, want.per_tile, want.cap, want.fixed,
    )  # fmt: skip
    assert want.total(1 << 20) > 0
    written = int(np.prod(job.plan.tile_shape)) * job.plan.batch_step * job.filters * job.out_dtype.itemsize
    assert job.plan.tile_bytes() >= want.total(written) and job.plan.tile_bytes() <= limit
    if suffix in (".nii", ".nii.gz"):
        assert want.tiles == 1  # the file-ordered copy of a tile
    if suffix == ".zarr":
        # the tiles' worth zarr's threads hold, and encoding copies of 64^3 float32 chunks
        assert want.tiles == buffers.ZARR_TILE_COPIES and want.cap == buffers.ZARR_COPIES_PER_CHUNK * (1 << 20)
    if suffix == ".nii.gz":  # a member pending and its compressed bytes, whatever the tile
        assert want.fixed == 2 * min(gzip_stream.MEMBER_BYTES, int(np.prod(job.out_shape)) * 4)


@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
def test_chunks_whose_bookkeeping_cannot_fit_are_refused(tmp_path, dry):
    """384^3 in 1^3 chunks is 57 million chunks, whose HDF5 index alone needs more than 16 MiB: refused
    naming --chunks, exit 2, one line, nothing written."""
    np.save(tmp_path / "in.npy", np.zeros((192, 192, 192), np.float32))
    out = tmp_path / "o.h5"
    args = ["--preset", "trilinear", "--scale", "2", "--chunks", "1,1,1", "--memory-limit", "16MiB"]
    r = run("upsample", tmp_path / "in.npy", "-o", out, *args, *(["--dry-run"] if dry else []))
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and "--chunks" in lines[0] and "56623104 chunks" in lines[0], r.output
    assert "Traceback" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


def test_chunks_whose_bookkeeping_fits_are_kept(tmp_path):
    """Small chunks that fit are written as asked (the refusal is for the bookkeeping only)."""
    import h5py

    np.save(tmp_path / "in.npy", np.arange(8**3, dtype=np.float32).reshape(8, 8, 8))
    out = tmp_path / "o.h5"
    r = run("upsample", tmp_path / "in.npy", "-o", out, "--preset", "nearest", "--scale", "2", "--chunks", "1,1,1",
            "--memory-limit", "16MiB")  # fmt: skip
    assert r.exit_code == 0, r.output
    with h5py.File(out) as f:
        assert f["data"].chunks == (1, 1, 1)
        np.testing.assert_array_equal(f["data"][::2, ::2, ::2], np.arange(8**3, dtype=np.float32).reshape(8, 8, 8))


def test_hdf5_encoder_keeps_a_window_of_chunks_in_flight():
    """Chunks are submitted a window ahead of the store, never a whole tile at once (Executor.map did)."""
    chunks, shape = (2, 2, 2), (16, 16, 16)
    stored: list[tuple[int, ...]] = []
    ahead: list[int] = []
    submitted = [0]

    def store(corner: tuple[int, ...], blob: bytes, filter_mask: int) -> None:
        stored.append(corner)
        ahead.append(submitted[0])

    ds = SimpleNamespace(chunks=chunks, shape=shape, dtype=np.dtype(np.float32), shuffle=True, compression_opts=1,
                         id=SimpleNamespace(write_direct_chunk=store))  # fmt: skip
    enc = hdf5_chunks.ChunkEncoder(ds, 2)
    submit, lock = enc.pool.submit, threading.Lock()

    def counting(*a, **k):
        with lock:
            submitted[0] += 1
        return submit(*a, **k)

    enc.pool.submit = counting  # type: ignore[method-assign]
    data = np.random.default_rng(0).random(shape, dtype=np.float32)
    try:
        enc.write(ds, (slice(0, 16),) * 3, data)
    finally:
        enc.close()
    assert len(stored) == 512 and stored == sorted(stored)  # every chunk, in chunk order
    assert max(n - i for i, n in enumerate(ahead)) <= enc.window == hdf5_chunks.WINDOW_PER_THREAD * 2


def test_zarr_counts_the_bookkeeping_of_small_chunks_per_tile():
    """Zarr's bookkeeping is per chunk of a tile (boxes, chunks pending a flush): tile copies when chunks are small."""
    one = buffers.writer_memory(formats.ZARR, (64, 64, 64), np.dtype(np.float32), None, {"chunks": (1, 1, 1)})
    big = buffers.writer_memory(formats.ZARR, (64, 64, 64), np.dtype(np.float32), None, {"chunks": (8, 8, 8)})
    extra = buffers.ZARR_TILE_COPIES
    assert one.tiles == buffers.ZARR_BYTES_PER_CHUNK // 4 + extra and big.tiles == extra
    assert one.bookkeeping == big.bookkeeping == 0 and one.chunks == 64**3
