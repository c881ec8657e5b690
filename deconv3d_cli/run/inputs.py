"""Many inputs in one process: expansion, output names, shards, skip/continue, and the run report.

One process for a whole list pays for `import torch` and the engine set-up once, and opens (for a
`.nii.gz`, decompresses) the next file while the current one computes. Every file ends in the report
as done, skipped or failed; the report decides the exit code, as black's `Report` does.
"""

from __future__ import annotations

import glob
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .. import io as vio
from ..errors import Deconv3dError, InputError, SpecError

EXTENSIONS = {"npy": ".npy", "h5": ".h5", "hdf5": ".h5", "nii": ".nii", "nii.gz": ".nii.gz", "zarr": ".zarr"}
TEMPLATE_FIELDS = ("stem", "name", "ext", "scale", "parent", "index")
DEFAULT_TEMPLATE = "{stem}_x{scale}{ext}"
REPORT_VERSION = 1


def split_name(path: Path) -> tuple[str, str]:
    """('scan', '.nii.gz') for scan.nii.gz: the double suffix of gzipped NIfTI counts as one."""
    name = path.name
    if name.lower().endswith(".nii.gz"):
        return name[: -len(".nii.gz")], name[-len(".nii.gz") :]
    return path.stem, path.suffix


def expand_inputs(patterns: Sequence[str], from_list: TextIO | None = None) -> list[Path]:
    """Paths from arguments (quoted globs expanded here, `**` recursive) and from a list, deduplicated.

    A pattern that matches nothing is kept as given, so that it fails as a missing file in the report
    rather than vanishing silently.
    """
    items: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise InputError("matched no files", source=pattern)
            items.extend(matches)
        else:
            items.append(pattern)
    if from_list is not None:
        for line in from_list:
            line = line.strip()
            if line and not line.startswith("#"):
                items.append(line)
    seen: set[str] = set()
    out = []
    for item in items:
        key = os.path.normpath(item)
        if key not in seen:
            seen.add(key)
            out.append(Path(item))
    return out


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' with 0 <= I < N (a SLURM array task id, say)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"{text!r}: use I/N with 0 <= I < N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"{text!r}: use I/N with 0 <= I < N, e.g. 0/4")
    return i, n


def shard(paths: Sequence[Path], index: int, count: int) -> list[Path]:
    """Round robin over the list as given: parts are disjoint, cover it, and differ in size by <= 1."""
    return [p for k, p in enumerate(paths) if k % count == index]


def output_name(
    path: Path,
    template: str,
    scale: Sequence[int] | None,
    ext: str | None,
    index: int,
) -> str:
    stem, in_ext = split_name(path)
    values = {
        "stem": stem,
        "name": path.name,
        "ext": ext or in_ext,
        "scale": "x".join(str(s) for s in scale) if scale and len(set(scale)) > 1 else str((scale or [1])[0]),
        "parent": path.resolve().parent.name,
        "index": index,
    }
    try:
        name = template.format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        raise SpecError(
            f"{template!r} uses an unknown placeholder ({exc}); available: {', '.join(TEMPLATE_FIELDS)}",
            param="name_template",
        ) from None
    if not name or "/" in name or name in (".", ".."):
        raise SpecError(f"{template!r} gives the file name {name!r}", param="name_template")
    return name


@dataclass
class FileResult:
    input: str
    output: str | None
    status: str  # done | skipped | failed | planned | not_run
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        d = self.details
        return {
            "input": self.input,
            "output": self.output,
            "status": self.status,
            "error": self.error,
            "input_shape": d.get("input_shape"),
            "output_shape": d.get("output_shape"),
            "input_dtype": d.get("input_dtype"),
            "output_dtype": d.get("output_dtype"),
            "spacing_in": d.get("spacing_in"),
            "spacing_out": d.get("spacing_out"),
            "tiles": d.get("tiles"),
            "device": d.get("device"),
            "seconds": d.get("seconds"),
            "voxels_per_s": d.get("voxels_per_s"),
            "engine_path": d.get("engine_path"),
            "constraints": d.get("constraints"),
            "regularization": d.get("regularization"),
        }


