"""ConvTranspose3d layers from PyTorch state dicts, loaded with `torch.load(weights_only=True)`.

A state dict holds `weight` (in, out/groups, kd, kh, kw) and `bias` (out,) only; kernel size and channel
counts follow from the weight's shape, and the rest of the constructor's arguments (stride, padding,
output_padding, dilation, groups) come from options or a sidecar YAML/JSON holding them (flat, or one
mapping per layer prefix). Torch's layer maps onto the spec exactly:

- the kernel is `weight.transpose(2, 3, 4, 1, 0)` (Keras layout, no flip; SEMANTICS.md);
- `padding` 0 becomes Keras's `padding: valid` with `output_padding` (the same lengths and values);
  any other padding, or what Keras refuses (stride > 1 with dilation > 1, output_padding >= stride),
  becomes the spec's PyTorch extension `padding: [p_d, p_h, p_w]`;
- `groups` > 1 becomes the equivalent dense kernel, zero between the groups.
"""

from __future__ import annotations

import difflib
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SpecError
from ..layer.spec import LayerSpec, parse_triple
from . import Candidate, Imported, choose, safe

KIND = "ConvTranspose3d"
# torch.nn.ConvTranspose3d's constructor arguments (what a sidecar may hold).
TORCH_ARGS = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "output_padding",
    "groups",
    "bias",
    "dilation",
    "padding_mode",
    "device",
    "dtype",
)


