"""The torch engine: one input slab in, one exactly cropped, biased and activated output tile out.

Formulations (formulations.py, separable.py), host/device transfers, the allocator policy and the
choice of formulation live here; the engine's own threads (workers.py) and OpenMP's wait policy
(openmp.py, set before torch is loaded). The engine may import `layer`, `geometry` and `errors`; it never
imports io, run or the CLI.
"""

from . import openmp  # noqa: F401 - first: OpenMP's wait policy is read when torch loads it
from .core import PRECISIONS, SEPARABLE, Engine, dense, resolve_device, resolve_precision, to_numpy

__all__ = ["Engine", "SEPARABLE", "PRECISIONS", "dense", "resolve_device", "resolve_precision", "to_numpy"]
