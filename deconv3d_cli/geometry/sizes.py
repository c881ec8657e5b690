"""Sizes in bytes as people and job schedulers write them, and the memory budget a process may assume.

Units (`parse_bytes`) follow SLURM, docker, Java and `free`, the tools a pipeline's memory figures come
from: a bare letter is binary, as `--mem=4G` is 4 GiB in SLURM. Only the two-letter SI forms are
decimal, as a disk vendor writes them:

=====================  =======================  =========
written                meaning                  factor
=====================  =======================  =========
``123`` / ``123B``     bytes                    1
``K k KiB Ki``         kibibytes                2**10
``M m MiB Mi``         mebibytes                2**20
``G g GiB Gi``         gibibytes                2**30
``T t TiB Ti``         tebibytes                2**40
``KB MB GB TB``        SI kilo/mega/giga/tera   10**3 ... 10**12
=====================  =======================  =========

Units are matched case-insensitively (``gib``, ``Mb`` and ``kB`` work; ``mb`` is megabytes, not
mebibits: nothing here counts bits). The number may have decimals or an exponent and spaces around it
(``1.5G``, ``2 GiB``, ``1e9``); the value is computed exactly and rounded down to whole bytes.

`default_memory_limit` is the tile budget when the user gives none: 512 MiB, or a quarter of the
tightest memory limit the process runs under (cgroup v2 or v1, SLURM), whichever is smaller. See its
docstring for why a quarter.

This module is pure apart from reading the few cgroup files it is pointed at: no imports of the package.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30

_BINARY = {"k": 1, "m": 2, "g": 3, "t": 4}
_NUMBER = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*$")
# Anything larger is a typo, not a machine: 8 EiB is the most a signed 64-bit size can hold.
MAX_BYTES = (1 << 63) - 1
_EXAMPLES = "e.g. 512M, 2G, 1.5GiB, 4GB or 1000000000 (K/M/G/T and KiB..TiB are powers of 1024, KB..TB of 1000)"


def unit_factor(unit: str) -> int | None:
    """Bytes per `unit` ('' and 'B' are bytes), or None when it is not a size unit."""
    u = unit.lower()
    if u in ("", "b"):
        return 1
    if len(u) in (1, 2, 3) and u[0] in _BINARY and u[1:] in ("", "i", "ib"):
        return 1 << (10 * _BINARY[u[0]])
    if len(u) == 2 and u[0] in _BINARY and u[1] == "b":
        return 1000 ** _BINARY[u[0]]
    return None


def parse_bytes(text: str) -> int:
    """A size such as '512M', '1.5G', '2 GiB', '4GB' or '1e9' in bytes.

    K, M, G, T (either case, also KiB..TiB and Ki..Ti) are binary: 1G = 2**30 bytes, as SLURM, docker
    and Java read them. KB, MB, GB, TB are decimal: 1GB = 10**9 bytes. A plain number is bytes.
    Raises ValueError, with what would work, for anything else, for sizes that are zero, negative,
    not finite, round down to 0 bytes, or exceed 8 EiB.
    """
    raw = str(text)
    match = _NUMBER.match(raw)
    factor = None if match is None else unit_factor(match.group(2))
    if match is None or factor is None:
        raise ValueError(f"{raw.strip()!r} is not a size; use {_EXAMPLES}")
    digits, where = match.group(1), raw.strip()
    approx = float(digits)  # first as a float: Fraction('1e999999999') would build a billion-digit integer
    if approx < 0 or not re.search(r"[1-9]", digits.lower().split("e")[0]):
        raise ValueError(f"{where!r} must be a positive size, {_EXAMPLES}")
    if not math.isfinite(approx) or approx > MAX_BYTES:
        raise ValueError(f"{where!r} is larger than 8 EiB; use {_EXAMPLES}")
    if approx * factor < 0.5:  # also what underflows to 0.0 ('1e-400')
        raise ValueError(f"{where!r} is less than 1 byte; use {_EXAMPLES}")
    number = Fraction(digits)  # exact: '0.1G' is 107374182.4 bytes, not a float's guess
    value = math.floor(number * factor)
    if value < 1:
        raise ValueError(f"{where!r} is less than 1 byte; use {_EXAMPLES}")
    if value > MAX_BYTES:
        raise ValueError(f"{where!r} is larger than 8 EiB; use {_EXAMPLES}")
    return value


def format_bytes(n: float) -> str:
    """Bytes for people, in binary units: '512 B', '1.5 KiB', '22.9 MiB', '2.0 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


