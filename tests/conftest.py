"""Shared references for the unit tests: brute-force transposed convolutions written from SEMANTICS.md.

Nothing here calls the package: these are the independent oracles the engine, the geometry and the
tiler are compared against. Exposed as session fixtures (hypothesis accepts those).
"""

from __future__ import annotations

import math
import os
from types import SimpleNamespace

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def _tuning_cache(tmp_path_factory):
    """Formulation decisions go to a cache of this test session's own (inherited by subprocesses), never
    the user's ~/.cache; tests that need a fresh decision use the `fresh_tuning` fixture."""
    os.environ["DECONV3D_TUNING_DIR"] = str(tmp_path_factory.mktemp("tuning"))
    yield


@pytest.fixture
def fresh_tuning(tmp_path, monkeypatch):
    """An empty tuning cache and no decisions remembered by this process: the next choice is measured."""
    from deconv3d_cli.engine import tuning

    monkeypatch.setenv("DECONV3D_TUNING_DIR", str(tmp_path / "tuning"))
    monkeypatch.setattr(tuning, "_MEMO", {})
    return tmp_path / "tuning"


def keras_output_length(length: int, kernel: int, stride: int, padding: str, output_padding, dilation: int) -> int:
    """Keras's `conv_utils.deconv_output_length`, transcribed (dilation applied to the filter size first)."""
    filter_size = kernel + (kernel - 1) * (dilation - 1)
    if output_padding is None:
        if padding == "valid":
            return length * stride + max(filter_size - stride, 0)
        return length * stride
    pad = filter_size // 2 if padding == "same" else 0
    return (length - 1) * stride + filter_size - 2 * pad + output_padding


def tf_pad_before(length: int, kernel: int, stride: int, padding: str, out_length: int, dilation: int) -> int:
    """TensorFlow's forward-conv padding for an `out_length` input: the low side of `pad_total`."""
    if padding == "valid":
        return 0
    k_eff = (kernel - 1) * dilation + 1
    pad_total = max((length - 1) * stride + k_eff - out_length, 0)
    return pad_total // 2


def full_1d(x: np.ndarray, w: np.ndarray, stride: int, dilation: int) -> np.ndarray:
    """y_full[i*s + t*d] += x[i] * w[t], literally."""
    n, k = len(x), len(w)
    if n == 0:
        return np.zeros(0)
    y = np.zeros((n - 1) * stride + (k - 1) * dilation + 1)
    for i in range(n):
        for t in range(k):
            y[i * stride + t * dilation] += x[i] * w[t]
    return y


def window_1d(full: np.ndarray, start: int, size: int) -> np.ndarray:
    """full[start:start+size], zero where that runs outside `full` (either side)."""
    out = np.zeros(size)
    for j in range(size):
        p = start + j
        if 0 <= p < len(full):
            out[j] = full[p]
    return out


def layer_1d(x, w, stride, dilation, padding, output_padding) -> np.ndarray:
    """The cropped, zero-filled output of SEMANTICS.md on one axis (no bias)."""
    n, k = len(x), len(w)
    out = keras_output_length(n, k, stride, padding, output_padding, dilation)
    c = tf_pad_before(n, k, stride, padding, out, dilation)
    return window_1d(full_1d(x, w, stride, dilation), c, out)


def full_3d(x: np.ndarray, kernel: np.ndarray, strides, dilation) -> np.ndarray:
    """Uncropped transposed convolution of x (N, C, D, H, W) with a Keras kernel (kd, kh, kw, F, C), in float64."""
    x = np.asarray(x, dtype=np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    n, _, *size = x.shape
    ks = kernel.shape[:3]
    full = [(i - 1) * s + (k - 1) * d + 1 for i, s, k, d in zip(size, strides, ks, dilation)]
    y = np.zeros((n, kernel.shape[3], *full))
    for td in range(ks[0]):
        for th in range(ks[1]):
            for tw in range(ks[2]):
                contrib = np.einsum("ncdhw,fc->nfdhw", x, kernel[td, th, tw])
                idx = tuple(
                    slice(t * d, t * d + (i - 1) * s + 1, s)
                    for t, d, i, s in zip((td, th, tw), dilation, size, strides)
                )
                y[(slice(None), slice(None), *idx)] += contrib
    return y


def _np_activation(name: str, y: np.ndarray, axis: int) -> np.ndarray:
    erf = np.vectorize(math.erf)
    if name == "linear":
        return y
    if name == "relu":
        return np.maximum(y, 0)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-y))
    if name == "tanh":
        return np.tanh(y)
    if name == "gelu":
        return 0.5 * y * (1 + erf(y / math.sqrt(2)))
    if name in ("softmax", "log_softmax"):
        e = np.exp(y - y.max(axis=axis, keepdims=True))
        sm = e / e.sum(axis=axis, keepdims=True)
        return sm if name == "softmax" else np.log(sm)
    raise KeyError(name)


def layer_3d(x, kernel, bias, strides, dilation, padding, output_padding, activation="linear", softmax_axis=1):
    """The whole layer on x (N, C, D, H, W) per SEMANTICS.md: full conv, TF crop with zero fill, bias, activation."""
    x = np.asarray(x, dtype=np.float64)
    full = full_3d(x, kernel, strides, dilation)
    size = x.shape[2:]
    ks = kernel.shape[:3]
    ops = output_padding if output_padding is not None else (None, None, None)
    outs = [keras_output_length(i, k, s, padding, op, d) for i, k, s, op, d in zip(size, ks, strides, ops, dilation)]
    crops = [tf_pad_before(i, k, s, padding, o, d) for i, k, s, o, d in zip(size, ks, strides, outs, dilation)]
    y = np.zeros((*full.shape[:2], *outs))
    src, dst = [], []
    for c, o, L in zip(crops, outs, full.shape[2:]):
        lo, hi = max(c, 0), min(c + o, L)
        src.append(slice(lo, max(hi, lo)))
        dst.append(slice(lo - c, max(hi, lo) - c))
    y[(slice(None), slice(None), *dst)] = full[(slice(None), slice(None), *src)]
    if bias is not None:
        y = y + np.asarray(bias, dtype=np.float64).reshape(1, -1, 1, 1, 1)
    return _np_activation(activation, y, softmax_axis)


@pytest.fixture(scope="session")
def ref() -> SimpleNamespace:
    return SimpleNamespace(
        keras_output_length=keras_output_length,
        tf_pad_before=tf_pad_before,
        full_1d=full_1d,
        window_1d=window_1d,
        layer_1d=layer_1d,
        full_3d=full_3d,
        layer_3d=layer_3d,
    )
