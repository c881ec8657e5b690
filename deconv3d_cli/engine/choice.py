"""Choosing a formulation for a layer and a slab size: the key, the fixed rule and the measurement.

`choose` is the one place the engine decides: a separable kernel takes `separable` (evident, no
timing); anything else asks tuning.py for the machine's recorded decision, measuring it once (here)
when there is none, or following `rule` when the cache is off. The key holds everything that decides
which formulations exist (`available_paths`: a separable kernel offers one more) so that two layers
of the same geometry can never share a decision that one of them cannot run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..geometry import axis as geometry
from . import formulations as paths
from . import tuning

if TYPE_CHECKING:
    from .core import Engine

SEPARABLE = "separable"  # one axis at a time (separable.py); offered only for kernels it can express
PROXY = 40  # edge of the slab crop timed when choosing a path (smaller crops mispredicted)
CONFIRM_LIMIT = 1 << 25  # output elements up to which the best paths are re-timed on the slab itself


def choose(engine: Engine, x: torch.Tensor | Sequence[int]) -> tuple[str, str]:
    """(formulation, source) for slabs like `x` (a tensor, an array, or a shape)."""
    if hasattr(x, "shape") and not isinstance(x, torch.Tensor):
        x = engine.to_tensor(x)
    shape = tuple(int(n) for n in (x.shape if isinstance(x, torch.Tensor) else x))
    if engine.separable:
        return SEPARABLE, tuning.EVIDENT
    return tuning.decide(key(engine, shape), lambda: measure(engine, x), rule(engine, shape))


def _dnn_default(engine: Engine, shape: Sequence[int]) -> bool:
    s = engine.spec
    phase_kernel = [-(-k // st) for k, st in zip(s.kernel_size, s.strides)]
    return paths.onednn_by_default((1, *shape[1:]), phase_kernel)


def key(engine: Engine, shape: Sequence[int]) -> dict[str, Any]:
    """Everything the choice depends on, as JSON: layer geometry, channels, formulations on offer,
    precision, device, torch build, processor, and the slab's size class (powers of two)."""
    s = engine.spec
    device = engine.device
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = tuning.processor()
    return {
        "version": tuning.VERSION,
        "kernel_size": list(s.kernel_size),
        "strides": list(s.strides),
        "dilation_rate": list(s.dilation_rate),
        "filters": s.filters,
        "in_channels": engine.in_channels,
        "channels_last_out": engine.channels_last_out,
        "paths": eligible(engine),
        "precision": str(engine.dtype).replace("torch.", ""),
        "device": device.type,
        "hardware": hardware,
        "torch": torch.__version__,
        "slab_class": [1 << max(int(n) - 1, 0).bit_length() for n in shape[2:]],
        "onednn_by_default": _dnn_default(engine, shape),
    }


def eligible(engine: Engine) -> list[str]:
    """The formulations `auto` may choose: where oneDNN is available, only those that always run in it.

    torch sends a convolution to oneDNN or to its generic im2col + GEMM code by the slab's shape, and
    the generic GEMM splits its sums across threads: the same tile then differs in the last bit between
    a process with two threads and a Dask worker with one (seen for 2 -> 3 channels, k 1x1x2). The
    `*_dnn` formulations call oneDNN whatever the shape, so at a given thread count one recorded
    choice gives the same bytes in every process. Across thread counts, oneDNN's forward convolution
    (`phase_dnn*`) gave the same bytes at 1 and 2 threads in every one of about 12,000 random layers
    and slabs; its transposed convolution (`transpose_dnn*`) differed in the last bit in about 1 in
    300, outputs of 36 to 481,740 elements (it picks kernels by the thread count). Keeping only the
    phase formulations would make every cluster run thread-invariant but costs 4-7x on layers with
    kernel <= stride (1->8 k3 s3 96^3: 1224 ms against 377), so they stay eligible: local:N workers
    run them at the single process's thread count (run/engines.py cpu_threads), and a remote cluster
    run that must match a single process bit for bit is given the same `--threads`. Without oneDNN
    (fp64, CUDA, builds without it) every formulation is eligible.
    """
    offered = list(engine.available_paths())
    pinned = [p for p in offered if p in paths.DNN_PATHS or p == SEPARABLE]
    return pinned if any(p in paths.DNN_PATHS for p in pinned) else offered


