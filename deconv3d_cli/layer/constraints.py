"""Keras weight constraints (max_norm, min_max_norm, non_neg, unit_norm), applied to loaded weights.

Keras applies a constraint after every optimizer step, so a trained layer's weights already satisfy it;
a spec that names one gets its loaded weights projected the same way (for trained weights that changes
nothing beyond float rounding), and the run reports what changed. The formulas are Keras's, with its
axis convention: the norm is taken over `axis` of the weight as stored, i.e. the Keras kernel layout
(kd, kh, kw, filters, in) -- the default axis 0 is the kernel's depth axis, as in Keras -- and the bias
(filters,). Weights made by an initializer are not constrained (Keras constrains only after training
steps).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from . import named

# Keras's `backend.epsilon()`, added to the norms in MaxNorm, MinMaxNorm and UnitNorm.
EPSILON = 1e-7

DEFAULTS: dict[str, dict[str, Any]] = {
    "max_norm": {"max_value": 2.0, "axis": 0},
    "min_max_norm": {"min_value": 0.0, "max_value": 1.0, "rate": 1.0, "axis": 0},
    "non_neg": {},
    "unit_norm": {"axis": 0},
    "radial_constraint": {},
}
ALIASES = {"maxnorm": "max_norm", "nonneg": "non_neg", "unitnorm": "unit_norm", "min_max": "min_max_norm"}
NAMES: tuple[str, ...] = tuple(sorted(DEFAULTS))
# A value counts as changed when it moved by more than this, relative to itself.
CHANGE_RTOL = 1e-6


class ConstraintError(ValueError):
    """A constraint that cannot apply to this weight; `field` names the spec key."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{what} must be a number, got {value!r}")
    if not np.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return float(value)


def _axes(value: Any, key: str) -> int | list[int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, np.integer)) for v in value):
        return [int(v) for v in value]
    raise ValueError(f"constraint {key!r}: axis must be an integer or a list of integers, got {value!r}")


def normalise(value: Any) -> dict[str, Any]:
    """`{"name": ..., "config": {...}}` with Keras's defaults, from a name, class name or serialised dict."""
    spec = named.normalise(value, "constraint", DEFAULTS, ALIASES)
    key, cfg = spec["name"], spec["config"]
    for arg in ("max_value", "min_value", "rate"):
        if arg in cfg:
            cfg[arg] = _number(cfg[arg], f"constraint {key!r}: {arg}")
    if "axis" in cfg:
        cfg["axis"] = _axes(cfg["axis"], key)
    if key == "max_norm" and cfg["max_value"] < 0:
        raise ValueError(f"constraint 'max_norm': max_value must be >= 0, got {cfg['max_value']}")
    if key == "min_max_norm" and not 0 <= cfg["min_value"] <= cfg["max_value"]:
        raise ValueError(
            f"constraint 'min_max_norm': need 0 <= min_value <= max_value, got {cfg['min_value']}, {cfg['max_value']}"
        )
    return spec


def _norms(w: np.ndarray, axis: int | list[int]) -> np.ndarray:
    axes = tuple(axis) if isinstance(axis, list) else (axis,)
    for a in axes:
        if not -w.ndim <= a < w.ndim:
            raise ValueError(f"axis {a} is out of range for a weight of rank {w.ndim} (shape {w.shape})")
    return np.sqrt(np.sum(np.square(w), axis=axes, keepdims=True))


def apply(constraint: Any, weight: Any) -> np.ndarray:
    """Keras's constraint on `weight` (computed in float64, returned in the weight's dtype)."""
    spec = normalise(constraint)
    key, cfg = spec["name"], spec["config"]
    w0 = np.asarray(weight)
    w = w0.astype(np.float64)
    if key == "non_neg":
        out = w * (w >= 0.0)
    elif key == "unit_norm":
        out = w / (EPSILON + _norms(w, cfg["axis"]))
    elif key in ("max_norm", "min_max_norm"):
        norms = _norms(w, cfg["axis"])
        if key == "max_norm":
            desired = np.clip(norms, 0.0, cfg["max_value"])
        else:
            desired = cfg["rate"] * np.clip(norms, cfg["min_value"], cfg["max_value"]) + (1 - cfg["rate"]) * norms
        out = w * (desired / (EPSILON + norms))
    else:  # radial_constraint
        raise ValueError(
            f"Keras defines radial_constraint for 2-D convolution kernels (rank 4) only; this weight has rank {w.ndim}"
        )
    dtype = w0.dtype if w0.dtype.kind == "f" else np.float32
    return np.asarray(out, dtype=dtype)


def describe(constraint: Mapping[str, Any]) -> str:
    args = ", ".join(f"{k}={v}" for k, v in constraint["config"].items())
    return f"{constraint['name']}({args})"


def apply_to_weights(
    kernel: np.ndarray, bias: np.ndarray | None, kernel_constraint: Any, bias_constraint: Any
) -> tuple[np.ndarray, np.ndarray | None, list[dict[str, Any]]]:
    """Constrained kernel and bias plus one report entry per constraint (ConstraintError names the key)."""
    report = []
    out = {"kernel": kernel, "bias": bias}
    for which, constraint in (("kernel", kernel_constraint), ("bias", bias_constraint)):
        w = out[which]
        if constraint is None or w is None:
            continue
        try:
            new = apply(constraint, w)
        except ValueError as exc:
            raise ConstraintError(f"{constraint['name']}: {exc}", f"{which}_constraint") from None
        old = np.asarray(w, dtype=np.float64)
        delta = np.abs(new.astype(np.float64) - old)
        # "changed" counts what moved beyond float rounding: the epsilon in Keras's norms nudges every
        # value of an already-constrained weight by about 1e-7 relative.
        changed = delta > CHANGE_RTOL * np.abs(old)
        report.append(
            {
                "weight": which,
                "constraint": constraint["name"],
                "config": dict(constraint["config"]),
                "values": int(delta.size),
                "changed": int(np.count_nonzero(changed)),
                "max_abs_change": float(delta.max()) if delta.size else 0.0,
            }
        )
        out[which] = new
    return out["kernel"], out["bias"], report


def format_report(entries: list[dict[str, Any]]) -> str:
    """'kernel max_norm(max_value=2.0, axis=0): 3 of 54 values changed (max |change| 0.12)'; '; '-joined."""
    parts = []
    for e in entries:
        name = describe({"name": e["constraint"], "config": e["config"]})
        parts.append(
            f"{e['weight']} {name}: {e['changed']} of {e['values']} values changed"
            + (f" (max |change| {e['max_abs_change']:.3g})" if e["changed"] else "")
        )
    return "; ".join(parts)
