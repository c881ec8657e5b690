"""The torch engine: one input slab in, one exactly cropped, biased and activated output tile out.

The whole volume is just the largest tile, so the in-memory API and the streaming pipeline run the
same code and cannot drift apart. torch computes the uncropped ("full") transposed convolution of the
slab; the crop, TensorFlow's asymmetric `same` rounding and the bias-only tail come from the slab
offsets that geometry.py derives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import RunError, SpecError
from ..geometry import axis as geometry
from ..geometry.layout import CHANNELS_FIRST
from ..layer.spec import LayerSpec
from . import activations, allocator, choice, separable
from . import formulations as paths

PRECISIONS = {
    "fp32": torch.float32,
    "fp64": torch.float64,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` takes the first CUDA device when one is present, else the CPU."""
    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise SpecError(f"{device!r} is not a device; use auto, cpu, cuda or cuda:N", param="device") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SpecError("CUDA was asked for but no CUDA device is available; use --device cpu", param="device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise SpecError(
                f"cuda:{dev.index} does not exist ({torch.cuda.device_count()} CUDA device(s))", param="device"
            )
    elif dev.type != "cpu":
        raise SpecError(f"{device!r} is not supported; use auto, cpu, cuda or cuda:N", param="device")
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    key = (precision or "fp32").lower()
    if key not in PRECISIONS:
        raise SpecError(f"{precision!r}; use one of {', '.join(PRECISIONS)}", param="precision")
    if key == "fp16" and device.type == "cpu":
        raise SpecError("fp16 is for CUDA devices; on the CPU use fp32, fp64 or bf16", param="precision")
    return PRECISIONS[key]


SEPARABLE = choice.SEPARABLE


