"""The one reader of JSON and YAML text (specs, Keras configs, sidecars, command-line mappings), bounded.

Safe loading alone (no tags, so no Python objects) is not enough for a file from anyone:

- YAML aliases share one node many times: ten levels of ten aliases is a 500-byte file that expands
  to 10^10 values when anything walks it (the JSON of a spec, its fingerprint), so the expanded size
  is counted while the document is composed and refused past MAX_VALUES;
- nesting 20,000 levels deep overflows Python's stack (RecursionError) in the composer, the JSON
  decoder or any later walk, so documents deeper than MAX_DEPTH are refused;
- a file larger than MAX_TEXT_BYTES is not a config.

Text that looks like JSON is read with `json` (fast, and its line numbers are exact), anything else,
or JSON that `json` refuses, with the bounded YAML loader below.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from ..errors import SpecError
from . import filekind

MAX_TEXT_BYTES = 64 << 20
MAX_DEPTH = 100  # Keras model configs nest about 11 levels per model
MAX_VALUES = 1 << 20  # values of the document with every alias expanded


class TooLarge(yaml.YAMLError):
    """A bound of this module was passed; the message says which."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts nesting depth and the alias-expanded size of every node it composes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            anchor = self.peek_event().anchor
            node = self.anchors.get(anchor)
            if node is not None and id(node) not in self._sizes:
                raise TooLarge(f"alias *{anchor} refers to a value that contains it (a recursive alias)")
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise TooLarge(f"nested deeper than {MAX_DEPTH} levels (line {mark.line + 1}); a config is never that deep")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        size = 1 + sum(self._sizes.get(id(c), 1) for c in children)
        if size > MAX_VALUES:
            raise TooLarge(
                f"its aliases expand to more than {MAX_VALUES} values (an alias bomb?); write the values out instead"
            )
        self._sizes[id(node)] = size
        return node


def _depth(data: Any) -> int:
    """Nesting depth of decoded JSON, without recursion."""
    deepest, todo = 0, [(data, 1)]
    while todo:
        value, depth = todo.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break
        if isinstance(value, dict):
            todo += [(v, depth + 1) for v in value.values()]
        elif isinstance(value, list):
            todo += [(v, depth + 1) for v in value]
    return deepest


def loads_json(text: str, source: str | None = None, what: str = "") -> Any:
    """A JSON document (no YAML fallback), within MAX_DEPTH; `what` names it in errors (e.g. config.json)."""
    prefix = f"{what} " if what else ""
    try:
        data = json.loads(text)
    except RecursionError:
        data = None
    except ValueError as exc:
        raise SpecError(f"{prefix}is not valid JSON: {exc}", source=source) from None
    else:
        if _depth(data) <= MAX_DEPTH:
            return data
    raise SpecError(f"{prefix}is nested deeper than {MAX_DEPTH} levels; a config is never that deep", source=source)


def loads(text: str, source: str | None = None, what: str = "") -> Any:
    """A JSON or YAML document from text, plain data only, within the bounds of the module doc."""
    prefix = f"{what}: " if what else ""
    if len(text) > MAX_TEXT_BYTES:
        raise SpecError(f"{prefix}{len(text)} characters is too large for a config", source=source)
    if text.lstrip()[:1] in ("{", "["):
        try:
            data = json.loads(text)
        except RecursionError:
            raise SpecError(
                f"{prefix}nested deeper than {MAX_DEPTH} levels; a config is never that deep", source=source
            ) from None
        except ValueError:
            pass  # not JSON after all (YAML flow style, or a JSON error YAML will locate)
        else:
            if _depth(data) > MAX_DEPTH:
                raise SpecError(
                    f"{prefix}nested deeper than {MAX_DEPTH} levels; a config is never that deep", source=source
                )
            return data
    try:
        loader = _BoundedLoader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except TooLarge as exc:
        raise SpecError(f"{prefix}{exc}", source=source) from None
    except yaml.constructor.ConstructorError as exc:
        raise SpecError(
            f"{prefix}YAML tag not allowed ({exc.problem}); configs are plain data", source=source
        ) from None
    except RecursionError:
        raise SpecError(f"{prefix}nested deeper than {MAX_DEPTH} levels", source=source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(
            f"{prefix}not valid JSON or YAML{where}: {getattr(exc, 'problem', None) or exc}", source=source
        ) from None


def load_file(path: Path | str, expected: str = "a YAML or JSON file") -> Any:
    """A JSON or YAML file: a regular file of at most MAX_TEXT_BYTES, UTF-8, bounded as `loads`.

    A binary file (a Keras model, weights, a volume) is recognised by its first bytes and refused with
    what it is and the command that reads it (filekind.py), naming `expected`, what the caller wanted.
    """
    path = Path(path)
    src = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SpecError("file not found", source=src) from None
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror or exc}", source=src) from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO or device?)"
        raise SpecError(f"is {kind}; give a YAML or JSON file", source=src)
    _refuse_binary(path, src, expected)
    if st.st_size > MAX_TEXT_BYTES:
        raise SpecError(f"{st.st_size} bytes is too large for a config file", source=src)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TEXT_BYTES + 1)
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"is not UTF-8 text (byte {exc.start}), so not {expected}: a spec or config is YAML or JSON", source=src
        ) from None
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror or exc}", source=src) from None
    data = loads(text, src)
    if data is None:
        raise SpecError("file is empty", source=src)
    return data


def _refuse_binary(path: Path, src: str, expected: str) -> None:
    """Refuse a file whose first bytes say it is a model, weights or a volume, saying what would read it."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise SpecError(f"cannot read: {exc.strerror or exc}", source=src) from None
    kind = filekind.kind_of(path, head)
    if kind is not None:
        raise SpecError(filekind.advice(path, kind, expected), source=src)
