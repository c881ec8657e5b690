"""The kernel and bias of a Keras Conv3DTranspose layer in its weights file (h5py only).

Where the weights of a layer live:

- Keras 3 (and tf.keras >= 2.13 `.keras`) weights files: `layers/<class>[_n]/vars/0` (kernel) and
  `vars/1` (bias), nested models under `layers/<class>[_n]/layers/...`. `<class>` is the snake-case
  class name with a per-container counter, in the order of the model's layers; newer Keras 3 also
  stores the layer's own name as an attribute of `vars`, which is preferred when present.
- Legacy `.h5` (Keras 2, and Keras 3's legacy format): group `model_weights` (or the file root for
  `save_weights`) with attribute `layer_names`; each top-level layer's group lists `weight_names` such as
  `up/kernel:0`, or `sub/inner/kernel` for a layer inside the nested model `sub`, or (Keras 3, a
  top-level Sequential) `sequential_1/up/kernel`, the model's own name first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import SpecError
from ..layer.spec import load_npz
from . import safe

if TYPE_CHECKING:
    from .keras import KerasLayer, KerasSource


def _expected_kernel(cfg: Mapping[str, Any]) -> tuple[int, ...] | None:
    k, f = cfg.get("kernel_size"), cfg.get("filters")
    if isinstance(k, int):
        k = [k] * 3
    if isinstance(k, (list, tuple)) and len(k) == 3 and isinstance(f, int):
        return (*(int(v) for v in k), int(f))
    return None


def read_weights(source: KerasSource, layer: KerasLayer, cfg: Mapping[str, Any], src: str) -> tuple[Any, Any]:
    w = source.weights
    use_bias = cfg.get("use_bias", True)
    if isinstance(w, tuple) and w[0] == "npz":
        return load_npz(w[1], expect=_expected_kernel(cfg))
    where = f"{source.weights_desc}"
    if safe.h5_attr_list(w, "layer_names") or safe.h5_child(w, "layers", src) is None:
        kernel, bias = _legacy_weights(w, layer, src, where)
    else:
        kernel, bias = _v3_weights(w, layer, cfg, src, where)
    expect = _expected_kernel(cfg)
    if kernel.ndim != 5 or (expect is not None and tuple(kernel.shape[:4]) != expect):
        raise SpecError(
            f"layer {layer.name!r}: the kernel in {where} has shape {tuple(kernel.shape)}, but the config "
            f"needs {expect + ('in_channels',) if expect else '5 dimensions'}",
            source=src,
            field="kernel",
        )
    if not use_bias:
        bias = None
    elif bias is None:
        raise SpecError(f"layer {layer.name!r}: use_bias is true but {where} has no bias", source=src, field="bias")
    return kernel, bias


def _v3_weights(h5: Any, layer: KerasLayer, cfg: Mapping[str, Any], src: str, where: str) -> tuple[Any, Any]:
    group = _v3_by_names(h5, layer.path, src)
    if group is None and layer.v3_path:
        group = safe.h5_child(h5, layer.v3_path, src)
    if group is None:
        group = _v3_search_name(h5, layer.path[-1], src)
    if group is None:
        raise SpecError(
            f"cannot find the weights of layer {layer.name!r} in {where} "
            f"(looked for {layer.v3_path or 'a vars group named ' + repr(layer.path[-1])})",
            source=src,
        )
    kernel_ds = safe.h5_child(group, "vars/0", src)
    if kernel_ds is None:
        raise SpecError(f"layer {layer.name!r}: {where} holds no kernel for it (vars/0)", source=src)
    kernel = safe.h5_array(kernel_ds, src, f"layer {layer.name!r} kernel")
    bias_ds = safe.h5_child(group, "vars/1", src)
    bias = None if bias_ds is None else safe.h5_array(bias_ds, src, f"layer {layer.name!r} bias")
    return kernel, bias


def _vars_name(group: Any, src: str) -> str | None:
    v = safe.h5_child(group, "vars", src)
    return None if v is None else safe.h5_attr_text(v, "name")


def _v3_by_names(h5: Any, path: tuple[str, ...], src: str) -> Any:
    """Follow the layers' own names (stored as `vars.attrs['name']` by newer Keras 3)."""
    node = h5
    for name in path:
        container = safe.h5_child(node, "layers", src)
        if container is None:
            return None
        found = [g for _, g in safe.h5_children(container, src) if _vars_name(g, src) == name]
        if len(found) != 1:
            return None
        node = found[0]
    return node


def _v3_search_name(h5: Any, name: str, src: str) -> Any:
    """A layer given by its config alone: the one group anywhere whose vars are named `name`."""
    found = []

    def visit(group: Any, depth: int) -> None:
        if depth > 32:
            return
        container = safe.h5_child(group, "layers", src)
        if container is None:
            return
        for _, child in safe.h5_children(container, src):
            if _vars_name(child, src) == name:
                found.append(child)
            visit(child, depth + 1)

    visit(h5, 0)
    return found[0] if len(found) == 1 else None


def _legacy_weights(root: Any, layer: KerasLayer, src: str, where: str) -> tuple[Any, Any]:
    layer_names = safe.h5_attr_list(root, "layer_names")
    groups = [layer.path[0]] if layer.path[0] in layer_names else layer_names
    matches: dict[str, list[tuple[Any, str]]] = {"kernel": [], "bias": []}
    for gname in groups:
        group = safe.h5_child(root, gname, src)
        if group is None:
            continue
        for wname in safe.h5_attr_list(group, "weight_names"):
            parts = wname.split("/")
            leaf = parts[-1].split(":")[0]
            owner = tuple(parts[:-1])
            if leaf not in matches or not owner or owner[-1] != layer.path[-1]:
                continue
            if gname == layer.path[0] and not _owns(owner, layer.path):
                continue
            matches[leaf].append((group, wname))
    if not matches["kernel"]:
        raise SpecError(f"cannot find the weights of layer {layer.name!r} in {where}", source=src)
    if len(matches["kernel"]) > 1:
        raise SpecError(
            f"layer name {layer.path[-1]!r} owns several kernels in {where}; give the model config with "
            "the full layer path",
            source=src,
        )
    group, wname = matches["kernel"][0]
    kernel = safe.h5_array(_dataset(group, wname, src, where), src, f"layer {layer.name!r} kernel")
    bias = None
    same_group = [m for m in matches["bias"] if m[0] == group]
    if same_group:
        bias = safe.h5_array(_dataset(*same_group[0], src, where), src, f"layer {layer.name!r} bias")
    return kernel, bias


def _owns(owner: tuple[str, ...], path: tuple[str, ...]) -> bool:
    """Whether weight names under `owner` belong to the layer at `path`: one is a suffix of the other.

    Keras 2 names a weight by the layer alone ('up/kernel:0', also inside nested models); Keras 3's
    legacy `.h5` by the layer's path from the innermost enclosing Sequential, whose own name comes first:
    'sub/inner/kernel' for a layer of a nested Sequential, 'sequential_1/up/kernel' for a layer of a
    top-level Sequential (the top model is not in the layer's path), 'fup/kernel' inside a functional one.
    """
    n = min(len(owner), len(path))
    return owner[-n:] == path[-n:]


def _dataset(group: Any, wname: str, src: str, where: str) -> Any:
    ds = safe.h5_child(group, wname, src)
    if ds is None:
        raise SpecError(f"{where} lists weight {wname!r} but does not hold it", source=src)
    return ds