class Engine:
    """A layer bound to a device, a compute precision and an input channel count."""

    def __init__(
        self,
        spec: LayerSpec,
        in_channels: int,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        path: str = "auto",
    ) -> None:
        self.spec = spec
        self.in_channels = int(in_channels)
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        kernel, bias = spec.materialise(self.in_channels)
        # Keras (kd, kh, kw, filters, in) -> torch (in, filters, kd, kh, kw); no flip (SEMANTICS.md).
        self.weight = torch.from_numpy(np.ascontiguousarray(np.asarray(kernel).transpose(4, 3, 0, 1, 2))).to(
            self.device, self.dtype
        )
        self.bias = (
            None
            if bias is None
            else torch.from_numpy(np.asarray(bias).copy()).to(self.device, self.dtype).view(1, -1, 1, 1, 1)
        )
        # Keras applies softmax on the tensor's last axis: channels for channels_last, width otherwise.
        self.softmax_dim = 4 if spec.data_format == CHANNELS_FIRST else 1
        if self.device.type == "cpu":
            allocator.keep_freed_memory()
        # The memory order results are stored in (the array layout of the data format): paths that
        # produce it directly are preferred by the timing, which includes the conversion.
        self.channels_last_out = spec.data_format != CHANNELS_FIRST
        self.out_memory_format = torch.channels_last_3d if self.channels_last_out else torch.contiguous_format
        self.timings: dict[str, float] = {}
        self.splits = 0  # tiles halved after running out of memory
        if self.device.type == "cuda":
            # Same command, same bytes: cuDNN's algorithm is a fixed function of the shape (no benchmarking
            # race between runs) and one that does not sum in a scheduling-dependent order.
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
            if self.dtype == torch.float32:  # fp32 means fp32: TF32 tensor cores would cost ~1e-3 relative
                torch.backends.cudnn.allow_tf32 = False
                torch.backends.cuda.matmul.allow_tf32 = False
        self._pweight: torch.Tensor | None = None
        # 1-D taps when the kernel is per-channel, shared and rank-1 (the presets): separable.py.
        self._taps = separable.factor(kernel, spec.strides) if spec.dilation_rate == (1, 1, 1) else None
        self.path: str | None = None  # the formulation of the last tile
        self.path_source: str | None = None  # where it came from (tuning.CACHED, TIMED, RULE, ...)
        # A fixed formulation (force_path: --engine-path, a resumed run, the pipeline after timing its
        # first slab); None: each call takes the one timed for its shape class (cached, see choose_path).
        self.forced: str | None = None
        if path != "auto":
            self.force_path(path)

    # ------------------------------------------------------------------ formulations
    def available_paths(self) -> tuple[str, ...]:
        """Phase decomposition needs dilation 1 (dilation > 1 comes with stride 1); `*_dnn` needs oneDNN on the CPU."""
        names = paths.PATHS + ((SEPARABLE,) if self._taps is not None else ())
        if not paths.onednn_available(self.device, self.dtype):
            names = tuple(p for p in names if p not in paths.DNN_PATHS)
        if self.spec.dilation_rate != (1, 1, 1):
            names = tuple(p for p in names if p.startswith("transpose"))
        return names

    def force_path(self, name: str, source: str = "given") -> None:
        if name not in self.available_paths():
            raise SpecError(
                f"engine path {name!r} is not available here; use {', '.join(self.available_paths())}",
                param="engine_path",
            )
        self.forced = self.path = name
        self.path_source = source

    @property
    def separable(self) -> bool:
        """Whether the kernel acts on each channel alone with one rank-1 kernel (the presets)."""
        return self._taps is not None

    def time_tile(self, sample: torch.Tensor, path: str) -> torch.Tensor:
        """One whole tile of `sample` by `path`, in the layout results are stored in (what choice.py times)."""
        s = self.spec
        whole = tuple(
            geometry.full_length(n, k, st, d)
            for n, k, st, d in zip(sample.shape[2:], s.kernel_size, s.strides, s.dilation_rate)
        )
        y = self._tile_once(sample, (0, 0, 0), whole, path=path)
        y = y.contiguous(memory_format=self.out_memory_format)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return y

    def _run(self, name: str, x: torch.Tensor, crop: Sequence[int] = (0, 0, 0), biased: bool = True) -> torch.Tensor:
        s = self.spec
        cl = name.endswith("_cl")
        if name.startswith("transpose"):
            # torch's transposed convolution with a bias runs up to 3x slower (measured): add it after.
            y = paths.transpose(x, self.weight, None, s.strides, s.dilation_rate, cl=cl, crop=crop, dnn="_dnn" in name)
            return y if self.bias is None or not biased else y.add_(self.bias)
        if self._pweight is None:
            self._pweight = paths.phase_weight(self.weight, s.strides)
        bias = None if self.bias is None else self.bias.view(-1)  # conv3d's fused bias is free
        return paths.phase(
            x, self._pweight, bias, s.strides, s.filters, cl=cl, cl_out=self.channels_last_out, dnn="_dnn" in name
        )

    def _phase_window(self, x: torch.Tensor, offsets: tuple[int, ...], sizes: tuple[int, ...]) -> torch.Tensor:
        s = self.spec
        path = self.path or ""
        if self._pweight is None:
            self._pweight = paths.phase_weight(self.weight, s.strides)
        bias = None if self.bias is None else self.bias.view(-1)
        return paths.phase_window(
            x,
            self._pweight,
            bias,
            s.strides,
            s.filters,
            offsets,
            sizes,
            cl=path.endswith("_cl"),
            cl_out=self.channels_last_out,
            fill=self._bias_only,
            dnn="_dnn" in path,
        )

    def choose_path(self, x: torch.Tensor | Sequence[int]) -> str:
        """The formulation for slabs like `x` (a tensor or a shape): evident, recorded, or measured and
        recorded once for this machine (choice.py); `path_source` says which."""
        self.path, self.path_source = choice.choose(self, x)
        return self.path

    def full(self, x: torch.Tensor) -> torch.Tensor:
        """The uncropped transposed convolution of slab `x`, bias added (extra trailing positions: bias only)."""
        with torch.inference_mode():
            path = self.forced or self.choose_path(x)
            return self._run(path, x)

    @property
    def out_numpy_dtype(self) -> np.dtype:
        return np.dtype(np.float64) if self.dtype == torch.float64 else np.dtype(np.float32)

    def to_tensor(self, slab: Any) -> torch.Tensor:
        if isinstance(slab, torch.Tensor):
            return _unit_strides(slab.to(self.device, self.dtype))
        arr = np.asarray(slab)
        if arr.dtype.kind not in "fiub":
            raise SpecError(f"input has dtype {arr.dtype}; a numeric array is needed")
        if arr.dtype.kind == "b" or arr.dtype.byteorder not in ("=", "|") or arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float64 if self.dtype == torch.float64 else np.float32)
        if not arr.flags.writeable:
            arr = arr.copy()
        # No forced contiguity: a channels_last array arrives as a channels_last_3d tensor, which is
        # what the fastest paths want anyway.
        return _unit_strides(torch.from_numpy(arr).to(self.device, self.dtype))

    def tile(self, slab: Any, offsets: Sequence[int], sizes: Sequence[int]) -> torch.Tensor:
        """Output positions [offset, offset + size) of the slab's full output, per axis, in (N, F, d, h, w).

        Positions outside the slab's full output (negative offsets where `k < s` leaves gaps, or past
        its end) receive only the bias, as they do in Keras.
        """
        x = self.to_tensor(slab)
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise SpecError(f"slab of shape {tuple(x.shape)} does not have {self.in_channels} channel(s) on axis 1")
        sizes = tuple(int(v) for v in sizes)
        offsets = tuple(int(v) for v in offsets)
        with torch.inference_mode():
            return self._tile_or_split(x, offsets, sizes)

    def compute_tile(self, slab: Any, tile: Any) -> torch.Tensor:
        """A plan's tile (geometry.tiling.Tile) from its input slab: what every runner calls."""
        return self.tile(slab, tile.offsets, tile.sizes)

    def _tile_once(
        self, x: torch.Tensor, offsets: tuple[int, ...], sizes: tuple[int, ...], path: str | None = None
    ) -> torch.Tensor:
        if any(v == 0 for v in x.shape[2:]):
            y = self._bias_only((x.shape[0], self.spec.filters, *sizes))
        else:
            self.path = path or self.forced or self.choose_path(x)
            if self.path == SEPARABLE:
                assert self._taps is not None
                y = separable.tile(x, self._taps, self.spec.strides, offsets, sizes)
                if self.bias is not None:
                    y.add_(self.bias)
            elif self.path.startswith("phase"):  # shuffle and crop in one pass, straight into the tile
                y = self._phase_window(x, offsets, sizes)
            else:
                # torch crops `padding` voxels from both ends of each axis without computing them: use
                # the part of the window's margins that is symmetric, and cut the rest from the result.
                full = [
                    geometry.full_length(n, k, st, d)
                    for n, k, st, d in zip(
                        x.shape[2:], self.spec.kernel_size, self.spec.strides, self.spec.dilation_rate
                    )
                ]
                crop = tuple(max(0, min(o, length - o - m)) for o, m, length in zip(offsets, sizes, full))
                with torch.inference_mode():
                    y = self._run(self.path, x, crop, biased=False)
                y = self._biased_window(y, tuple(o - c for o, c in zip(offsets, crop)), sizes)
        return activations.apply(self.spec.activation, y, self.softmax_dim)

    def _biased_window(self, y: torch.Tensor, offsets: tuple[int, ...], sizes: tuple[int, ...]) -> torch.Tensor:
        """The window of the unbiased convolution `y`, bias added (positions outside `y`: the bias alone).

        A window strictly inside `y` (a `same` crop that torch's symmetric one could not make) takes
        the bias in the same pass that makes it a compact tile: one pass over the output instead of an
        in-place add and a copy later (24->12 k3 s2 on 40^3 through the API: 15.2 ms -> 14.1 ms).
        """
        inside = all(o >= 0 and o + n <= length for o, n, length in zip(offsets, sizes, y.shape[2:]))
        if self.bias is not None and inside and tuple(y.shape[2:]) != tuple(sizes):
            window: tuple[Any, ...] = (..., *(slice(o, o + n) for o, n in zip(offsets, sizes)))
            view = y[window]
            return torch.add(view, self.bias, out=_empty_tile((*y.shape[:2], *sizes), y, self.out_memory_format))
        if self.bias is not None:
            y.add_(self.bias)
        return _window(y, offsets, sizes, self._bias_only)

    def _tile_or_split(self, x: torch.Tensor, offsets: tuple[int, ...], sizes: tuple[int, ...]) -> torch.Tensor:
        """Out of device memory: halve the tile along its longest axis and assemble on the host.

        The halves read the slab rows geometry.slab_rows gives, so the result is the same tile; the
        width axis is never split when softmax mixes it. Only a one-voxel tile that still fails is an error.
        """
        try:
            return self._tile_once(x, offsets, sizes)
        except (MemoryError, torch.OutOfMemoryError) as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            axes = [a for a in range(3) if sizes[a] > 1 and not (a == 2 and self.spec.mixes_width)]
            if not axes:
                raise RunError(
                    f"out of {'device ' if self.device.type == 'cuda' else ''}memory even for a one-voxel tile "
                    f"({exc}); lower --memory-limit or use another device"
                ) from None
            a = max(axes, key=lambda i: sizes[i])
            self.splits += 1
            s, k = self.spec.strides[a], geometry.effective_kernel(self.spec.kernel_size[a], self.spec.dilation_rate[a])
            out = torch.empty((x.shape[0], self.spec.filters, *sizes), dtype=self.dtype)
            half = sizes[a] // 2
            for lo, hi in ((0, half), (half, sizes[a])):
                rows = geometry.slab_rows(offsets[a] + lo, hi - lo, s, k, x.shape[2 + a])
                sub = x.narrow(2 + a, rows.lo, rows.size)
                sub_offsets = tuple(rows.offset if i == a else o for i, o in enumerate(offsets))
                sub_sizes = tuple(hi - lo if i == a else n for i, n in enumerate(sizes))
                out.narrow(2 + a, lo, hi - lo).copy_(self._tile_or_split(sub, sub_offsets, sub_sizes))
            return out

    def _bias_only(self, shape: tuple[int, ...]) -> torch.Tensor:
        y = torch.zeros(shape, device=self.device, dtype=self.dtype)
        return y if self.bias is None else y.add_(self.bias)

    def whole(self, x: Any) -> torch.Tensor:
        """The layer on a whole (N, C, D, H, W) volume."""
        shape = tuple(x.shape)
        axes = self.spec.axes(shape[2:])
        return self.tile(x, [ax.crop for ax in axes], [ax.out for ax in axes])


