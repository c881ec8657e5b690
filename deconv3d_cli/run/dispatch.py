"""The one function that picks a runner: one output or many, here or on a cluster, for real or planned.

The CLI describes what was asked (a `Request`) and calls `upsample`; every runner below starts from
the same `job.prepare`, so a dry run, a local run, a batch and a cluster run make the same decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Deconv3dError, InputError
from ..layer.spec import LayerSpec
from . import continuation, inputs
from .batch import FileResult, Report, run_batch
from .job import LayerSource, prepare
from .options import Options
from .stop import Interrupted


@dataclass(frozen=True)
class Batch:
    """How many inputs become outputs (`-O OUTDIR`)."""

    output_dir: Path
    template: str = inputs.DEFAULT_TEMPLATE
    output_format: str | None = None
    shard: tuple[int, int] | None = None  # (I, N): part I of N
    skip_existing: bool = False
    fail_fast: bool = False
    continue_run: str | None = None  # the id of a stopped --overwrite batch this one finishes


@dataclass(frozen=True)
class Request:
    layer: LayerSource
    inputs: Sequence[str]  # paths or quoted globs (expanded here for a batch)
    options: Options
    output: Path | None = None  # one input, one output (-o)
    batch: Batch | None = None  # or many (-O)
    listed: Sequence[str] = field(default_factory=tuple)  # more inputs, one per line (--from-list)
    dry_run: bool = False
    input_shape: str | None = None  # a virtual input for planning (with dry_run)


def upsample(
    request: Request,
    on_file: Callable[[FileResult], None] | None = None,
    error_line: Callable[[Deconv3dError], str] | None = None,
    debug: bool = False,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any] | Report:
    """Run (or plan) what `request` asks: a report for one output, or a batch `Report`.

    `on_start(plan)`: called with one output's plan as soon as it is made, before anything is computed.
    """
    try:
        if request.batch is not None:
            return _many(request, on_file, error_line, debug)
        return _one(request, on_start)
    except Interrupted as stopped:
        stopped.overwrite = request.options.write.overwrite  # type: ignore[attr-defined]
        stopped.batch = request.batch is not None  # type: ignore[attr-defined]
        raise


def _one(request: Request, on_start: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    assert request.output is not None
    source, output, opts = Path(request.inputs[0]), request.output, request.options
    if request.input_shape is not None or (opts.cluster.scheduler and request.dry_run):
        from .dask.runner import cluster_options
        from .dask.sizing import dry_run

        return dry_run(request.layer, source, output, cluster_options(opts), request.input_shape)
    if opts.cluster.scheduler:
        from .dask.runner import run_one

        return run_one(request.layer, source, output, opts, on_start=on_start)
    if request.dry_run:
        job = prepare(request.layer, source, output, opts)
        job.close()
        return {**job.describe(), "status": "planned"}
    from .local import run_job

    return run_job(request.layer, source, output, opts, on_start=on_start)


def batch_pairs(request: Request, dropped: list[tuple[Path, str]] | None = None) -> list[Any]:
    """The (input, output) pairs of a batch request; refused whole when two inputs would collide.

    What is left out (what a glob matched that is no volume, a path given twice) goes to `dropped` with
    why, to be reported as skipped."""
    batch = request.batch
    assert batch is not None
    if batch.output_dir.exists() and not batch.output_dir.is_dir():
        raise InputError("is a file; -O takes a folder for the outputs", source=str(batch.output_dir))
    found = inputs.expand_inputs(list(request.inputs), request.listed, dropped)
    if batch.shard is not None:
        found = inputs.shard(found, *batch.shard)
    return inputs.plan_outputs(found, batch.output_dir, batch.template, _scale_of(request.layer), batch.output_format)


def _many(
    request: Request,
    on_file: Callable[[FileResult], None] | None,
    error_line: Callable[[Deconv3dError], str] | None,
    debug: bool,
) -> Report:
    """Every input through one process and one engine per channel count (or through the cluster)."""
    batch = request.batch
    assert batch is not None
    dropped: list[tuple[Path, str]] = []
    pairs = batch_pairs(request, dropped)
    left_out = [FileResult(str(path), None, "skipped", why) for path, why in dropped]
    for result in left_out:
        if on_file is not None:
            on_file(result)
    if not request.dry_run:
        batch.output_dir.mkdir(parents=True, exist_ok=True)
    rewritten = continuation.read_record(batch.output_dir, batch.continue_run) if batch.continue_run else set()
    done_before = [FileResult(str(p.input), str(p.output), "skipped", "rewritten by the stopped run")
                   for p in pairs if str(p.output) in rewritten]  # fmt: skip
    for result in done_before:
        if on_file is not None:
            on_file(result)
    try:
        report = _run(request, [p for p in pairs if str(p.output) not in rewritten], on_file, error_line, debug)
    except Interrupted as stopped:
        _record_stop(stopped, request, rewritten)
        raise
    report.files += done_before
    order = {str(p.output): k for k, p in enumerate(pairs)}
    report.files.sort(key=lambda f: order.get(f.output or "", -1))
    report.files[:0] = left_out
    if batch.continue_run and not request.dry_run:
        _settle_record(report, batch.output_dir, batch.continue_run, rewritten)
    return report


def _run(
    request: Request,
    todo: list[Any],
    on_file: Callable[[FileResult], None] | None,
    error_line: Callable[[Deconv3dError], str] | None,
    debug: bool,
) -> Report:
    batch, opts = request.batch, request.options
    assert batch is not None
    engines: dict[tuple, Any] = {}
    runner = run_batch
    if opts.cluster.scheduler:
        from .dask.runner import batch_runner

        runner = batch_runner(request.layer, opts)
    from .engines import engine_for
    from .local import execute

    return runner(
        todo,
        lambda pair: prepare(request.layer, pair.input, pair.output, opts),
        lambda job: execute(job, engine_for(job, engines)),
        lambda job: {**job.describe(), "status": "planned"},
        lambda job: job.close(),
        skip_existing=batch.skip_existing,
        fail_fast=batch.fail_fast,
        dry_run=request.dry_run,
        on_file=on_file,
        debug=debug,
        error_line=error_line,
    )


def _record_stop(stopped: Interrupted, request: Request, rewritten: set[str]) -> None:
    """A stopped --overwrite batch: record what it rewrote, for its continue line (`--continue-run ID`)."""
    batch = request.batch
    assert batch is not None
    report = getattr(stopped, "report", None)
    done = set(rewritten) | {f.output for f in (report.files if report else ()) if f.status == "done" and f.output}
    if not request.options.write.overwrite or request.dry_run or not done:
        return
    run_id = batch.continue_run or continuation.new_run_id()
    try:
        continuation.write_record(batch.output_dir, run_id, done)
    except OSError:  # no record: the continue line overwrites every output again (the same bytes)
        return
    stopped.continue_run = run_id  # type: ignore[attr-defined]


def _settle_record(report: Report, output_dir: Path, run_id: str, rewritten: set[str]) -> None:
    """A continuation that ran to its end: the record goes once every file is done, else it grows."""
    if report.exit_code == 0:
        continuation.remove_record(output_dir, run_id)
        return
    done = rewritten | {f.output for f in report.files if f.status == "done" and f.output}
    try:
        continuation.write_record(output_dir, run_id, done)
    except OSError:
        pass


def _scale_of(layer: LayerSource) -> Sequence[int] | None:
    """The factor that names outputs (`{scale}`): a spec's strides, a preset's scale."""
    if isinstance(layer, LayerSpec):
        return layer.strides
    return getattr(layer, "scale", None)
