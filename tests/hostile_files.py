"""Hostile files for tests/test_hostile_*.py, generated at test time, each small on disk.

Decompression bombs are built without compressing their payload: after a full flush, deflate encodes
each further MiB of zeros as the same bytes, so a 512 MiB member costs one MiB of compression and a
CRC pass; the archive is then written by hand (local headers, central directory), as any zip tool would.
"""

from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIB = 1 << 20


@dataclass
class Member:
    name: str
    raw: bytes  # the stored bytes (deflated or not)
    crc: int
    size: int  # declared uncompressed size
    deflated: bool


def stored(name: str, data: bytes) -> Member:
    return Member(name, data, zlib.crc32(data), len(data), False)


def deflated(name: str, data: bytes) -> Member:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return Member(name, c.compress(data) + c.flush(), zlib.crc32(data), len(data), True)


def zeros_bomb(name: str, head: bytes, mib: int) -> Member:
    """`head` followed by `mib` MiB of zeros, deflated (about 1 KiB per MiB)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    raw = [c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)]
    zero = bytes(MIB)
    block = c.compress(zero) + c.flush(zlib.Z_FULL_FLUSH)
    raw += [block] * mib
    raw.append(c.flush())
    crc = zlib.crc32(head)
    for _ in range(mib):
        crc = zlib.crc32(zero, crc)
    return Member(name, b"".join(raw), crc, len(head) + mib * MIB, True)


def write_zip(path: Path, members: list[Member]) -> Path:
    """A zip archive (no zip64: members under 4 GiB) holding `members` exactly as given."""
    out, central = io.BytesIO(), []
    for m in members:
        name = m.name.encode()
        method = 8 if m.deflated else 0
        offset = out.tell()
        out.write(
            struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, m.crc, len(m.raw), m.size, len(name), 0)
        )
        out.write(name)
        out.write(m.raw)
        central.append(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                0,
                method,
                0,
                0x21,
                m.crc,
                len(m.raw),
                m.size,
                len(name),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            + name
        )
    start = out.tell()
    for c in central:
        out.write(c)
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), out.tell() - start, start, 0))
    path.write_bytes(out.getvalue())
    return path


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    """An .npy header (version 1.0) for `shape`, numpy's own writer, shape not checked."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def alias_bomb(levels: int = 9, width: int = 10) -> str:
    """YAML whose `name:` is `width**levels` strings when its aliases are expanded (500 bytes here)."""
    lines = [f"  a0: &a0 [{', '.join(['x'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]")
    return "filters: 1\nkernel_size: 2\nstrides: 2\nname:\n" + "\n".join(lines) + "\n"


# Runs the CLI and, at exit, writes the process's own peak resident memory (VmHWM of /proc/self/status:
# per address space, so unlike ru_maxrss it does not include the forking test process's memory).
_RUNNER = """
import atexit, os, runpy, sys
def _peak():
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    with open(os.environ["DECONV3D_TEST_PEAK"], "w") as out:
        out.write(str(kib))
atexit.register(_peak)
sys.argv = ["deconv3d", *sys.argv[1:]]
runpy.run_module("deconv3d_cli", run_name="__main__")
"""


@dataclass
class Result:
    code: int  # the exit status, or -N when signal N killed the process
    lines: list[str]  # stderr
    peak_mib: float | None  # peak resident memory (None when the process died of a signal)


def cli(*args: object, limits: dict[int, int] | None = None, timeout: float = 120, cwd: Path | None = None) -> Result:
    """`python -m deconv3d_cli ARGS` in a child process, with optional resource limits set in the child only."""
    import resource
    import tempfile

    def preexec() -> None:
        for which, value in (limits or {}).items():
            resource.setrlimit(which, (value, value))

    fd, peak_file = tempfile.mkstemp(prefix="deconv3d-peak-")
    os.close(fd)
    env = {**os.environ, "TQDM_DISABLE": "1", "DECONV3D_TEST_PEAK": peak_file}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _RUNNER, *map(str, args)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=preexec if limits else None,
            env=env,
            cwd=cwd,
            timeout=timeout,
        )
        text = Path(peak_file).read_text()
        peak = int(text) / 1024 if text else None
    finally:
        os.unlink(peak_file)
    return Result(proc.returncode, proc.stderr.decode("utf-8", "replace").splitlines(), peak)


def one_error_line(lines: list[str], *fragments: str) -> str:
    """The single stderr line of a refusal, after checking there is no traceback and it says `fragments`."""
    text = "\n".join(lines)
    assert "Traceback" not in text, text
    assert len(lines) == 1, text
    line = lines[0]
    assert line.startswith("deconv3d: error: "), line
    for frag in fragments:
        assert frag in line, (frag, line)
    return line


def strays(folder: Path) -> list[str]:
    """Names of our temporary files left in `folder` (a failed run must leave none)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".partial-") or p.name.startswith(".replaced-"))


SIGNALS = {-signal.SIGBUS: "SIGBUS", -signal.SIGSEGV: "SIGSEGV", -signal.SIGKILL: "SIGKILL"}
