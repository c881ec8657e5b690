"""Checks of single Conv3DTranspose arguments, and the size bounds every spec is held to.

LayerSpec.create (spec.py) calls these in order; each refusal names the field and what would work.

Size bounds: a spec is refused before anything is allocated when its kernel could not be a real
layer's: `filters` and input channels above MAX_CHANNELS (65,536), a kernel extent, stride or dilation
above MAX_EXTENT (4,096), or more than MAX_KERNEL_WEIGHTS (2^28, 1 GiB of float32) weights in all.
Without these, `spec init --filters 10000000` allocated 5.2 GiB and `--kernel-size 10000` died of
memory with a hint about --memory-limit, which has nothing to do with it.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import SpecError
from ..geometry import axis as geometry
from ..geometry.layout import CHANNELS_LAST

Triple = tuple[int, int, int]

KERAS_ARGS = (
    "filters",
    "kernel_size",
    "strides",
    "padding",
    "output_padding",
    "data_format",
    "dilation_rate",
    "activation",
    "use_bias",
    "kernel_initializer",
    "bias_initializer",
    "kernel_regularizer",
    "bias_regularizer",
    "activity_regularizer",
    "kernel_constraint",
    "bias_constraint",
)
# Keys Keras's get_config() adds that do not change what the layer computes.
KERAS_META = ("name", "trainable", "dtype", "batch_input_shape", "batch_shape", "groups", "input_dim")
# Keys of our own: where the weights are, and how to make them when there are none.
OWN_KEYS = ("weights", "weights_layout", "seed", "in_channels")
SERIALISED_KEYS = ("class_name", "config", "module", "registered_name", "build_config")
ALL_KEYS = KERAS_ARGS + KERAS_META + OWN_KEYS

MAX_CHANNELS = 1 << 16
MAX_EXTENT = 1 << 12
MAX_KERNEL_WEIGHTS = 1 << 28


def parse_triple(value: Any, name: str, source: str | None, minimum: int = 1) -> Triple:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        vals = (int(value),) * 3
    elif (
        isinstance(value, (list, tuple))
        and len(value) in (1, 3)
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        vals = tuple(int(v) for v in value) * (3 if len(value) == 1 else 1)
    else:
        raise SpecError(f"expected an integer or a list of 3 integers, got {value!r}", source=source, field=name)
    if any(v < minimum for v in vals):
        raise SpecError(f"every value must be >= {minimum}, got {list(vals)}", source=source, field=name)
    return vals  # type: ignore[return-value]


def optional_named(value: Any, normalise: Any, name: str, source: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        return normalise(value)
    except ValueError as exc:
        raise SpecError(str(exc), source=source, field=name) from None


def parse_padding(value: Any, source: str | None) -> str | Triple:
    """'valid' / 'same' (any case), or PyTorch's per-axis crop [p_d, p_h, p_w] (a list, never a bare int)."""
    if isinstance(value, str):
        if value.lower() in (geometry.VALID, geometry.SAME):
            return value.lower()
        hint = " ('causal' exists only for 1-D convolutions)" if value.lower() == "causal" else ""
        raise SpecError(
            f"{value!r} is not supported{hint}; use 'valid' or 'same' (or [p_d, p_h, p_w], PyTorch's padding)",
            source=source,
            field="padding",
        )
    if isinstance(value, (list, tuple)) and len(value) == 3:
        return parse_triple(list(value), "padding", source, minimum=0)
    raise SpecError(
        f"{value!r} is not supported; use 'valid' or 'same' (or [p_d, p_h, p_w], PyTorch's padding)",
        source=source,
        field="padding",
    )


