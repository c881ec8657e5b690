""".npy output around the page cache: aligned headers, long runs written directly (O_DIRECT) or through
the page cache, slab plans, the pool's phase placement, and one whole run through the pipeline."""

from __future__ import annotations

import errno
import io
import math
import mmap
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close, random_spec, reference
from helpers import options as Options

from deconv3d_cli import InputError, LayerSpec
from deconv3d_cli.geometry.tiling import PIPELINE_MIN_BYTES, PIPELINE_TILES, make_plan
from deconv3d_cli.io import direct
from deconv3d_cli.io.base import Destination, VolumeMeta
from deconv3d_cli.io.npy import NpyWriter, aligned_header
from deconv3d_cli.run.job import prepare
from deconv3d_cli.run.local import run_job
from deconv3d_cli.run.pool import Pool as _Pool

ALIGN = direct.ALIGN
HUGE = 1 << 50
ALL = slice(None)


# ----------------------------------------------------------------------------------------- helpers


def data_offset(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Shape, Fortran order, dtype and data offset, parsed by numpy's own header readers."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        assert version == (1, 0)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        return shape, fortran, dtype, f.tell()


def direct_supported(folder: Path) -> bool:
    """Whether files in `folder` can be opened with O_DIRECT (ext4 and xfs can, tmpfs cannot)."""
    if not hasattr(os, "O_DIRECT"):
        return False
    probe = folder / ".o_direct_probe"
    probe.write_bytes(b"")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_DIRECT))
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


