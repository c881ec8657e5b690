"""Keras weight initializers, for specs that carry no trained weights.

The values cannot match Keras's own random streams, but the distributions do: the same bounds,
variances and fan rules. Keras computes fans from the kernel's own layout: for the transposed kernel
(kd, kh, kw, filters, in) that makes fan_in = filters * kd*kh*kw and fan_out = in * kd*kh*kw,
which is the reverse of what one might expect and is reproduced on purpose.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import named

# name -> (variance-scaling scale, mode, distribution) for the variance-scaling family.
_VARIANCE_FAMILY = {
    "glorot_uniform": (1.0, "fan_avg", "uniform"),
    "glorot_normal": (1.0, "fan_avg", "truncated_normal"),
    "he_uniform": (2.0, "fan_in", "uniform"),
    "he_normal": (2.0, "fan_in", "truncated_normal"),
    "lecun_uniform": (1.0, "fan_in", "uniform"),
    "lecun_normal": (1.0, "fan_in", "truncated_normal"),
}

_DEFAULTS: dict[str, dict[str, Any]] = {
    "zeros": {},
    "ones": {},
    "constant": {"value": 0.0},
    "random_uniform": {"minval": -0.05, "maxval": 0.05},
    "random_normal": {"mean": 0.0, "stddev": 0.05},
    "truncated_normal": {"mean": 0.0, "stddev": 0.05},
    # Keras 3 adds input_axes/output_axes to the variance-scaling family (null: Keras 2's fan rule).
    "variance_scaling": {
        "scale": 1.0,
        "mode": "fan_in",
        "distribution": "truncated_normal",
        "input_axes": None,
        "output_axes": None,
    },
    "orthogonal": {"gain": 1.0},
    "identity": {"gain": 1.0},
    **{name: {"input_axes": None, "output_axes": None} for name in _VARIANCE_FAMILY},
}

NAMES: tuple[str, ...] = tuple(sorted(_DEFAULTS))

# Keras aliases and class names.
_ALIASES = {
    "zero": "zeros",
    "one": "ones",
    "uniform": "random_uniform",
    "normal": "random_normal",
    "identity_initializer": "identity",
    "orthogonal_initializer": "orthogonal",
}

# std of a unit normal truncated to [-2, 2]; Keras divides by it so the truncated draw keeps its variance.
_TRUNCATED_STD = 0.87962566103423978


def normalise(value: Any) -> dict[str, Any]:
    """`{"name": ..., "config": {...}}` from a Keras name, a class name or a serialised dict."""
    spec = named.normalise(value, "initializer", _DEFAULTS, _ALIASES, extra_args=("seed", "dtype"))
    cfg = spec["config"]
    cfg.pop("dtype", None)
    for key in ("input_axes", "output_axes"):
        if key in cfg and cfg[key] is None:
            del cfg[key]  # Keras 3 writes null for "not given": the default fan rule
        elif key in cfg:
            axes = cfg[key]
            if not isinstance(axes, (list, tuple)) or not all(
                isinstance(a, int) and not isinstance(a, bool) for a in axes
            ):
                raise ValueError(f"initializer {spec['name']!r}: {key} must be a list of integers, got {axes!r}")
            cfg[key] = [int(a) for a in axes]
    if spec["name"] == "variance_scaling":
        if cfg["mode"] not in ("fan_in", "fan_out", "fan_avg"):
            raise ValueError(f"variance_scaling mode {cfg['mode']!r}; valid: fan_in, fan_out, fan_avg")
        if cfg["distribution"] == "normal":
            cfg["distribution"] = "truncated_normal"
        if cfg["distribution"] not in ("truncated_normal", "untruncated_normal", "uniform"):
            raise ValueError(
                f"variance_scaling distribution {cfg['distribution']!r}; "
                "valid: truncated_normal, untruncated_normal, uniform"
            )
    return spec


def compute_fans(
    shape: Sequence[int], input_axes: Sequence[int] | None = None, output_axes: Sequence[int] | None = None
) -> tuple[int, int]:
    """Keras's `compute_fans`: the last two axes are (input depth, output depth) of the kernel.

    Keras 3's `input_axes`/`output_axes` (both given) name the axes whose sizes multiply into each fan.
    """
    shape = tuple(int(n) for n in shape)
    if input_axes is not None and output_axes is not None:
        try:
            return math.prod(shape[a] for a in input_axes), math.prod(shape[a] for a in output_axes)
        except IndexError:
            raise ValueError(
                f"input_axes {list(input_axes)} / output_axes {list(output_axes)} do not fit shape {shape}"
            ) from None
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated(rng: np.random.Generator, shape: tuple[int, ...], mean: float, std: float) -> np.ndarray:
    """Normal draws redrawn until inside two standard deviations, as Keras's truncated normal."""
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2
    return out * std + mean


def make(
    initializer: Any,
    shape: Sequence[int],
    seed: int | None = None,
    dtype: Any = np.float32,
) -> np.ndarray:
    """Draw an array of `shape` from a Keras initializer (name or serialised dict)."""
    spec = normalise(initializer)
    name, cfg = spec["name"], spec["config"]
    shape = tuple(int(n) for n in shape)
    if seed is None and cfg.get("seed") is not None:
        seed = int(cfg["seed"])
    rng = np.random.default_rng(seed)
    if name == "zeros":
        out = np.zeros(shape)
    elif name == "ones":
        out = np.ones(shape)
    elif name == "constant":
        out = np.full(shape, float(cfg["value"]))
    elif name == "random_uniform":
        out = rng.uniform(float(cfg["minval"]), float(cfg["maxval"]), shape)
    elif name == "random_normal":
        out = rng.normal(float(cfg["mean"]), float(cfg["stddev"]), shape)
    elif name == "truncated_normal":
        out = _truncated(rng, shape, float(cfg["mean"]), float(cfg["stddev"]))
    elif name == "orthogonal":
        out = _orthogonal(rng, shape, float(cfg["gain"]))
    elif name == "identity":
        if len(shape) != 2:
            raise ValueError(f"identity initializer is defined for 2-D weights only, not shape {shape}")
        out = float(cfg["gain"]) * np.eye(*shape)
    else:
        scale, mode, dist = _VARIANCE_FAMILY.get(name, (cfg.get("scale"), cfg.get("mode"), cfg.get("distribution")))
        fan_in, fan_out = compute_fans(shape, cfg.get("input_axes"), cfg.get("output_axes"))
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[mode]
        var = float(scale) / max(1.0, fan)
        if dist == "uniform":
            limit = math.sqrt(3.0 * var)
            out = rng.uniform(-limit, limit, shape)
        elif dist == "untruncated_normal":
            out = rng.normal(0.0, math.sqrt(var), shape)
        else:
            out = _truncated(rng, shape, 0.0, math.sqrt(var) / _TRUNCATED_STD)
    return np.asarray(out, dtype=dtype)


def _orthogonal(rng: np.random.Generator, shape: tuple[int, ...], gain: float) -> np.ndarray:
    """Keras flattens to (prod(shape[:-1]), shape[-1]) and takes Q of a QR with sign correction."""
    if len(shape) < 2:
        raise ValueError(f"orthogonal initializer needs at least 2-D weights, not shape {shape}")
    rows, cols = math.prod(shape[:-1]), shape[-1]
    flat = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(flat)
    q *= np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return gain * q.reshape(shape)
