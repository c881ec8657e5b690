"""The torch engine: one input slab in, one exactly cropped, biased and activated output tile out.

Formulations (formulations.py, separable.py), host/device transfers, the allocator policy and the
choice of formulation live here. The engine may import `layer`, `geometry` and `errors`; it never
imports io, run or the CLI.
"""

from .core import PRECISIONS, SEPARABLE, Engine, dense, resolve_device, resolve_precision, to_numpy

__all__ = ["Engine", "SEPARABLE", "PRECISIONS", "dense", "resolve_device", "resolve_precision", "to_numpy"]
