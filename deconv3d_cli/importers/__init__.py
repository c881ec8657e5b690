"""Bring your own model: a Conv3DTranspose layer from a Keras or PyTorch file, as a LayerSpec.

Sources (recognised by content, not by name):

- a Keras 3 (or tf.keras >= 2.13) `.keras` archive: `config.json` + `model.weights.h5`;
- a Keras 2 / tf.keras `.h5` model (`model.save("m.h5")`, Keras 3's legacy `.h5` too), or a weights-only
  `.h5` (`save_weights`, either generation's layout) together with `config=` (the model's `to_json()`);
- a Keras config as JSON or YAML: a model's `to_json()`, a layer's `get_config()` or its serialised
  `{class_name, config}` form, optionally with `weights=` (`.h5` or `.npz`);
- a PyTorch `ConvTranspose3d` state dict (`.pt`/`.pth`), read with `torch.load(weights_only=True)`; the
  hyperparameters that a state dict does not hold come from options or a sidecar YAML/JSON.

Nothing is executed (no pickle beyond torch's weights-only loader, no YAML tags, no Keras code), nothing
is extracted to disk, and files are only ever written by `save_spec`, to the target it is given.

This part may import `layer` (the spec it produces), `errors` and, lazily, torch for `.pt` files; never
the engine, io, run or the CLI.
"""

from __future__ import annotations

import difflib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SpecError
from ..layer import filekind
from ..layer.spec import LayerSpec
from . import safe


@dataclass(frozen=True)
class Candidate:
    """A layer of a model file: its name (a path for nested models), a one-line summary, and whether
    `spec import` can import it (a Conv3DTranspose) or only lists it (`--list` shows every layer, so a
    model's other layers are named rather than silently left out)."""

    name: str
    summary: str
    importable: bool = True

    def line(self) -> str:
        return f"{self.name or '(top level)'}: {self.summary}"

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary, "importable": self.importable}


@dataclass
class Imported:
    spec: LayerSpec
    source: str
    format: str  # a description of the source, e.g. "Keras 3 .keras archive"
    layer: str
    candidates: list[Candidate]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "format": self.format,
            "layer": self.layer,
            "candidates": [{"name": c.name, "summary": c.summary} for c in self.candidates],
            "warnings": list(self.warnings),
            "notes": list(self.notes),
            "config": self.spec.to_config(),
            "in_channels": self.spec.in_channels,
            "weights_loaded": self.spec.kernel is not None,
        }


class LayerChoiceError(SpecError):
    """--layer is missing (several candidates) or names no candidate; carries the candidates to list."""

    def __init__(self, message: str, candidates: list[Candidate], source: str) -> None:
        self.candidates = candidates
        super().__init__(message, source=source, param="layer")


