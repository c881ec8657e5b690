"""The inputs of a batch and their outputs' names: globs, lists, shards and name templates.

Pure path work, tested on its own: which files a command means, and where each one's output goes
(two inputs that would write the same output are refused before anything runs).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TextIO

from ..errors import InputError, SpecError
from ..io import formats
from .batch import FilePair

TEMPLATE_FIELDS = ("stem", "name", "ext", "scale", "parent", "index")
DEFAULT_TEMPLATE = "{stem}_x{scale}{ext}"


def expand_inputs(
    patterns: Sequence[str],
    from_list: Iterable[str] | TextIO | None = None,
    dropped: list[tuple[Path, str]] | None = None,
) -> list[Path]:
    """Paths from arguments (quoted globs expanded here, `**` recursive) and from a list, each once.

    A pattern that matches nothing is refused (rather than vanishing silently). The rule for what is
    not a volume: a glob means "whatever is there", so what it matches that no reader takes (a folder
    that is not a store, a `notes.txt`) is left out; a path named itself (an argument, a line of the
    list) is a request, and fails as that file's error if it cannot be read. A path given again (the
    same file, however spelled) is processed once. What is left out goes, with why, to `dropped`,
    for the report to say.
    """
    items: list[str] = []
    for pattern in patterns:
        if not glob.has_magic(pattern):
            items.append(pattern)
            continue
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise InputError("matched no files", source=pattern)
        for match in matches:
            why = _not_a_volume(match)
            if why is None:
                items.append(match)
            elif dropped is not None:
                dropped.append((Path(match), why))
    if from_list is not None:
        for line in from_list:
            line = line.strip()
            if line and not line.startswith("#"):
                items.append(line)
    first: dict[str, str] = {}
    out = []
    for item in items:
        key = os.path.abspath(item)
        if key in first:
            if dropped is not None:
                same = "" if first[key] == item else f" (as {first[key]})"
                dropped.append((Path(item), f"given twice{same}; processed once"))
            continue
        first[key] = item
        out.append(Path(item))
    return out


def _not_a_volume(path: str) -> str | None:
    """Why a path a glob matched is no input (None: it is one, or may be)."""
    if os.path.isdir(path) and not _is_store_name(path):
        return "a folder, not a volume file"
    try:
        formats.facts_of(path)
    except InputError:
        return f"not a volume file; volumes end in {', '.join(formats.suffixes())}"
    return None


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' with 0 <= I < N (a SLURM array task id, say)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"{text!r}: use I/N with 0 <= I < N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"{text!r}: use I/N with 0 <= I < N, e.g. 0/4")
    return i, n


def shard(paths: Sequence[Path], index: int, count: int) -> list[Path]:
    """Round robin over the list as given: parts are disjoint, cover it, and differ in size by <= 1."""
    return [p for k, p in enumerate(paths) if k % count == index]


def output_name(
    path: Path,
    template: str,
    scale: Sequence[int] | None,
    ext: str | None,
    index: int,
) -> str:
    stem, in_ext = formats.split_name(path)
    values = {
        "stem": stem,
        "name": path.name,
        "ext": ext or in_ext,
        "scale": "x".join(str(s) for s in scale) if scale and len(set(scale)) > 1 else str((scale or [1])[0]),
        "parent": Path(os.path.abspath(path)).parent.name,  # as given: a symlink's own folder (DataLad, annex)
        "index": index,
    }
    try:
        name = template.format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        raise SpecError(
            f"{template!r} uses an unknown placeholder ({exc}); available: {', '.join(TEMPLATE_FIELDS)}",
            param="name_template",
        ) from None
    if not name or "/" in name or name in (".", ".."):
        raise SpecError(f"{template!r} gives the file name {name!r}", param="name_template")
    return name


def plan_outputs(
    inputs: Iterable[Path],
    outdir: Path,
    template: str,
    scale: Sequence[int] | None,
    output_format: str | None,
) -> list[FilePair]:
    """Output path per input; two inputs that would write the same output are refused up front."""
    ext = formats.extension_for(output_format) if output_format else None
    jobs: list[FilePair] = []
    seen: dict[Path, Path] = {}
    for index, path in enumerate(inputs):
        name = output_name(path, template, scale, ext, index)
        out = outdir / name
        if out in seen:
            raise SpecError(
                f"{seen[out]} and {path} would both be written to {out}; add "
                + ("{index}" if "{parent}" in template else "{parent} or {index}")
                + " to it",
                param="name_template",
            )
        seen[out] = path
        jobs.append(FilePair(path, out))
    return jobs


def _is_store_name(path: str) -> bool:
    """A folder named like a store format (a `.zarr`): an input, not a folder to skip."""
    try:
        return formats.facts_of(path).directory
    except InputError:
        return False
