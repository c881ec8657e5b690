"""Stopping on a signal without losing work: SIGTERM, SIGINT (Ctrl-C) and SIGHUP.

SLURM and Kubernetes send SIGTERM at a time limit or a preemption; a long run must then keep every
finished tile. The CLI installs handlers (only the main thread may); a handler only *asks* a running
pipeline to stop (`requested`), and the pipeline stops between tiles: it writes the tiles already
computed, makes them durable, journals them, keeps the partial output and raises `Interrupted`. Where
no pipeline is running (opening inputs, planning, between the files of a batch) there is nothing to
keep, and the handler raises `Interrupted` at once. A second signal always stops at once: its
`Interrupted` is marked `at_once`, and the pipeline then waits for no thread (a reader may be inside
HDF5 for minutes): the journal already names every tile made durable, so `--resume` continues from
there, as after a kill -9. Should the main thread itself be held inside a C call (a lock a reader
thread holds inside HDF5, an exit handler), a watcher thread that counts signals ends the process
after `SECOND_SIGNAL_GRACE` with one line and the signal's exit status.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Exit statuses as shells report signals: 128 + the signal's number.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
SECOND_SIGNAL_GRACE = 0.8  # seconds the ordinary way out gets after a second signal


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
        self.watcher: threading.Thread | None = None
        self.said = False  # the stop's one line is on stderr (the watcher then adds none)
        self.own_process = False  # the CLI runs as the program: its process may be ended

    def handler(self, signum: int, frame: Any) -> None:
        again = self.event.is_set()
        self.signum = signum
        self.event.set()
        if again or not self.listeners:
            raise Interrupted(signum, at_once=again)

    def watch(self) -> None:
        """Count signals where no lock can hold them up, and end the process after a second one.

        Python runs a signal's handler in the main thread between bytecodes, so a main thread waiting
        inside a C call (a lock that a reader thread holds inside HDF5) never runs it. The C handler
        still writes each signal's number to the wakeup fd; a thread reading it sees the second signal
        whatever the main thread is doing. Only for the program itself: a caller's process (a test
        runner driving the CLI) is never ended here.
        """
        if self.watcher is not None or not self.own_process:
            return
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        try:
            signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        except ValueError:  # not the main thread
            os.close(read_end)
            os.close(write_end)
            return
        self.watcher = threading.Thread(target=self._count, args=(read_end,), name="deconv3d-signals", daemon=True)
        self.watcher.start()

    def _count(self, fd: int) -> None:
        seen = 0
        ours = {int(s) for s in EXIT_CODES}
        while True:
            try:
                data = os.read(fd, 64)
            except InterruptedError:
                continue
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in ours:
                    seen += 1
                    if seen >= 2:
                        self._expire(signum)
                        return

    def _expire(self, signum: int) -> None:
        """After a second signal: the ordinary way out gets SECOND_SIGNAL_GRACE, then the process ends."""
        time.sleep(SECOND_SIGNAL_GRACE)
        if not self.said:
            name = signal.Signals(signum).name
            line = f"deconv3d: stopped by {name} (second signal); finished tiles are kept: rerun with --resume\n"
            with contextlib.suppress(OSError, ValueError):
                os.write(sys.stderr.fileno(), line.encode())
        os._exit(Interrupted(signum).exit_code)

    @contextlib.contextmanager
    def listening(self) -> Iterator[None]:
        """While a pipeline runs: a signal asks it to stop between tiles instead of raising at once."""
        self.listeners += 1
        try:
            yield
        finally:
            self.listeners -= 1

    def check(self) -> None:
        """Raise Interrupted if a stop was asked for (called by the pipeline between tiles)."""
        if self.event.is_set():
            raise Interrupted(self.signum or signal.SIGTERM)

    def reset(self) -> None:
        self.event.clear()
        self.signum = None
        self.said = False


STOP = _Stop()


def install() -> None:
    """Handle SIGTERM, SIGINT and SIGHUP as requests to stop (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in EXIT_CODES:
        signal.signal(signum, STOP.handler)
    STOP.watch()