def _empty_tile(shape: tuple[int, ...], like: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """An uninitialised (N, F, d, h, w) tile in memory format `fmt`; on the CPU in numpy's memory.

    numpy asks the kernel for huge pages on large arrays: a fresh 131 MB tile filled in 9 ms that way
    and in 42 ms from torch's allocator (4 KiB page faults, slow on this VM).
    """
    np_dtype = {torch.float32: np.float32, torch.float64: np.float64}.get(like.dtype)
    if like.device.type != "cpu" or np_dtype is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)
    if fmt == torch.channels_last_3d:
        n, f, d, h, w = shape
        return torch.from_numpy(np.empty((n, d, h, w, f), np_dtype)).permute(0, 4, 1, 2, 3)
    return torch.from_numpy(np.empty(shape, np_dtype))


def _unit_strides(x: torch.Tensor) -> torch.Tensor:
    """`x` with ordinary strides on its length-1 axes, without a copy.

    numpy's `a[None]` gives a new axis stride 0; oneDNN then treats a channels_last slab as strided
    and reorders it, which made a 16-channel tile 3x slower (110 ms instead of 35).
    """
    strides = list(x.stride())
    if not any(n == 1 and st == 0 for n, st in zip(x.shape, strides)):
        return x
    outer = max((n * st for n, st in zip(x.shape, strides) if st), default=1)
    return x.as_strided(x.shape, [outer if (n == 1 and st == 0) else st for n, st in zip(x.shape, strides)])


