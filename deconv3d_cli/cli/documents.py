"""The JSON documents the commands print: one shape per kind, whatever the outcome.

A script reads `r["totals"]` of a batch whether it ran, failed at a usage error or was stopped, so
every document of a kind carries every field of that kind: zeros and empty lists where nothing ran,
null where a value is unknown (no input was opened). The kinds, and the schema that describes them
(`deconv3d_cli/schemas/report.schema.json`, `inspect.schema.json`):

- `upsample -O OUTDIR`: a batch (`files`, `totals`);
- `upsample -o OUTPUT` (and an `upsample` given neither): one output's report;
- `inspect`: one file's description.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

BATCH_STATUSES = ("done", "skipped", "failed", "not_run", "planned", "stopped")

# One output's report: every field, as it reads where nothing ran.
ONE_OUTPUT: dict[str, Any] = {
    "input": None, "output": None, "status": "failed",
    "input_shape": None, "input_dtype": None, "output_shape": None, "output_dtype": None, "layer": None,
    "input_file_shape": None, "output_file_shape": None,
    "boundary": None, "tile_shape": None, "batch_per_tile": None, "tile_grid": None, "tiles": 0, "halo": None,
    "memory_estimate_bytes": None, "output_bytes": None, "spacing_in": None, "spacing_out": None,
    "fourth_axis": None, "seconds": None, "voxels_per_s": None, "resumed_tiles": 0, "clipped_voxels": 0,
    "nan_voxels": 0, "max_rounding_error": 0.0, "missing_chunks": 0, "device": None, "engine_path": None,
    "engine_path_source": None, "torch_threads": None, "notes": [], "timings": {},
}  # fmt: skip

# A batch's report where no file ran.
BATCH: dict[str, Any] = {
    "status": "failed",
    "files": [],
    "totals": {"files": 0, **{s: 0 for s in BATCH_STATUSES}, "seconds": 0.0},
}

INSPECT: dict[str, Any] = dict.fromkeys(
    ("path", "format", "dataset", "shape", "layout", "data_format", "layout_note", "dtype", "spacing",
     "spacing_units", "orientation", "affine", "chunks", "size_on_disk", "size_in_memory")
)  # fmt: skip

OUTPUT_DIR_FLAGS = ("-O", "--output-dir")


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in `argv` (the first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def kind_of(argv: Sequence[str]) -> dict[str, Any] | None:
    """The empty document of the kind `argv` asks for (None: a command whose documents vary)."""
    command = command_of(argv)
    if command == "upsample":
        batch = any(a in OUTPUT_DIR_FLAGS or a.startswith(("--output-dir=", "-O")) for a in argv)
        return BATCH if batch else ONE_OUTPUT
    if command == "inspect":
        return INSPECT
    return None


def complete(document: dict[str, Any], argv: Sequence[str]) -> dict[str, Any]:
    """`document` with every field of its kind (those it lacks at their nothing-ran values)."""
    empty = kind_of(argv)
    if empty is None:
        return document
    out = {**copy.deepcopy(empty), **document}
    if "totals" in empty:
        out["totals"] = {**empty["totals"], **(document.get("totals") or {})}
    return out
