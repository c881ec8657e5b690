"""The `deconv3d` command group: every failure becomes one line on stderr and an exit code.

Nothing heavy is imported at module level, so `deconv3d --help` answers at once; torch loads only
when a command computes. Exit codes: 0 done, 1 a run failed, 2 a usage or input error, 130/143/129
stopped by SIGINT/SIGTERM/SIGHUP (finished tiles kept for `--resume`). With `--json`, stdout always
carries one JSON document, also when the command fails (`version`, `exit_code`, `error`).
"""

from __future__ import annotations

import json
import shlex
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import click

from .. import __version__
from ..errors import Deconv3dError, Deconv3dWarning

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
JSON_VERSION = 1


def flag_of(param: str) -> str:
    """The flag that sets library parameter `param` (`memory_limit` -> `--memory-limit`), else `param`."""
    stack: list[click.Command] = [main]
    while stack:
        command = stack.pop()
        if isinstance(command, click.Group):
            stack.extend(command.commands.values())
        for p in command.params:
            if isinstance(p, click.Option) and p.name == param:
                return max(p.opts, key=len)
    return param


def _exit(code: int) -> None:
    """End the process with `code`, skipping the interpreter's teardown when torch is loaded.

    Why: after a run has committed its outputs, finalizing a process that loaded torch (its modules,
    thread pools and caches) took 0.3-0.4 s of wall time here, 15% of a whole 256^3 trilinear x2
    `.nii` job and paid again by every file of a shell loop. Everything a run writes is made durable
    and closed before the command returns; what remains is done here: the atexit handlers (temporary
    folders, h5py, logging, Dask) and the flush of stdout and stderr. When a non-daemon thread is still
    alive, or torch was never loaded (`--help`, `inspect`), the ordinary exit runs instead; and only a
    process run as the program (`main()` reading sys.argv) gets here, never a caller that passed
    arguments (Click's CliRunner, a test, a script driving the CLI), whose process goes on.
    """
    import atexit
    import os
    import threading

    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if "torch" not in sys.modules or others or os.environ.get("DECONV3D_FAST_EXIT", "1") == "0":
        sys.exit(code)
    atexit._run_exitfuncs()
    _flush()
    os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): nothing more can reach it
            pass


def _pause_at_start() -> None:
    """A test's hook (DECONV3D_TEST_PAUSE_AT_START=FILE): as soon as the signal handlers are in place,
    create FILE and wait there (up to a minute) for a signal, so that a test stops the command at this
    exact point rather than by timing."""
    import os

    ready = os.environ.get("DECONV3D_TEST_PAUSE_AT_START")
    if not ready:
        return
    import time

    Path(ready).touch()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.01)  # a signal's handler raises Interrupted out of this wait


def _quiet_exit_on_signal(code: int) -> None:
    """From here the process only exits: a signal now (a second SIGTERM after a stop) ends it at once
    with `code`, saying nothing more. Raised into an atexit callback, the stop printed "Exception
    ignored in atexit callback ... Interrupted: SIGTERM" after the command's one line."""
    import os
    import signal
    import threading

    def handler(signum: int, frame: Any) -> None:
        _flush()
        os._exit(code)

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, handler)


def error_line(exc: Deconv3dError) -> str:
    return exc.line(flag_of)


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    if issubclass(category, Deconv3dWarning):
        click.echo(f"deconv3d: warning: {message}", err=True)
    else:
        click.echo(f"deconv3d: warning: {category.__name__}: {message}", err=True)


