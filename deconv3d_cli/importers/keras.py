"""Conv3DTranspose layers from Keras files, read with h5py, zipfile and json only (no TensorFlow, no Keras).

Where the weights of a layer live:

- Keras 3 (and tf.keras >= 2.13 `.keras`) weights files: `layers/<class>[_n]/vars/0` (kernel) and
  `vars/1` (bias), nested models under `layers/<class>[_n]/layers/...`. `<class>` is the snake-case
  class name with a per-container counter, in the order of the model's layers; newer Keras 3 also
  stores the layer's own name as an attribute of `vars`, which is preferred when present.
- Legacy `.h5` (Keras 2, and Keras 3's legacy format): group `model_weights` (or the file root for
  `save_weights`) with attribute `layer_names`; each top-level layer's group lists `weight_names` such as
  `up/kernel:0`, or `sub/inner/kernel` for a layer inside the nested model `sub`.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SpecError
from ..layer.spec import LayerSpec, load_npz
from . import Candidate, Imported, choose, safe

CONV_CLASSES = ("Conv3DTranspose", "Convolution3DTranspose")
KIND = "Conv3DTranspose"


@dataclass
class KerasLayer:
    path: tuple[str, ...]  # layer names from the outermost model down
    config: dict[str, Any]
    build_config: dict[str, Any] | None
    v3_path: str  # the class-name path in a Keras 3 weights file, e.g. "layers/sequential/layers/conv3d_transpose"

    @property
    def name(self) -> str:
        return "/".join(self.path)

    def summary(self) -> str:
        c = self.config
        parts = [
            f"filters={c.get('filters')}",
            f"kernel_size={c.get('kernel_size')}",
            f"strides={c.get('strides', 1)}",
            f"padding={c.get('padding', 'valid')}",
        ]
        if c.get("output_padding") is not None:
            parts.append(f"output_padding={c.get('output_padding')}")
        if c.get("dilation_rate") not in (None, 1, [1, 1, 1], (1, 1, 1)):
            parts.append(f"dilation_rate={c.get('dilation_rate')}")
        parts.append(f"activation={_activation_name(c.get('activation'))}")
        return ", ".join(parts)


def _activation_name(value: Any) -> Any:
    if isinstance(value, Mapping):
        return (value.get("config") or {}).get("name", value.get("class_name"))
    return value or "linear"


def snake(name: str) -> str:
    """Keras's `to_snake_case` (keras.src.utils.naming; tf.keras's gives the same for layer classes)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


# ------------------------------------------------------------------------------------------ configs
def walk_config(config: Any, source: str) -> list[KerasLayer]:
    """Every Conv3DTranspose in a model config, a serialised layer, or a bare layer `get_config()`."""
    if not isinstance(config, Mapping):
        raise SpecError(f"a Keras config must be a mapping, got {type(config).__name__}", source=source)
    if "filters" in config and "class_name" not in config:  # a bare get_config()
        return [KerasLayer((str(config.get("name") or "layer"),), dict(config), None, "")]
    out: list[KerasLayer] = []
    _walk_item(config, (), "", {}, out, source, top=True)
    return out


def _layers_of(item: Mapping[str, Any]) -> list[Any] | None:
    cfg = item.get("config")
    if isinstance(cfg, list):  # very old Keras 2 Sequential: config is the layer list
        return cfg
    if isinstance(cfg, Mapping) and isinstance(cfg.get("layers"), list):
        return cfg["layers"]
    return None


def _walk_item(
    item: Any, path: tuple[str, ...], v3: str, counters: dict[str, int], out: list[KerasLayer], source: str, top: bool
) -> None:
    if not isinstance(item, Mapping):
        return
    class_name = item.get("class_name")
    cfg = item.get("config")
    if not isinstance(class_name, str):
        if top:
            raise SpecError("not a Keras config: no 'class_name' and no 'filters'", source=source)
        return
    name = None
    if isinstance(cfg, Mapping):
        name = cfg.get("name")
    name = str(name if name is not None else item.get("name") or snake(class_name))
    if not top:
        key = snake(class_name)
        n = counters.get(key, -1) + 1
        counters[key] = n
        here = f"{v3}layers/{key}" + (f"_{n}" if n else "")
    else:
        here = ""
    if class_name in CONV_CLASSES:
        if not isinstance(cfg, Mapping):
            raise SpecError(f"layer {name!r}: 'config' must be a mapping", source=source)
        build = item.get("build_config")
        out.append(KerasLayer((*path, name), dict(cfg), build, here))
        return
    layers = _layers_of(item)
    if layers is None:
        return
    inner_path = path if top else (*path, name)
    inner_v3 = "" if top else here + "/"
    inner_counters: dict[str, int] = {}
    for child in layers:
        _walk_item(child, inner_path, inner_v3, inner_counters, out, source, top=False)


