"""Integer and affine math of Conv3DTranspose, one axis at a time.

Every length, crop, halo and affine the tool uses comes from this module, so that the engine, the
tiler, the writers and the dry-run report can never disagree about a shape. The formulas are those of
SEMANTICS.md (TensorFlow's rules, which is where Keras-trained weights come from).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

VALID = "valid"
SAME = "same"
# PyTorch's ConvTranspose3d padding (a documented extension of the spec format): `pad` voxels are
# cropped from each end of the full output. Keras has no such mode; see SEMANTICS.md and the README.
EXPLICIT = "explicit"


def effective_kernel(kernel: int, dilation: int) -> int:
    """Span of a dilated kernel: the taps sit `dilation` apart."""
    return (kernel - 1) * dilation + 1


def full_length(length: int, kernel: int, stride: int, dilation: int = 1) -> int:
    """Length of the uncropped transposed convolution of `length` input voxels."""
    if length <= 0:
        return 0
    return (length - 1) * stride + effective_kernel(kernel, dilation)


def output_length(
    length: int,
    kernel: int,
    stride: int,
    padding: str,
    output_padding: int | None = None,
    dilation: int = 1,
    pad: int = 0,
) -> int:
    """Keras's `deconv_output_length` with dilation, as TensorFlow evaluates it (torch's for EXPLICIT)."""
    k_eff = effective_kernel(kernel, dilation)
    if padding == EXPLICIT:
        return explicit_output_length(length, kernel, stride, pad, output_padding, dilation)
    if output_padding is None:
        if padding == VALID:
            return length * stride + max(k_eff - stride, 0)
        return length * stride
    if padding == VALID:
        return (length - 1) * stride + k_eff + output_padding
    return (length - 1) * stride + k_eff - 2 * (k_eff // 2) + output_padding


def explicit_output_length(
    length: int, kernel: int, stride: int, pad: int, output_padding: int | None = None, dilation: int = 1
) -> int:
    """PyTorch's ConvTranspose3d: (I - 1)*s - 2p + d*(k - 1) + op + 1, i.e. the full output cropped by p per side."""
    return (length - 1) * stride - 2 * pad + effective_kernel(kernel, dilation) + (output_padding or 0)


def crop_offset(
    length: int, kernel: int, stride: int, padding: str, out_length: int, dilation: int = 1, pad: int = 0
) -> int:
    """First full-output position that lands on output 0 (TF puts the odd element at the end)."""
    if padding == VALID:
        return 0
    if padding == EXPLICIT:
        return pad  # torch crops p at the start; output_padding only lengthens the end
    return max(full_length(length, kernel, stride, dilation) - out_length, 0) // 2


