"""deconv3d-cli: Keras Conv3DTranspose, exactly, on volumes on disk, with a PyTorch engine.

Importing the package does not import torch; the engine loads it on first use.
"""

from .api import Conv3DTranspose, conv3d_transpose
from .errors import Deconv3dError, InputError, RunError, SpecError
from .layer.spec import LayerSpec

__version__ = "0.1.0"

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
