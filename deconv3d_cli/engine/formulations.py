"""Ways to compute the uncropped transposed convolution, all exact; the engine picks the fastest.

- `transpose`: torch's conv_transpose3d on a contiguous input.
- `transpose_cl`: the same on a channels_last_3d input (oneDNN's faster path for many channels).
- `phase` / `phase_cl`: sub-pixel decomposition. Output position q*s + r only sees taps r, r + s, ...
  of the kernel, so all s_d*s_h*s_w phases are one forward conv3d with F*s^3 output channels and a
  ceil(k/s) kernel, followed by a depth-to-space shuffle. When k <= s this is a single GEMM; torch's
  transposed convolution is much slower there. Phases with fewer taps are zero-padded, so k = 3, s = 2
  wastes work and usually loses: hence the measurement.
- `*_dnn` variants: the same convolution handed to oneDNN directly. torch sends a convolution to
  oneDNN only when N*C*D*H > 20480 (or both trailing kernel sides exceed 3) and otherwise to its
  generic im2col code: a 16-channel 8x64x64 slab's transposed convolution took 35 ms that way and
  3.9 ms in oneDNN, while a one-channel 1x1x1 phase conv is faster in the generic code. Offered only
  where torch would not pick oneDNN itself (`onednn_by_default`), and timed like the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from itertools import product
from typing import Any

import torch
import torch.nn.functional as F

from . import workers

PATHS = (
    "transpose",
    "transpose_cl",
    "transpose_dnn",
    "transpose_dnn_cl",
    "phase",
    "phase_cl",
    "phase_dnn",
    "phase_dnn_cl",
)
DNN_PATHS = tuple(p for p in PATHS if "_dnn" in p)
# Formulations whose bytes do not depend on the CPU thread count: oneDNN's forward convolution (the
# phase formulations; benchmarks/thread_sweep.py found no case differing at 1 and 2 threads), and
# the per-axis passes of `separable` (choice.SEPARABLE) and the resampler (resample.PATH), which are
# one multiply or one add per element, cut into pieces by shape alone. oneDNN's transposed
# convolution picks its kernels by the thread count (40 of 10,324 random cases differed in the last
# bit); torch's generic GEMM splits its sums by it.
THREAD_INVARIANT = frozenset({"phase_dnn", "phase_dnn_cl", "separable", "resample"})
COPY_PIECE = 1 << 20  # elements per piece of the phase shuffle's copies (workers.py)
ONEDNN_MIN_ROWS = 20480  # torch's threshold on N*C*D*H (aten/src/ATen/native/Convolution.cpp, use_mkldnn)


def onednn_by_default(shape: Sequence[int], kernel: Sequence[int]) -> bool:
    """Whether torch itself runs a CPU fp32 convolution of this (N, C, D, H, W) input in oneDNN."""
    n, c, d, h = (int(v) for v in shape[:4])
    return n * c * d * h > ONEDNN_MIN_ROWS or (kernel[-1] > 3 and kernel[-2] > 3)


def onednn_available(device: torch.device, dtype: torch.dtype) -> bool:
    if device.type != "cpu" or dtype not in (torch.float32, torch.bfloat16) or not torch.backends.mkldnn.is_available():
        return False
    try:  # the transposed convolution's entry point is torch's own (inductor's), not a public API
        return _onednn_transpose() is not None
    except (AttributeError, RuntimeError):
        return False


def _onednn_transpose() -> Callable[..., torch.Tensor]:
    return torch.ops.mkldnn._convolution_transpose_pointwise  # noqa: SLF001


def _conv3d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dnn: bool, padding: Sequence[int] = (0, 0, 0)
) -> torch.Tensor:
    if dnn:
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, list(padding), [1, 1, 1], [1, 1, 1], 1)
    return F.conv3d(x, weight, bias, padding=tuple(padding))


def transpose(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    dilation: Sequence[int],
    cl: bool,
    crop: Sequence[int] = (0, 0, 0),
    dnn: bool = False,
) -> torch.Tensor:
    """The uncropped output less `crop` voxels at both ends of each axis (torch's `padding`)."""
    if cl:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    if dnn:
        return _onednn_transpose()(
            x, weight, bias, list(crop), [0, 0, 0], list(stride), list(dilation), 1, "none", [], ""
        )
    return F.conv_transpose3d(x, weight, bias, stride=tuple(stride), padding=tuple(crop), dilation=tuple(dilation))


def phase_weight(weight: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """(C, F, kd, kh, kw) transposed-conv weight -> (F*sd*sh*sw, C, K'd, K'h, K'w) conv3d weight.

    Phase r of an axis uses taps t = r + m*s; conv3d correlates, so tap m lands at K' - 1 - m.
    """
    c, f, *k = weight.shape
    s = list(stride)
    kp = [-(-kk // ss) for kk, ss in zip(k, s)]
    w = weight.new_zeros((f, *s, c, *kp))
    src = weight.permute(1, 0, 2, 3, 4)  # (F, C, kd, kh, kw)
    for rd in range(s[0]):
        for rh in range(s[1]):
            for rw in range(s[2]):
                td, th, tw = (list(range(r, kk, ss)) for r, kk, ss in zip((rd, rh, rw), k, s))
                if not (len(td) and len(th) and len(tw)):
                    continue
                block = src[:, :, td][:, :, :, th][:, :, :, :, tw].flip(2, 3, 4)
                w[:, rd, rh, rw, :, kp[0] - len(td) :, kp[1] - len(th) :, kp[2] - len(tw) :] = block
    return w.reshape(f * s[0] * s[1] * s[2], c, *kp).contiguous()


def _phase_conv(
    x: torch.Tensor,
    pweight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    cl: bool,
    rows: Sequence[tuple[int, int]] | None = None,
    dnn: bool = False,
) -> torch.Tensor:
    """The conv3d of all phases: (N, F*sd*sh*sw, Qd, Qh, Qw); phase r of position q is full output q*s + r.

    Q = I + K' - 1 per axis; `rows` = [(q_lo, q_hi), ...] computes only those q (the input is sliced
    and zero-padded to match), so a tile costs what it needs and no more.
    """
    kp = pweight.shape[2:]
    if rows is None:
        rows = [(0, n + k - 1) for n, k in zip(x.shape[2:], kp)]
    index, pads = [slice(None), slice(None)], []
    for (q_lo, q_hi), k, n in zip(rows, kp, x.shape[2:]):
        lo, hi = q_lo - (k - 1), q_hi  # conv row q reads padded rows q .. q + K' - 1, i.e. input q - K' + 1 .. q
        index.append(slice(max(lo, 0), min(hi, n)))
        pads.append((max(-lo, 0), max(hi - n, 0)))
    x = x[tuple(index)]
    if any(p for pair in pads for p in pair):
        x = F.pad(x, [p for pair in reversed(pads) for p in pair])
    if cl:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    if bias is not None:  # every phase of filter f carries bias[f]; conv3d's fused bias is free
        bias = bias.repeat_interleave(stride[0] * stride[1] * stride[2])
    return _conv3d(x, pweight, bias, dnn)


def phase(
    x: torch.Tensor,
    pweight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    filters: int,
    cl: bool,
    cl_out: bool = False,
    dnn: bool = False,
) -> torch.Tensor:
    """Full output (length Q*s >= (I-1)*s + k per axis; the extra tail holds the bias only).

    `cl` feeds the conv3d a channels_last_3d input; `cl_out` shuffles straight into channels_last
    memory (what a channels_last array wants), saving a transposing copy later.
    """
    s = list(stride)
    y = _phase_conv(x, pweight, bias, s, cl, dnn=dnn)
    n, q = y.shape[0], y.shape[2:]
    y = y.reshape(n, filters, s[0], s[1], s[2], *q)
    if cl_out:  # shuffle straight into channels_last order: (N, D, H, W, F) memory, viewed as NCDHW
        y = y.permute(0, 5, 2, 6, 3, 7, 4, 1).reshape(n, q[0] * s[0], q[1] * s[1], q[2] * s[2], filters)
        return y.permute(0, 4, 1, 2, 3)
    y = y.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return y.reshape(n, filters, q[0] * s[0], q[1] * s[1], q[2] * s[2])


def phase_window(
    x: torch.Tensor,
    pweight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    filters: int,
    offsets: Sequence[int],
    sizes: Sequence[int],
    cl: bool,
    cl_out: bool,
    fill: Callable[[tuple[int, ...]], torch.Tensor],
    dnn: bool = False,
) -> torch.Tensor:
    """Full output positions [offset, offset + size) per axis, shuffled and cropped in one pass.

    Output position o is full position o + offset = q*s + r: phase r's rows land at o = q*s + r - offset,
    a strided slice of the tile, so each phase is one strided copy and no full-size intermediate exists.
    Positions no phase row reaches (outside the conv's span) keep `fill`'s values (the bias).
    """
    s = list(stride)
    n = x.shape[0]
    q_full = [i + k - 1 for i, k in zip(x.shape[2:], pweight.shape[2:])]
    # Only the conv rows whose phases land in the window: q from floor(offset / s) to floor(last / s).
    rows = [
        (min(max(o // ss, 0), qf), min(max((o + m - 1) // ss + 1, 0), qf))
        for o, m, ss, qf in zip(offsets, sizes, s, q_full)
    ]
    shape = (n, filters, *sizes)
    inside = all(o >= 0 and o + m <= qf * ss for o, m, qf, ss in zip(offsets, sizes, q_full, s))
    if inside:
        fmt = torch.channels_last_3d if cl_out else torch.contiguous_format
        out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    else:
        out = fill(shape)
        if cl_out:
            out = out.contiguous(memory_format=torch.channels_last_3d)
    if any(hi <= lo for lo, hi in rows):
        return out
    # Stride 1 with a window centred on the full output ('same' with odd kernels): conv3d's own
    # padding gives exactly the window, with no padded copy of the input and no shuffle pass.
    pads = [k - 1 - o for o, k in zip(offsets, pweight.shape[2:])]
    if (
        inside
        and all(ss == 1 for ss in s)
        and all(
            p >= 0 and n_in + 2 * p - k + 1 == m for p, n_in, k, m in zip(pads, x.shape[2:], pweight.shape[2:], sizes)
        )
    ):
        if cl:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return _conv3d(x, pweight, bias, dnn, padding=pads)
    y = _phase_conv(x, pweight, bias, s, cl, rows, dnn)
    phases = y.view(n, filters, s[0], s[1], s[2], *y.shape[2:])
    copies: list[tuple[torch.Tensor, torch.Tensor]] = []
    for r, src, dst in _phase_slices(s, offsets, sizes, rows):
        index: tuple[Any, ...] = (slice(None), slice(None), *r, *src)
        target: tuple[Any, ...] = (slice(None), slice(None), *dst)
        copies.append((out[target], phases[index]))
    _copy_all(copies, x.device)
    return out


def _phase_slices(
    s: Sequence[int], offsets: Sequence[int], sizes: Sequence[int], rows: Sequence[tuple[int, int]]
) -> Iterator[tuple[tuple[int, ...], list[slice], list[slice]]]:
    """For each phase r that lands in the window: its conv rows (src) and the tile's strided slice (dst)."""
    for r in product(*(range(ss) for ss in s)):
        src, dst = [], []
        for a in range(3):
            q0 = max(-((r[a] - offsets[a]) // s[a]), 0)  # first q with q*s + r >= offset
            o0 = q0 * s[a] + r[a] - offsets[a]
            count = min(-(-(sizes[a] - o0) // s[a]) if o0 < sizes[a] else 0, rows[a][1] - q0)
            if count <= 0:
                break
            src.append(slice(q0 - rows[a][0], q0 - rows[a][0] + count))
            dst.append(slice(o0, o0 + (count - 1) * s[a] + 1, s[a]))
        else:
            yield r, src, dst


def _copy_all(copies: Sequence[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> None:
    """dst.copy_(src) for every pair, as pieces for the engine's threads (CPU), about COPY_PIECE elements each.

    The shuffle is s^3 strided copies (memory-bound): one OpenMP region each would wait on the slowest
    thread s^3 times per tile; pieces balance over the engine's threads instead (workers.py). Copies
    are exact, so how they are cut changes no byte.
    """
    if device.type != "cpu":
        for dst, src in copies:
            dst.copy_(src)
        return
    pieces = []
    for dst, src in copies:
        count = -(-dst.numel() // COPY_PIECE)
        for lo, hi in workers.split(int(dst.shape[2]), count):
            pieces.append(lambda d=dst.narrow(2, lo, hi - lo), t=src.narrow(2, lo, hi - lo): d.copy_(t))
    workers.run(pieces)


def fastest(candidates: dict[str, Callable[[], torch.Tensor]], repeats: int = 3) -> tuple[str, dict[str, float]]:
    """Name of the candidate with the lowest time, and each one's best time.

    One warm-up call each, then `repeats` rounds that call every candidate in turn, keeping each one's
    minimum: interference on a shared machine only ever adds time, and taking turns spreads a slow
    spell over all candidates instead of one (single timings picked a path 2x slower here).
    A candidate that raises (a oneDNN entry point refusing a shape or dtype this torch build does not
    cover) is left out; only when every one fails is the last error raised.
    """
    live: dict[str, Callable[[], torch.Tensor]] = {}
    error: Exception | None = None
    for name, fn in candidates.items():
        try:
            fn()
        except (RuntimeError, NotImplementedError) as exc:
            if isinstance(exc, torch.OutOfMemoryError):
                raise
            error = exc
            continue
        live[name] = fn
    if not live:
        assert error is not None
        raise error
    timings = dict.fromkeys(live, float("inf"))
    for _ in range(repeats):
        for name, fn in live.items():
            t = time.perf_counter()
            fn()
            timings[name] = min(timings[name], time.perf_counter() - t)
    return min(timings, key=timings.__getitem__), timings