class PwriteSpy:
    """Records every pwrite RunWriter makes (fd, file offset, length, memory address); can fail some."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[int, int, int, int]] = []
        self.fail = None  # callable(fd) -> bool: raise EINVAL instead of writing
        self.failed: list[int] = []
        real = direct._pwrite_all

        def spy(fd: int, data: memoryview, offset: int) -> None:
            if self.fail is not None and self.fail(fd):
                self.failed.append(fd)
                raise OSError(errno.EINVAL, "Invalid argument (injected)")
            self.calls.append((fd, offset, len(data), direct.address(data)))
            real(fd, data, offset)

        monkeypatch.setattr(direct, "_pwrite_all", spy)

    def on(self, fd: int | None) -> list[tuple[int, int, int, int]]:
        return [c for c in self.calls if c[0] == fd]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> PwriteSpy:
    return PwriteSpy(monkeypatch)


def write_boxes(
    path: Path, ref: np.ndarray, boxes: list[tuple[slice, ...]], convert=None, close: bool = True
) -> NpyWriter:
    w = NpyWriter(Destination(path, ref.shape, ref.dtype, VolumeMeta()))
    for box in boxes:
        data = np.ascontiguousarray(ref[box])
        w.write(box, convert(data) if convert else data)
    if close:
        w.close()
    return w


def check_file(path: Path, ref: np.ndarray) -> None:
    shape, fortran, dtype, offset = data_offset(path)
    assert (shape, fortran, dtype) == (ref.shape, False, ref.dtype)
    assert offset % ALIGN == 0
    assert path.stat().st_size == offset + ref.nbytes
    out = np.load(path)
    assert out.dtype == ref.dtype and np.array_equal(out, ref)


def depth_slabs(depth: int, cuts: list[int], ndim: int, axis: int = 0) -> list[tuple[slice, ...]]:
    edges = [0, *cuts, depth]
    boxes = []
    for a, b in zip(edges, edges[1:]):
        box = [ALL] * ndim
        box[axis] = slice(a, b)
        boxes.append(tuple(box))
    return boxes


def aligned_array(nbytes: int, start: int, dtype, shape) -> tuple[mmap.mmap, np.ndarray]:
    """An array `start` bytes past a page boundary (anonymous maps are page-aligned)."""
    m = mmap.mmap(-1, nbytes + 2 * ALIGN)
    base = np.frombuffer(m, np.uint8)
    assert base.ctypes.data % ALIGN == 0
    arr = base[start : start + nbytes].view(dtype).reshape(shape)
    return m, arr


# ----------------------------------------------------------------------------------- aligned_header


@pytest.mark.parametrize(
    "shape, dtype",
    [
        ((3,), "float32"),
        ((5, 7, 11), "float64"),
        ((2, 3, 4, 5), "int16"),
        ((6, 5, 4), ">f4"),
        ((1, 9, 8, 7, 2), "<f8"),
        ((4, 0, 3), "float32"),
    ],
)
def test_aligned_header_is_a_page_and_numpy_reads_it(tmp_path, shape, dtype):
    dtype = np.dtype(dtype)
    header = aligned_header(shape, dtype)
    assert len(header) % ALIGN == 0 and len(header) > 0
    assert header.endswith(b"\n")
    f = io.BytesIO(header)
    assert np.lib.format.read_magic(f) == (1, 0)
    assert np.lib.format.read_array_header_1_0(f) == (shape, False, dtype)
    assert f.tell() == len(header)

    rng = np.random.default_rng(0)
    ref = (rng.standard_normal(shape) * 1000).astype(dtype)
    path = tmp_path / "a.npy"
    path.write_bytes(header + ref.tobytes())
    for mode in (None, "r"):
        back = np.load(path, mmap_mode=mode)
        assert back.shape == shape and back.dtype == dtype
        assert np.array_equal(back, ref)
        del back

    # NpyWriter makes the same header and puts the data right after it.
    w = NpyWriter(Destination(tmp_path / "w.npy", shape, dtype, VolumeMeta()))
    assert w.offset == len(header)
    if ref.size:
        w.write(tuple([ALL] * len(shape)), ref)
    w.close()
    assert (tmp_path / "w.npy").read_bytes()[: len(header)] == header
    check_file(tmp_path / "w.npy", ref)


def test_aligned_header_switches_to_version_2_for_huge_headers():
    shape = (1,) * 25000  # no real array has that many axes; only the header text matters
    header = aligned_header(shape, np.dtype("float32"))
    assert len(header) % ALIGN == 0
    f = io.BytesIO(header)
    assert np.lib.format.read_magic(f) == (2, 0)
    got = np.lib.format.read_array_header_2_0(f, max_header_size=len(header) + 1)
    assert got == (shape, False, np.dtype("float32"))
    assert f.tell() == len(header)
    # A long but ordinary header stays version 1.0, still a whole number of pages.
    small = aligned_header((7,) * 100, np.dtype("float64"))
    assert small[6:8] == b"\x01\x00" and len(small) % ALIGN == 0


# ------------------------------------------------------------------------------------------- runs()


def test_runs_offsets_by_hand(tmp_path):
    # (D, H, W, C) float32: a plane is 64 * 512 * 2 * 4 = 256 KiB = MIN_RUN exactly.
    plane = 64 * 512 * 2 * 4
    assert plane == direct.MIN_RUN
    w = NpyWriter(Destination(tmp_path / "last.npy", (5, 64, 512, 2), np.float32, VolumeMeta()))
    o = w.offset
    assert o == ALIGN
    assert w.runs((ALL, ALL, ALL, ALL)) == ([o], 5 * plane)
    assert w.runs((slice(1, 3), ALL, ALL, ALL)) == ([o + plane], 2 * plane)
    assert w.runs((slice(2, 3), ALL, ALL, ALL)) == ([o + 2 * plane], plane)  # exactly MIN_RUN: kept
    assert w.runs((slice(-2, None), ALL, ALL, ALL)) == ([o + 3 * plane], 2 * plane)
    assert w.runs((slice(3, 10), ALL, ALL, ALL)) == ([o + 3 * plane], 2 * plane)  # clipped like numpy
    assert w.runs((slice(0, 1), slice(0, 32), ALL, ALL)) is None  # 128 KiB runs: too short
    assert w.runs((slice(0, 3), slice(0, 32), ALL, ALL)) is None  # three 128 KiB runs
    assert w.runs((slice(3, 3), ALL, ALL, ALL)) is None  # empty
    assert w.runs((slice(0, 4, 2), ALL, ALL, ALL)) is None  # strided
    assert w.runs((slice(0, 2), ALL, ALL)) is None  # wrong rank
    assert w.phase((slice(1, 3), ALL, ALL, ALL)) == 0
    assert w.phase((slice(0, 1), slice(0, 32), ALL, ALL)) is None
    w.close()

    # (C, D, H, W) float32: a plane is 128 * 520 * 4 = 266240 bytes (65 pages); one run per channel.
    plane = 128 * 520 * 4
    w = NpyWriter(Destination(tmp_path / "first.npy", (3, 6, 128, 520), np.float32, VolumeMeta()))
    o, vol = w.offset, 6 * plane
    assert w.runs((ALL, slice(2, 4), ALL, ALL)) == (
        [o + 2 * plane, o + vol + 2 * plane, o + 2 * vol + 2 * plane],
        2 * plane,
    )
    assert w.runs((slice(0, 2), slice(1, 2), ALL, ALL)) == ([o + plane, o + vol + plane], plane)
    assert w.runs((slice(1, 2), ALL, ALL, ALL)) == ([o + vol], vol)  # whole channel: one run
    assert w.runs((ALL, slice(0, 1), slice(0, 64), ALL)) is None
    w.close()

    # (N, D, H, W, C) int16 with an unaligned plane: 100 * 700 * 3 * 2 = 420000 bytes.
    plane = 100 * 700 * 3 * 2
    w = NpyWriter(Destination(tmp_path / "batch.npy", (2, 4, 100, 700, 3), np.int16, VolumeMeta()))
    o = w.offset
    assert w.runs((slice(1, 2), slice(0, 2), ALL, ALL, ALL)) == ([o + 4 * plane], 2 * plane)
    assert w.runs((ALL, slice(1, 2), ALL, ALL, ALL)) == ([o + plane, o + 5 * plane], plane)
    assert w.runs((slice(1, 2), ALL, ALL, ALL, ALL)) == ([o + 4 * plane], 4 * plane)
    assert w.phase((ALL, slice(1, 2), ALL, ALL, ALL)) == (o + plane) % ALIGN == plane % ALIGN
    w.close()


# ---------------------------------------------------------------------------------- NpyWriter I/O


def test_channels_last_depth_slabs_round_trip(tmp_path, spy):
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((12, 96, 64, 4)).astype(np.float32)  # 96 KiB planes, page-aligned
    path = tmp_path / "o.npy"
    w = write_boxes(path, ref, depth_slabs(12, [3, 6, 9], 4), close=False)
    runs_fd, direct_fd = w._fd, w._runs.direct_fd
    w.close()
    check_file(path, ref)
    written = spy.calls
    assert sum(n for _, _, n, _ in written) == ref.nbytes  # every byte exactly once, no memmap
    if direct_supported(tmp_path):
        assert direct_fd is not None
        assert spy.on(runs_fd) == []  # slabs start and end on pages: nothing buffered
        assert all(off % ALIGN == 0 and n % ALIGN == 0 for _, off, n, _ in spy.on(direct_fd))


def test_channels_first_slabs_several_runs_per_tile(tmp_path, spy):
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((3, 8, 100, 700)).astype(np.float32)  # 280000-byte planes: unaligned
    path = tmp_path / "o.npy"
    boxes = depth_slabs(8, [2, 5, 6], 4, axis=1)  # slabs of 2, 3, 1 and 2 planes
    w = NpyWriter(Destination(path, ref.shape, ref.dtype, VolumeMeta()))
    for box in boxes:
        assert len(w.runs(box)[0]) == 3  # one run per channel
        w.write(box, np.ascontiguousarray(ref[box]))
    direct_fd = w._runs.direct_fd
    w.close()
    check_file(path, ref)
    assert sum(n for _, _, n, _ in spy.calls) == ref.nbytes
    if direct_supported(tmp_path):
        assert spy.on(direct_fd), "the aligned middles went around the page cache"


def test_unaligned_planes_heads_and_tails(tmp_path, spy):
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((10, 129, 515)).astype(np.float32)  # 265740-byte planes
    path = tmp_path / "o.npy"
    w = write_boxes(path, ref, depth_slabs(10, [1, 4, 6], 3), close=False)
    buffered_fd, direct_fd = w._fd, w._runs.direct_fd
    w.close()
    check_file(path, ref)
    # Each byte once; the pieces tile the data region exactly.
    pieces = sorted((off, n) for _, off, n, _ in spy.calls)
    assert pieces[0][0] == w.offset
    assert all(a + n == b for (a, n), (b, _) in zip(pieces, pieces[1:]))
    assert pieces[-1][0] + pieces[-1][1] == w.offset + ref.nbytes
    if direct_supported(tmp_path):
        assert all(off % ALIGN == 0 and n % ALIGN == 0 for _, off, n, _ in spy.on(direct_fd))
        heads_tails = spy.on(buffered_fd)
        assert heads_tails and all(n < ALIGN for _, _, n, _ in heads_tails)


def test_three_d_tiles_go_through_the_memory_map(tmp_path, spy):
    rng = np.random.default_rng(4)
    ref = rng.standard_normal((20, 30, 40)).astype(np.float32)
    boxes = [
        (slice(d, d + 7), slice(h, h + 11), slice(w, w + 13))
        for d in range(0, 20, 7)
        for h in range(0, 30, 11)
        for w in range(0, 40, 13)
    ]
    path = tmp_path / "o.npy"
    write_boxes(path, ref, boxes)
    check_file(path, ref)
    assert spy.calls == []  # short runs: no pwrite at all


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(None, id="contiguous"),
        pytest.param(np.asfortranarray, id="fortran"),
        pytest.param(lambda a: a.astype(np.float64), id="float64"),
        pytest.param(lambda a: a[:1], id="broadcast"),
    ],
)
def test_without_maps_every_box_goes_out_with_pwrite_exactly(tmp_path, spy, monkeypatch, convert):
    """Where blocks cannot be reserved (io/space.reserve), no box may go through a map (a full disk
    would be a SIGBUS): short runs are written with pwrite, with the map's exact values and casts."""
    monkeypatch.setenv("DECONV3D_NPY_MAPS", "0")
    rng = np.random.default_rng(4)
    ref = rng.standard_normal((20, 30, 40)).astype(np.float32)
    boxes = [
        (slice(d, d + 7), slice(h, h + 11), slice(w, w + 13))
        for d in range(0, 20, 7)
        for h in range(0, 30, 11)
        for w in range(0, 40, 13)
    ]
    if convert is not None and convert(ref[:2]).shape[0] == 1:  # broadcast: a box of equal planes
        ref[:] = ref[:1]
        boxes = [(slice(d, d + 7), slice(h, h + 11), slice(w, w + 13)) for d, h, w in ((0, 0, 0), (7, 11, 13))]
        boxes += [(slice(0, 20), slice(0, 30), slice(0, 40))]
    path = tmp_path / "o.npy"
    w = NpyWriter(Destination(path, ref.shape, ref.dtype, VolumeMeta()))
    assert not w.mapped
    for box in boxes:
        data = np.ascontiguousarray(ref[box])
        w.write(box, convert(data) if convert else data)
    w.close()
    check_file(path, ref)
    assert spy.calls  # through pwrite, not a map


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(np.asfortranarray, id="fortran"),
        pytest.param(lambda a: np.repeat(a, 2, axis=-1)[..., ::2], id="strided-view"),
        pytest.param(lambda a: a.astype(np.float64), id="float64"),
        pytest.param(lambda a: a.astype(">f4"), id="big-endian"),
    ],
)
def test_non_contiguous_or_other_dtype_data(tmp_path, spy, convert):
    rng = np.random.default_rng(5)
    ref = rng.standard_normal((6, 64, 300, 4)).astype(np.float32)  # 300 KiB planes: runs() is not None
    path = tmp_path / "o.npy"
    boxes = depth_slabs(6, [2, 5], 4)
    w = NpyWriter(Destination(path, ref.shape, ref.dtype, VolumeMeta()))
    for box in boxes:
        data = convert(np.ascontiguousarray(ref[box]))
        assert w.runs(box) is not None
        assert not (data.flags.c_contiguous and data.dtype == w.dtype)
        w.write(box, data)
    w.close()
    check_file(path, ref)
    assert spy.calls == []  # converted through the memory map


