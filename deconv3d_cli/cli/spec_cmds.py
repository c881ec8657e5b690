"""`deconv3d spec`: check a spec, import a layer from a Keras or PyTorch file, or make one from initializers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from . import params
from .main import CONTEXT, emit_json, main


@main.group(context_settings=CONTEXT)
def spec() -> None:
    """Check, import and create layer specs."""


@spec.command("validate", context_settings=CONTEXT)
@click.argument("spec_path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the normalised config as JSON.")
@params.debug_option
def spec_validate(spec_path: Path, as_json: bool) -> None:
    """Check SPEC (YAML, or Keras's serialised form) and its weights; exit 2 if invalid."""
    from ..layer.spec import LayerSpec

    layer = LayerSpec.from_yaml(spec_path)
    if as_json:
        config = layer.to_config()
        config["in_channels"] = layer.in_channels
        config["weights_loaded"] = layer.kernel is not None
        emit_json(config, 0)
    else:
        click.echo(f"{spec_path}: ok: {layer.describe()}")
    if layer.constraints_applied:
        from ..layer.constraints import format_report

        click.echo(f"  constraints applied to the loaded weights: {format_report(list(layer.constraints_applied))}")


@spec.command("import", context_settings=CONTEXT)
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="SPEC.yaml to write (its .npz goes beside it).")
@click.option("--layer", help="Which layer (name, or path such as sub/up for nested models; torch: the key prefix).")
@click.option("--list", "list_only", is_flag=True, help="List every layer, marking those that can be imported; exit.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Keras: config for a weights-only .h5.")
@click.option(
    "--weights", "weights_path", type=click.Path(path_type=Path), help="Keras: weights (.h5/.npz) for a config."
)
@click.option(
    "--keras2-dilation",
    type=click.Choice(["keep", "drop"], case_sensitive=False),
    default="keep",
    show_default=True,
    help="A tf.keras 2 layer's dilation_rate (which tf.keras 2 ignored): keep it (applied) or drop it.",
)
@click.option("--sidecar", type=click.Path(path_type=Path), help="PyTorch: YAML/JSON of ConvTranspose3d arguments.")
@click.option("--stride", callback=params.triple, help="PyTorch: stride (S or D,H,W).")
@click.option("--padding", "torch_padding", callback=params.triple, help="PyTorch: padding (P or D,H,W).")
@click.option("--output-padding", callback=params.triple, help="PyTorch: output_padding.")
@click.option("--dilation", callback=params.triple, help="PyTorch: dilation.")
@click.option("--groups", type=click.IntRange(min=1), help="PyTorch: groups.")
@click.option("--activation", help="PyTorch: activation to apply after the layer (default linear).")
@click.option(
    "--data-format",
    type=click.Choice(["channels_last", "channels_first"], case_sensitive=False),
    help="PyTorch: the layout of the volumes the spec will read (default channels_last).",
)
@click.option("--overwrite", "--force", "-f", "overwrite", is_flag=True, help="Replace an existing SPEC.yaml / .npz.")
@click.option("-q", "--quiet", is_flag=True, help="Print errors and warnings only.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout.")
@params.debug_option
def spec_import(source: Path, output: Path | None, list_only: bool, as_json: bool, quiet: bool, **p: Any) -> None:
    """Import a Conv3DTranspose layer from a Keras or PyTorch file into SPEC.yaml + SPEC.npz.

    \b
    SOURCE: a Keras .keras archive, a Keras .h5 model (or a weights-only .h5 with --config), a Keras
    config as JSON/YAML (model.to_json() or layer.get_config(); weights with --weights), or a PyTorch
    ConvTranspose3d state dict (.pt; stride, padding, ... from options or --sidecar).
    \b
    Examples:
      deconv3d spec import model.keras --list
      deconv3d spec import model.keras --layer decoder/up1 -o up1.yaml
      deconv3d spec import up.pt --stride 2 --padding 1 --output-padding 1 -o up.yaml
    """
    from .. import importers

    if list_only:
        _list_layers(source, p["config_path"], as_json)
        return
    if output is None:
        raise click.UsageError("give the spec to write with -o SPEC.yaml (or --list to see the layers)")
    names = ("stride", "torch_padding", "output_padding", "dilation", "groups")
    torch_options = {name.replace("torch_", ""): p[name] for name in names}
    try:
        result = importers.import_layer(
            source,
            p["layer"],
            config=p["config_path"],
            weights=p["weights_path"],
            keras2_dilation=p["keras2_dilation"].lower(),
            torch_options=torch_options,
            sidecar=p["sidecar"],
            activation=p["activation"],
            data_format=None if p["data_format"] is None else p["data_format"].lower(),
        )
    except importers.LayerChoiceError as exc:
        click.echo(f"{source}: layers that can be imported:", err=True)
        for c in exc.candidates:
            click.echo(f"  {c.line()}", err=True)
        raise
    for warning in result.warnings:
        click.echo(f"deconv3d: warning: {warning}", err=True)
    written = importers.save_spec(result.spec, output, overwrite=p["overwrite"], source=source)
    if as_json:
        emit_json({**result.as_json(), "written": [str(w) for w in written]}, 0)
        return
    if quiet:
        return
    click.echo(f"{source}: imported layer {result.layer or '(top level)'} ({result.format})", err=True)
    click.echo(f"  {result.spec.describe()}", err=True)
    for note in result.notes:
        click.echo(f"  note: {note}", err=True)
    click.echo(f"  wrote {', '.join(str(w) for w in written)}", err=True)


