"""LayerSpec: a Conv3DTranspose layer's arguments and weights, normalised and checked once.

Everything downstream (engine, tiler, writers, API) trusts a LayerSpec, so every refusal of
SEMANTICS.md happens here, with a message that names the file, the field and what would work.
Specs are read from YAML (the bounded safe reader of textconfig.py), from Keras's serialised form, or
built in code; weights come from an `.npz` read without pickle and checked against the spec before it
is decompressed (weights.py), or from the named initializers. Single arguments and the size bounds
are checked in arguments.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SpecError
from ..geometry import axis as geometry
from ..geometry.layout import CHANNELS_FIRST, CHANNELS_LAST, Layout
from . import activations, constraints, initializers, regularizers
from .arguments import (
    KERAS_ARGS,
    check_count,
    check_extents,
    check_output_padding,
    check_weights_count,
    keras_arguments,
    optional_named,
    parse_padding,
    parse_triple,
)
from .weights import load_npz

Triple = tuple[int, int, int]

# Keras's defaults for each named regularizer and constraint (normalised in regularizers.py / constraints.py).
REGULARIZERS = regularizers.DEFAULTS
CONSTRAINTS = constraints.DEFAULTS


def _data_format(value: Any, src: str | None) -> str:
    """channels_last (the default) or channels_first, in any case."""
    value = value or CHANNELS_LAST
    if not isinstance(value, str) or value.lower() not in (CHANNELS_LAST, CHANNELS_FIRST):
        raise SpecError(f"{value!r}; use 'channels_last' or 'channels_first'", source=src, field="data_format")
    return value.lower()


def _plain_arguments(get: Any, src: str | None) -> tuple[str | None, bool, int | None]:
    """`name`, `use_bias` and `seed`, checked; `groups` refused unless 1 (no grouped Conv3DTranspose)."""
    name = get("name")
    if name is not None and not isinstance(name, str):
        raise SpecError(f"must be a string, got {type(name).__name__}", source=src, field="name")
    use_bias = get("use_bias", True)
    if not isinstance(use_bias, bool):
        raise SpecError(f"must be true or false, got {use_bias!r}", source=src, field="use_bias")
    groups = get("groups", 1)
    if groups not in (None, 1):
        raise SpecError(f"{groups!r}: Conv3DTranspose has no grouped form; use 1", source=src, field="groups")
    seed = get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise SpecError(f"must be an integer, got {seed!r}", source=src, field="seed")
    return name, use_bias, None if seed is None else int(seed)


def _named_arguments(get: Any, src: str | None) -> dict[str, Any]:
    """Initializers (Keras's defaults when absent), regularizers and constraints, normalised."""
    named: dict[str, Any] = {}
    for key, default in (("kernel_initializer", "glorot_uniform"), ("bias_initializer", "zeros")):
        try:
            named[key] = initializers.normalise(get(key) or default)
        except ValueError as exc:
            raise SpecError(str(exc), source=src, field=key) from None
    for key in ("kernel_regularizer", "bias_regularizer", "activity_regularizer"):
        named[key] = optional_named(get(key), regularizers.normalise, key, src)
    for key in ("kernel_constraint", "bias_constraint"):
        named[key] = optional_named(get(key), constraints.normalise, key, src)
    return named


@dataclass(frozen=True, eq=False)
class LayerSpec:
    """Normalised Conv3DTranspose arguments plus (optionally) weights in Keras layout."""

    filters: int
    kernel_size: Triple
    strides: Triple = (1, 1, 1)
    padding: str | Triple = "valid"  # 'valid', 'same', or PyTorch's per-axis crop (p_d, p_h, p_w)
    output_padding: Triple | None = None
    data_format: str = CHANNELS_LAST
    dilation_rate: Triple = (1, 1, 1)
    activation: str = "linear"
    use_bias: bool = True
    kernel_initializer: Any = "glorot_uniform"
    bias_initializer: Any = "zeros"
    kernel_regularizer: Any = None
    bias_regularizer: Any = None
    activity_regularizer: Any = None
    kernel_constraint: Any = None
    bias_constraint: Any = None
    name: str | None = None
    kernel: np.ndarray | None = field(default=None, repr=False)
    bias: np.ndarray | None = field(default=None, repr=False)
    seed: int | None = None
    in_channels: int | None = None
    source: str | None = None
    # What the spec's constraints did to its loaded weights (constraints.apply_to_weights entries).
    constraints_applied: tuple[dict[str, Any], ...] = field(default=(), repr=False)

    # ----------------------------------------------------------------- construction
    @classmethod
    def create(cls, *, source: str | None = None, **kwargs: Any) -> LayerSpec:
        """Normalise and validate Keras-style arguments (ints for triples, any case for padding)."""
        src = source

        def get(key: str, default: Any = None) -> Any:
            return kwargs.get(key, default)

        if get("filters") is None:
            raise SpecError("is required (the number of output channels, e.g. 1)", source=src, field="filters")
        filters = check_count(get("filters"), "filters", src, "output channels")
        if get("kernel_size") is None:
            raise SpecError("is required, e.g. 3 or [3, 3, 3]", source=src, field="kernel_size")
        kernel_size = parse_triple(get("kernel_size"), "kernel_size", src)
        strides = parse_triple(get("strides", 1), "strides", src)
        dilation = parse_triple(get("dilation_rate", 1), "dilation_rate", src)
        for name, values in (("kernel_size", kernel_size), ("strides", strides), ("dilation_rate", dilation)):
            check_extents(values, name, src)
        in_channels = check_count(get("in_channels"), "in_channels", src, "input channels")
        check_weights_count(kernel_size, filters, in_channels, src)
        padding = parse_padding(get("padding", "valid"), src)
        explicit = not isinstance(padding, str)  # PyTorch's padding: torch's rules, not Keras's, apply below
        data_format = _data_format(get("data_format"), src)
        if not explicit and any(s > 1 for s in strides) and any(d > 1 for d in dilation):
            raise SpecError(
                f"strides {list(strides)} with dilation_rate {list(dilation)}: Keras refuses a stride > 1 "
                "together with a dilation > 1; set one of them to 1",
                source=src,
                field="dilation_rate",
            )
        op = get("output_padding")
        output_padding = None if op is None else parse_triple(op, "output_padding", src, minimum=0)
        check_output_padding(output_padding, strides, dilation, kernel_size, padding, src)
        try:
            activation = activations.normalise(get("activation"))
        except ValueError as exc:
            raise SpecError(str(exc), source=src, field="activation") from None
        name, use_bias, seed = _plain_arguments(get, src)
        spec = cls(
            filters=filters,
            kernel_size=kernel_size,
            strides=strides,
            padding=padding,
            output_padding=output_padding,
            data_format=data_format,
            dilation_rate=dilation,
            activation=activation,
            use_bias=use_bias,
            name=name,
            seed=seed,
            in_channels=in_channels,
            source=src,
            **_named_arguments(get, src),
        )
        kernel, bias = get("kernel"), get("bias")
        if kernel is not None or bias is not None:
            spec = spec.with_weights(kernel, bias)
        return spec

    @classmethod
    def from_mapping(
        cls, mapping: Mapping[str, Any], *, source: str | None = None, base_dir: os.PathLike | None = None
    ) -> LayerSpec:
        """From a plain dict of Keras arguments or Keras's serialised `{class_name, config}` form."""
        data = keras_arguments(mapping, source)
        kwargs = {k: data[k] for k in KERAS_ARGS + ("name", "groups", "seed", "in_channels") if k in data}
        weights = data.get("weights")
        layout = data.get("weights_layout", "keras")
        if layout not in ("keras", "torch"):
            raise SpecError(f"{layout!r}; use 'keras' or 'torch'", source=source, field="weights_layout")
        if weights is not None:
            if not isinstance(weights, str):
                raise SpecError("must be the path of an .npz file", source=source, field="weights")
            path = Path(weights)
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            spec = cls.create(source=source, **kwargs)  # the hyperparameters bound what the file may hold
            kernel, bias = load_npz(
                path,
                layout,
                expect=(*spec.kernel_size, spec.filters),
                in_channels=spec.in_channels,
                check=spec.check_kernel_shape,
            )
            return spec.with_weights(kernel, bias).constrained()
        return cls.create(source=source, **kwargs)

    def constrained(self) -> LayerSpec:
        """The spec with its kernel/bias constraints applied to its weights (Keras's projection), and recorded."""
        if self.kernel is None or (self.kernel_constraint is None and self.bias_constraint is None):
            return self
        try:
            kernel, bias, report = constraints.apply_to_weights(
                self.kernel, self.bias, self.kernel_constraint, self.bias_constraint
            )
        except constraints.ConstraintError as exc:
            raise SpecError(str(exc), source=self.source, field=exc.field) from None
        return replace(self, kernel=kernel, bias=bias, constraints_applied=tuple(report))

    @classmethod
    def from_yaml(cls, path: os.PathLike | str) -> LayerSpec:
        """Read a YAML (or JSON) spec; `weights:` is resolved beside the spec file."""
        from .textconfig import load_file

        path = Path(path)
        src = str(path)
        data = load_file(path, expected="a spec")
        return cls.from_mapping(data, source=src, base_dir=path.parent)

    # ----------------------------------------------------------------- weights
    def with_weights(self, kernel: Any, bias: Any = None) -> LayerSpec:
        """Attach weights (Keras layout), checking shapes and finiteness against the hyperparameters."""
        src = self.source
        if kernel is None:
            raise SpecError("bias given without a kernel", source=src, field="kernel")
        kernel = np.asarray(kernel)
        if kernel.dtype.kind not in "fiu":
            raise SpecError(f"kernel must be numeric, got dtype {kernel.dtype}", source=src, field="kernel")
        self.check_kernel_shape(tuple(kernel.shape))
        if not np.all(np.isfinite(kernel)):
            raise SpecError("kernel holds NaN or infinite values", source=src, field="kernel")
        if self.use_bias:
            if bias is None:
                raise SpecError(
                    f"use_bias is true but no bias was given; add a 'bias' array of shape ({self.filters},) "
                    "or set use_bias: false",
                    source=src,
                    field="bias",
                )
            bias = np.asarray(bias)
            if bias.dtype.kind not in "fiu" or bias.shape != (self.filters,):
                raise SpecError(
                    f"bias has shape {bias.shape} but filters={self.filters} needs ({self.filters},)",
                    source=src,
                    field="bias",
                )
            if not np.all(np.isfinite(bias)):
                raise SpecError("bias holds NaN or infinite values", source=src, field="bias")
        elif bias is not None:
            raise SpecError(
                "a bias was given but use_bias is false; drop it or set use_bias: true", source=src, field="bias"
            )
        return replace(self, kernel=kernel, bias=bias, in_channels=int(kernel.shape[4]))

    def check_kernel_shape(self, shape: tuple[int, ...]) -> None:
        """Refuse a kernel shape (Keras layout) that does not fit filters, kernel_size and in_channels."""
        expect = (*self.kernel_size, self.filters)
        if len(shape) != 5 or tuple(shape[:4]) != expect:
            want = f"({', '.join(map(str, expect))}, in_channels)"
            raise SpecError(
                f"kernel has shape {tuple(shape)} but filters={self.filters} and "
                f"kernel_size={list(self.kernel_size)} need {want} (Keras layout kd, kh, kw, filters, in)",
                source=self.source,
                field="kernel",
            )
        if self.in_channels is not None and shape[4] != self.in_channels:
            raise SpecError(
                f"kernel has shape {tuple(shape)}: {shape[4]} input channels, but in_channels is {self.in_channels}",
                source=self.source,
                field="kernel",
            )
        check_count(shape[4], "in_channels", self.source, "input channels")

    def materialise(self, in_channels: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Kernel and bias for an input of `in_channels` channels: the stored ones, else initialised."""
        if self.kernel is not None:
            if self.kernel.shape[4] != in_channels:
                raise SpecError(
                    f"the input has {in_channels} channel(s) but the kernel, shape {tuple(self.kernel.shape)}, "
                    f"expects {self.kernel.shape[4]}",
                    source=self.source,
                    field="kernel",
                )
            return self.kernel, self.bias
        if self.in_channels is not None and self.in_channels != in_channels:
            raise SpecError(
                f"the input has {in_channels} channel(s) but the spec says {self.in_channels}",
                source=self.source,
                field="in_channels",
            )
        check_count(in_channels, "in_channels", self.source, "input channels")
        check_weights_count(self.kernel_size, self.filters, in_channels, self.source)
        shape = (*self.kernel_size, self.filters, in_channels)
        try:
            kernel = initializers.make(self.kernel_initializer, shape, self.seed)
        except ValueError as exc:
            raise SpecError(str(exc), source=self.source, field="kernel_initializer") from None
        try:
            bias = (
                initializers.make(self.bias_initializer, (self.filters,), None if self.seed is None else self.seed + 1)
                if self.use_bias
                else None
            )
        except ValueError as exc:
            raise SpecError(str(exc), source=self.source, field="bias_initializer") from None
        return kernel, bias

    # ----------------------------------------------------------------- geometry
    def axes(self, spatial_shape: Sequence[int]) -> tuple[geometry.Axis, geometry.Axis, geometry.Axis]:
        axes = geometry.axes_for(
            spatial_shape, self.kernel_size, self.strides, self.dilation_rate, self.padding, self.output_padding
        )
        if self.explicit_padding:
            for a, ax in enumerate(axes):
                if ax.out < 1:
                    raise SpecError(
                        f"{list(self.padding)} crops an input of length {ax.length} on axis {a} to an output "
                        f"length of {ax.out} ((I - 1)*s - 2p + d*(k - 1) + op + 1); PyTorch refuses that too; "
                        f"use at most {max((ax.full + (ax.output_padding or 0) - 1) // 2, 0)} there",
                        source=self.source,
                        field="padding",
                    )
        return axes

    @property
    def explicit_padding(self) -> bool:
        """True for PyTorch's per-axis padding (the spec format's extension), False for 'valid'/'same'."""
        return not isinstance(self.padding, str)

    def layout(self, ndim: int) -> Layout:
        return Layout(ndim, self.data_format)

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        layout = self.layout(len(input_shape))
        spatial = tuple(ax.out for ax in self.axes(layout.spatial_shape(input_shape)))
        return layout.output_shape(input_shape, spatial, self.filters)

    @property
    def mixes_width(self) -> bool:
        """softmax over channels_first acts on the width axis (Keras's last axis): tiles span it whole."""
        return self.activation in activations.AXIS_ACTIVATIONS and self.data_format == CHANNELS_FIRST

    # ----------------------------------------------------------------- output
    def to_config(self) -> dict[str, Any]:
        """Keras `get_config()` keys (dilation_rate included), plain JSON types."""
        return {
            "name": self.name,
            "filters": self.filters,
            "kernel_size": list(self.kernel_size),
            "strides": list(self.strides),
            "padding": self.padding if isinstance(self.padding, str) else list(self.padding),
            "output_padding": None if self.output_padding is None else list(self.output_padding),
            "data_format": self.data_format,
            "dilation_rate": list(self.dilation_rate),
            "activation": self.activation,
            "use_bias": self.use_bias,
            "kernel_initializer": self.kernel_initializer,
            "bias_initializer": self.bias_initializer,
            "kernel_regularizer": self.kernel_regularizer,
            "bias_regularizer": self.bias_regularizer,
            "activity_regularizer": self.activity_regularizer,
            "kernel_constraint": self.kernel_constraint,
            "bias_constraint": self.bias_constraint,
        }

    def fingerprint(self) -> str:
        """Stable digest of what the layer computes (hyperparameters and weights), for resume checks."""
        import hashlib

        h = hashlib.sha256(json.dumps(self.to_config(), sort_keys=True).encode())
        for arr in (self.kernel, self.bias):
            if arr is not None:
                h.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
        h.update(str(self.seed).encode())
        return h.hexdigest()[:16]

    def save(self, path: os.PathLike | str) -> Path:
        """Write the spec as YAML with its weights as an `.npz` beside it (same stem)."""
        import yaml

        path = Path(path)
        data = {k: v for k, v in self.to_config().items() if v is not None}
        if self.seed is not None:
            data["seed"] = self.seed
        if self.in_channels is not None:
            data["in_channels"] = self.in_channels
        if self.kernel is not None:
            weights = path.with_suffix(".npz")
            arrays = {"kernel": self.kernel}
            if self.bias is not None:
                arrays["bias"] = self.bias
            np.savez(weights, **arrays)
            data["weights"] = weights.name
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    def describe(self) -> str:
        parts = [
            f"filters={self.filters}",
            f"kernel_size={list(self.kernel_size)}",
            f"strides={list(self.strides)}",
            f"padding={self.padding}" if isinstance(self.padding, str) else f"padding={list(self.padding)} (torch)",
        ]
        if self.output_padding is not None:
            parts.append(f"output_padding={list(self.output_padding)}")
        if self.dilation_rate != (1, 1, 1):
            parts.append(f"dilation_rate={list(self.dilation_rate)}")
        parts += [f"data_format={self.data_format}", f"activation={self.activation}", f"use_bias={self.use_bias}"]
        if self.kernel is not None:
            parts.append(f"in_channels={self.kernel.shape[4]}, weights loaded")
        else:
            parts.append(f"weights from {self.kernel_initializer['name']} (seed {self.seed})")
        return ", ".join(parts)


__all__ = ["LayerSpec", "SpecError", "load_npz", "parse_triple", "KERAS_ARGS"]