def _window(full: torch.Tensor, offsets: tuple[int, ...], sizes: tuple[int, ...], fill: Any) -> torch.Tensor:
    """full[..., o:o+n] per axis; where the window runs outside `full`, `fill(shape)`'s values."""
    lengths = full.shape[2:]
    if all(o >= 0 and o + n <= L for o, n, L in zip(offsets, sizes, lengths)):
        inside: tuple[Any, ...] = (..., *(slice(o, o + n) for o, n in zip(offsets, sizes)))
        return full[inside]
    out = fill((*full.shape[:2], *sizes))
    src, dst = [], []
    for o, n, L in zip(offsets, sizes, lengths):
        lo, hi = max(o, 0), min(o + n, L)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - o, hi - o))
    source: tuple[Any, ...] = (..., *src)
    target: tuple[Any, ...] = (..., *dst)
    out[target] = full[source]
    return out


def dense(arr: np.ndarray) -> np.ndarray:
    """`arr` C-contiguous, copied by torch's threaded copy when it is a strided view.

    A 'same' window of the full output (k3 s2: 128^3 of 129^3, 16 channels) is such a view; numpy's
    single-threaded copy took 15.9 ms of it and torch's 8.9 ms.
    """
    if arr.flags.c_contiguous:
        return arr
    out = np.empty(arr.shape, arr.dtype)
    try:
        torch.from_numpy(out).copy_(torch.from_numpy(arr))
    except (TypeError, ValueError, RuntimeError):  # strides torch cannot view (negative): numpy's copy
        np.copyto(out, arr)
    return out


def to_numpy(y: torch.Tensor, dtype: np.dtype | None = None) -> np.ndarray:
    arr = y.detach()
    if arr.dtype in (torch.float16, torch.bfloat16):
        arr = arr.float()
    out = arr.cpu().numpy()
    return out if dtype is None else out.astype(dtype, copy=False)