def test_zero_copy_and_bounce_placement(tmp_path, spy):
    if not direct_supported(tmp_path):
        pytest.skip("no O_DIRECT on this filesystem")
    rng = np.random.default_rng(6)
    ref = rng.standard_normal((6, 129, 515)).astype(np.float32)  # unaligned planes: phases vary
    path = tmp_path / "o.npy"
    w = NpyWriter(Destination(path, ref.shape, ref.dtype, VolumeMeta()))
    keep = []

    # The second slab at its phase: the direct writes read the caller's pages.
    box = (slice(1, 3), ALL, ALL)
    phase = w.phase(box)
    assert phase == (w.offset + ref[:1].nbytes) % ALIGN != 0
    m, arr = aligned_array(ref[box].nbytes, phase, np.float32, ref[box].shape)
    keep.append(m)
    arr[...] = ref[box]
    w.write(box, arr)
    direct_calls = spy.on(w._runs.direct_fd)
    assert direct_calls and w._runs._bounce is None
    lo, hi = arr.ctypes.data, arr.ctypes.data + arr.nbytes
    assert all(lo <= a and a + n <= hi and a % ALIGN == 0 for _, _, n, a in direct_calls)

    # The last slab one float off its phase: copied through the bounce buffer.
    spy.calls.clear()
    box = (slice(3, 6), ALL, ALL)
    off_phase = (w.phase(box) + 4) % ALIGN
    m, arr = aligned_array(ref[box].nbytes, off_phase, np.float32, ref[box].shape)
    keep.append(m)
    arr[...] = ref[box]
    w.write(box, arr)
    bounce = w._runs._bounce
    assert bounce is not None
    b_lo = np.frombuffer(bounce, np.uint8).ctypes.data
    direct_calls = spy.on(w._runs.direct_fd)
    assert direct_calls and all(a == b_lo for _, _, _, a in direct_calls)

    # The first slab from an ordinary numpy array (wherever malloc put it).
    w.write((slice(0, 1), ALL, ALL), np.ascontiguousarray(ref[:1]))
    w.close()
    assert w._runs._bounce is None and w._runs.direct_fd is None  # closed
    check_file(path, ref)


