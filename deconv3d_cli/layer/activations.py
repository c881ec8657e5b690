"""tf.keras 2 activations, by name only: a spec can never make the tool run user code.

The formulas follow tf.keras 2 (where they differ from torch's defaults: `hard_sigmoid` is
clip(0.2x + 0.5), `leaky_relu` uses alpha 0.2, `gelu` the exact erf form). The names live here, torch-free;
the engine applies them (engine/activations.py), so reading a spec or printing `--help` never loads torch.
"""

from __future__ import annotations

from typing import Any

NAMES: tuple[str, ...] = (
    "linear",
    "relu",
    "relu6",
    "sigmoid",
    "hard_sigmoid",
    "tanh",
    "softplus",
    "softsign",
    "elu",
    "selu",
    "exponential",
    "swish",
    "silu",
    "gelu",
    "softmax",
    "log_softmax",
    "leaky_relu",
    "mish",
)

# Activations that mix values along an axis: a tile must then span that axis whole.
AXIS_ACTIVATIONS = ("softmax", "log_softmax")

SELU_SCALE = 1.0507009873554805
SELU_ALPHA = 1.6732632423543772


def normalise(name: Any) -> str:
    """Canonical name, or ValueError listing the valid ones."""
    if name is None:
        return "linear"
    if isinstance(name, dict):  # Keras serialised form {"class_name": ..., "config": {...}}
        name = name.get("config", {}).get("name", name.get("class_name"))
    if not isinstance(name, str):
        raise ValueError(f"activation must be a name, got {type(name).__name__}; valid: {', '.join(NAMES)}")
    key = name.strip().lower()
    if key in ("", "none"):
        return "linear"
    if key not in NAMES:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(NAMES)}")
    return key