class Deconv3dGroup(click.Group):
    """Turns every failure into one line (and, with `--json`, one JSON document); `--debug` shows tracebacks."""

    def main(self, args: Any = None, prog_name: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        from ..run import stop

        argv = list(sys.argv[1:] if args is None else args)
        _ARGV[:] = argv
        del _EMITTED[:]
        as_json = "--json" in argv
        stop.STOP.own_process = args is None  # the program itself, not a caller passing arguments
        try:
            # First of all, so that a signal from here on ends in the one line (and JSON document) promised.
            stop.STOP.reset()
            stop.install()
            _pause_at_start()
            code = super().main(args=argv, prog_name=prog_name or "deconv3d", standalone_mode=False, **extra)
        except stop.Interrupted as exc:  # before a command ran (parsing its arguments, say)
            code = _stopped(exc, as_json)
        except click.exceptions.Abort:
            code = _fail("aborted", 1, as_json)
        except click.ClickException as exc:  # usage errors: one line, not click's three
            where = f"{exc.ctx.command_path}: " if getattr(exc, "ctx", None) is not None else ""
            hint = f" (see {exc.ctx.command_path} --help)" if isinstance(exc, click.UsageError) and exc.ctx else ""
            code = _fail(f"{where}{exc.format_message()}{hint}", exc.exit_code, as_json)
        code = 0 if code is None else int(code)
        if not standalone_mode:
            return code
        if args is None:  # the program itself (console script, python -m): its process ends here
            _quiet_exit_on_signal(code)
            _exit(code)
        sys.exit(code)  # called with arguments (Click's test runner, a caller's script): never os._exit

    def invoke(self, ctx: click.Context) -> Any:
        from ..run.stop import Interrupted

        as_json = "--json" in _ARGV
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning  # type: ignore[assignment]
            try:
                return super().invoke(ctx)
            except Deconv3dError as exc:
                self._trace(ctx)
                return _fail(exc.line(flag_of), exc.exit_code, as_json)
            except Interrupted as exc:
                return _stopped(exc, as_json)
            except (click.exceptions.Exit, click.ClickException, SystemExit):
                raise
            except KeyboardInterrupt:
                return _fail("interrupted", 130, as_json)
            except MemoryError:
                self._trace(ctx)
                return _fail("out of memory; lower --memory-limit or --tile", 1, as_json)
            except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
                self._trace(ctx)
                return _fail(f"{type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 1, as_json)

    @staticmethod
    def _trace(ctx: click.Context) -> None:
        root = ctx.find_root()
        if bool((root.obj or {}).get("debug")) or "--debug" in _ARGV:
            traceback.print_exc()


def _fail(message: str, code: int, as_json: bool, document: dict[str, Any] | None = None) -> int:
    """One line on stderr; with --json, the error document on stdout unless the command printed its own."""
    click.echo(f"deconv3d: error: {message}", err=True)
    if as_json and not _EMITTED:
        emit_json({**(document or {}), "status": "failed", "error": message}, code)
    return code


_EMITTED: list[bool] = []  # set once a command has printed its JSON document
_ARGV: list[str] = []  # this invocation's arguments (CliRunner's too, where sys.argv is the test runner's)


def emit_json(document: dict[str, Any], exit_code: int) -> None:
    """The one JSON document a command prints: its report plus `version`, `exit_code` and `error`, with
    every field of its kind (documents.py) whatever the outcome."""
    from .documents import complete

    _EMITTED.append(True)
    doc = {"version": JSON_VERSION, **complete(document, _ARGV), "exit_code": exit_code}
    doc.setdefault("error", None)
    click.echo(json.dumps(doc, indent=2))


def _stopped(exc: Any, as_json: bool) -> int:
    """A signal stopped the run: say what is kept and the exact command that continues it."""
    again = shlex.join(["deconv3d", *continue_args(exc, _ARGV)])
    report = getattr(exc, "report", None)
    if report is not None:
        kept = f"stopped by {exc}: {report.count('done')} file(s) done"
    elif exc.target is not None:
        kept = f"stopped by {exc}: {exc.kept} of {exc.total} tiles of {exc.target} kept"
    else:
        kept = f"stopped by {exc}: nothing was written"
    click.echo(f"deconv3d: {kept}; continue with: {again}", err=True)
    from ..run.stop import STOP

    STOP.said = True
    if as_json and not _EMITTED:
        doc = report.as_json() if report is not None else {"status": "stopped", "tiles_kept": exc.kept}
        emit_json({**doc, "error": kept}, exc.exit_code)
    return exc.exit_code


def continue_args(exc: Any, argv: list[str]) -> list[str]:
    """The arguments that finish exactly the job `exc` stopped: the same with `--resume`, and for a batch
    `--skip-existing` (its finished outputs exist), or, for an `--overwrite` batch, whose older outputs
    exist too, `--continue-run ID`: the record of the outputs it rewrote (run/continuation.py)."""
    rest: list[str] = []
    for k, arg in enumerate(argv):
        if arg == "--resume" or arg.startswith("--continue-run=") or arg == "--continue-run":
            continue
        if k and argv[k - 1] == "--continue-run":
            continue
        rest.append(arg)
    batch = getattr(exc, "batch", getattr(exc, "report", None) is not None or "-O" in argv or "--output-dir" in argv)
    overwrite = getattr(exc, "overwrite", any(a in argv for a in ("--overwrite", "--force", "-f")))
    if batch and not overwrite:
        rest = [a for a in rest if a != "--skip-existing"] + ["--skip-existing"]
    if getattr(exc, "continue_run", None):
        rest += ["--continue-run", exc.continue_run]
    return [*rest, "--resume"]


@click.group(cls=Deconv3dGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="deconv3d")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Upsample 3-D volumes, streamed and resumable, on CPU or CUDA: with a Keras Conv3DTranspose layer
    (exactly), a weight-free preset, or a resampling to a voxel size, scale, shape or another file's grid.

    \b
    Examples:
      deconv3d upsample scan.npy -o scan_x2.npy --spec layer.yaml
      deconv3d upsample scan.nii.gz -o iso.nii.gz --voxel-size 0.5
      deconv3d spec validate layer.yaml
    \b
    Shell completion (bash; zsh and fish alike): eval "$(_DECONV3D_COMPLETE=bash_source deconv3d)"
    """
    ctx.obj = {"debug": debug}


@main.command("presets", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print the presets as JSON.")
def presets_cmd(as_json: bool) -> None:
    """List the weight-free upsampling presets."""
    from ..layer.presets import DEFAULT_BOUNDARY, PRESETS

    if as_json:
        emit_json({"presets": PRESETS, "default_boundary": DEFAULT_BOUNDARY}, 0)
        return
    width = max(map(len, PRESETS))
    for name, text in PRESETS.items():
        click.echo(f"{name:<{width}}  {text}")
    click.echo(f"(use with --preset NAME --scale S; boundary defaults to {DEFAULT_BOUNDARY})")


def _register() -> None:
    from . import inspect_cmd, spec_cmds, tune, upsample  # noqa: F401 - each adds its commands to `main`


_register()