def _load(path: Path) -> dict[str, Any]:
    """The file's tensors by dotted key (nested dicts flattened), loaded without unpickling objects."""
    import torch

    src = str(path)
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's business
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise SpecError(
            "holds pickled Python objects other than tensors; refused (read with torch.load(weights_only=True)). "
            "Save the layer's weights with torch.save(layer.state_dict(), PATH)",
            source=src,
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for broken or foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = " (a TorchScript archive? save layer.state_dict() instead)" if "jit" in str(exc).lower() else ""
        raise SpecError(f"not a loadable PyTorch state dict{hint}: {first[:200]}", source=src) from None
    tensors: dict[str, Any] = {}
    if isinstance(obj, torch.Tensor):
        tensors["weight"] = obj
        return tensors
    if not isinstance(obj, Mapping):
        raise SpecError(f"holds a {type(obj).__name__}, not a state dict (a mapping of tensors)", source=src)

    def walk(mapping: Mapping[Any, Any], prefix: str, depth: int) -> None:
        for key, value in mapping.items():
            name = f"{prefix}{key}"
            if isinstance(value, torch.Tensor):
                tensors[name] = value
            elif isinstance(value, Mapping) and depth < 8:
                walk(value, name + ".", depth + 1)

    walk(obj, "", 0)
    return tensors


def _candidates(tensors: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """prefix -> (weight, bias) for every 5-D floating `weight` (ConvTranspose3d, or a Conv3d: same rank)."""
    out = {}
    for key, value in tensors.items():
        if key == "weight" or key.endswith(".weight"):
            if value.ndim == 5 and value.is_floating_point():
                prefix = key[: -len("weight")].rstrip(".")
                out[prefix] = (value, tensors.get(f"{prefix}.bias" if prefix else "bias"))
    return out


def _summary(weight: Any, bias: Any) -> str:
    return (
        f"weight {tuple(weight.shape)} (in={weight.shape[0]}, out/groups={weight.shape[1]}, "
        f"kernel={list(weight.shape[2:])}), bias {'yes' if bias is not None else 'no'}"
    )


def list_layers(path: Path) -> tuple[str, list[Candidate]]:
    found = _candidates(_load(path))
    return "PyTorch state dict", [Candidate(name, _summary(*wb)) for name, wb in found.items()]


def _triple(value: Any, name: str, src: str, minimum: int) -> tuple[int, int, int]:
    if isinstance(value, str) and name == "padding":
        raise SpecError(
            f"expected an integer or 3 integers, got {value!r} (ConvTranspose3d takes no string padding)",
            source=src,
            field=name,
        )
    return parse_triple(value, name, src, minimum)


def _sidecar_args(sidecar: Path | None, prefix: str) -> dict[str, Any]:
    if sidecar is None:
        return {}
    data = safe.load_text_config(sidecar)
    src = str(sidecar)
    if not isinstance(data, Mapping):
        raise SpecError("a sidecar is a mapping of ConvTranspose3d arguments", source=src)
    if not all(isinstance(v, Mapping) for v in data.values()):  # flat: the arguments themselves
        args = dict(data)
    else:  # one mapping per layer prefix
        key = prefix if prefix in data else ("" if "" in data else None)
        if key is None:
            raise SpecError(
                f"holds no entry for layer {prefix!r} (entries: {', '.join(map(str, data))}); a sidecar holds "
                f"ConvTranspose3d arguments ({', '.join(TORCH_ARGS)}), flat or per layer",
                source=src,
            )
        args = data[key]
        if not isinstance(args, Mapping):
            raise SpecError(f"entry {key!r} must be a mapping of ConvTranspose3d arguments", source=src)
        args = dict(args)
    unknown = sorted(set(map(str, args)) - set(TORCH_ARGS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], TORCH_ARGS, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SpecError(
            f"unknown ConvTranspose3d argument; {hint}valid: {', '.join(TORCH_ARGS)}", source=src, field=unknown[0]
        )
    return args


def _dense_weight(weight: np.ndarray, groups: int) -> np.ndarray:
    """(in, out/groups, k...) grouped weight -> the equivalent (in, out, k...) dense one."""
    cin, cog = weight.shape[:2]
    cig = cin // groups
    dense = np.zeros((cin, cog * groups, *weight.shape[2:]), dtype=weight.dtype)
    for g in range(groups):
        dense[g * cig : (g + 1) * cig, g * cog : (g + 1) * cog] = weight[g * cig : (g + 1) * cig]
    return dense


def import_layer(
    path: Path,
    wanted: str | None,
    *,
    options: Mapping[str, Any],
    sidecar: Path | None = None,
    activation: str | None = None,
    data_format: str | None = None,
) -> Imported:
    src = str(path)
    found = _candidates(_load(path))
    candidates = [Candidate(name, _summary(*wb)) for name, wb in found.items()]
    chosen = choose(candidates, wanted, src, KIND)
    weight_t, bias_t = found[chosen.name]
    args = _sidecar_args(sidecar, chosen.name)
    args.update({key: value for key, value in options.items() if value is not None})  # options win
    hp_src = str(sidecar) if sidecar is not None else src
    weight = _to_numpy(weight_t)
    bias = None if bias_t is None else _to_numpy(bias_t)
    groups = _groups(args, weight, hp_src)
    cout = int(weight.shape[1]) * groups
    kernel_size = tuple(int(n) for n in weight.shape[2:])
    _check_declared(args, weight, bias, groups, hp_src, src)
    stride, padding, output_padding, dilation = _geometry(args, hp_src)
    notes = []
    if groups > 1:
        weight = _dense_weight(weight, groups)
        notes.append(f"groups={groups}: imported as the equivalent dense kernel (zero between the groups)")
    keras_form = (
        padding == (0, 0, 0)
        and all(op < s for op, s in zip(output_padding, stride))
        and not (any(s > 1 for s in stride) and any(d > 1 for d in dilation))
    )
    if not keras_form:
        notes.append(
            f"padding {list(padding)}: written as the spec's PyTorch extension `padding: [p_d, p_h, p_w]` "
            "(Keras has no equivalent)"
        )
    kernel = np.ascontiguousarray(weight.transpose(2, 3, 4, 1, 0))
    spec = LayerSpec.create(
        source=f"{src} (layer {chosen.name or 'weight'})",
        filters=cout,
        kernel_size=kernel_size,
        strides=stride,
        padding="valid" if keras_form else list(padding),
        output_padding=list(output_padding),
        dilation_rate=dilation,
        activation=activation,
        data_format=data_format,
        use_bias=bias is not None,
        name=chosen.name or None,
        kernel=kernel,
        bias=bias,
    )
    warnings: list[str] = []
    description = "PyTorch state dict" + (f" with sidecar {sidecar}" if sidecar is not None else "")
    return Imported(spec, src, description, chosen.name, candidates, warnings, notes)


def _groups(args: Mapping[str, Any], weight: np.ndarray, hp_src: str) -> int:
    """`groups` (1 unless given), refused unless it divides the input channels; only 'zeros' padding_mode."""
    if args.get("padding_mode", "zeros") != "zeros":
        raise SpecError(
            f"{args['padding_mode']!r}: ConvTranspose3d supports only 'zeros'", source=hp_src, field="padding_mode"
        )
    groups = args.get("groups", 1)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise SpecError(f"must be a positive integer, got {groups!r}", source=hp_src, field="groups")
    cin = int(weight.shape[0])
    if cin % groups:
        raise SpecError(
            f"{groups} does not divide the weight's {cin} input channels (weight {tuple(weight.shape)})",
            source=hp_src,
            field="groups",
        )
    return groups


def _check_declared(
    args: Mapping[str, Any], weight: np.ndarray, bias: np.ndarray | None, groups: int, hp_src: str, src: str
) -> None:
    """The sidecar's or options' channels, kernel size and bias agree with the state dict's tensors."""
    cin, cout = int(weight.shape[0]), int(weight.shape[1]) * groups
    kernel_size = tuple(int(n) for n in weight.shape[2:])
    checks = (("in_channels", cin), ("out_channels", cout), ("kernel_size", kernel_size))
    for key, have in checks:
        if key in args:
            want = args[key]
            if key == "kernel_size":
                want = _triple(want, key, hp_src, 1)
            if want != have:
                raise SpecError(
                    f"{args[key]!r}, but the state dict's weight {tuple(weight.shape)} means {have}"
                    + (f" with groups={groups}" if key == "out_channels" else ""),
                    source=hp_src,
                    field=key,
                )
    if "bias" in args and bool(args["bias"]) != (bias is not None):
        raise SpecError(
            f"{args['bias']!r}, but the state dict {'has' if bias is not None else 'has no'} bias for this layer",
            source=hp_src,
            field="bias",
        )
    if bias is not None and bias.shape != (cout,):
        raise SpecError(f"bias has shape {bias.shape}, expected ({cout},)", source=src, field="bias")


def _geometry(args: Mapping[str, Any], hp_src: str) -> tuple[tuple[int, ...], ...]:
    """stride, padding, output_padding and dilation as triples; torch's output_padding rule checked."""
    stride = _triple(args.get("stride", 1), "stride", hp_src, 1)
    padding = _triple(args.get("padding", 0), "padding", hp_src, 0)
    output_padding = _triple(args.get("output_padding", 0), "output_padding", hp_src, 0)
    dilation = _triple(args.get("dilation", 1), "dilation", hp_src, 1)
    for axis, (op, s, d) in enumerate(zip(output_padding, stride, dilation)):
        if op >= max(s, d):
            raise SpecError(
                f"{list(output_padding)}: torch requires output_padding < stride or < dilation on every axis "
                f"(axis {axis}: {op} >= max({s}, {d}))",
                source=hp_src,
                field="output_padding",
            )
    return stride, padding, output_padding, dilation


def _to_numpy(t: Any) -> np.ndarray:
    import torch

    t = t.detach().to("cpu")
    if t.dtype not in (torch.float32, torch.float64):
        t = t.to(torch.float32)
    return t.numpy().copy()