# ----------------------------------------------------------------------------------- memory limits

# 512 MiB: measured (whole processes, 256^3 trilinear x2 to .nii and .nii.gz, an 8-filter k3 s2 layer on
# 128^3 to .nii.gz), a 1 GiB budget ran no faster than 512 MiB but peaked 0.4-0.5 GiB higher, above
# SimpleITK's peak on the same job; 256 MiB cut the layer's tiles along rows and ran 20% slower.
DEFAULT_MEMORY_LIMIT = 512 * MIB
# The tiles of presets and resamplings (per-axis passes) use at most this much of the budget. Their
# passes are memory-bound: 256^3 trilinear x2 ran as fast in 128 MiB tiles as in 512 MiB ones (.nii.gz
# 3.50 s against 3.37, .h5 4.39 against 4.63) and peaked 0.45 GiB instead of 0.77 (.nii.gz; SimpleITK
# 0.69). --scale 1.5 of 256^3 .nii, 512 MiB against 128 MiB tiles, medians of 3: lanczos 2.65 s against
# 2.60 (0.53 GiB peak against 0.32), bspline 2.81 against 3.01 (0.68 GiB against 0.40; SimpleITK 0.52),
# its 33-row prefilter halo recomputed over more tiles; --voxel-size 0.5 of 160 x 160 x 64 at 1.2 x 1.2
# x 3 mm, bspline 2.19 against 2.84 (0.47 GiB against 0.33; SimpleITK 0.35, 8.3 s). Not for layers (the
# 8-filter layer above), whose tiles cost more halo per voxel.
SEPARABLE_TILE_LIMIT = 128 * MIB
# The tile budget is this fraction of a hard limit. The budget covers the tiles and the output
# writer's buffers (io/buffers.py); the same process also holds Python, torch and the package (the
# fixed footprint, about 230-250 MiB resident), the readers' buffers, and the page cache of the files
# it streams, which a cgroup charges to the job as well. A quarter
# leaves three quarters for all of that, so a 2 GiB job gets 512 MiB of tiles and still fits.
LIMIT_SHARE = Fraction(1, 4)
# cgroup v1 writes "no limit" as the largest page-aligned counter (9223372036854771712 on x86-64).
_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class MemoryLimit:
    """One limit that applies to this process: where it comes from and how many bytes it allows."""

    source: str  # e.g. 'cgroup v2 /sys/fs/cgroup/job_12/memory.max', 'SLURM_MEM_PER_NODE=4096'
    limit: int


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text.isdigit():  # 'max' (cgroup v2 for none), or anything unreadable
        return None
    value = int(text)
    return value if 0 < value < _UNLIMITED else None


