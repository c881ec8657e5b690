"""The progress bar every runner shows on stderr (never on a pipe or with TQDM_DISABLE set)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np


def shown(enabled: bool) -> bool:
    disabled = os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false")
    return enabled and sys.stderr.isatty() and not disabled


@contextlib.contextmanager
def bar(job: Any, enabled: bool, initial: int = 0) -> Iterator[Any]:
    """A bar over the output's voxels (per channel); `initial`: voxels a resumed run already has."""
    from tqdm import tqdm

    b = tqdm(
        total=int(np.prod(job.out_shape)) // job.filters,
        initial=initial,
        unit="vox",
        unit_scale=True,
        desc=job.output.name,
        disable=not shown(enabled),
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )
    try:
        yield b
    finally:
        b.close()