def check_output_padding(
    output_padding: Triple | None,
    strides: Triple,
    dilation: Triple,
    kernel_size: Triple,
    padding: str | Triple,
    src: str | None,
) -> None:
    """SEMANTICS.md's refusals of output_padding (torch's rule under PyTorch's padding, Keras's otherwise)."""
    explicit = not isinstance(padding, str)
    if output_padding is not None and explicit:
        # torch.nn.ConvTranspose3d: "output padding must be smaller than either stride or dilation".
        for axis, (p, s, d) in enumerate(zip(output_padding, strides, dilation)):
            if p >= max(s, d):
                raise SpecError(
                    f"{list(output_padding)}: with PyTorch's padding, output_padding must be smaller than "
                    f"the stride or the dilation on every axis (axis {axis}: {p} >= max({s}, {d})); "
                    f"use at most {max(s, d) - 1} there",
                    source=src,
                    field="output_padding",
                )
    elif output_padding is not None:
        for axis, (p, s) in enumerate(zip(output_padding, strides)):
            if p >= s:
                raise SpecError(
                    f"{list(output_padding)} must be smaller than strides {list(strides)} on every axis "
                    f"(axis {axis}: {p} >= {s}); use at most {s - 1} there, or null",
                    source=src,
                    field="output_padding",
                )
        if padding == geometry.SAME:
            for axis, (k, d, p) in enumerate(zip(kernel_size, dilation, output_padding)):
                if geometry.effective_kernel(k, d) % 2 == 0 and p == 0:
                    raise SpecError(
                        f"with padding 'same', an even effective kernel ({geometry.effective_kernel(k, d)}) "
                        f"and output_padding 0 on axis {axis}, TensorFlow cannot produce the output length "
                        f"and aborts; use output_padding >= 1 on axis {axis}, or null",
                        source=src,
                        field="output_padding",
                    )


def check_count(value: Any, name: str, src: str | None, what: str) -> int | None:
    """A positive integer no larger than MAX_CHANNELS (filters, in_channels), or None when not given."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SpecError(f"must be a positive integer, got {value!r}", source=src, field=name)
    if value > MAX_CHANNELS:
        raise SpecError(
            f"{int(value)} is over the limit of {MAX_CHANNELS} {what}; no Conv3DTranspose layer has that many",
            source=src,
            field=name,
        )
    return int(value)


def check_extents(values: Triple, name: str, src: str | None) -> None:
    if any(v > MAX_EXTENT for v in values):
        raise SpecError(
            f"{list(values)}: every value must be <= {MAX_EXTENT}; no real layer is that large", source=src, field=name
        )


def check_weights_count(kernel_size: Triple, filters: int, in_channels: int | None, src: str | None) -> None:
    """Refuse a kernel of more than MAX_KERNEL_WEIGHTS weights before anything is allocated."""
    count = math.prod(kernel_size) * filters * (in_channels or 1)
    if count > MAX_KERNEL_WEIGHTS:
        given = f" and in_channels {in_channels}" if in_channels else ""
        raise SpecError(
            f"{list(kernel_size)} with filters {filters}{given} means {count} weights, over the limit of "
            f"{MAX_KERNEL_WEIGHTS} (1 GiB of float32); use a smaller kernel_size or fewer filters",
            source=src,
            field="kernel_size",
        )


def refuse_unknown(data: Mapping[str, Any], valid: Sequence[str], source: str | None) -> None:
    for key in data:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
            raise SpecError(f"unknown key{hint}", source=source, field=str(key))


def keras_arguments(mapping: Any, source: str | None) -> dict[str, Any]:
    """The Keras arguments (and our own keys) of a spec mapping, unwrapping Keras's serialised
    `{class_name, config, build_config}` form, every key checked against the known ones."""
    if not isinstance(mapping, Mapping):
        raise SpecError(f"expected a mapping of Keras arguments, got {type(mapping).__name__}", source=source)
    data = dict(mapping)
    if "class_name" in data or "config" in data:
        class_name = data.get("class_name")
        if class_name != "Conv3DTranspose":
            config = data.get("config")
            if isinstance(config, Mapping) and isinstance(config.get("layers"), list):  # model.to_json()
                raise SpecError(
                    f"{class_name!r} is a Keras model config, not a layer spec: import one of its Conv3DTranspose "
                    f"layers with `deconv3d spec import {source or 'MODEL.json'} --layer NAME -o spec.yaml`; "
                    "running a whole model is not supported yet",
                    source=source,
                    field="class_name",
                )
            raise SpecError(f"{class_name!r} is not a Conv3DTranspose layer", source=source, field="class_name")
        refuse_unknown(data, SERIALISED_KEYS + OWN_KEYS, source)
        config = data.get("config")
        if not isinstance(config, Mapping):
            raise SpecError("must be a mapping of Keras arguments", source=source, field="config")
        merged = dict(config)
        for key in OWN_KEYS:
            if key in data:
                merged[key] = data[key]
        build = data.get("build_config") or {}
        shape = build.get("input_shape") if isinstance(build, Mapping) else None
        if shape and "in_channels" not in merged:
            fmt = str(merged.get("data_format") or CHANNELS_LAST).lower()
            ch = shape[-1] if fmt == CHANNELS_LAST else shape[1]
            if isinstance(ch, int):
                merged["in_channels"] = ch
        data = merged
    refuse_unknown(data, ALL_KEYS, source)
    return data
