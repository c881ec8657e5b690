"""What a stopped `--overwrite` batch had already rewritten, so that its continue line finishes that job.

A batch that replaces older outputs cannot be continued with `--skip-existing`: every output exists,
the older ones as much as those this run rewrote. So when such a batch is stopped, the outputs it
committed are written to a record beside them, `OUTDIR/.deconv3d-run-ID.json`, and the continue line
names it (`--overwrite --continue-run ID --resume`): the outputs in the record are skipped, the one in
progress resumes from its journal, the ones not reached are overwritten. A continuation that is
stopped again adds to the same record; one that finishes every file removes it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError

RECORD_PREFIX = ".deconv3d-run-"
_ID = re.compile(r"[0-9a-f]{8}")


def new_run_id() -> str:
    return secrets.token_hex(4)


def record_path(output_dir: Path, run_id: str) -> Path:
    if not _ID.fullmatch(run_id):
        raise InputError(
            f"{run_id!r} is not a run id (8 hex digits, as a stopped run's continue line gives)", param="continue_run"
        )
    return Path(output_dir) / f"{RECORD_PREFIX}{run_id}.json"


def read_record(output_dir: Path, run_id: str) -> set[str]:
    """The outputs run `run_id` rewrote; refused when its record is gone (that run was finished)."""
    path = record_path(output_dir, run_id)
    try:
        outputs = json.loads(path.read_text())["outputs"]
        return {str(o) for o in outputs}
    except FileNotFoundError:
        raise InputError(
            f"no record of run {run_id} in {output_dir} (it was finished already); rerun without --continue-run",
            param="continue_run",
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"the record {path.name} is unreadable ({exc}); rerun with --overwrite without --continue-run",
            param="continue_run",
        ) from None


def write_record(output_dir: Path, run_id: str, outputs: Iterable[str]) -> None:
    """Write the record atomically (a stop during the write leaves the old one or the new one)."""
    path = record_path(output_dir, run_id)
    temp = path.with_name(path.name + ".tmp")
    with open(temp, "w") as f:
        json.dump({"version": 1, "outputs": sorted(outputs)}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)


def remove_record(output_dir: Path, run_id: str) -> None:
    record_path(output_dir, run_id).unlink(missing_ok=True)
