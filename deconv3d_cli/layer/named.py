"""Keras's serialised "named object" forms (initializers, regularizers, constraints), read one way.

Keras writes these as a plain name (`"he_normal"`), a class name (`"HeNormal"`), or a mapping
`{"class_name": ..., "config": {...}}` (Keras 3 adds `module` and `registered_name`). All three are
reduced here to `{"name": snake_case, "config": {...}}` with Keras's defaults filled in, and anything
unknown is refused by name rather than looked up, so a spec never resolves to user code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any


def snake(name: str) -> str:
    name = name.strip()
    if any(ch.isupper() for ch in name):
        name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return name.lower()


def normalise(
    value: Any,
    kind: str,
    defaults: Mapping[str, Mapping[str, Any]],
    aliases: Mapping[str, str] | None = None,
    extra_args: Iterable[str] = (),
) -> dict[str, Any]:
    if isinstance(value, str):
        name, config = value, {}
    elif isinstance(value, Mapping):
        name = value.get("class_name", value.get("name"))
        config = dict(value.get("config") or {})
        if not isinstance(name, str):
            raise ValueError(f"{kind} mapping needs a 'class_name'")
    else:
        raise ValueError(f"{kind} must be a name or a mapping, got {type(value).__name__}")
    key = snake(name)
    key = (aliases or {}).get(key, key)
    if key not in defaults:
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(defaults))}")
    merged = dict(defaults[key])
    allowed = set(merged) | set(extra_args)
    unknown = sorted(set(config) - allowed)
    if unknown:
        valid = ", ".join(sorted(merged)) or "none"
        raise ValueError(f"{kind} {key!r} has no argument {unknown[0]!r}; valid: {valid}")
    merged.update(config)
    return {"name": key, "config": merged}


def parse_option(text: str) -> Any:
    """A named object from the command line: `he_normal`, `max_norm:max_value=3,axis=[0,1,2]`, or a
    YAML/JSON mapping such as `{class_name: VarianceScaling, config: {scale: 2.0}}` (the bounded safe
    reader of textconfig.py)."""
    from ..errors import SpecError
    from .textconfig import loads

    text = text.strip()
    try:
        if text.startswith("{"):
            return loads(text)
        if ":" not in text:
            return text
        name, args = text.split(":", 1)
        config = loads("{" + args.replace("=", ": ") + "}") if args.strip() else {}
    except SpecError:
        raise ValueError(f"{text!r}: use NAME, NAME:key=value,key=value or a YAML mapping") from None
    return {"class_name": name.strip(), "config": config}