def rule(engine: Engine, shape: Sequence[int]) -> str:
    """The formulation without measuring: a fixed function of the layer, device and data format.

    Disjoint output blocks (kernel <= stride on every axis) are one GEMM as phases; overlapping ones
    go to the transposed convolution; oneDNN's own entry points where eligible; the channels_last
    variants when results are stored channels_last (no transposing copy).
    """
    s = engine.spec
    offered = eligible(engine)
    family = "phase" if all(k <= st for k, st in zip(s.kernel_size, s.strides)) else "transpose"
    cl = "_cl" if engine.channels_last_out else ""
    for name in (f"{family}_dnn{cl}", f"{family}{cl}", family, "transpose_dnn", "transpose"):
        if name in offered:
            return name
    return offered[0]


def measure(engine: Engine, x: torch.Tensor | Sequence[int]) -> tuple[str, dict[str, float]]:
    """Time every formulation on a crop of the slab (or a slab shape) and return the fastest.

    A 40^3 crop ranks the formulations cheaply but can misjudge large slabs by 2-4x (the phase
    shuffle's cost grows faster than the convolution's; oneDNN's transposed convolution the other
    way), so when the slab is larger the best of each family is timed again on the slab itself,
    or past CONFIRM_LIMIT output elements on its first planes.
    """
    if not isinstance(x, torch.Tensor):
        x = torch.zeros(tuple(x), device=engine.device, dtype=engine.dtype)
    x = x[:1]
    s = engine.spec
    dnn_default = _dnn_default(engine, x.shape)
    # The crop keeps torch's own oneDNN-or-not decision for the slab (paths.onednn_by_default), or
    # it would time other kernels than the slab runs: a taller crop where the slab is past it.
    d, h, w = (min(int(n), PROXY) for n in x.shape[2:])
    if dnn_default:  # N*C*d*h must pass the threshold as the slab's does: taller, then deeper
        h = min(int(x.shape[3]), max(h, paths.ONEDNN_MIN_ROWS // max(x.shape[1] * d, 1) + 1))
        if x.shape[1] * d * h <= paths.ONEDNN_MIN_ROWS:
            d = min(int(x.shape[2]), paths.ONEDNN_MIN_ROWS // max(x.shape[1] * h, 1) + 1)
    proxy = x[:, :, :d, :h, :w].contiguous()
    candidates = eligible(engine)

    def timed(name: str, sample: torch.Tensor):
        return lambda: engine.time_tile(sample, name)

    with torch.inference_mode():
        best, timings = paths.fastest({name: timed(name, proxy) for name in candidates}, repeats=2)
        out_elements = s.filters * math.prod(
            geometry.full_length(n, k, st, dd)
            for n, k, st, dd in zip(x.shape[2:], s.kernel_size, s.strides, s.dilation_rate)
        )
        # Past CONFIRM_LIMIT, a slab cut in depth stands in for it: same rows, fewer planes.
        depth = max(1, int(x.shape[2] * min(1.0, CONFIRM_LIMIT / max(out_elements, 1))))
        sample = x if depth >= x.shape[2] else x[:, :, :depth]
        if tuple(sample.shape) != tuple(proxy.shape):
            # oneDNN's own kernels and torch's scale differently with size too: best of each kind.
            families: dict[tuple[str, bool], list[str]] = {}
            for n in timings:
                families.setdefault((n.split("_")[0], "_dnn" in n), []).append(n)
            finalists = {min(names, key=timings.__getitem__) for names in families.values()}
            if len(finalists) > 1:
                best, confirmed = paths.fastest({n: timed(n, sample) for n in sorted(finalists)}, repeats=2)
                timings.update({f"{n}@slab": t for n, t in confirmed.items()})
    engine.timings = timings
    return best, {k: round(v, 6) for k, v in timings.items()}
