"""Error types that carry what a caller needs: one clear line and an exit code.

Library code raises these; only the CLI turns them into messages and exit statuses (2 for a bad
argument, spec or input file, 1 for a run that failed on valid input). An error names either a
`field` of a file (a spec key, a header entry) or a `param`eter of the call that was wrong, by its
Python name (`device`, `memory_limit`); the CLI shows a parameter as the flag that sets it
(`--device`), so library users never read command-line spellings and shell users never read Python's.
"""

from __future__ import annotations

from collections.abc import Callable


class Deconv3dError(Exception):
    exit_code = 1

    def __init__(
        self, message: str, *, source: str | None = None, field: str | None = None, param: str | None = None
    ) -> None:
        self.message = message
        self.source = source
        self.field = field
        self.param = param
        super().__init__(self.line())

    def line(self, flag: Callable[[str], str] | None = None) -> str:
        """'SOURCE: field 'NAME': MESSAGE'; `flag` spells a parameter's name (the CLI passes its flags)."""
        where = []
        if self.source:
            where.append(str(self.source))
        if self.field:
            where.append(f"field '{self.field}'")
        if self.param:
            where.append(f"field '{flag(self.param) if flag else self.param}'")
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


class Deconv3dWarning(UserWarning):
    """Something the user should know that does not stop the run (the CLI prints one line per warning)."""


_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """Warn (Deconv3dWarning) unless this process already said exactly this."""
    import warnings

    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, Deconv3dWarning, stacklevel=3)