def _version_of(config: Any) -> str | None:
    if isinstance(config, Mapping):
        v = config.get("keras_version")
        return str(v) if v is not None else None
    return None


# ------------------------------------------------------------------------------------------ sources
@dataclass
class _Source:
    description: str
    layers: list[KerasLayer]
    version: str | None
    weights: Any  # an open h5py.File / Group (v3 or legacy), or ("npz", Path), or None
    weights_desc: str | None


def _open(path: Path, kind: str, config: Path | None, weights: Path | None, stack: ExitStack) -> _Source:
    src = str(path)
    if kind == "keras-archive":
        if config is not None or weights is not None:
            raise SpecError("a .keras archive holds its config and weights; drop --config/--weights", source=src)
        try:
            archive = stack.enter_context(zipfile.ZipFile(path))
        except zipfile.BadZipFile as exc:
            raise SpecError(f"not a readable .keras archive: {exc}", source=src) from None
        names = safe.check_members(archive, src)
        cfg = safe.load_json_bytes(safe.read_member(archive, "config.json", src), src, "config.json")
        version = None
        if "metadata.json" in names:
            meta = safe.load_json_bytes(safe.read_member(archive, "metadata.json", src), src, "metadata.json")
            version = _version_of(meta)
        if "model.weights.h5" not in names:
            raise SpecError(
                "the archive has no model.weights.h5 (sharded weights are not supported; re-save the model "
                "with model.save('model.keras'))",
                source=src,
            )
        member = stack.enter_context(archive.open("model.weights.h5"))
        h5 = stack.enter_context(safe.open_h5(member, f"{src}:model.weights.h5"))
        v = f"Keras {version.split('.')[0]}" if version else "Keras"
        return _Source(f"{v} .keras archive", walk_config(cfg, src), version, h5, "model.weights.h5")
    if kind == "hdf5":
        h5 = stack.enter_context(safe.open_h5(str(path), src))
        model_config = safe.h5_attr_text(h5, "model_config")
        version = safe.h5_attr_text(h5, "keras_version")
        if model_config is not None:
            if config is not None or weights is not None:
                raise SpecError("this .h5 model holds its config and weights; drop --config/--weights", source=src)
            cfg = safe.load_json_bytes(model_config.encode("utf-8"), src, "the model_config attribute")
            group = safe.h5_child(h5, "model_weights", src)
            if group is None:
                raise SpecError("an .h5 model without 'model_weights' (saved without weights?)", source=src)
            v = f"Keras {version.split('.')[0]}" if version else "Keras"
            return _Source(f"{v} .h5 model", walk_config(cfg, src), version, group, "model_weights")
        if config is None:
            raise SpecError(
                "a weights-only .h5 (save_weights) holds no layer config; give the model's config with "
                "--config FILE (model.to_json(), or the layer's get_config() as JSON/YAML)",
                source=src,
            )
        if weights is not None:
            raise SpecError("--weights is for a config SOURCE; this SOURCE is the weights file", source=src)
        cfg = _config_file(config)
        return _Source(
            "Keras weights-only .h5 with config " + str(config),
            walk_config(cfg, str(config)),
            _version_of(cfg) or version,
            h5,
            src,
        )
    # kind == "config"
    if config is not None:
        raise SpecError("SOURCE is already a config; give weights with --weights, not --config", source=src)
    cfg = safe.load_text_config(path)
    layers = walk_config(cfg, src)
    version = _version_of(cfg)
    if weights is None:
        return _Source("Keras config", layers, version, None, None)
    wkind = safe.sniff(weights)
    if wkind == "hdf5":
        h5 = stack.enter_context(safe.open_h5(str(weights), str(weights)))
        return _Source(f"Keras config with weights {weights}", layers, version, h5, str(weights))
    if wkind == "zip":
        return _Source(f"Keras config with weights {weights}", layers, version, ("npz", weights), str(weights))
    raise SpecError("--weights must be an .h5 (save_weights) or .npz file", source=str(weights))


def _config_file(path: Path) -> Any:
    """A model config from JSON/YAML, or the config.json of a .keras archive."""
    if safe.sniff(path) != "zip":
        return safe.load_text_config(path)
    src = str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = safe.check_members(archive, src)
            safe.check_expansion(archive, src, path.stat().st_size)
            if "config.json" not in names:
                raise SpecError("a zip archive without config.json is not a Keras config", source=src)
            return safe.load_json_bytes(safe.read_member(archive, "config.json", src), src, "config.json")
    except zipfile.BadZipFile as exc:
        raise SpecError(f"not a readable zip archive: {exc}", source=src) from None


