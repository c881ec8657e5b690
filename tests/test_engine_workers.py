"""The engine's own threads (engine/workers.py): pieces run once each, errors reach the caller, and work
cut into pieces (the separable passes, the phase shuffle, the resampler's passes) is the same bytes as
in one piece, at any thread count; OpenMP's waiting threads sleep (engine/openmp.py)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from helpers import random_spec

from deconv3d_cli.engine import Engine, formulations, separable, workers
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


@pytest.mark.parametrize("k,s", [(4, 2), (3, 3), (2, 2)])
def test_the_phase_shuffle_in_pieces_is_the_same_bytes_at_any_thread_count(monkeypatch, threads, k, s):
    rng = np.random.default_rng(k * 10 + s)
    spec = random_spec(rng, 2, filters=3, kernel_size=k, strides=s, padding="same", activation="relu")
    x = rng.standard_normal((1, 2, 17, 12, 10)).astype(np.float32)
    engine = Engine(spec, 2)
    for path in [p for p in engine.available_paths() if p.startswith("phase")]:
        engine.force_path(path)
        monkeypatch.setattr(formulations, "COPY_PIECE", 1 << 40)
        whole = engine.whole(x).contiguous().numpy().tobytes()
        monkeypatch.setattr(formulations, "COPY_PIECE", 5)
        for n in (1, 2, 3):
            threads(n)
            assert engine.whole(x).contiguous().numpy().tobytes() == whole, (path, n)


def test_separable_passes_in_pieces_are_the_same_bytes(monkeypatch, threads):
    engine = Engine(make_spec("trilinear", (2, 3, 2), 1), 1)
    x = np.random.default_rng(3).uniform(0, 1000, (1, 1, 19, 23, 17)).astype(np.float32)
    monkeypatch.setattr(separable, "PIECE", 1 << 40)
    whole = engine.whole(x).numpy().tobytes()
    monkeypatch.setattr(separable, "PIECE", 7)
    for n in (1, 2, 3):
        threads(n)
        assert engine.whole(x).numpy().tobytes() == whole


def test_openmp_waits_are_passive_unless_the_user_said_otherwise():
    import subprocess
    import sys

    code = "import os, deconv3d_cli.engine; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == "ACTIVE"


@pytest.mark.parametrize("interp", ["linear", "bspline", "lanczos"])
def test_resampling_in_pieces_is_the_same_bytes_at_any_thread_count(monkeypatch, threads, interp):
    """What lets a local:N worker run a resampling at its share of the CPUs (formulations.THREAD_INVARIANT)."""
    from deconv3d_cli.engine import resample
    from deconv3d_cli.layer.resample import ResampleSpec

    spec = ResampleSpec.create(scale=(1.5, 2.5, 1.25), interp=interp)
    x = np.random.default_rng(4).uniform(0, 1000, (1, 2, 13, 9, 17)).astype(np.float32)
    monkeypatch.setattr(resample, "PIECE_BLOCKS", 1 << 40)
    whole = resample.Resampler(spec, spec.grid(x.shape[2:]), 2).whole(x).numpy().tobytes()
    monkeypatch.setattr(resample, "CHUNK", 37)
    monkeypatch.setattr(resample, "PIECE_BLOCKS", 1)
    engine = resample.Resampler(spec, spec.grid(x.shape[2:]), 2)
    for n in (1, 2, 3):
        threads(n)
        assert engine.whole(x).numpy().tobytes() == whole, n
