"""The text a person reads on stderr: a run's plan and outcome, a cluster's sizing, a batch's files."""

from __future__ import annotations

from typing import Any

import click


def lines(report: dict[str, Any], dry_run: bool | None) -> list[str]:
    """The plan and, after a run, how it went (`dry_run` None: the plan alone, as a run starts)."""
    from ..geometry.tiling import format_bytes

    out = [
        f"{report['input']}: {_shape(report, 'input')} {report['input_dtype']}"
        f" -> {report['output']}: {_shape(report, 'output')} {report['output_dtype']}",
        *_read_as(report),
        f"  layer: {report['layer']}",
        f"  tiles: {report['tiles']} of {tuple(report['tile_shape'])} (grid {tuple(report['tile_grid'])}, "
        f"halo {tuple(report['halo'])}), memory estimate {format_bytes(report['memory_estimate_bytes'])}",
    ]
    if report.get("fourth_axis"):
        out.insert(len(out) - 2, f"  {report['fourth_axis']}")
    if dry_run is None:
        return out
    if dry_run:
        out.append(f"  dry run: nothing written (output would be {format_bytes(report['output_bytes'])})")
    else:
        out.append(_done(report))
    out.extend(f"  note: {note}" for note in report.get("notes") or ())
    if report.get("constraints"):  # the spec's constraints, applied to its loaded weights
        from ..layer.constraints import format_report

        out.append(f"  constraints: {format_report(report['constraints'])}")
    if report.get("regularization"):  # penalty values; they do not change the output
        from ..layer.regularizers import format_report as format_penalties

        out.append(f"  regularization: {format_penalties(report)}")
    return out + cluster_lines(report)


def _shape(report: dict[str, Any], side: str) -> tuple[int, ...]:
    """A side's shape in its file's own order (a NIfTI's as nibabel and FSL show it)."""
    return tuple(report.get(f"{side}_file_shape") or report[f"{side}_shape"])


def _read_as(report: dict[str, Any]) -> list[str]:
    """Where the file's order is not the one computed in: how the tool reads the axes."""
    computed = (tuple(report["input_shape"]), tuple(report["output_shape"]))
    if (_shape(report, "input"), _shape(report, "output")) == computed:
        return []
    from ..errors import InputError
    from ..io.formats import facts_of
    from ..io.nifti_layout import PRESENTED_AXES

    try:
        nifti = facts_of(report["input"]).name == "nifti"
    except InputError:
        nifti = False
    names = PRESENTED_AXES.get(len(computed[0]), "") if nifti else ""
    return [f"  read as {names + ': ' if names else ''}{computed[0]} -> {computed[1]}"]


def _done(report: dict[str, Any]) -> str:
    text = (
        f"  done in {report['seconds']:.2f} s on {report['device']} ({(report['voxels_per_s'] or 0) / 1e6:.1f} Mvox/s)"
    )
    if report.get("resumed_tiles"):
        text += f", {report['resumed_tiles']} tiles resumed"
    if report.get("clipped_voxels"):
        text += f", {report['clipped_voxels']} voxels clipped"
    if report.get("nan_voxels"):
        text += f", {report['nan_voxels']} NaN voxels stored as 0"
    if report.get("max_rounding_error"):
        text += f", rounding error up to {report['max_rounding_error']:.3g}"
    return text


def cluster_lines(report: dict[str, Any]) -> list[str]:
    """A dry run's cluster sizing, or a finished cluster run's tasks (under the plan's lines)."""
    from ..geometry.tiling import format_bytes

    d = report.get("distributed")
    if d is None:
        if "tasks" not in report:
            return []
        return [
            f"  cluster: {report['tasks']} task(s) on {report['scheduler']}, at most {report['max_tasks_in_flight']} "
            f"in flight; worker peak memory {format_bytes(report['worker_peak_memory_bytes'])} above its base"
        ]
    out = [
        f"  tasks: {d['tasks']:,}; per task {format_bytes(d['bytes_read_per_task'])} read, "
        f"{format_bytes(d['bytes_written_per_task'])} written (in all {format_bytes(d['bytes_read_total'])} read, "
        f"{format_bytes(d['bytes_written_total'])} written)",
        f"  peak memory per worker: {format_bytes(d['peak_memory_per_worker_bytes'])} "
        f"(--memory-limit {format_bytes(d['memory_limit_per_worker_bytes'])}, {d['threads_per_worker']} thread(s))",
    ]
    if "seconds_per_tile" in d:
        one = d["estimated_seconds_one_worker"]
        text = (
            f"  estimated time: {duration(one)} on one worker like this machine "
            f"({d['seconds_per_tile']:.3g} s per tile with {d['torch_threads']} CPU thread(s) on {d['device']} "
            f"+ {1000 * d['scheduler_overhead_s_per_task']:.1f} ms scheduling per task; storage I/O not included)"
        )
        if d.get("workers"):
            text += f"; {duration(d['estimated_seconds'])} on {d['workers']}"
        out.append(text)
    return out


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def file_printer(quiet: bool, verbose: bool) -> Any:
    """What a batch prints per file as it finishes (errors always)."""

    def on_file(result: Any) -> None:
        if quiet and result.status != "failed":
            return
        if result.status == "failed":
            error = result.error if result.input in (result.error or "") else f"{result.input}: {result.error}"
            click.echo(f"FAILED {error}", err=True)
        elif verbose and result.status in ("done", "planned"):
            click.echo("\n".join(lines(result.details, result.status == "planned")), err=True)
        elif result.status == "done":
            d = result.details
            click.echo(
                f"done   {result.input} -> {result.output} {tuple(d['output_shape'])} {d['seconds']:.2f} s", err=True
            )
        elif result.output is None:  # left out: what a glob matched that is no volume, a path given twice
            click.echo(f"{result.status:<6} {result.input} ({result.error})", err=True)
        else:
            click.echo(f"{result.status:<6} {result.input} -> {result.output}", err=True)

    return on_file
