"""Keep freed memory for reuse, as TensorFlow's allocator does.

glibc serves allocations above 32 MiB with fresh `mmap` pages and hands them back on free, so every
tile or volume-sized buffer is page-faulted in anew; on virtual machines that runs near 0.5-1.5 GB/s,
slower than the convolution itself. Serving them from the heap and not trimming it makes the second
and later buffers warm (about 10 GB/s here). The price is that the process's resident memory stays
at its peak instead of shrinking after a large call. Set DECONV3D_MALLOC=system to keep glibc's
defaults; other C libraries are left alone.
"""

from __future__ import annotations

import ctypes
import os
import threading

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4

_lock = threading.Lock()
_state: dict[str, bool] = {}


def keep_freed_memory() -> bool:
    """Switch glibc to heap-only, untrimmed allocation once per process; True if it is on."""
    with _lock:
        if "on" in _state:
            return _state["on"]
        on = False
        if os.environ.get("DECONV3D_MALLOC", "").lower() != "system":
            try:
                mallopt = ctypes.CDLL(None).mallopt
                mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                on = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))  # -1: never trim
                mallopt(M_TOP_PAD, 64 << 20)
            except (OSError, AttributeError):
                on = False
        _state["on"] = on
        return on
