"""The engine's own CPU threads: a tile's work cut into pieces that idle threads take in turn.

Why not torch's intra-op pool alone: it is OpenMP here, which gives each thread one equal share of
every operation and makes the others wait at the end for the slowest; waiting threads spin (libgomp
polls for a while before it sleeps). On a two-core machine where another process holds one core
(benchmarks/versus_tf.py --load), the thread sharing that core finishes its half last while the other
spins on the free core, so a 1->1 k4 s2 layer took 221 ms against 38 ms quiet, slower than one thread
(134 ms) and than tf.keras (146 ms), whose pool hands out small tasks dynamically.

Here the work of a tile is a list of pieces (output rows, or blocks of a pass), fixed by the tile's
shape alone, never by the thread count or the load. `run(pieces)` gives them to `threads()` worker
threads, each running torch with one intra-op thread and taking the next piece as it finishes one:
a thread that shares its core with another job takes fewer pieces, and a thread with nothing left
sleeps on a lock instead of spinning. Every piece computes the same numbers whichever thread runs it,
so the bytes do not depend on the thread count (tests/test_determinism.py) and pieces never share an
output element.

The worker count follows `torch.get_num_threads()` as the caller set it (the CLI sets it from the
usable CPUs or --threads). With one thread, or one piece, the pieces run in the calling thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

import torch

_lock = threading.Lock()
_local = threading.local()


class _Pool:
    """`size` daemon threads that run the pieces of one `run` call at a time."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.ready = threading.Barrier(size + 1)
        self.wake = threading.Condition()
        self.job: _Job | None = None
        self.generation = 0
        self.threads = [
            threading.Thread(target=self._loop, name=f"deconv3d-engine-{i}", daemon=True) for i in range(size)
        ]
        for t in self.threads:
            t.start()
        self.ready.wait()  # every worker has set its own intra-op thread count to one
        torch.set_num_threads(size)  # the workers' setting changed the process default: restore it

    def _loop(self) -> None:
        _local.worker = True
        # torch sets a thread's OpenMP count lazily, from the process default, at its first parallel
        # call: take that first (now), then make this thread's count one.
        torch.get_num_threads()
        torch.set_num_threads(1)
        self.ready.wait()
        seen = 0
        while True:
            with self.wake:
                while self.generation == seen:
                    self.wake.wait()
                seen, job = self.generation, self.job
            if job is not None:
                job.work()

    def run(self, pieces: Sequence[Callable[[], object]]) -> None:
        job = _Job(pieces, self.size)
        with self.wake:
            self.job = job
            self.generation += 1
            self.wake.notify_all()
        job.wait()


class _Job:
    """One call's pieces: each worker takes the next index until none is left."""

    def __init__(self, pieces: Sequence[Callable[[], object]], workers: int) -> None:
        self.pieces = pieces
        # autograd and inference modes are per thread: the workers take the caller's
        self.inference = torch.is_inference_mode_enabled()
        self.grad = torch.is_grad_enabled()
        self.next = 0
        self.lock = threading.Lock()
        self.active = workers
        self.done = threading.Event()
        self.error: BaseException | None = None

    def work(self) -> None:
        try:
            with torch.inference_mode(self.inference), torch.set_grad_enabled(self.grad):
                self._take()
        finally:
            with self.lock:
                self.active -= 1
                if self.active == 0:
                    self.done.set()

    def _take(self) -> None:
        while True:
            with self.lock:
                i = self.next
                self.next += 1
            if i >= len(self.pieces) or self.error is not None:
                return
            try:
                self.pieces[i]()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                with self.lock:
                    self.error = self.error or exc

    def wait(self) -> None:
        self.done.wait()
        if self.error is not None:
            raise self.error


_pool: _Pool | None = None
# False: the pieces run in the calling thread, on torch's own pool (benchmarks compare the two).
enabled = True


def threads() -> int:
    """How many threads `run` uses: torch's intra-op count as set in this (calling) thread."""
    return 1 if getattr(_local, "worker", False) else max(1, torch.get_num_threads())


def run(pieces: Sequence[Callable[[], object]]) -> None:
    """Call every piece once, on the engine's threads when there are several; re-raises the first error.

    Pieces must write disjoint outputs and read nothing another piece writes.
    """
    n = threads()
    if n == 1 or len(pieces) <= 1 or not enabled:
        for piece in pieces:
            piece()
        return
    global _pool
    with _lock:
        if _pool is None or _pool.size != n:
            _pool = _Pool(n)  # an older pool of another size stays asleep
        pool = _pool
        pool.run(pieces)


def split(length: int, parts: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges cutting `length` into `parts` near-equal runs (fewer when it is shorter)."""
    parts = max(1, min(parts, length))
    bounds = [length * i // parts for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts) if bounds[i + 1] > bounds[i]]


def _after_fork() -> None:
    global _pool, _lock
    _pool, _lock = None, threading.Lock()  # the parent's threads do not exist in a forked child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
