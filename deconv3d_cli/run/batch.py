"""Many inputs in one process: skip/continue, read-ahead of the next file, and the run report.

One process for a whole list pays for `import torch` and the engine set-up once, and opens (for a
`.nii.gz`, decompresses) the next file while the current one computes. Every file ends in the report
as done, skipped, failed, stopped or not run; the report decides the exit code, as black's `Report`
does. A stop (SIGTERM, Ctrl-C) ends the batch after the current file's finished tiles are kept: the
same command with `--skip-existing --resume` continues it (an `--overwrite` batch: `--continue-run ID
--resume`, run/continuation.py).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Deconv3dError
from .stop import Interrupted

REPORT_VERSION = 1
FAILURES = (Deconv3dError, OSError, RuntimeError, ValueError, MemoryError)  # reported per file


@dataclass
class FilePair:
    """One input and the output it gets."""

    input: Path
    output: Path


@dataclass
class FileResult:
    input: str
    output: str | None
    status: str  # done | skipped | failed | planned | stopped | not_run
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    code: int = 0  # a failure's exit status: 2 for an input or usage error, 1 for a failed run

    def as_json(self) -> dict[str, Any]:
        d = self.details
        keys = ("input_shape", "output_shape", "input_dtype", "output_dtype", "spacing_in", "spacing_out", "tiles",
                "device", "seconds", "voxels_per_s", "engine_path", "constraints", "regularization")  # fmt: skip
        return {"input": self.input, "output": self.output, "status": self.status, "error": self.error,
                **{k: d.get(k) for k in keys}}  # fmt: skip


@dataclass
class Report:
    """Outcomes of a run; decides the exit code (0 all done or skipped, 1 any failure)."""

    files: list[FileResult] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    on_file: Callable[[FileResult], None] | None = None

    def add(self, result: FileResult, announce: bool = True) -> None:
        self.files.append(result)
        if announce and self.on_file is not None:
            self.on_file(result)

    def count(self, status: str) -> int:
        return sum(1 for f in self.files if f.status == status)

    @property
    def exit_code(self) -> int:
        """0 when every file is done or skipped, else 1 (DESIGN.md: "1 a run failed, or some files of a
        batch"); each file's own cause and status (2: input, 1: run) are in its entry."""
        return 1 if any(f.status in ("failed", "not_run", "stopped") for f in self.files) else 0

    def as_json(self) -> dict[str, Any]:
        statuses = ("done", "skipped", "failed", "not_run", "planned", "stopped")
        totals: dict[str, Any] = {"files": len(self.files), **{s: self.count(s) for s in statuses}}
        totals["seconds"] = round(time.perf_counter() - self.started, 3)
        return {"version": REPORT_VERSION, "status": self.status, "files": [f.as_json() for f in self.files],
                "totals": totals, "exit_code": self.exit_code}  # fmt: skip

    @property
    def status(self) -> str:
        """The batch as one word: stopped, failed (any file failed or not run), planned (a dry run) or done."""
        if self.count("stopped"):
            return "stopped"
        if self.exit_code:
            return "failed"
        return "planned" if self.count("planned") else "done"

    def summary(self) -> str:
        parts = [f"{self.count('done')} done"]
        for status in ("skipped", "planned", "failed", "stopped", "not_run"):
            if self.count(status):
                parts.append(f"{self.count(status)} {status.replace('_', ' ')}")
        return f"{len(self.files)} file(s): " + ", ".join(parts) + f" in {time.perf_counter() - self.started:.1f} s"

    def not_run(self, pairs: Sequence[FilePair], why: str) -> None:
        for rest in pairs:
            self.add(FileResult(str(rest.input), str(rest.output), "not_run", why), announce=False)


def exit_code(exc: BaseException) -> int:
    return int(getattr(exc, "exit_code", 1)) if isinstance(exc, Deconv3dError) else 1


def error_text(exc: BaseException, line: Callable[[Deconv3dError], str] | None = None) -> str:
    """One line for a file's failure (`line` spells a library error, e.g. with the CLI's flags)."""
    if isinstance(exc, Deconv3dError):
        return line(exc) if line else exc.line()
    return f"{type(exc).__name__}: {exc}"


class _Ahead:
    """Prepares the next file (opens its input) in a thread while the current one computes."""

    def __init__(self, prepare: Callable[[FilePair], Any]) -> None:
        self.prepare = prepare
        self.thread: threading.Thread | None = None
        self.result: tuple[Any, BaseException | None] = (None, None)

    def start(self, pair: FilePair | None) -> None:
        self.thread = None
        if pair is not None:
            self.thread = threading.Thread(target=self._run, args=(pair,), daemon=True)
            self.thread.start()

    def _run(self, pair: FilePair) -> None:
        try:
            self.result = (self.prepare(pair), None)
        except Exception as exc:  # noqa: BLE001 - reported per file
            self.result = (None, exc)

    def take(self) -> tuple[Any, BaseException | None]:
        if self.thread is not None:
            self.thread.join()
        out, self.result = self.result, (None, None)
        return out


def run_batch(
    jobs: Sequence[FilePair],
    prepare: Callable[[FilePair], Any],
    execute: Callable[[Any], dict[str, Any]],
    describe: Callable[[Any], dict[str, Any]],
    close: Callable[[Any], None],
    *,
    skip_existing: bool = False,
    fail_fast: bool = False,
    dry_run: bool = False,
    on_file: Callable[[FileResult], None] | None = None,
    debug: bool = False,
    error_line: Callable[[Deconv3dError], str] | None = None,
) -> Report:
    """Run jobs in order, preparing job k+1 (opening its input) in a thread while job k computes."""
    report = Report(on_file=on_file)
    todo = skipped(jobs, skip_existing, report)
    ahead = _Ahead(prepare)
    ahead.start(todo[0] if todo else None)
    for k, pair in enumerate(todo):
        result = FileResult(str(pair.input), str(pair.output), "failed")
        prep = None
        try:  # a signal between two files lands here too: the report still says what each file became
            prep, error = ahead.take()
            ahead.start(todo[k + 1] if k + 1 < len(todo) else None)
            if error is not None:
                raise error
            result.details, result.status = (describe(prep), "planned") if dry_run else (execute(prep), "done")
            if dry_run:
                close(prep)
        except Interrupted as stopped:
            result.status, result.error = "stopped", f"stopped by {stopped}"
            report.add(result)
            _close_ahead(ahead, close)
            report.not_run(todo[k + 1 :], f"stopped by {stopped}")
            stopped.report = report  # type: ignore[attr-defined]
            raise
        except FAILURES as exc:
            if prep is not None:
                close(prep)
            result.error = error_text(exc, error_line)
            result.code = exit_code(exc)
            if debug:
                import traceback

                traceback.print_exception(exc, file=sys.stderr)
        report.add(result)
        if result.status == "failed" and fail_fast:
            _close_ahead(ahead, close)
            report.not_run(todo[k + 1 :], "skipped by --fail-fast")
            break
    return report


def skipped(jobs: Sequence[FilePair], skip_existing: bool, report: Report) -> list[FilePair]:
    """The jobs to run; with `skip_existing`, finished outputs are reported as skipped instead."""
    todo = []
    for pair in jobs:
        if skip_existing and pair.output.exists():
            report.add(FileResult(str(pair.input), str(pair.output), "skipped"))
        else:
            todo.append(pair)
    return todo


def _close_ahead(ahead: _Ahead, close: Callable[[Any], None]) -> None:
    prep, _ = ahead.take()
    if prep is not None:
        close(prep)
