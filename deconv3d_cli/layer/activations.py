"""tf.keras 2 activations, by name only: a spec can never make the tool run user code.

The formulas follow tf.keras 2 (where they differ from torch's defaults: `hard_sigmoid` is
clip(0.2x + 0.5), `leaky_relu` uses alpha 0.2, `gelu` the exact erf form). torch is imported inside
`apply` so that reading a spec or printing `--help` never pays for it.
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

_SELU_SCALE = 1.0507009873554805
_SELU_ALPHA = 1.6732632423543772


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


def apply(name: str, y: Any, softmax_dim: int) -> Any:
    """Apply activation `name` to the torch tensor `y` (in place where torch allows)."""
    import torch
    import torch.nn.functional as F

    if name == "linear":
        return y
    if name == "relu":
        return y.clamp_(min=0)
    if name == "relu6":
        return y.clamp_(0, 6)
    if name == "sigmoid":
        return y.sigmoid_()
    if name == "hard_sigmoid":
        return y.mul_(0.2).add_(0.5).clamp_(0, 1)
    if name == "tanh":
        return y.tanh_()
    if name == "softplus":
        return F.softplus(y)
    if name == "softsign":
        return y / (1 + y.abs())
    if name == "elu":
        return F.elu(y, alpha=1.0)
    if name == "selu":
        return torch.where(y > 0, y, _SELU_ALPHA * torch.expm1(y)).mul_(_SELU_SCALE)
    if name == "exponential":
        return y.exp_()
    if name in ("swish", "silu"):
        return F.silu(y)
    if name == "gelu":
        return F.gelu(y, approximate="none")
    if name == "softmax":
        return torch.softmax(y, dim=softmax_dim)
    if name == "log_softmax":
        return torch.log_softmax(y, dim=softmax_dim)
    if name == "leaky_relu":
        return F.leaky_relu(y, negative_slope=0.2)
    if name == "mish":
        return F.mish(y)
    raise ValueError(f"unknown activation {name!r}")
