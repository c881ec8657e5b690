"""Error types that carry what the command line needs: one clear line and an exit code.

Library code raises these; only the CLI turns them into messages and exit statuses (2 for a bad
argument, spec or input file, 1 for a run that failed on valid input).
"""

from __future__ import annotations


class Deconv3dError(Exception):
    exit_code = 1

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None) -> None:
        self.message = message
        self.source = source
        self.field = field
        super().__init__(self.line())

    def line(self) -> str:
        where = []
        if self.source:
            where.append(str(self.source))
        if self.field:
            where.append(f"field '{self.field}'")
        return (": ".join(where) + ": " if where else "") + self.message


class SpecError(Deconv3dError, ValueError):
    """The layer's hyperparameters or weights are invalid, or Keras would refuse them."""

    exit_code = 2


class InputError(Deconv3dError, ValueError):
    """An input or output file cannot be used as asked."""

    exit_code = 2


class RunError(Deconv3dError, RuntimeError):
    """A run on valid input failed (device, disk, interrupted)."""

    exit_code = 1
