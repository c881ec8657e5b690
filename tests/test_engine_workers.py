"""The engine's own threads (engine/workers.py): pieces run once each, errors reach the caller, and a
tile cut into pieces is the same bytes at any thread count (and the tile in one piece to float rounding:
oneDNN may pick another kernel for a thinner slab)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from helpers import random_spec

from deconv3d_cli.engine import Engine, core, separable, workers
from deconv3d_cli.layer.presets import make_spec


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_every_piece_runs_once_on_single_threaded_workers(threads):
    threads(2)
    seen: list[tuple[int, str, int]] = []
    lock = threading.Lock()

    def piece(i: int) -> None:
        with lock:
            seen.append((i, threading.current_thread().name, torch.get_num_threads()))

    workers.run([lambda i=i: piece(i) for i in range(20)])
    assert sorted(i for i, _, _ in seen) == list(range(20))
    assert {name for _, name, _ in seen} <= {f"deconv3d-engine-{k}" for k in range(2)}
    assert {n for _, _, n in seen} == {1}  # torch runs single-threaded inside a piece
    assert torch.get_num_threads() == 2  # and the caller's count is left as it was


def test_one_thread_runs_the_pieces_in_the_caller(threads):
    threads(1)
    names: list[str] = []
    workers.run([lambda: names.append(threading.current_thread().name) for _ in range(3)])
    assert names == [threading.current_thread().name] * 3


def test_the_first_error_reaches_the_caller_and_the_pool_still_works(threads):
    threads(2)

    def boom() -> None:
        raise ValueError("piece failed")

    with pytest.raises(ValueError, match="piece failed"):
        workers.run([boom, boom, lambda: None])
    done: list[int] = []
    workers.run([lambda: done.append(1), lambda: done.append(2)])
    assert sorted(done) == [1, 2]


def test_pieces_keep_the_callers_inference_mode(threads):
    threads(2)
    modes: list[bool] = []
    with torch.inference_mode():
        workers.run([lambda: modes.append(torch.is_inference_mode_enabled()) for _ in range(4)])
    assert modes == [True] * 4


def test_split_covers_the_length_in_order():
    assert workers.split(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert workers.split(2, 5) == [(0, 1), (1, 2)]
    assert workers.split(7, 1) == [(0, 7)]


@pytest.mark.parametrize("cin,f,k,s,pad", [(1, 1, 4, 2, "same"), (2, 4, 3, 2, "same"), (8, 8, 3, 1, "same"),
                                           (3, 5, 5, 3, "valid"), (4, 4, 4, 2, "valid")])  # fmt: skip
def test_a_tile_in_pieces_is_the_same_bytes_at_any_thread_count(monkeypatch, threads, cin, f, k, s, pad):
    rng = np.random.default_rng(cin * 10 + k)
    spec = random_spec(rng, cin, filters=f, kernel_size=k, strides=s, padding=pad, activation="relu")
    x = rng.standard_normal((1, cin, 37, 22, 20)).astype(np.float32)
    engine = Engine(spec, cin)
    sizes = [ax.out for ax in spec.axes(x.shape[2:])]
    for path in engine.available_paths():
        engine.force_path(path)
        monkeypatch.setattr(core, "PIECE_ELEMENTS", 1 << 40)
        assert len(engine._depth_pieces(x.shape, sizes)) == 1
        whole = engine.whole(x).contiguous().numpy()
        monkeypatch.setattr(core, "PIECE_ELEMENTS", 1)
        assert len(engine._depth_pieces(x.shape, sizes)) > 1
        results = set()
        for n in (1, 2, 3):
            threads(n)
            pieces = engine.whole(x).contiguous().numpy()
            results.add(pieces.tobytes())
            np.testing.assert_allclose(pieces, whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max())
        assert len(results) == 1, path


def test_separable_passes_in_pieces_are_the_same_bytes(monkeypatch, threads):
    engine = Engine(make_spec("trilinear", (2, 3, 2), 1), 1)
    x = np.random.default_rng(3).uniform(0, 1000, (1, 1, 19, 23, 17)).astype(np.float32)
    monkeypatch.setattr(separable, "PIECE", 1 << 40)
    whole = engine.whole(x).numpy().tobytes()
    monkeypatch.setattr(separable, "PIECE", 7)
    for n in (1, 2, 3):
        threads(n)
        assert engine.whole(x).numpy().tobytes() == whole
