"""Stopping on a signal without losing work: SIGTERM, SIGINT (Ctrl-C) and SIGHUP.

SLURM and Kubernetes send SIGTERM at a time limit or a preemption; a long run must then keep every
finished tile. The CLI installs handlers (only the main thread may); a handler only *asks* a running
pipeline to stop (`requested`), and the pipeline stops between tiles: it writes the tiles already
computed, makes them durable, journals them, keeps the partial output and raises `Interrupted`. Where
no pipeline is running (opening inputs, planning, between the files of a batch) there is nothing to
keep, and the handler raises `Interrupted` at once. A second signal always stops at once: its
`Interrupted` is marked `at_once`, and the pipeline then waits for no thread (a reader may be inside
HDF5 for minutes): the journal already names every tile made durable, so `--resume` continues from
there, as after a kill -9.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Exit statuses as shells report signals: 128 + the signal's number.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


class Interrupted(BaseException):
    """A run stopped by a signal. Not an Exception: no per-file handler of a batch may swallow it."""

    def __init__(
        self, signum: int, kept: int = 0, total: int = 0, target: Path | None = None, at_once: bool = False
    ) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.at_once = at_once  # a second signal: stop now, without waiting for the tiles in flight
        self.kept = kept
        self.total = total
        self.target = target

    @property
    def exit_code(self) -> int:
        return {int(k): v for k, v in EXIT_CODES.items()}.get(int(self.signum), 128 + int(self.signum))


class _Stop:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self.listeners = 0

    def handler(self, signum: int, frame: Any) -> None:
        again = self.event.is_set()
        self.signum = signum
        self.event.set()
        if again or not self.listeners:
            raise Interrupted(signum, at_once=again)

    def check(self) -> None:
        """Raise Interrupted if a stop was asked for (called by the pipeline between tiles)."""
        if self.event.is_set():
            raise Interrupted(self.signum or signal.SIGTERM)

    @contextlib.contextmanager
    def listening(self) -> Iterator[None]:
        """While a pipeline runs: a signal asks it to stop between tiles instead of raising at once."""
        self.listeners += 1
        try:
            yield
        finally:
            self.listeners -= 1

    def reset(self) -> None:
        self.event.clear()
        self.signum = None


STOP = _Stop()


def install() -> None:
    """Handle SIGTERM, SIGINT and SIGHUP as requests to stop (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in EXIT_CODES:
        signal.signal(signum, STOP.handler)
