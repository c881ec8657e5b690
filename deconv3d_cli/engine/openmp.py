"""OpenMP threads that sleep when they wait: set before torch loads its OpenMP runtime (libgomp here).

torch's CPU kernels and oneDNN run on OpenMP, whose waiting threads spin by default (libgomp polls
for up to 300,000 rounds, milliseconds, at every barrier and after every parallel region). On a
machine where another process holds a core, the spinners keep the free core busy while the thread
sharing the other core is the one still working: measured here (benchmarks/versus_tf.py --load, one
busy process pinned to one of two CPUs) an 8->8 3x3x3 stride-1 layer took 48 ms against 8.6 ms quiet,
and 16.8 ms with OMP_WAIT_POLICY=PASSIVE; a 1->1 k4 s2 layer 146 ms against 107 ms. Quiet, the two
policies timed within a few percent of each other on every layer of the bench grid, because each
convolution is one long parallel region; what has many short ones (the separable presets, the
resampler, the phase shuffle) runs on the engine's own threads (workers.py), which sleep on a lock.

Importing this module sets OMP_WAIT_POLICY=PASSIVE for the process unless the variable is already
set (a user's ACTIVE is kept) or torch is already loaded (then it is too late, and nothing is done):
engine/__init__.py imports it before anything that imports torch, and the CLI's torch preload
(run/resources.py) before it starts. It never imports torch.
"""

from __future__ import annotations

import os
import sys

VARIABLE = "OMP_WAIT_POLICY"


def prefer_passive() -> bool:
    """Ask for sleeping OpenMP waits if it is not too late; True when the process's policy is PASSIVE."""
    if "torch" not in sys.modules:
        os.environ.setdefault(VARIABLE, "PASSIVE")
    return os.environ.get(VARIABLE, "").strip().upper() == "PASSIVE"


prefer_passive()
