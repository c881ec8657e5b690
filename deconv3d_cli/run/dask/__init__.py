"""The same jobs as Dask tasks (`--scheduler`): a tile per task, or a whole small file per task.

dask, distributed and zarr are the optional extra; nothing here imports them until a scheduler is asked for.
"""

from .cluster import connect, parse_scheduler
from .output import chunk_misalignment, refuse, refuse_output
from .runner import align_chunks, batch_runner, cluster_options, run_many, run_one
from .sizing import VirtualReader, dry_run, parse_input_shape

__all__ = [
    "VirtualReader",
    "align_chunks",
    "batch_runner",
    "chunk_misalignment",
    "cluster_options",
    "connect",
    "dry_run",
    "parse_input_shape",
    "parse_scheduler",
    "refuse",
    "refuse_output",
    "run_many",
    "run_one",
]
