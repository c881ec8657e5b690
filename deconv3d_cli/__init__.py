"""deconv3d-cli: Keras Conv3DTranspose, exactly, on volumes on disk, with a PyTorch engine.

Importing the package does not import torch; the engine loads it on first use. Nor does it import
numpy: the public names load on first use (PEP 562), so that the command line reaches its signal
handlers within a few hundredths of a second of starting (a SIGTERM before then ends the process
with no report).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_WHERE = {
    "Conv3DTranspose": "api",
    "conv3d_transpose": "api",
    "LayerSpec": "layer.spec",
    "Deconv3dError": "errors",
    "SpecError": "errors",
    "InputError": "errors",
    "RunError": "errors",
}

if TYPE_CHECKING:
    from .api import Conv3DTranspose, conv3d_transpose
    from .errors import Deconv3dError, InputError, RunError, SpecError
    from .layer.spec import LayerSpec


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Conv3DTranspose",
    "conv3d_transpose",
    "LayerSpec",
    "Deconv3dError",
    "SpecError",
    "InputError",
    "RunError",
    "__version__",
]
