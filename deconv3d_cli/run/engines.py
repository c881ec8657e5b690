"""The engine a job computes with, and the formulation policy: the one home of both decisions.

An engine is built once per layer, channel count, device and precision and shared by every file of a
run. For each output the formulation is settled once, by this precedence:

1. the interrupted run's (the partial's journal), so a resumed output equals an uninterrupted one;
2. the one the caller names (`--engine-path`, or an engine it fixed itself);
3. the machine's recorded decision for this layer and slab size (engine/tuning.py), measured and
   recorded the first time.

The CPU thread count is the caller's (`--threads`) or the CPUs this process may use (resources.py);
a local:N worker takes its share of them only for a formulation whose bytes do not depend on it.
"""

from __future__ import annotations

from typing import Any

from ..io.atomic import journal_header
from .job import Job
from .resources import usable_cpus

JOURNAL = "journal"
GIVEN = "given"
FIXED = "the only one"


def cpu_threads(job: Job, path: str | None = None) -> int:
    """The engine's CPU threads for formulation `path` (None: not chosen yet, as for a single process).

    `--threads` when given; else the CPUs this process may use, which a local:N worker shares with
    the others (`worker_threads`) only where the bytes do not depend on the count
    (formulations.THREAD_INVARIANT). Where they do (oneDNN's transposed convolution), the worker runs
    the single process's count, oversubscribing the cores N times while it computes, so that
    `--scheduler local:N` writes the single process's bytes.
    """
    from ..engine.formulations import THREAD_INVARIANT

    compute = job.options.compute
    shared = compute.worker_threads if path in THREAD_INVARIANT else None
    return compute.threads or shared or usable_cpus()


def set_threads(threads: int) -> None:
    """torch's intra-op thread count, changed only when it differs (a change rebuilds its pool)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def engine_for(job: Job, engines: dict[tuple, Any] | None = None) -> Any:
    """The engine for this job's layer and channels (from `engines`, a run's cache, when it has one);
    a resampling's, for its own output grid."""
    from ..engine import Engine

    compute = job.options.compute
    if job.grid is not None:
        from ..engine.resample import Resampler

        return Resampler(job.spec, job.grid, job.channels, compute.device, compute.precision)  # type: ignore[arg-type]
    key = (job.fingerprint(), job.channels, compute.device, compute.precision)
    if engines is not None and key in engines:
        return engines[key]
    engine = Engine(job.spec, job.channels, compute.device, compute.precision)  # type: ignore[arg-type]
    if engines is not None:
        engines[key] = engine
    return engine


def settle(job: Job, engine: Any) -> dict[str, Any]:
    """Fix `engine`'s formulation and thread count for this output; returns what the journal records."""
    import torch

    choosing = hasattr(engine, "available_paths")  # a resampler: one formulation, nothing to choose
    if choosing:
        _choose(job, engine)
    if engine.device.type == "cpu":
        set_threads(cpu_threads(job, engine.path))
    return {
        "engine_path": engine.path,
        "engine_path_source": engine.path_source if choosing else FIXED,
        "torch_threads": torch.get_num_threads(),
    }


def _choose(job: Job, engine: Any) -> None:
    """The formulation, by the precedence above; measured at the single process's thread count."""
    earlier = journal_header(job.output) if job.options.write.resume else None
    requested = job.options.compute.engine_path
    if earlier and earlier.get("engine_path") in engine.available_paths():
        engine.force_path(earlier["engine_path"], JOURNAL)
    elif requested != "auto":
        engine.force_path(requested, GIVEN)
    elif engine.forced is not None:  # an engine its caller fixed keeps its formulation
        engine.path = engine.forced
    else:
        if engine.device.type == "cpu":
            set_threads(cpu_threads(job))
        path = engine.choose_path(job.first_slab_shape())
        engine.force_path(path, engine.path_source)