def list_layers(path: Path, kind: str, config: Any = None) -> tuple[str, list[Candidate]]:
    with ExitStack() as stack:
        source = _open(path, kind, None if config is None else Path(config), None, stack)
        return source.description, [Candidate(layer.name, layer.summary()) for layer in source.layers]


def _keras2_dilation(cfg: dict[str, Any], name: str, version: str | None, keras2_dilation: str) -> list[str]:
    """tf.keras 2 never applied Conv3DTranspose's dilation_rate: keep it or drop it from `cfg`, warning which."""
    dilation = cfg.get("dilation_rate")
    if not (version and version.startswith("2.")) or dilation in (None, 1, [1], [1, 1, 1], (1, 1, 1)):
        return []
    if keras2_dilation == "drop":
        cfg["dilation_rate"] = 1
        action = "dropped it (dilation_rate: 1), which reproduces the trained model"
    else:
        action = ("kept it in the spec, where it IS applied (as Keras 3 does); re-import with "
                  "--keras2-dilation drop to reproduce what the trained model computed")  # fmt: skip
    return [f"layer {name!r} sets dilation_rate {dilation} in a tf.keras {version} file, but tf.keras 2 ignores "
            f"dilation_rate for Conv3DTranspose: the trained layer ran without it. Imported: {action}"]  # fmt: skip


def import_layer(
    path: Path,
    kind: str,
    wanted: str | None,
    *,
    config: Path | None = None,
    weights: Path | None = None,
    keras2_dilation: str = "keep",
) -> Imported:
    src = str(path)
    warnings: list[str] = []
    notes: list[str] = []
    with ExitStack() as stack:
        source = _open(path, kind, config, weights, stack)
        candidates = [Candidate(layer.name, layer.summary()) for layer in source.layers]
        chosen = choose(candidates, wanted, src, KIND)
        layer = next(la for la in source.layers if la.name == chosen.name)
        cfg = dict(layer.config)
        warnings.extend(_keras2_dilation(cfg, layer.name, source.version, keras2_dilation))
        policy = _dtype_policy(cfg.get("dtype"))
        if policy not in (None, "float32"):
            warnings.append(
                f"layer {layer.name!r} has dtype policy {policy!r}: Keras computed it in that precision; "
                "deconv3d computes in --precision (fp32 unless asked otherwise)"
            )
        kernel = bias = None
        if source.weights is not None:
            kernel, bias = _read_weights(source, layer, cfg, src)
        else:
            notes.append(
                "no weights: the spec draws them from kernel_initializer at run time (give --weights FILE "
                "to import trained ones)"
            )
        mapping: dict[str, Any] = {"class_name": "Conv3DTranspose", "config": cfg}
        if layer.build_config:
            mapping["build_config"] = layer.build_config
        spec = LayerSpec.from_mapping(mapping, source=f"{src} (layer {layer.name})")
        if kernel is not None:
            spec = spec.with_weights(kernel, bias)
    for which in ("kernel_regularizer", "bias_regularizer", "activity_regularizer"):
        if getattr(spec, which) is not None:
            notes.append(f"{which}: {getattr(spec, which)['name']} (evaluated and reported by each run)")
    for which in ("kernel_constraint", "bias_constraint"):
        if getattr(spec, which) is not None:
            notes.append(f"{which}: {getattr(spec, which)['name']} (applied to the weights when the spec is loaded)")
    return Imported(spec, src, source.description, layer.name, candidates, warnings, notes)


def _dtype_policy(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        cfg = value.get("config")
        if isinstance(cfg, Mapping) and isinstance(cfg.get("name"), str):
            return cfg["name"]
    return None


# ------------------------------------------------------------------------------------------ weights
def _expected_kernel(cfg: Mapping[str, Any]) -> tuple[int, ...] | None:
    k, f = cfg.get("kernel_size"), cfg.get("filters")
    if isinstance(k, int):
        k = [k] * 3
    if isinstance(k, (list, tuple)) and len(k) == 3 and isinstance(f, int):
        return (*(int(v) for v in k), int(f))
    return None


def _read_weights(source: _Source, layer: KerasLayer, cfg: Mapping[str, Any], src: str) -> tuple[Any, Any]:
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
            # 'up/kernel:0' (Keras 2) or 'sub/inner/kernel' (Keras 3 legacy): a suffix of the layer's path.
            if tuple(layer.path[-len(owner) :]) != owner and gname == layer.path[0]:
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


def _dataset(group: Any, wname: str, src: str, where: str) -> Any:
    ds = safe.h5_child(group, wname, src)
    if ds is None:
        raise SpecError(f"{where} lists weight {wname!r} but does not hold it", source=src)
    return ds
