"""Reaching a Dask cluster: `--scheduler` parsed and checked, a LocalCluster started, or a scheduler reached.

Every refusal here is one line and exit 2 before anything starts: an address that is not one, a
scheduler file that does not exist or holds no address (distributed would wait minutes for it), more
local workers than the CPUs this process may use (capped, with a note).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from typing import Any

from ...errors import InputError, RunError, warn_once
from ...io.zarr import require_extra
from ..resources import usable_cpus
from ..stop import STOP
from .scratch import make_scratch

CONNECT_TIMEOUT_S = 30


def parse_scheduler(text: str) -> tuple[str, Any]:
    """('local', N) for local / local:N, ('file', path) for a scheduler JSON file, else ('address', text)."""
    value = (text or "").strip()
    lower = value.lower()
    if lower == "local" or lower.startswith(("local:", "local[")):
        rest = value[5:].strip(":[]")
        if not rest:
            return "local", max(1, min(usable_cpus(), 4))
        try:
            n = int(rest)
        except ValueError:
            n = 0
        if n < 1:
            raise InputError(f"{text!r}: use local, local:N (N >= 1 worker processes) or an address", param="scheduler")
        return "local", n
    if not value:
        raise InputError("give a scheduler address (tcp://host:8786) or local:N", param="scheduler")
    if value.endswith(".json"):
        return "file", value
    host, _, port = value.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise InputError(
            f"{text!r} is not a scheduler address; use tcp://HOST:PORT, a scheduler JSON file or local:N",
            param="scheduler",
        )
    return "address", value


def local_workers(requested: int) -> int:
    """Local worker processes: at most one per usable CPU (more only oversubscribe them), with a note."""
    cpus = usable_cpus()
    if requested > cpus:
        warn_once(f"local:{requested} asks for more workers than the {cpus} CPU(s) this process may use; "
                  f"starting {cpus}")  # fmt: skip
        return cpus
    return requested


def local_torch_threads(workers: int) -> int:
    """CPU threads for each of `workers` local worker processes: the usable CPUs shared out."""
    return max(1, usable_cpus() // max(workers, 1))


def scheduler_file(path: str) -> str:
    """The address in a scheduler JSON file (dask's `--scheduler-file`), checked before connecting."""
    try:
        with open(path) as f:
            content = json.load(f)
    except FileNotFoundError:
        raise InputError("no such scheduler file", source=path, param="scheduler") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"not a readable scheduler file ({exc})", source=path, param="scheduler") from None
    if not isinstance(content, dict) or not isinstance(content.get("address"), str):
        raise InputError("the scheduler file holds no 'address'", source=path, param="scheduler")
    return content["address"]


@contextlib.contextmanager
def connect(scheduler: str) -> Iterator[Any]:
    """A dask.distributed Client: a LocalCluster of N one-thread worker processes, or a running scheduler."""
    require_extra("dask", "--scheduler")
    distributed = require_extra("distributed", "--scheduler")
    require_extra("zarr", "--scheduler")
    kind, value = parse_scheduler(scheduler)
    if kind == "local":
        with _local_cluster(distributed, local_workers(value)) as client:
            yield client
        return
    address = scheduler_file(value) if kind == "file" else value
    try:
        client = distributed.Client(address, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise RunError(f"cannot reach the Dask scheduler at {address} ({exc})") from None
    except (ValueError, TypeError) as exc:
        raise InputError(f"{address!r} is not a scheduler address ({exc})", param="scheduler") from None
    with client:
        yield client


@contextlib.contextmanager
def _local_cluster(distributed: Any, workers: int) -> Iterator[Any]:
    """Workers keep their scratch space in a folder of ours, removed afterwards (no dask-scratch-space left),
    or by a later run when this one is killed (scratch.py)."""
    import logging

    import dask

    scratch = make_scratch()  # named for this process: a later run removes it if this one is killed
    cluster = None
    try:
        # A stop while the workers start (or stop) is acted on once the cluster can be closed: raised in
        # the middle, it left worker processes to find their folders gone ("distributed.diskutils - ERROR").
        with STOP.listening(), dask.config.set({"temporary-directory": str(scratch)}):
            cluster = distributed.LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                # The workers' own ERROR lines (a heartbeat that meets a scheduler closed by a stop,
                # with a CommClosedError traceback) are noise on the user's stderr: a task's failure
                # reaches the client as its exception, and the run says it in one line.
                silence_logs=logging.CRITICAL,
                local_directory=str(scratch),
            )
        STOP.check()
        with distributed.Client(cluster) as client:
            yield client
    finally:
        if cluster is not None:
            with STOP.listening():
                cluster.close()
        shutil.rmtree(scratch, ignore_errors=True)


def threads_per_worker(client: Any) -> int:
    """The most threads any worker runs at once (each runs one tile per thread)."""
    client.wait_for_workers(1, timeout=120)
    return max([int(n) for n in client.nthreads().values()] or [1])


def total_threads(client: Any) -> int:
    return max(1, sum(client.nthreads().values()))
