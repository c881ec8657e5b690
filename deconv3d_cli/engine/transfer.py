"""Host <-> device traffic for CUDA runs, overlapped with compute.

The reader thread pins each slab and starts its upload on a copy stream; the engine waits for that
upload only when it needs the slab. Finished tiles go down into pinned, recycled host buffers on a
second stream while the next tile computes; the writer waits for a tile's download before writing it.
On the CPU every step is a plain pass-through.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch


class Transfers:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._pending: dict[int, Any] = {}
        self._lock = threading.Lock()
        if self.cuda:
            self.up = torch.cuda.Stream(device)
            self.down = torch.cuda.Stream(device)

    def host_buffer(self, nbytes: int) -> np.ndarray:
        """A host buffer for output tiles: page-locked on CUDA, so downloads can run asynchronously."""
        if self.cuda:
            return torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=True).numpy()
        return np.empty(max(nbytes, 1), np.uint8)

    def upload(self, slab: np.ndarray) -> Any:
        """Reader thread: start the slab's copy to the device; returns what `ready` takes."""
        if not self.cuda:
            return slab
        arr = np.ascontiguousarray(slab)
        if arr.dtype.byteorder not in ("=", "|") or arr.dtype.kind == "b":
            arr = arr.astype(arr.dtype.newbyteorder("=") if arr.dtype.kind != "b" else np.uint8)
        pinned = torch.from_numpy(arr).pin_memory()
        with torch.cuda.stream(self.up):
            on_device = pinned.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.up)
        return (on_device, done, pinned)  # the pinned copy lives until the upload is waited for

    def ready(self, item: Any) -> Any:
        """Compute thread: the slab, once its upload has finished (on the device, without blocking the host)."""
        if not self.cuda:
            return item
        on_device, done, _pinned = item
        stream = torch.cuda.current_stream(self.device)
        stream.wait_event(done)
        on_device.record_stream(stream)
        return on_device

    def download(self, y: torch.Tensor, host: np.ndarray) -> bool:
        """Compute thread: start copying a float tile into `host`; False when it must be copied here."""
        if not self.cuda or y.device.type != "cuda" or host.dtype.kind != "f":
            return False
        computed = torch.cuda.Event()
        computed.record(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.down):
            self.down.wait_event(computed)
            torch.from_numpy(host).copy_(y, non_blocking=True)
            y.record_stream(self.down)
            done = torch.cuda.Event()
            done.record(self.down)
        with self._lock:
            self._pending[host.ctypes.data] = done
        return True

    def wait(self, host: np.ndarray) -> None:
        """Writer thread: block until the download into `host` (if any) has landed.

        Downloads are keyed by the address of the array they fill, which is not the pool buffer's
        start when the tile is placed at a page phase (pipeline._Pool.view).
        """
        if not self.cuda:
            return
        with self._lock:
            done = self._pending.pop(host.ctypes.data, None)
        if done is not None:
            done.synchronize()
