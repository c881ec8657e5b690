"""The Click face only: parse options, call one library function, map errors to exit codes and flags.

Nothing heavy is imported at module level, so `deconv3d --help` answers at once.
"""

from .main import main
from .upsample import upsample

__all__ = ["main", "upsample"]
