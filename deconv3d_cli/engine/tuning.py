"""Which formulation computes a layer: decided once per machine, recorded, and never re-rolled.

Every formulation is exact, but they round differently (and oneDNN picks its kernels by shape), so a
choice made by timing in each process made the same command write different bytes from run to run.
Here a choice is made once for everything it depends on (the layer's geometry and channels, the
formulations this engine offers, precision, device, torch build, CPU or GPU model and the slab's size
class) and recorded in a small cache, so every later process on this machine, a resumed run and every
Dask worker follow it:

- the cache is one JSON file per decision under `$DECONV3D_TUNING_DIR`, else
  `$XDG_CACHE_HOME/deconv3d/tuning`, else `~/.cache/deconv3d/tuning`;
- a new decision is written to a temporary file and linked into place only if no other process got
  there first (`os.link` fails on an existing name); the loser adopts the winner's choice, so two
  concurrent first runs still agree;
- an unreadable or foreign entry is ignored with one warning and replaced;
- `DECONV3D_TUNING=off` (or an unwritable cache on a miss) uses `rule()`, a fixed function of the
  same key: deterministic, without timing;
- kernels the `separable` formulation can express (the presets) take it without any timing: it is the
  fastest by a wide margin (9 ms against 38 ms for trilinear x2 of 128^3).

The choice does not depend on the CPU thread count: every formulation gives the same bytes at any
thread count (tests/test_determinism.py checks it on this machine), so one decision serves a process
with all cores and a Dask worker with one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import warn_once

# 2: formulations run in pieces on the engine's own threads (workers.py) and are timed that way, so the
# decisions timed before (whole slabs on torch's pool) are not followed; they stay on disk, unused.
# 3: entries recorded while `auto` briefly offered the phase formulations alone are not followed.
VERSION = 3
ENV_OFF = "DECONV3D_TUNING"
ENV_DIR = "DECONV3D_TUNING_DIR"

# Where a decision came from (the report's `engine_path_source`).
CACHED = "tuning cache"
TIMED = "timed on this machine, recorded"
RULE = "rule"
EVIDENT = "separable kernel"

_MEMO: dict[str, str] = {}  # this process's decisions by key digest (the cache's own content)


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(ENV_OFF, "").strip().lower() not in ("0", "off", "false", "no")


def cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    if environ.get(ENV_DIR):
        return Path(environ[ENV_DIR])
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deconv3d" / "tuning"


def processor() -> str:
    """The CPU model as the kernel names it (oneDNN's kernels are chosen by instruction set)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def digest(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def decide(key: dict[str, Any], measure: Callable[[], tuple[str, dict[str, float]]], rule_path: str) -> tuple[str, str]:
    """(formulation, where it came from) for `key`: recorded, else measured and recorded, else the rule."""
    name = digest(key)
    if name in _MEMO:
        return _MEMO[name], CACHED
    if not enabled():
        return rule_path, RULE
    folder = cache_dir()
    recorded = _read(folder / f"{name}.json", key)
    if recorded is not None:
        _MEMO[name] = recorded
        return recorded, CACHED
    try:
        folder.mkdir(parents=True, exist_ok=True)
        writable = os.access(folder, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        _warn(f"the tuning cache {folder} cannot be written; formulations follow the fixed rule ({ENV_DIR} moves it)")
        return rule_path, RULE
    path, timings = measure()
    winner = _record(folder / f"{name}.json", key, path, timings)
    _MEMO[name] = winner
    return winner, CACHED if winner != path else TIMED


def forget() -> None:
    """Drop this process's memory of decisions (tests; the files stay)."""
    _MEMO.clear()


def _read(path: Path, key: Mapping[str, Any]) -> str | None:
    try:
        with open(path) as f:
            entry = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as exc:
        _warn(f"ignoring the unreadable tuning entry {path} ({exc})")
        return None
    if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("path"), str):
        _warn(f"ignoring the tuning entry {path}: it was written for another key or version")
        return None
    return entry["path"]


def _record(path: Path, key: dict[str, Any], choice: str, timings: dict[str, float]) -> str:
    """Write the decision unless another process has; returns the decision that stands."""
    entry = {"version": VERSION, "key": key, "path": choice, "timings_s": timings}
    fd, tmp = tempfile.mkstemp(prefix=".tuning-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(entry, f, sort_keys=True, indent=1)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails if a concurrent process recorded first
        except FileExistsError:
            existing = _read(path, key)
            if existing is not None:
                return existing
            os.replace(tmp, path)  # the entry there was unreadable or foreign: ours replaces it
            tmp = ""
    except OSError as exc:
        _warn(f"could not record a tuning decision in {path.parent} ({exc.strerror or exc})")
    finally:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return choice


def _warn(message: str) -> None:
    warn_once(message)