@pytest.mark.parametrize("setting", ["0", "false", "OFF", "no"])
def test_direct_io_switched_off(tmp_path, spy, monkeypatch, setting):
    monkeypatch.setenv("DECONV3D_DIRECT_IO", setting)
    rng = np.random.default_rng(7)
    ref = rng.standard_normal((7, 129, 515)).astype(np.float32)
    path = tmp_path / "o.npy"
    w = write_boxes(path, ref, depth_slabs(7, [2, 5], 3), close=False)
    assert w._runs.direct_fd is None
    fd = w._fd
    w.close()
    check_file(path, ref)
    assert spy.calls and all(c[0] == fd for c in spy.calls)
    assert sum(n for _, _, n, _ in spy.calls) == ref.nbytes


@pytest.mark.parametrize("how", ["open-refused", "no-o-direct"])
def test_fallback_when_o_direct_cannot_be_opened(tmp_path, spy, monkeypatch, how):
    if how == "open-refused":
        if not hasattr(os, "O_DIRECT"):
            pytest.skip("no O_DIRECT on this platform")
        real_open = os.open
        refused = []

        def fake_open(path, flags, *args, **kwargs):
            if flags & os.O_DIRECT:
                refused.append(path)
                raise OSError(errno.EINVAL, "O_DIRECT not supported (injected)")
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", fake_open)
    else:
        monkeypatch.delattr(os, "O_DIRECT", raising=False)
    rng = np.random.default_rng(8)
    ref = rng.standard_normal((2, 5, 129, 515)).astype(np.float32)
    path = tmp_path / "o.npy"
    w = write_boxes(path, ref, depth_slabs(5, [2], 4, axis=1), close=False)
    assert w._runs.direct_fd is None
    fd = w._fd
    w.close()
    if how == "open-refused":
        assert refused == [path]
    check_file(path, ref)
    assert spy.calls and all(c[0] == fd for c in spy.calls)