@dataclass(frozen=True)
class Axis:
    """The transposed convolution along one spatial axis of a given input length."""

    length: int
    kernel: int
    stride: int
    dilation: int
    padding: str
    output_padding: int | None
    # Voxels of boundary extension (replicate/reflect) below and above the input; 0 means Keras's
    # implicit zeros. Output length and crop stay those of the unextended input: only the rows read move.
    pad_lo: int = 0
    pad_hi: int = 0
    # With padding EXPLICIT: torch's symmetric crop p (voxels removed from each end of the full output).
    pad: int = 0

    @property
    def k_eff(self) -> int:
        return effective_kernel(self.kernel, self.dilation)

    @property
    def full(self) -> int:
        return full_length(self.length, self.kernel, self.stride, self.dilation)

    @property
    def out(self) -> int:
        return output_length(
            self.length, self.kernel, self.stride, self.padding, self.output_padding, self.dilation, self.pad
        )

    @property
    def crop(self) -> int:
        return crop_offset(self.length, self.kernel, self.stride, self.padding, self.out, self.dilation, self.pad)

    @property
    def halo(self) -> int:
        """Input voxels below a stride-aligned tile that still reach into it."""
        return -(-self.k_eff // self.stride) - 1

    def slab_rows(self, t: int) -> int:
        """Input rows (boundary extension included) that a stride-aligned tile of `t` outputs reads, at most."""
        return min(-(-t // self.stride) + self.halo + 1, self.length + self.pad_lo + self.pad_hi)

    def full_rows(self, t: int) -> int:
        """Rows of the uncropped transposed convolution of such a slab (what the engine computes)."""
        return (self.slab_rows(t) - 1) * self.stride + self.k_eff

    def extended(self) -> Axis:
        """The same axis with just enough boundary extension that every output voxel sees real data.

        Output o draws on input rows ceil((o + c - K + 1) / s) .. floor((o + c) / s); the extension
        covers the rows of that range that fall outside [0, I - 1] for o in [0, O - 1].
        """
        lo = max((self.k_eff - 1 - self.crop) // self.stride, 0)
        hi = max((self.out - 1 + self.crop) // self.stride - (self.length - 1), 0)
        return replace(self, pad_lo=lo, pad_hi=hi)

    def input_range(self, start: int, stop: int) -> SlabRange:
        """Input rows feeding output positions [start, stop), and where they land in the slab's output.

        `lo`/`hi` are the inclusive-exclusive input rows (clipped to the volume, and counted from the
        start of the boundary extension when there is one: row r is input row r - pad_lo); `offset` is
        the position in that slab's uncropped output that corresponds to output `start`. When no input
        row reaches the range (past `full`, the bias-only tail), the slab is empty.
        """
        if not 0 <= start < stop <= self.out:
            raise ValueError(f"output range [{start}, {stop}) outside [0, {self.out})")
        first = start + self.crop + self.pad_lo * self.stride
        return slab_rows(first, stop - start, self.stride, self.k_eff, self.length + self.pad_lo + self.pad_hi)


def slab_rows(first: int, size: int, stride: int, k_eff: int, length: int) -> SlabRange:
    """Rows of a slab of `length` rows whose taps reach its uncropped output [first, first + size).

    Row i covers i*s .. i*s + K - 1, so the rows are ceil((first - K + 1) / s) .. floor((first + size - 1)
    / s), clipped to the slab; `offset` is where `first` falls in those rows' own uncropped output.
    """
    i0 = max(-((k_eff - 1 - first) // stride), 0)
    i1 = min((first + size - 1) // stride, length - 1)
    if i1 < i0:
        return SlabRange(0, 0, 0)
    return SlabRange(i0, i1 + 1, first - i0 * stride)


@dataclass(frozen=True)
class SlabRange:
    lo: int
    hi: int
    offset: int

    @property
    def size(self) -> int:
        return self.hi - self.lo


def axes_for(
    spatial_shape: Sequence[int],
    kernel_size: Sequence[int],
    strides: Sequence[int],
    dilation_rate: Sequence[int],
    padding: str | Sequence[int],
    output_padding: Sequence[int] | None,
) -> tuple[Axis, Axis, Axis]:
    """The three spatial axes; `padding` is 'valid', 'same', or torch's per-axis crops [p_d, p_h, p_w]."""
    ops = output_padding if output_padding is not None else (None, None, None)
    pads: tuple[int, ...] = (0, 0, 0)
    if isinstance(padding, str):
        mode = padding
    else:
        mode, pads = EXPLICIT, tuple(int(p) for p in padding)
    return tuple(  # type: ignore[return-value]
        Axis(int(n), int(k), int(s), int(d), mode, None if op is None else int(op), pad=p)
        for n, k, s, d, op, p in zip(spatial_shape, kernel_size, strides, dilation_rate, ops, pads)
    )


def output_affine(affine: np.ndarray, axes: Sequence[Axis]) -> np.ndarray:
    """World-to-voxel mapping of the output: output voxel o sits at input voxel (o + c - (K-1)/2) / s.

    The input affine is composed with a diagonal scale and shift, so orientation and shear are kept.
    """
    t = np.eye(4)
    for a, ax in enumerate(axes):
        t[a, a] = 1.0 / ax.stride
        t[a, 3] = (ax.crop - (ax.k_eff - 1) / 2.0) / ax.stride
    return np.asarray(affine, dtype=np.float64) @ t


def output_spacing(spacing: Sequence[float], strides: Sequence[int]) -> tuple[float, ...]:
    return tuple(float(v) / int(s) for v, s in zip(spacing, strides))