def choose(candidates: list[Candidate], wanted: str | None, source: str, kind: str) -> Candidate:
    """The candidate named `wanted` (full path, or a unique last component), or the only one."""
    if not candidates:
        raise SpecError(f"holds no {kind} layer", source=source)
    if wanted is None:
        if len(candidates) == 1:
            return candidates[0]
        raise LayerChoiceError(
            f"holds {len(candidates)} {kind} layers; choose one with --layer NAME "
            f"({', '.join(c.name for c in candidates)})",
            candidates,
            source,
        )
    for c in candidates:
        if c.name == wanted:
            return c
    tails = [c for c in candidates if _tail(c.name) == wanted]
    if len(tails) == 1:
        return tails[0]
    names = [c.name for c in candidates]
    if len(tails) > 1:
        raise LayerChoiceError(
            f"{wanted!r} matches {len(tails)} layers ({', '.join(c.name for c in tails)}); give the full path",
            candidates,
            source,
        )
    close = difflib.get_close_matches(wanted, names + [_tail(n) for n in names], n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise LayerChoiceError(
        f"no {kind} layer named {wanted!r}{hint} (candidates: {', '.join(names)})", candidates, source
    )


def _tail(name: str) -> str:
    return name.replace(".", "/").rsplit("/", 1)[-1]


def detect(path: os.PathLike | str) -> str:
    """'keras-archive', 'torch', 'hdf5', 'config', 'npz' or raise SpecError saying what the file is."""
    path = Path(path)
    src = str(path)
    if not path.exists():
        raise SpecError("file not found", source=src)
    kind = safe.sniff(path)
    if kind == "directory":
        raise SpecError(
            "is a directory (a TensorFlow SavedModel?); save the model with model.save('model.keras') "
            "or model.save('model.h5')",
            source=src,
        )
    if kind == "hdf5":
        return "hdf5"
    if kind == "pickle":
        return "torch"  # torch's legacy format; torch.load(weights_only=True) refuses anything but tensors
    if kind == "text":
        return "config"
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as archive:
                names = safe.check_members(archive, src)
                safe.check_expansion(archive, src, path.stat().st_size)
        except zipfile.BadZipFile as exc:
            raise SpecError(f"not a readable zip archive: {exc}", source=src) from None
        zkind = filekind.zip_kind(names)
        if zkind != "zip":
            return zkind
        raise SpecError(
            "a zip archive that is neither a Keras .keras archive (config.json + model.weights.h5) nor a PyTorch file",
            source=src,
        )
    raise SpecError(
        "not a recognised model file: expected a Keras .keras/.h5 file, a Keras config (JSON/YAML) "
        "or a PyTorch state dict (.pt)",
        source=src,
    )


def list_layers(source: os.PathLike | str, **options: Any) -> tuple[str, list[Candidate]]:
    """(format description, every layer in order) without reading any weights.

    Keras: every layer of the model (nested ones by path; input layers left out, as Keras's summary of
    a Sequential does), those that cannot be imported marked `importable=False`.
    """
    kind = detect(source)
    if kind == "torch":
        from . import pytorch

        return pytorch.list_layers(Path(source))
    _refuse_npz(kind, source)
    from . import keras

    with safe.archive_errors(str(source)):
        return keras.list_layers(Path(source), kind, config=options.get("config"))


def _refuse_torch_settings(
    source: Path, torch_options: Mapping[str, Any] | None, sidecar: Any, activation: Any, data_format: Any
) -> None:
    """A Keras source carries its own hyperparameters: the PyTorch-only settings are refused, naming the flag."""
    given = {k: v for k, v in (torch_options or {}).items() if v is not None}
    if given or sidecar is not None:
        flag = "--sidecar" if sidecar is not None else "--" + next(iter(given)).replace("_", "-")
        raise SpecError(
            f"{flag} is for PyTorch sources; a Keras file carries its own hyperparameters", source=str(source)
        )
    if activation is not None or data_format is not None:
        flag = "--activation" if activation is not None else "--data-format"
        raise SpecError(f"{flag} is for PyTorch sources; a Keras layer carries its own", source=str(source))


def import_layer(
    source: os.PathLike | str,
    layer: str | None = None,
    *,
    config: os.PathLike | str | None = None,
    weights: os.PathLike | str | None = None,
    keras2_dilation: str = "keep",
    torch_options: Mapping[str, Any] | None = None,
    sidecar: os.PathLike | str | None = None,
    activation: str | None = None,
    data_format: str | None = None,
) -> Imported:
    """Import one Conv3DTranspose (Keras) or ConvTranspose3d (PyTorch) layer from `source`.

    Keras: `config` supplies the model config for a weights-only `.h5`; `weights` the weights for a
    config-only source; `keras2_dilation` ('keep' or 'drop') decides what happens to a dilation_rate that
    a tf.keras 2 layer carried but never applied. PyTorch: `torch_options` (stride, padding,
    output_padding, dilation, groups) override the `sidecar` file; `activation` and `data_format` set
    the spec's own (a ConvTranspose3d has no activation).
    """
    source = Path(source)
    kind = detect(source)
    if kind == "torch":
        for name, value in (("--config", config), ("--weights", weights)):
            if value is not None:
                raise SpecError(
                    f"{name} is for Keras sources; a PyTorch state dict holds its weights", source=str(source)
                )
        from . import pytorch

        return pytorch.import_layer(
            source,
            layer,
            options=torch_options or {},
            sidecar=None if sidecar is None else Path(sidecar),
            activation=activation,
            data_format=data_format,
        )
    _refuse_npz(kind, source)
    _refuse_torch_settings(source, torch_options, sidecar, activation, data_format)
    if keras2_dilation not in ("keep", "drop"):
        raise SpecError(f"{keras2_dilation!r}; use 'keep' or 'drop'", param="keras2_dilation")
    from . import keras

    with safe.archive_errors(str(source)):
        return keras.import_layer(
            source,
            kind,
            layer,
            config=None if config is None else Path(config),
            weights=None if weights is None else Path(weights),
            keras2_dilation=keras2_dilation,
        )


def _refuse_npz(kind: str, source: Any) -> None:
    if kind == "npz":
        raise SpecError(
            "an .npz holds weights only; name it as `weights:` in a spec, or give a Keras config as SOURCE "
            "with --weights FILE.npz",
            source=str(source),
        )


def save_spec(spec: LayerSpec, target: os.PathLike | str, *, overwrite: bool = False, source: Any = None) -> list[Path]:
    """Write `target` (YAML) and its `.npz` (when the spec has weights) atomically; return the paths.

    Both are written into a private temporary folder beside the target and renamed into place, so an
    error leaves nothing behind; existing files are replaced only with `overwrite`.
    """
    target = Path(target)
    if target.suffix.lower() == ".npz":
        raise SpecError("the spec is YAML; its weights go beside it as .npz: use e.g. -o layer.yaml", param="output")
    outputs = [target] + ([target.with_suffix(".npz")] if spec.kernel is not None else [])
    if source is not None:
        src = Path(source).resolve()
        for out in outputs:
            if out.resolve() == src:
                raise SpecError("would overwrite the source file; choose another output", source=str(out))
    if not overwrite:
        for out in outputs:
            if out.exists() or out.is_symlink():
                raise SpecError("exists; use --overwrite to replace it", source=str(out))
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise SpecError("the output folder does not exist", source=str(parent))
    tmp = Path(tempfile.mkdtemp(prefix=".partial-spec-", dir=parent))
    try:
        spec.save(tmp / target.name)
        for out in reversed(outputs):  # weights first, so a spec file never names missing weights
            os.replace(tmp / out.name, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return outputs


__all__ = [
    "Candidate",
    "Imported",
    "LayerChoiceError",
    "choose",
    "detect",
    "import_layer",
    "list_layers",
    "save_spec",
]
