"""Keras regularizers (l1, l2, l1_l2, orthogonal_regularizer): penalty values for the run report.

They never change what the layer computes; users ask for the numbers. The kernel and bias penalties are
evaluated once per run on the weights the engine uses; the activity penalty is accumulated tile by
tile over the layer's output (after the activation, as Keras applies it) and divided by the batch size,
as tf.keras 2 (and Keras 3) do. Sums are taken in float64.

The pipeline touches this module in exactly two places (see `pipeline.execute`): one
`ActivityAccumulator.add` per computed tile, and one `run_report` per run, whose keys are added to the
run's report only when the spec names a regularizer or a constraint.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from . import named

DEFAULTS: dict[str, dict[str, Any]] = {
    "l1": {"l1": 0.01},
    "l2": {"l2": 0.01},
    "l1_l2": {"l1": 0.01, "l2": 0.01},
    "orthogonal_regularizer": {"factor": 0.01, "mode": "rows"},
}
# The class L1L2 defaults to zeros (Keras 2 and 3); only the function alias 'l1_l2' uses 0.01 for both.
_L1L2_CLASS_DEFAULTS = {"l1": 0.0, "l2": 0.0}
ALIASES = {"orthogonal": "orthogonal_regularizer"}
NAMES: tuple[str, ...] = tuple(sorted(DEFAULTS))


def normalise(value: Any) -> dict[str, Any]:
    """`{"name": ..., "config": {...}}` with Keras's defaults, from a name, class name or serialised dict."""
    class_name = value if isinstance(value, str) else value.get("class_name") if isinstance(value, Mapping) else None
    defaults = DEFAULTS
    if isinstance(class_name, str) and class_name.strip() == "L1L2":
        defaults = {**DEFAULTS, "l1_l2": _L1L2_CLASS_DEFAULTS}
    spec = named.normalise(value, "regularizer", defaults, ALIASES)
    key, cfg = spec["name"], spec["config"]
    for arg in ("l1", "l2", "factor"):
        if arg in cfg:
            v = cfg[arg]
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
                raise ValueError(f"regularizer {key!r}: {arg} must be a finite number, got {v!r}")
            if v < 0:
                raise ValueError(f"regularizer {key!r}: {arg} must be >= 0, got {v!r}")
            cfg[arg] = float(v)
    if key == "orthogonal_regularizer" and cfg["mode"] not in ("rows", "columns"):
        raise ValueError(f"regularizer 'orthogonal_regularizer': mode {cfg['mode']!r}; valid: rows, columns")
    return spec


def penalty(regularizer: Any, weight: Any) -> tuple[float | None, str | None]:
    """(value, None), or (None, why) where Keras cannot evaluate it (orthogonal on a non-matrix)."""
    spec = normalise(regularizer)
    key, cfg = spec["name"], spec["config"]
    w = np.asarray(weight, dtype=np.float64)
    if key == "orthogonal_regularizer":
        if w.ndim != 2:
            return None, (
                f"Keras defines OrthogonalRegularizer for rank-2 weights only; this one has shape {w.shape} "
                "(Keras raises when it computes this penalty)"
            )
        return _orthogonal(w, cfg["factor"], cfg["mode"]), None
    return l1_l2(cfg.get("l1", 0.0), cfg.get("l2", 0.0), np.sum(np.abs(w)), np.sum(np.square(w))), None


def l1_l2(l1: float, l2: float, sum_abs: float, sum_sq: float) -> float:
    return float(l1 * sum_abs + l2 * sum_sq)


def _orthogonal(w: np.ndarray, factor: float, mode: str) -> float:
    """Keras's OrthogonalRegularizer: mean |cosine| of distinct row (or column) pairs, times factor / 2."""
    axis = 1 if mode == "rows" else 0
    # Keras's l2_normalize: x / sqrt(max(sum(x^2), 1e-12)).
    unit = w / np.sqrt(np.maximum(np.sum(np.square(w), axis=axis, keepdims=True), 1e-12))
    product = unit @ unit.T if mode == "rows" else unit.T @ unit
    size = product.shape[0]
    if size < 2:
        return float("nan")  # Keras divides by zero pairs too
    off = np.abs(product) * (1.0 - np.eye(size))
    return float(factor * 0.5 * off.sum() / (size * (size - 1) / 2.0))


def _entry(regularizer: Mapping[str, Any], value: float | None, note: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"regularizer": regularizer["name"], "config": dict(regularizer["config"]), "value": value}
    if note:
        entry["note"] = note
    return entry


def run_report(
    spec: Any,
    kernel: Any,
    bias: Any,
    activity: Any = None,
    batch: int = 1,
    complete: bool = True,
) -> dict[str, Any]:
    """The `constraints` and `regularization` entries of a run's report ({} when the spec names none).

    `kernel`/`bias` are the weights the run used (any layout: the penalties defined here are sums);
    `complete` is False when some tiles were not computed in this run (a resumed run), so the activity
    sum would be partial.
    """
    out: dict[str, Any] = {}
    applied = list(getattr(spec, "constraints_applied", ()) or ())
    if applied:
        out["constraints"] = applied
    reg: dict[str, Any] = {}
    for which, weight in (("kernel", kernel), ("bias", bias)):
        r = getattr(spec, f"{which}_regularizer", None)
        if r is None:
            continue
        if weight is None:
            reg[which] = _entry(r, None, f"the layer has no {which}")
        else:
            reg[which] = _entry(r, *penalty(r, _to_numpy(weight)))
    r = getattr(spec, "activity_regularizer", None)
    if r is not None:
        if r["name"] == "orthogonal_regularizer":
            reg["activity"] = _entry(
                r, None, "Keras defines OrthogonalRegularizer for rank-2 tensors only; the layer's output is rank 5"
            )
        elif not complete or activity is None or not activity.active:
            reg["activity"] = _entry(r, None, "not every output tile was computed in this run (resumed)")
        else:
            reg["activity"] = _entry(
                r,
                activity.value(batch),
                f"summed over {activity.tiles} output tile(s), divided by the batch size {batch} as Keras does",
            )
    if reg:
        values = [e["value"] for e in reg.values() if e["value"] is not None]
        reg["total"] = float(sum(values)) if values else None
        out["regularization"] = reg
    return out


def _to_numpy(w: Any) -> np.ndarray:
    """A weight as numpy (the engine hands over numpy copies of its tensors)."""
    return np.asarray(w)


def format_report(report: Mapping[str, Any]) -> str:
    """'kernel l2 = 0.0123, activity l1 = 4.56 (total 4.57)'."""
    reg = report.get("regularization") or {}
    parts = []
    for which in ("kernel", "bias", "activity"):
        e = reg.get(which)
        if e is None:
            continue
        value = "n/a" if e["value"] is None else f"{e['value']:.6g}"
        parts.append(f"{which} {e['regularizer']} = {value}")
    if not parts:
        return ""
    total = reg.get("total")
    return ", ".join(parts) + ("" if total is None or len(parts) == 1 else f" (total {total:.6g})")