@dataclass
class Report:
    """Outcomes of a run; decides the exit code (0 all done or skipped, 1 any failure)."""

    files: list[FileResult] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def add(self, result: FileResult) -> None:
        self.files.append(result)

    def count(self, status: str) -> int:
        return sum(1 for f in self.files if f.status == status)

    @property
    def exit_code(self) -> int:
        return 1 if any(f.status in ("failed", "not_run") for f in self.files) else 0

    def as_json(self) -> dict[str, Any]:
        return {
            "version": REPORT_VERSION,
            "files": [f.as_json() for f in self.files],
            "totals": {
                "files": len(self.files),
                "done": self.count("done"),
                "skipped": self.count("skipped"),
                "failed": self.count("failed"),
                "not_run": self.count("not_run"),
                "planned": self.count("planned"),
                "seconds": round(time.perf_counter() - self.started, 3),
            },
            "exit_code": self.exit_code,
        }

    def summary(self) -> str:
        parts = [f"{self.count('done')} done"]
        for status in ("skipped", "planned", "failed", "not_run"):
            if self.count(status):
                parts.append(f"{self.count(status)} {status.replace('_', ' ')}")
        return f"{len(self.files)} file(s): " + ", ".join(parts) + f" in {time.perf_counter() - self.started:.1f} s"


@dataclass
class Job:
    input: Path
    output: Path


def run_batch(
    jobs: Sequence[Job],
    prepare: Callable[[Job], Any],
    execute: Callable[[Any], dict[str, Any]],
    describe: Callable[[Any], dict[str, Any]],
    close: Callable[[Any], None],
    *,
    skip_existing: bool = False,
    fail_fast: bool = False,
    dry_run: bool = False,
    on_file: Callable[[FileResult], None] | None = None,
    debug: bool = False,
) -> Report:
    """Run jobs in order, preparing job k+1 (opening its input) in a thread while job k computes."""
    report = Report()
    todo = []
    for job in jobs:
        if skip_existing and job.output.exists():
            _note(report, FileResult(str(job.input), str(job.output), "skipped"), on_file)
        else:
            todo.append(job)

    def prepared(job: Job) -> tuple[Any, BaseException | None]:
        try:
            return prepare(job), None
        except Exception as exc:  # noqa: BLE001 - reported per file
            return None, exc

    ahead: dict[str, Any] = {}
    worker: threading.Thread | None = None

    def start(k: int) -> threading.Thread | None:
        if k >= len(todo):
            return None
        t = threading.Thread(target=lambda: ahead.__setitem__("next", prepared(todo[k])), daemon=True)
        t.start()
        return t

    worker = start(0)
    for k, job in enumerate(todo):
        assert worker is not None
        worker.join()
        prep, error = ahead.pop("next")
        worker = start(k + 1)
        result = FileResult(str(job.input), str(job.output), "failed")
        try:
            if error is not None:
                raise error
            if dry_run:
                result.details = describe(prep)
                result.status = "planned"
                close(prep)
            else:
                result.details = execute(prep)
                result.status = "done"
        except (Deconv3dError, OSError, RuntimeError, ValueError, MemoryError) as exc:
            if prep is not None:
                close(prep)
            result.error = exc.line() if isinstance(exc, Deconv3dError) else f"{type(exc).__name__}: {exc}"
            if debug:
                import traceback

                traceback.print_exception(exc, file=sys.stderr)
        _note(report, result, on_file)
        if result.status == "failed" and fail_fast:
            if worker is not None:
                worker.join()
                prep_next, _ = ahead.pop("next", (None, None))
                if prep_next is not None:
                    close(prep_next)
            for rest in todo[k + 1 :]:
                _note(report, FileResult(str(rest.input), str(rest.output), "not_run", "skipped by --fail-fast"), None)
            break
    return report


def _note(report: Report, result: FileResult, on_file: Callable[[FileResult], None] | None) -> None:
    report.add(result)
    if on_file is not None:
        on_file(result)


def plan_outputs(
    inputs: Iterable[Path],
    outdir: Path,
    template: str,
    scale: Sequence[int] | None,
    output_format: str | None,
) -> list[Job]:
    """Output path per input; two inputs that would write the same output are refused up front."""
    ext = None
    if output_format:
        key = output_format.lower().lstrip(".")
        if key not in EXTENSIONS:
            raise SpecError(f"{output_format!r}; use one of {', '.join(EXTENSIONS)}", param="output_format")
        ext = EXTENSIONS[key]
    jobs, seen = [], {}
    for index, path in enumerate(inputs):
        name = output_name(path, template, scale, ext, index)
        out = outdir / name
        vio.format_of(out)
        if out in seen:
            raise SpecError(
                f"{seen[out]} and {path} would both be written to {out}; add {{parent}} or {{index}} to it",
                param="name_template",
            )
        seen[out] = path
        jobs.append(Job(path, out))
    return jobs
