"""Option parsing shared by the commands: triples, sizes, named Keras objects, and the `--debug` flag.

Each parser raises `click.BadParameter` with what would work, which the group prints as one line.
"""

from __future__ import annotations

from typing import Any

import click


def tile(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int, int] | None:
    """'64' or '64,64,32' (or 64x64x32): positive voxels per axis."""
    if value is None:
        return None
    parts = value.replace("x", ",").split(",")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"{value!r}: use D,H,W output voxels, e.g. 64,64,64 (or one number)") from None
    if len(nums) == 1:
        nums *= 3
    if len(nums) != 3 or any(n < 1 for n in nums):
        raise click.BadParameter(f"{value!r}: use three positive integers D,H,W, e.g. 64,64,64")
    return tuple(nums)  # type: ignore[return-value]


def memory(ctx: click.Context, param: click.Parameter, value: str | None) -> int:
    """A size; none given: the default budget (512 MiB, or a share of the cgroup/SLURM limit)."""
    from ..geometry.sizes import default_memory_limit, parse_bytes

    return default_memory_limit() if value is None else _parsed(parse_bytes, value)


def triple(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> Any:
    """'2' -> 2, '2,2,1' -> [2, 2, 1] (None stays None)."""
    if value is None:
        return None
    try:
        nums = [int(v) for v in value.replace("x", ",").split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: use an integer or three, e.g. 2 or 2,2,1") from None
    if len(nums) not in (1, 3):
        raise click.BadParameter(f"{value!r}: use an integer or three, e.g. 2 or 2,2,1")
    return nums[0] if len(nums) == 1 else nums


def _parsed(parse: Any, value: str) -> Any:
    """`parse(value)`, its ValueError shown as the option's one-line error."""
    try:
        return parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def named(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """An initializer, regularizer or constraint: NAME, NAME:key=value,... or a YAML mapping."""
    from ..layer.named import parse_option

    return None if value is None else _parsed(parse_option, value)


def shard(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    from ..run.inputs import parse_shard

    return None if value is None else _parsed(parse_shard, value)


def debug_option(f: Any) -> Any:
    """`--debug` on a subcommand too (tracebacks on errors), as on the group."""

    def callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            ctx.find_root().obj = {**(ctx.find_root().obj or {}), "debug": True}

    return click.option("--debug", is_flag=True, expose_value=False, callback=callback, help="Show tracebacks.")(f)
