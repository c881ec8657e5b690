"""What this process may use: CPUs (affinity and cgroup quota), so threads never oversubscribe an allocation.

`os.cpu_count()` counts the machine's CPUs; under `taskset`, a SLURM allocation or a container's CPU
quota the process may use far fewer, and a thread per machine CPU then fights itself.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..errors import InputError


def cgroup_cpu_quota(proc: Path = Path("/proc"), sys_fs: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the process's cgroup (v2 `cpu.max`, v1 `cpu.cfs_quota_us`/`cfs_period_us`), or None."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, rel = parts
        if hierarchy == "0" and controllers == "":  # v2
            limit = _read(sys_fs / rel.lstrip("/") / "cpu.max") or _read(sys_fs / "cpu.max")
            if limit:
                quota, _, period = limit.partition(" ")
                if quota != "max" and period:
                    return _ratio(quota, period)
        elif "cpu" in controllers.split(","):  # v1
            for base in (sys_fs / "cpu,cpuacct", sys_fs / "cpu"):
                q, p = _read(base / rel.lstrip("/") / "cpu.cfs_quota_us"), _read(base / "cpu.cfs_period_us")
                if q and p and not q.startswith("-"):
                    return _ratio(q, p)
    return None


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (rounded up)."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def check_threads(threads: int | None) -> None:
    """Refuse a `--threads` no system starts (100000 failed with "can't start new thread" mid-run):
    at most 8 per usable CPU, and at least 256 are always allowed."""
    most = max(256, 8 * usable_cpus())
    if threads is not None and threads > most:
        raise InputError(
            f"{threads} threads for {usable_cpus()} CPU(s): give at most {most} (more only queue for the same CPUs)",
            param="threads",
        )


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = float(quota), float(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def process_age() -> float | None:
    """Seconds since this process started (interpreter start-up and imports included), or None."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def preload_torch() -> None:
    """Import torch and the engine in a thread, while the caller opens and plans its input.

    The engine package is what is imported (it imports torch): its first module sets OpenMP's wait
    policy before torch loads the OpenMP runtime (engine/openmp.py), which is read only then.
    """
    import importlib
    import sys
    import threading

    if "torch" not in sys.modules:
        name = f"{__package__.rpartition('.')[0]}.engine"
        threading.Thread(target=importlib.import_module, args=(name,), name="import-torch", daemon=True).start()