@pytest.mark.parametrize("fail_at", [1, 2])
def test_direct_write_refused_falls_back_to_buffered(tmp_path, spy, fail_at):
    """A direct pwrite raising EINVAL: this run and all later ones go buffered, and the file is exact.

    fail_at=2 fails in the middle of a bounce-buffered run (its first 8 MiB already written directly)."""
    if not direct_supported(tmp_path):
        pytest.skip("no O_DIRECT on this filesystem")
    rng = np.random.default_rng(9)
    ref = rng.standard_normal((4, 1031, 1030)).astype(np.float32)  # ~4 MiB planes, unaligned
    path = tmp_path / "o.npy"
    w = NpyWriter(Destination(path, ref.shape, ref.dtype, VolumeMeta()))
    direct_fd = w._runs.direct_fd
    assert direct_fd is not None
    seen = []

    def fail(fd: int) -> bool:
        if fd != w._runs.direct_fd:
            return False
        seen.append(fd)
        return len(seen) == fail_at

    spy.fail = fail
    first = (slice(0, 3), ALL, ALL)  # ~12 MiB, one run: more than one bounce buffer's worth
    m, arr = aligned_array(ref[first].nbytes, (w.phase(first) + 4) % ALIGN, np.float32, ref[first].shape)
    arr[...] = ref[first]
    w.write(first, arr)
    assert spy.failed == [direct_fd]
    assert w._runs.direct_fd is None
    with pytest.raises(OSError) as exc:
        os.fstat(direct_fd)  # the direct descriptor was closed, not leaked
    assert exc.value.errno == errno.EBADF
    assert len(spy.on(direct_fd)) == fail_at - 1
    spy.calls.clear()
    w.write((slice(3, 4), ALL, ALL), np.ascontiguousarray(ref[3:]))
    assert spy.calls and all(c[0] == w._fd for c in spy.calls)  # later runs: buffered
    w.close()
    check_file(path, ref)