def _list_layers(source: Path, config: Path | None, as_json: bool) -> None:
    from .. import importers

    kind, layers = importers.list_layers(source, config=config)
    if as_json:
        emit_json({"source": str(source), "format": kind, "layers": [c.as_json() for c in layers]}, 0)
        return
    n = sum(c.importable for c in layers)
    click.echo(f"{source}: {kind}, {len(layers)} layer(s), {n} importable (marked +)")
    for c in layers:
        click.echo(f"  {'+' if c.importable else '-'} {c.line()}")
    if n < len(layers):
        click.echo("  (running a whole model is not supported yet: import its Conv3DTranspose layers one by one)")


@spec.command("init", context_settings=CONTEXT)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="SPEC.yaml to write.")
@click.option("--filters", type=click.IntRange(min=1), required=True, help="Output channels.")
@click.option("--kernel-size", callback=params.triple, required=True, help="K or D,H,W.")
@click.option("--strides", callback=params.triple, default="1", show_default=True, help="S or D,H,W.")
@click.option("--padding", default="valid", show_default=True, help="valid, same, or P,P,P (PyTorch's padding).")
@click.option("--output-padding", callback=params.triple, help="OP or D,H,W (default: none).")
@click.option("--dilation-rate", callback=params.triple, default="1", show_default=True, help="D or D,H,W.")
@click.option(
    "--data-format",
    type=click.Choice(["channels_last", "channels_first"], case_sensitive=False),
    default="channels_last",
    show_default=True,
)
@click.option("--activation", default="linear", show_default=True, help="Activation name.")
@click.option("--use-bias/--no-use-bias", default=True, show_default=True)
@click.option("--in-channels", type=click.IntRange(min=1), required=True, help="Input channels of the kernel.")
@click.option("--seed", type=int, help="Seed of the draw (the bias uses seed + 1).")
@click.option(
    "--kernel-initializer",
    callback=params.named,
    default="glorot_uniform",
    show_default=True,
    help="NAME, NAME:key=value,... (e.g. variance_scaling:scale=2,mode=fan_out) or a YAML mapping.",
)
@click.option("--bias-initializer", callback=params.named, default="zeros", show_default=True)
@click.option("--kernel-regularizer", callback=params.named, help="l1, l2, l1_l2, orthogonal_regularizer[:...].")
@click.option("--bias-regularizer", callback=params.named)
@click.option("--activity-regularizer", callback=params.named)
@click.option("--kernel-constraint", callback=params.named, help="max_norm, min_max_norm, non_neg, unit_norm[:...].")
@click.option("--bias-constraint", callback=params.named)
@click.option("--name", help="Layer name.")
@click.option("--no-weights", is_flag=True, help="Write no .npz: draw the weights at run time (from --seed).")
@click.option("--overwrite", "--force", "-f", "overwrite", is_flag=True, help="Replace an existing SPEC.yaml / .npz.")
@click.option("-q", "--quiet", is_flag=True, help="Print errors only.")
@click.option("--json", "as_json", is_flag=True, help="Print the spec's config and weight statistics as JSON.")
@params.debug_option
def spec_init(
    output: Path,
    padding: str,
    in_channels: int,
    no_weights: bool,
    overwrite: bool,
    quiet: bool,
    as_json: bool,
    **kw: Any,
) -> None:
    """Write a spec whose weights come from Keras initializers (no trained model needed).

    \b
    Example:
      deconv3d spec init --filters 8 --kernel-size 3 --strides 2 --padding same --in-channels 1 \\
          --kernel-initializer he_normal --seed 0 -o layer.yaml
    """
    from .. import importers
    from ..layer.spec import LayerSpec

    padding_value: Any = padding
    if "," in padding:  # P,P,P: PyTorch's padding, the spec's [p_d, p_h, p_w] extension
        padding_value = params.triple(None, None, padding)  # type: ignore[arg-type]
    layer = LayerSpec.create(source="spec init", padding=padding_value, in_channels=in_channels, **kw)
    stats = {}
    if not no_weights:
        kernel, bias = layer.materialise(in_channels)
        layer = layer.with_weights(kernel, bias)
        for which, arr in (("kernel", kernel), ("bias", bias)):
            if arr is not None:
                a = arr.astype("float64")
                stats[which] = {
                    "shape": list(arr.shape),
                    "mean": float(a.mean()),
                    "std": float(a.std()),
                    "min": float(a.min()),
                    "max": float(a.max()),
                }
    written = importers.save_spec(layer, output, overwrite=overwrite)
    if as_json:
        config = layer.to_config()
        config.update(in_channels=in_channels, seed=layer.seed)
        emit_json({"config": config, "weights": stats, "written": [str(p) for p in written]}, 0)
        return
    if quiet:
        return
    click.echo(f"{output}: {layer.describe()}", err=True)
    for which, st in stats.items():
        click.echo(
            f"  {which} {tuple(st['shape'])}: mean {st['mean']:.4g}, std {st['std']:.4g}, "
            f"range [{st['min']:.4g}, {st['max']:.4g}]",
            err=True,
        )
    click.echo(f"  wrote {', '.join(str(p) for p in written)}", err=True)
