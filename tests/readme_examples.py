"""The README's console examples, parsed and run as a user would type them.

A ```console block holds commands (`$ ...`, `\\` continuing a line) each followed by the lines it
prints (stdout and stderr together). Printed lines are compared exactly, numbers included, but
for the few numbers that differ from run to run or machine to machine, listed in VARYING (durations,
speeds, thread counts), which stand for any number (the README may show them as `N`); `...` stands
for any lines. A command ending in `# exit N` must exit with N, every other with 0. Blocks marked
```sh are illustrations and are not run. Every block runs, in order, in one folder holding copies of
`sample_data/` and `tests/fixtures_import/`: what a block makes, later blocks may use, and every path
printed is relative to it.

`python tests/readme_examples.py` prints what each command prints now (to write the README from).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The numbers that vary, each matched with what follows it so that no other number is loosened:
# durations ("0.03 s", "1.5 ms", "15.6 min"), speeds ("26.5 Mvox/s"), and thread counts (the CPUs of
# the machine: "1 thread(s)", "8 CPU thread(s)"). Sizes, shapes, plans, memory estimates and every
# computed value are deterministic and compared as printed. The plans assume the default tile budget,
# which a cgroup or SLURM limit below 2 GiB lowers (geometry/sizes.py).
VARYING = [
    re.compile(r"(?:\d+(?:\.\d+)?|N)(?= (?:s|ms|min)\b)"),
    re.compile(r"(?:\d+(?:\.\d+)?|N)(?= Mvox/s\b)"),
    re.compile(r"(?:\d+|N)(?= (?:CPU )?thread\(s\))"),
]
EXIT = re.compile(r"#\s*exit\s+(\d+)\s*$")


@dataclass
class Example:
    command: str
    expected: list[str] = field(default_factory=list)
    line: int = 0

    @property
    def exit_code(self) -> int:
        m = EXIT.search(self.command)
        return int(m.group(1)) if m else 0


def examples(text: str) -> list[Example]:
    out: list[Example] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```console":
            i += 1
            continue
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            row = lines[i]
            if row.startswith("$ "):
                command, start = row[2:], i + 1
                while command.endswith("\\"):
                    i += 1
                    command = command[:-1] + " " + lines[i].strip()
                out.append(Example(command, line=start))
            elif out:
                out[-1].expected.append(row)
            i += 1
        i += 1
    return out


def loose(line: str) -> str:
    """`line` with each varying number (VARYING) written N; every other character kept."""
    line = line.rstrip()
    for pattern in VARYING:
        line = pattern.sub("N", line)
    return line


def matches(expected: list[str], actual: list[str]) -> str | None:
    """None when `actual` shows `expected` (in order; `...` for any lines); else what is missing."""
    want = [e for e in expected if e.strip()]
    got = [loose(a) for a in actual if a.strip()]
    pos, gap = 0, False
    for e in want:
        if e.strip() == "...":
            gap = True
            continue
        target = loose(e)
        if gap:
            while pos < len(got) and got[pos] != target:
                pos += 1
        if pos >= len(got) or got[pos] != target:
            return e
        pos, gap = pos + 1, False
    return None


def workspace(folder: Path) -> dict[str, str]:
    """The folder a reader of the README works in, and the environment the commands run with."""
    shutil.copytree(ROOT / "sample_data", folder / "sample_data", dirs_exist_ok=True)
    shutil.copytree(ROOT / "tests" / "fixtures_import", folder / "tests" / "fixtures_import", dirs_exist_ok=True)
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "TQDM_DISABLE": "1",
        "DECONV3D_TUNING_DIR": str(folder / ".tuning"),
        "COLUMNS": "100",
    }


def run(example: Example, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", example.command], cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=600,
    )  # fmt: skip


if __name__ == "__main__":  # pragma: no cover - a writing aid
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        env = workspace(Path(tmp))
        for ex in examples((ROOT / "README.md").read_text()):
            res = run(ex, Path(tmp), env)
            print(f"$ {ex.command}    [exit {res.returncode}]")
            print(res.stdout.rstrip())