def test_run_writer_every_split(tmp_path, spy):
    """RunWriter alone: offsets and lengths around the page and bounce sizes, aligned or not in memory."""
    size = direct.BOUNCE + 5 * ALIGN + 123
    rng = np.random.default_rng(10)
    expected = bytearray(3 * size)
    path = tmp_path / "raw"
    path.write_bytes(bytes(expected))
    fd = os.open(path, os.O_RDWR)
    writer = direct.RunWriter(path, fd)
    m, page = aligned_array(size + ALIGN, 0, np.uint8, (size + ALIGN,))
    cases = [
        (0, 0, 0),
        (5, 1, 0),
        (4095, 8191, 0),
        (4096, 8192, 0),  # all aligned: straight from the caller's pages
        (16 * ALIGN, 3 * ALIGN + 1, 0),  # a one-byte tail
        (size, 2 * ALIGN, 0),
        (12345, 3 * ALIGN + 5, 12345 % ALIGN),  # at its phase
        (2 * size, direct.BOUNCE + 3 * ALIGN, 7),  # more than a bounce buffer, off phase
        (size + 1, size - 1, 3),
    ]
    try:
        for offset, n, start in cases:
            chunk = rng.integers(0, 256, n, dtype=np.uint8)
            page[start : start + n] = chunk
            expected[offset : offset + n] = chunk.tobytes()
            writer.write(offset, memoryview(page[start : start + n]))
        # Non-byte memoryviews (float32, 2-D) are cast to bytes.
        floats = rng.standard_normal((3, 2048)).astype(np.float32)
        writer.write(64, memoryview(floats))
        expected[64 : 64 + floats.nbytes] = floats.tobytes()
        os.fsync(fd)
    finally:
        writer.close()
        os.close(fd)
    assert path.read_bytes() == bytes(expected)
    if direct_supported(tmp_path):
        direct_calls = [c for c in spy.calls if c[0] != fd]
        assert direct_calls
        assert all(off % ALIGN == 0 and n % ALIGN == 0 and a % ALIGN == 0 for _, off, n, a in direct_calls)
        assert max(n for _, _, n, _ in direct_calls) <= max(direct.BOUNCE, size)