def _ancestors(root: Path, cgroup: str) -> list[Path]:
    """`root/cgroup`, then each parent up to `root`: a limit set on an enclosing group (a SLURM job's,
    above its step's) applies too. In a container the recorded path may not exist under the mount
    (the container sees its own group as the root), and the walk then reaches the root's limit."""
    parts = [p for p in cgroup.strip().split("/") if p and p not in (".", "..")]
    return [root.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def cgroup_memory_limits(proc_root: Path | str = "/proc", sys_root: Path | str = "/sys") -> list[MemoryLimit]:
    """Memory limits of this process's cgroups: v2 `memory.max`, v1 `memory.limit_in_bytes`.

    The process's groups come from `PROC/self/cgroup` (`0::/path` for v2, `N:...memory...:/path` for
    v1); their files are looked for at the standard mount points, `SYS/fs/cgroup` (v2, or the v1
    controller folder `memory/`) and `SYS/fs/cgroup/unified` (v2 in a hybrid layout), in the group
    and every group above it. A limit of 'max' (or v1's huge 'unlimited' number) is no limit.
    """
    try:
        lines = (Path(proc_root) / "self" / "cgroup").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    base = Path(sys_root) / "fs" / "cgroup"
    found: list[MemoryLimit] = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":
            roots, name, kind = [base, base / "unified"], "memory.max", "cgroup v2"
        elif "memory" in controllers.split(","):
            roots, name, kind = [base / "memory"], "memory.limit_in_bytes", "cgroup v1"
        else:
            continue
        for root in roots:
            for group in _ancestors(root, path):
                value = _read_int(group / name)
                if value is not None:
                    found.append(MemoryLimit(f"{kind} {group / name}", value))
    return found


def _int_env(environ: Mapping[str, str], name: str) -> int | None:
    text = str(environ.get(name, "")).strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def _job_cpus(environ: Mapping[str, str]) -> int:
    """CPUs of the job on this node: SLURM_CPUS_ON_NODE, else the first of SLURM_JOB_CPUS_PER_NODE
    ('4(x2),2' means 4 on each of the first two nodes), else SLURM_CPUS_PER_TASK, else 1."""
    cpus = _int_env(environ, "SLURM_CPUS_ON_NODE")
    if cpus is None:
        first = str(environ.get("SLURM_JOB_CPUS_PER_NODE", "")).split(",")[0].split("(")[0].strip()
        cpus = int(first) if first.isdigit() and int(first) > 0 else None
    return cpus or _int_env(environ, "SLURM_CPUS_PER_TASK") or 1


def slurm_memory_limits(environ: Mapping[str, str] | None = None) -> list[MemoryLimit]:
    """SLURM's memory for this job on this node: SLURM_MEM_PER_NODE, else SLURM_MEM_PER_CPU times the
    job's CPUs on the node; both are MiB. 0 (`--mem=0`, all of the node's memory) is no limit here."""
    env = os.environ if environ is None else environ
    per_node = _int_env(env, "SLURM_MEM_PER_NODE")
    if per_node is not None:
        return [MemoryLimit(f"SLURM_MEM_PER_NODE={per_node}", per_node * MIB)]
    per_cpu = _int_env(env, "SLURM_MEM_PER_CPU")
    if per_cpu is not None:
        cpus = _job_cpus(env)
        return [MemoryLimit(f"SLURM_MEM_PER_CPU={per_cpu} x {cpus} CPU(s)", per_cpu * cpus * MIB)]
    return []


def memory_limits(
    proc_root: Path | str = "/proc", sys_root: Path | str = "/sys", environ: Mapping[str, str] | None = None
) -> list[MemoryLimit]:
    """Every memory limit found for this process (cgroups, then SLURM), tightest first."""
    found = cgroup_memory_limits(proc_root, sys_root) + slurm_memory_limits(environ)
    return sorted(found, key=lambda m: m.limit)


def budget_for(limit: int | None) -> int:
    """The default tile budget under a hard `limit` (bytes; None for none): DEFAULT_MEMORY_LIMIT, or
    LIMIT_SHARE of the limit when that is less, rounded down to whole MiB (to whole bytes below 4 MiB),
    at least 1 byte."""
    if limit is None:
        return DEFAULT_MEMORY_LIMIT
    share = math.floor(limit * LIMIT_SHARE)
    if share >= 4 * MIB:
        share -= share % MIB
    return max(1, min(DEFAULT_MEMORY_LIMIT, share))


def default_memory_limit(
    proc_root: Path | str = "/proc", sys_root: Path | str = "/sys", environ: Mapping[str, str] | None = None
) -> int:
    """The `--memory-limit` to use when none is given, in bytes.

    DEFAULT_MEMORY_LIMIT (512 MiB) when no limit applies to the process; otherwise no more than a quarter
    (LIMIT_SHARE) of the
    tightest of its cgroup memory limit (v2 `memory.max`, v1 `memory.limit_in_bytes`, of its own group
    or any above it) and SLURM's allocation (SLURM_MEM_PER_NODE, or SLURM_MEM_PER_CPU times its CPUs).
    The other three quarters are for Python and torch (about 300 MiB resident), I/O buffers and the page
    cache that the limit also counts. A larger limit never raises the budget above the default: the same
    command then tiles the same way on a laptop and in a big job. The sources are arguments so tests
    can fake them; `memory_limits` says which limit was found.
    """
    found = memory_limits(proc_root, sys_root, environ)
    return budget_for(found[0].limit if found else None)
