"""Conv3DTranspose layers from Keras files, read with h5py, zipfile and json only (no TensorFlow, no Keras).

The files are opened and their configs walked here; keras_weights.py finds each layer's weights.
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
from ..layer.spec import LayerSpec
from . import Candidate, Imported, choose, safe
from .keras_weights import read_weights

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
def walk_config(config: Any, source: str, others: list[tuple[str, str]] | None = None) -> list[KerasLayer]:
    """Every Conv3DTranspose in a model config, a serialised layer, or a bare layer `get_config()`.

    `others`, when given, receives every layer in the model's order as (path, class name), the
    Conv3DTranspose layers included and input layers left out, so a listing can name what it cannot import.
    """
    if not isinstance(config, Mapping):
        raise SpecError(f"a Keras config must be a mapping, got {type(config).__name__}", source=source)
    if "filters" in config and "class_name" not in config:  # a bare get_config()
        layer = KerasLayer((str(config.get("name") or "layer"),), dict(config), None, "")
        if others is not None:
            others.append((layer.name, KIND))
        return [layer]
    out: list[KerasLayer] = []
    _walk_item(config, (), "", {}, out, source, top=True, every=others)
    return out


def _layers_of(item: Mapping[str, Any]) -> list[Any] | None:
    cfg = item.get("config")
    if isinstance(cfg, list):  # very old Keras 2 Sequential: config is the layer list
        return cfg
    if isinstance(cfg, Mapping) and isinstance(cfg.get("layers"), list):
        return cfg["layers"]
    return None


def _walk_item(
    item: Any,
    path: tuple[str, ...],
    v3: str,
    counters: dict[str, int],
    out: list[KerasLayer],
    source: str,
    top: bool,
    every: list[tuple[str, str]] | None = None,
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
        if every is not None:
            every.append(("/".join((*path, name)), class_name))
        return
    layers = _layers_of(item)
    if layers is None:
        if every is not None and not top and class_name != "InputLayer":
            every.append(("/".join((*path, name)), class_name))
        return
    inner_path = path if top else (*path, name)
    inner_v3 = "" if top else here + "/"
    inner_counters: dict[str, int] = {}
    for child in layers:
        _walk_item(child, inner_path, inner_v3, inner_counters, out, source, top=False, every=every)


def _version_of(config: Any) -> str | None:
    if isinstance(config, Mapping):
        v = config.get("keras_version")
        return str(v) if v is not None else None
    return None


# ------------------------------------------------------------------------------------------ sources
@dataclass
class KerasSource:
    description: str
    layers: list[KerasLayer]
    version: str | None
    weights: Any  # an open h5py.File / Group (v3 or legacy), or ("npz", Path), or None
    weights_desc: str | None
    every: list[tuple[str, str]]  # every layer (path, class name) in the model's order, for --list


def _walk(config: Any, source: str) -> tuple[list[KerasLayer], list[tuple[str, str]]]:
    every: list[tuple[str, str]] = []
    return walk_config(config, source, every), every


def _open(path: Path, kind: str, config: Path | None, weights: Path | None, stack: ExitStack) -> KerasSource:
    opener = {"keras-archive": _open_archive, "hdf5": _open_hdf5}.get(kind, _open_config)
    return opener(path, config, weights, stack)


def _open_archive(path: Path, config: Path | None, weights: Path | None, stack: ExitStack) -> KerasSource:
    """A .keras archive: config.json, metadata.json and model.weights.h5 inside one zip."""
    src = str(path)
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
    layers, every = _walk(cfg, src)
    return KerasSource(f"{v} .keras archive", layers, version, h5, "model.weights.h5", every)


def _open_hdf5(path: Path, config: Path | None, weights: Path | None, stack: ExitStack) -> KerasSource:
    """A whole .h5 model (config in its attributes), or save_weights output with a --config."""
    src = str(path)
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
        layers, every = _walk(cfg, src)
        return KerasSource(f"{v} .h5 model", layers, version, group, "model_weights", every)
    if config is None:
        raise SpecError(
            "a weights-only .h5 (save_weights) holds no layer config; give the model's config with "
            "--config FILE (model.to_json(), or the layer's get_config() as JSON/YAML)",
            source=src,
        )
    if weights is not None:
        raise SpecError("--weights is for a config SOURCE; this SOURCE is the weights file", source=src)
    cfg = _config_file(config)
    layers, every = _walk(cfg, str(config))
    return KerasSource(
        "Keras weights-only .h5 with config " + str(config), layers, _version_of(cfg) or version, h5, src, every
    )


def _open_config(path: Path, config: Path | None, weights: Path | None, stack: ExitStack) -> KerasSource:
    """A config file (JSON/YAML), with weights from --weights (.h5 or .npz) or none."""
    src = str(path)
    if config is not None:
        raise SpecError("SOURCE is already a config; give weights with --weights, not --config", source=src)
    cfg = safe.load_text_config(path)
    layers, every = _walk(cfg, src)
    version = _version_of(cfg)
    if weights is None:
        return KerasSource("Keras config", layers, version, None, None, every)
    wkind = safe.sniff(weights)
    if wkind == "hdf5":
        h5 = stack.enter_context(safe.open_h5(str(weights), str(weights)))
        return KerasSource(f"Keras config with weights {weights}", layers, version, h5, str(weights), every)
    if wkind == "zip":
        npz = ("npz", weights)
        return KerasSource(f"Keras config with weights {weights}", layers, version, npz, str(weights), every)
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
    """Every layer of the model in order; those that are not Conv3DTranspose marked not importable."""
    with ExitStack() as stack:
        source = _open(path, kind, None if config is None else Path(config), None, stack)
        convs = iter(source.layers)
        out = []
        for name, class_name in source.every:
            if class_name in CONV_CLASSES:
                out.append(Candidate(name, next(convs).summary()))
            else:
                out.append(Candidate(name, f"{class_name} (not importable: only Conv3DTranspose layers are)", False))
        return source.description, out


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
            kernel, bias = read_weights(source, layer, cfg, src)
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
