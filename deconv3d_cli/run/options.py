"""The settings of a run, split by concern; the only carrier of settings from the CLI (or a caller) to a run.

Each part is read by the code that owns that concern: `ReadOptions` by the reader, `WriteOptions` by
the writer and the output target, `ComputeOptions` by the planner and the engine, `ClusterOptions` by
the Dask runner. Frozen, so a runner that needs other values (a worker's share of the budget) makes a
changed copy with `dataclasses.replace` instead of editing shared state.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..geometry.sizes import DEFAULT_MEMORY_LIMIT

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class ReadOptions:
    dataset: str | None = None  # HDF5/Zarr input dataset (automatic when the file holds one)
    fourth_axis: str = "auto"  # NIfTI's 4th axis: auto, channels or series (io/nifti.py)
    allow_external: bool = False  # HDF5 external storage, external links, virtual datasets

    def hints(self, in_channels: int | None) -> dict[str, Any]:
        """Keywords for io.open_reader (formats ignore those that do not apply to them)."""
        hints: dict[str, Any] = {"fourth_axis": self.fourth_axis, "in_channels": in_channels}
        if self.allow_external:
            hints["allow_external"] = True
        return hints


@dataclass(frozen=True)
class WriteOptions:
    dataset: str | None = None  # HDF5/Zarr output dataset
    dtype: str = "float32"  # float32, float64, float16, keep, or an integer type
    overwrite: bool = False
    resume: bool = False
    compression_level: int | None = None
    chunks: tuple[int, ...] | None = None  # spatial (D, H, W), or one per axis of the output
    zarr_format: int | None = None
    checkpoint_every: float = 2.0  # seconds between making finished tiles durable for --resume

    @property
    def writer_options(self) -> dict[str, Any]:
        """The format options a writer takes (only those that were set)."""
        given = {"compression_level": self.compression_level, "chunks": self.chunks, "zarr_format": self.zarr_format}
        return {k: v for k, v in given.items() if v is not None}


@dataclass(frozen=True)
class ComputeOptions:
    device: str = "cpu"  # auto, cpu, cuda, cuda:N
    precision: str = "fp32"
    memory_limit: int = DEFAULT_MEMORY_LIMIT
    tile: Triple | None = None
    boundary: str = "zeros"
    engine_path: str = "auto"  # auto: the machine's recorded decision (engine/tuning.py), or one formulation
    threads: int | None = None  # CPU threads of the engine (None: the CPUs this process may use)
    # A local:N worker's share of the CPUs, used where the formulation's bytes do not depend on the
    # thread count (engines.cpu_threads); None outside such a worker.
    worker_threads: int | None = None


@dataclass(frozen=True)
class ClusterOptions:
    scheduler: str | None = None  # a Dask scheduler address, a scheduler JSON file, or local[:N]


@dataclass(frozen=True)
class Options:
    read: ReadOptions = field(default_factory=ReadOptions)
    write: WriteOptions = field(default_factory=WriteOptions)
    compute: ComputeOptions = field(default_factory=ComputeOptions)
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    progress: bool = True

    def with_(self, **parts: Any) -> Options:
        """A copy with some parts' fields changed: `opts.with_(write={"overwrite": True})`."""
        changed = {name: replace(getattr(self, name), **values) for name, values in parts.items() if name != "progress"}
        if "progress" in parts:
            changed["progress"] = parts["progress"]
        return replace(self, **changed)
