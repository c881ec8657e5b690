"""LayerSpec: a Conv3DTranspose layer's arguments and weights, normalised and checked once.

Everything downstream (engine, tiler, writers, API) trusts a LayerSpec, so every refusal of
SEMANTICS.md happens here, with a message that names the file, the field and what would work.
Specs are read from YAML (safe loader only), from Keras's serialised form, or built in code; weights
come from an `.npz` read without pickle, or from the named initializers.
"""

from __future__ import annotations

import difflib
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

# Keras's defaults for each named regularizer and constraint (normalised in regularizers.py / constraints.py).
REGULARIZERS = regularizers.DEFAULTS
CONSTRAINTS = constraints.DEFAULTS


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


def _optional_named(value: Any, normalise: Any, name: str, source: str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        return normalise(value)
    except ValueError as exc:
        raise SpecError(str(exc), source=source, field=name) from None


def _padding(value: Any, source: str | None) -> str | Triple:
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

        filters = get("filters")
        if filters is None:
            raise SpecError("is required (the number of output channels, e.g. 1)", source=src, field="filters")
        if isinstance(filters, bool) or not isinstance(filters, (int, np.integer)) or filters < 1:
            raise SpecError(f"must be a positive integer, got {filters!r}", source=src, field="filters")
        if get("kernel_size") is None:
            raise SpecError("is required, e.g. 3 or [3, 3, 3]", source=src, field="kernel_size")
        kernel_size = parse_triple(get("kernel_size"), "kernel_size", src)
        strides = parse_triple(get("strides", 1), "strides", src)
        dilation = parse_triple(get("dilation_rate", 1), "dilation_rate", src)
        padding = _padding(get("padding", "valid"), src)
        explicit = not isinstance(padding, str)  # PyTorch's padding: torch's rules, not Keras's, apply below
        data_format = get("data_format") or CHANNELS_LAST
        if not isinstance(data_format, str) or data_format.lower() not in (CHANNELS_LAST, CHANNELS_FIRST):
            raise SpecError(
                f"{data_format!r}; use 'channels_last' or 'channels_first'", source=src, field="data_format"
            )
        data_format = data_format.lower()
        if not explicit and any(s > 1 for s in strides) and any(d > 1 for d in dilation):
            raise SpecError(
                f"strides {list(strides)} with dilation_rate {list(dilation)}: Keras refuses a stride > 1 "
                "together with a dilation > 1; set one of them to 1",
                source=src,
                field="dilation_rate",
            )
        op = get("output_padding")
        output_padding = None if op is None else parse_triple(op, "output_padding", src, minimum=0)
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
        try:
            activation = activations.normalise(get("activation"))
        except ValueError as exc:
            raise SpecError(str(exc), source=src, field="activation") from None
        use_bias = get("use_bias", True)
        if not isinstance(use_bias, bool):
            raise SpecError(f"must be true or false, got {use_bias!r}", source=src, field="use_bias")
        inits = {}
        for key, default in (("kernel_initializer", "glorot_uniform"), ("bias_initializer", "zeros")):
            try:
                inits[key] = initializers.normalise(get(key) or default)
            except ValueError as exc:
                raise SpecError(str(exc), source=src, field=key) from None
        regs = {
            key: _optional_named(get(key), regularizers.normalise, key, src)
            for key in ("kernel_regularizer", "bias_regularizer", "activity_regularizer")
        }
        cons = {
            key: _optional_named(get(key), constraints.normalise, key, src)
            for key in ("kernel_constraint", "bias_constraint")
        }
        groups = get("groups", 1)
        if groups not in (None, 1):
            raise SpecError(f"{groups!r}: Conv3DTranspose has no grouped form; use 1", source=src, field="groups")
        seed = get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise SpecError(f"must be an integer, got {seed!r}", source=src, field="seed")
        in_channels = get("in_channels")
        if in_channels is not None and (
            isinstance(in_channels, bool) or not isinstance(in_channels, (int, np.integer)) or in_channels < 1
        ):
            raise SpecError(f"must be a positive integer, got {in_channels!r}", source=src, field="in_channels")
        spec = cls(
            filters=int(filters),
            kernel_size=kernel_size,
            strides=strides,
            padding=padding,
            output_padding=output_padding,
            data_format=data_format,
            dilation_rate=dilation,
            activation=activation,
            use_bias=use_bias,
            name=get("name"),
            seed=None if seed is None else int(seed),
            in_channels=None if in_channels is None else int(in_channels),
            source=src,
            **inits,
            **regs,
            **cons,
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
        if not isinstance(mapping, Mapping):
            raise SpecError(f"expected a mapping of Keras arguments, got {type(mapping).__name__}", source=source)
        data = dict(mapping)
        if "class_name" in data or "config" in data:
            class_name = data.get("class_name")
            if class_name != "Conv3DTranspose":
                raise SpecError(f"{class_name!r} is not a Conv3DTranspose layer", source=source, field="class_name")
            _refuse_unknown(data, SERIALISED_KEYS + OWN_KEYS, source)
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
        _refuse_unknown(data, ALL_KEYS, source)
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
            kernel, bias = load_npz(path, layout)
            kwargs["kernel"], kwargs["bias"] = kernel, bias
        spec = cls.create(source=source, **kwargs)
        return spec.constrained() if weights is not None else spec

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
        from ..importers.safe import load_text_config

        path = Path(path)
        src = str(path)
        data = load_text_config(path)
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
        expect = (*self.kernel_size, self.filters)
        if kernel.ndim != 5 or tuple(kernel.shape[:4]) != expect:
            want = f"({', '.join(map(str, expect))}, in_channels)"
            raise SpecError(
                f"kernel has shape {tuple(kernel.shape)} but filters={self.filters} and "
                f"kernel_size={list(self.kernel_size)} need {want} (Keras layout kd, kh, kw, filters, in)",
                source=src,
                field="kernel",
            )
        if self.in_channels is not None and kernel.shape[4] != self.in_channels:
            raise SpecError(
                f"kernel has shape {tuple(kernel.shape)}: {kernel.shape[4]} input channels, "
                f"but in_channels is {self.in_channels}",
                source=src,
                field="kernel",
            )
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


def _refuse_unknown(data: Mapping[str, Any], valid: Sequence[str], source: str | None) -> None:
    for key in data:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
            raise SpecError(f"unknown key{hint}", source=source, field=str(key))


def load_npz(path: Path, layout: str = "keras") -> tuple[np.ndarray, np.ndarray | None]:
    """Read `kernel` (and `bias`) from an `.npz` without ever unpickling."""
    src = str(path)
    if not path.is_file():
        raise SpecError("weights file not found", source=src, field="weights")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            if "kernel" not in names:
                raise SpecError(
                    f"no 'kernel' array (found: {', '.join(sorted(names)) or 'none'})", source=src, field="kernel"
                )
            unknown = names - {"kernel", "bias"}
            if unknown:
                raise SpecError(
                    f"unexpected array {sorted(unknown)[0]!r}; an .npz holds 'kernel' and optionally 'bias'",
                    source=src,
                )
            kernel = z["kernel"]
            bias = z["bias"] if "bias" in names else None
    except SpecError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise SpecError("holds pickled objects; only plain numeric arrays are read", source=src) from None
        raise SpecError(f"not a readable .npz: {exc}", source=src) from None
    except (OSError, EOFError) as exc:
        raise SpecError(f"not a readable .npz: {exc}", source=src) from None
    if layout == "torch":
        if kernel.ndim != 5:
            raise SpecError(
                f"torch layout needs a 5-D kernel (in, filters, kd, kh, kw), got shape {kernel.shape}",
                source=src,
                field="kernel",
            )
        kernel = kernel.transpose(2, 3, 4, 1, 0)
    return np.ascontiguousarray(kernel), bias


__all__ = ["LayerSpec", "SpecError", "load_npz", "KERAS_ARGS"]
