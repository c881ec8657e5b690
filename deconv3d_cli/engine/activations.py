"""tf.keras 2 activations applied to torch tensors, by name (the names and constants are layer/activations.py's).

The formulas follow tf.keras 2 where they differ from torch's defaults: `hard_sigmoid` is
clip(0.2x + 0.5), `leaky_relu` uses alpha 0.2, `gelu` the exact erf form.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..layer.activations import SELU_ALPHA, SELU_SCALE


def apply(name: str, y: Any, softmax_dim: int) -> Any:
    """Apply activation `name` to the torch tensor `y` (in place where torch allows)."""
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
        return torch.where(y > 0, y, SELU_ALPHA * torch.expm1(y)).mul_(SELU_SCALE)
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
