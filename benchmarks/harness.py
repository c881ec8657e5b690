"""What every side-by-side benchmark here shares: a measured child process, a fixed competing load,
and alternation of the two sides of a comparison.

- `measure(argv)` runs one child and returns its wall time, CPU time (user + system, from `wait4`,
  so the child's own threads and the children it waited for are counted) and peak resident memory
  (`ru_maxrss`, through a small launcher so that this process's own size does not leak into it):
  the three numbers a whole-process comparison needs, without a profiler in the way.
- `Load` is the bench's fixed competing load: one process spinning in a tight loop, pinned to one
  CPU, started once and kept running for both sides of every comparison (a cluster node where
  another job holds a core). Without `--load` there is none.
- `alternate(sides, pairs)` runs the sides in turn, reversing the order every other round, so a slow
  spell of a shared machine falls on both sides instead of one; each round gives one ratio and the
  report is the median of the rounds (`median_ratio`).
- `machine_line()` says what the run ran on, and the load average before it started: absolute times
  on a shared machine drift, so every table prints the load it was measured under.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# A busy loop with nothing to allocate or print: the load is one CPU's worth of pure computation.
_SPIN = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


@dataclass
class Sample:
    """One child process: seconds of wall and CPU time, peak RSS bytes, its stdout, exit status."""

    wall: float
    cpu: float
    rss: int
    stdout: str = ""
    stderr: str = ""
    code: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# The child is started by a small launcher (`python -S`, a few MiB) that forks, execs and reaps it:
# Linux carries the forking process's peak RSS into the child's ru_maxrss across exec, so a child
# forked from this (large) process would report this process's peak, not its own.
_LAUNCH = """import os, sys, time, json
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, u = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(sys.argv[1], "w") as f:
    json.dump({"wall": wall, "cpu": u.ru_utime + u.ru_stime, "rss": u.ru_maxrss * 1024,
               "code": os.waitstatus_to_exitcode(status)}, f)
"""


def measure(argv: Sequence[str], env: dict[str, str] | None = None, cwd: str | None = None) -> Sample:
    """Run `argv` to completion: wall time, its own CPU time and peak RSS (wait4 in the launcher)."""
    import tempfile

    with tempfile.NamedTemporaryFile("r", suffix=".json") as record:
        proc = subprocess.run(
            [sys.executable, "-S", "-c", _LAUNCH, record.name, *argv], capture_output=True, env=env, cwd=cwd
        )
        usage = json.loads(record.read() or "{}")
    if not usage:
        return Sample(0.0, 0.0, 0, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"),
                      proc.returncode or 1)
    return Sample(
        wall=usage["wall"],
        cpu=usage["cpu"],
        rss=usage["rss"],
        stdout=proc.stdout.decode(errors="replace"),
        stderr=proc.stderr.decode(errors="replace"),
        code=usage["code"],
    )


class Load:
    """The fixed competing load: `count` spinning processes, each pinned to one CPU (the last ones of
    this process's affinity set), for the duration of a `with` block; `count=0` is a quiet run."""

    def __init__(self, count: int = 1) -> None:
        self.count = count
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def cpus(self) -> list[int]:
        mine = sorted(os.sched_getaffinity(0))
        return mine[-self.count :] if self.count else []

    def __enter__(self) -> Load:
        for cpu in self.cpus:
            self.procs.append(subprocess.Popen([sys.executable, "-c", _SPIN, str(cpu)]))
        if self.procs:
            time.sleep(0.5)  # let the spinners settle on their CPUs before anything is timed
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.wait()
        self.procs.clear()

    def describe(self) -> str:
        if not self.count:
            return "quiet (no competing load from the bench)"
        return f"load: {self.count} busy process(es) pinned to CPU {','.join(map(str, self.cpus))}"


def alternate(sides: dict[str, Callable[[], Sample]], pairs: int) -> dict[str, list[Sample]]:
    """Each side run `pairs` times, taking turns, the order reversed every other round."""
    names = list(sides)
    results: dict[str, list[Sample]] = {n: [] for n in names}
    for i in range(pairs):
        for name in names if i % 2 == 0 else names[::-1]:
            results[name].append(sides[name]())
    return results


def median_ratio(peer: Sequence[float], ours: Sequence[float]) -> float:
    """The median over rounds of peer / ours (above 1: ours is faster)."""
    return statistics.median(p / o for p, o in zip(peer, ours) if o > 0)


def med(values: Sequence[float]) -> float:
    return statistics.median(values)


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine_line() -> str:
    import platform

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return f"{platform.machine()}, {cpus} CPUs, Python {platform.python_version()}; load average {loadavg()} at start"


def gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def fail_line(sample: Sample) -> str:
    tail = (sample.stderr.strip().splitlines() or ["(no output)"])[-1]
    return f"exit {sample.code}: {tail[:200]}"