def test_flush_fsyncs_only_after_writes(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    ref = np.arange(4 * 256 * 256, dtype=np.float32).reshape(4, 256, 256)
    w = NpyWriter(Destination(tmp_path / "o.npy", ref.shape, ref.dtype, VolumeMeta()))
    w.flush()
    assert synced == []
    w.write((slice(0, 2), ALL, ALL), ref[:2])
    w.flush()
    assert synced == [w._fd]
    w.flush()
    assert len(synced) == 1
    w.write((slice(2, 4), ALL, ALL), ref[2:])
    w.close()
    assert len(synced) == 2
    w.close()  # twice is harmless
    assert len(synced) == 2
    check_file(tmp_path / "o.npy", ref)


def test_flush_during_a_write_does_not_lose_its_fsync(tmp_path, spy, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    w = NpyWriter(Destination(tmp_path / "o.npy", (4, 256, 256), np.float32, VolumeMeta()))
    checkpoints = []

    def checkpoint_mid_write(fd: int) -> bool:
        if not checkpoints:  # the pipeline's sync thread flushes while the tile is being written
            checkpoints.append(fd)
            w.flush()
        return False

    spy.fail = checkpoint_mid_write
    w.write((ALL, ALL, ALL), np.ones((4, 256, 256), np.float32))
    assert checkpoints
    before = len(synced)
    w.flush()  # the checkpoint that journals the tile: its data must be made durable now
    assert len(synced) == before + 1
    w.close()


# ----------------------------------------------------------------------------------------- _Pool


@pytest.mark.parametrize("dtype", ["float32", "float64", "int16"])
def test_pool_view_phase(dtype):
    dtype = np.dtype(dtype)
    shape = (3, 50, 70)
    nbytes = math.prod(shape) * dtype.itemsize
    # An allocator that hands out the worst case: a buffer starting one byte before a page.
    backing = []

    def make(n: int) -> np.ndarray:
        raw = np.empty(n + 2 * ALIGN, np.uint8)
        start = (ALIGN - 1 - raw.ctypes.data) % ALIGN
        backing.append(raw)
        return raw[start : start + n]

    for maker in (None, make):
        pool = _Pool(2, nbytes, maker)
        buf = pool.free.get()
        assert buf.nbytes == nbytes + ALIGN
        lo, hi = buf.ctypes.data, buf.ctypes.data + buf.nbytes
        for phase in [0, 8, 16, 1000, 2048, 4088, None]:
            if phase is not None and phase % dtype.itemsize:
                continue
            view = pool.view(buf, shape, dtype, phase)
            assert view.shape == shape and view.dtype == dtype and view.flags.c_contiguous
            addr = view.ctypes.data
            assert addr % ALIGN == (phase if phase is not None else lo % ALIGN)
            assert lo <= addr and addr + view.nbytes <= hi
            assert np.shares_memory(view, buf)
            view[...] = 7
            assert np.all(view == 7)
        pool.free.put(buf)


# ---------------------------------------------------------------------------------------- plans


def slab_case(d: int, h: int, w: int, filters: int, strides=2):
    spec = LayerSpec.create(filters=filters, kernel_size=3, strides=strides, padding="same")
    axes = spec.axes((d, h, w))
    return spec, axes


def plan(spec, axes, memory_limit=HUGE, **kw):
    return make_plan(axes, 1, 1, spec.filters, spec.kernel_size, memory_limit=memory_limit, **kw)


def cubic_reference(p, memory_limit: int) -> tuple[int, ...]:
    """The near-cubic choice slab plans replace: halve the longest axis (depth on ties), stride-aligned."""
    out = list(p.out_shape)
    units = [min(ax.stride, n) for ax, n in zip(p.axes, out)]
    shape = list(out)
    while p.tile_bytes(shape) > memory_limit:
        cands = [a for a in range(3) if shape[a] > units[a]]
        pick = max(cands, key=lambda a: (shape[a], -a))
        half = -(-shape[pick] // 2)
        shape[pick] = max(units[pick], -(-half // units[pick]) * units[pick])
    return tuple(shape)


@pytest.mark.parametrize(
    "shape, filters, strides",
    [((80, 64, 64), 8, 2), ((200, 40, 50), 4, 2), ((90, 60, 70), 6, (3, 2, 1)), ((128, 96, 96), 4, 1)],
)
def test_slab_plan_spans_planes_and_cuts_large_outputs(shape, filters, strides):
    spec, axes = slab_case(*shape, filters, strides)
    p = plan(spec, axes, slabs=True)
    out = p.out_shape
    out_bytes = filters * math.prod(out) * 4
    assert out_bytes >= 2 * PIPELINE_MIN_BYTES
    assert p.tile_shape[1:] == out[1:]
    assert p.grid[2:] == (1, 1) and p.grid[0] == 1
    assert 1 < len(p) <= PIPELINE_TILES
    unit = min(axes[0].stride, out[0])
    slabs = min(PIPELINE_TILES, out_bytes // PIPELINE_MIN_BYTES)
    depth = math.ceil(out[0] / slabs)
    assert p.tile_shape[0] == math.ceil(depth / unit) * unit
    assert len(p) == -(-out[0] // p.tile_shape[0])
    # The slabs cover the depth once, front to back.
    tiles = list(p.tiles())
    assert [t.out[0].start for t in tiles] == list(range(0, out[0], p.tile_shape[0]))
    assert tiles[-1].out[0].stop == out[0]
    assert all(t.out[1:] == (slice(0, out[1]), slice(0, out[2])) for t in tiles)
    # Without slabs an unlimited budget keeps the whole volume as one tile.
    assert len(plan(spec, axes, slabs=False)) == 1


def test_slab_plan_small_output_is_one_tile():
    spec, axes = slab_case(16, 32, 32, 2)  # 32*64*64*2*4 = 2 MiB
    p = plan(spec, axes, slabs=True)
    assert len(p) == 1 and p.tile_shape == p.out_shape


def test_slab_plan_tight_budget_thins_depth_first():
    spec, axes = slab_case(320, 32, 32, 8)  # output 640 x 64 x 64 x 8 float32: 80 MiB, 8 slabs of 80
    roomy = plan(spec, axes, slabs=True)
    out = roomy.out_shape
    assert roomy.tile_shape == (80, *out[1:])
    # A budget that holds 40 whole planes but not 80: the slabs get thinner, the planes stay whole.
    limit = roomy.tile_bytes((40, out[1], out[2]))
    assert roomy.tile_bytes() > limit
    p = plan(spec, axes, memory_limit=limit, slabs=True)
    assert p.tile_bytes() <= limit
    assert p.tile_shape == (40, *out[1:])
    # The same budget without slabs cuts near-cubic tiles (the choice before slabs).
    cubic = plan(spec, axes, memory_limit=limit, slabs=False)
    assert cubic.tile_shape == cubic_reference(cubic, limit)
    # Below one 2-plane slab the planes must be cut too; the estimate still fits.
    limit = roomy.tile_bytes((2, out[1], out[2])) - 1
    p = plan(spec, axes, memory_limit=limit, slabs=True)
    assert p.tile_bytes() <= limit and p.tile_shape[1:] != out[1:]
    assert p.tile_shape[0] % 2 == 0


def test_slab_plans_never_exceed_the_budget():
    spec, axes = slab_case(80, 64, 64, 8)
    fitted = 0
    for limit in [1 << k for k in range(18, 34)]:
        try:
            p = plan(spec, axes, memory_limit=limit, slabs=True)
        except InputError:
            continue
        fitted += 1
        assert p.tile_bytes() <= limit
        assert all(t % ax.stride == 0 or t == ax.out for t, ax in zip(p.tile_shape, axes))
        assert plan(spec, axes, memory_limit=limit, slabs=False).tile_shape == cubic_reference(p, limit)
    assert fitted >= 8


# -------------------------------------------------------------------------------------- end to end


def test_pipeline_writes_slabs_exactly(tmp_path, monkeypatch):
    rng = np.random.default_rng(11)
    spec = random_spec(rng, in_ch=1, filters=2)
    x = rng.standard_normal((32, 120, 124, 1)).astype(np.float32)  # output 64x240x248x2: ~29 MiB
    np.save(tmp_path / "in.npy", x)
    middles = []
    real_direct = direct.RunWriter._direct

    def watch(self, offset, middle):
        middles.append((offset, direct.address(middle)))
        return real_direct(self, offset, middle)

    monkeypatch.setattr(direct.RunWriter, "_direct", watch)
    opts = Options(progress=False)
    job = prepare(spec, tmp_path / "in.npy", tmp_path / "out.npy", opts)
    assert job.out_format == "npy" and job.plan.tile_shape[1:] == job.plan.out_shape[1:]
    job.reader.close()
    result = run_job(spec, tmp_path / "in.npy", tmp_path / "out.npy", opts)
    assert result["tiles"] > 1 and result["tile_grid"][2:] == [1, 1]
    assert result["tile_shape"][1:] == [240, 248]
    shape, fortran, dtype, offset = data_offset(tmp_path / "out.npy")
    assert shape == (64, 240, 248, 2) and offset % ALIGN == 0 and dtype == np.float32
    assert_close(np.load(tmp_path / "out.npy"), reference(spec, x), rel=1e-5)
    if direct_supported(tmp_path):
        # The pool placed every tile at its phase: direct writes read the tiles' own pages.
        assert middles and all(off % ALIGN == 0 and a % ALIGN == 0 for off, a in middles)


def test_tight_budget_keeps_slabs_deep_enough_and_cuts_rows_instead():
    """Past ~25% halo recompute (depth 4 * (halo + 1) * stride) a slab plan cuts rows, keeping width."""
    spec = LayerSpec.create(filters=8, kernel_size=4, strides=2, padding="same", in_channels=8)
    axes = spec.axes((256, 256, 256))
    plan = make_plan(axes, 1, 8, 8, (4, 4, 4), memory_limit=256 << 20, slabs=True)
    thinnest = 4 * (axes[0].halo + 1) * axes[0].stride
    assert plan.tile_shape[0] == thinnest == 16
    assert plan.tile_shape[2] == 512 and plan.tile_shape[1] < 512
    assert plan.tile_bytes() <= 256 << 20


def test_a_long_halo_keeps_every_cut_axis_as_deep_as_its_halo_needs():
    """Past the thinnest slab, rows are cut only while they stay deep (4 * (halo + 1) * stride); then the
    longest axis is halved, so a B-spline's 33-row prefilter halo is not recomputed over thin row runs.
    The old rule cut rows down to 6 (384 x 6 x 136 tiles of --scale 1.5 on 256^3): the tiles read the
    input 15 times over, and the job ran 6.8 s against 3.9."""
    from deconv3d_cli.layer.resample import ResampleSpec

    spec = ResampleSpec.create(interp="bspline", scale=1.5)
    axes = spec.axes(spec.grid((256, 256, 256)))
    plan = make_plan(axes, 1, 1, 1, spec.kernel_size, memory_limit=64 << 20, slabs=True, order=(2, 1, 0))
    assert plan.tile_bytes() <= 64 << 20
    read = sum(math.prod(s.stop - s.start for s in t.src) for t in plan.tiles())
    assert read < 6 * 256**3  # the old plan read 17x
    assert min(plan.tile_shape) >= 4 * (axes[0].halo + 1) // 2  # no axis thinner than half its deep cut
