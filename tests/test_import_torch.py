"""`deconv3d spec import` from PyTorch ConvTranspose3d state dicts, and the spec's PyTorch padding extension.

The reference is torch's own ConvTranspose3d, computed here. Every per-axis combination torch allows in a
small range (kernel 1..3, stride 1..3, dilation 1..3, padding 0..3, output_padding < max(stride,
dilation), output length >= 1) is saved with torch.save, imported from the file and compared; a subset
also goes through the command line (`spec import` then `upsample`, whole and tiled).
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from deconv3d_cli import LayerSpec, SpecError, importers
from deconv3d_cli.api import run_array
from deconv3d_cli.cli import main
from deconv3d_cli.geometry.axis import EXPLICIT, Axis, axes_for, explicit_output_length

LENGTH = 3


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def axis_combos():
    """(k, s, d, p, op) that torch accepts for an input of LENGTH voxels."""
    out = []
    for k, s, d, p in itertools.product((1, 2, 3), (1, 2, 3), (1, 2, 3), (0, 1, 2, 3)):
        for op in range(max(s, d)):
            if (LENGTH - 1) * s - 2 * p + d * (k - 1) + op + 1 >= 1:
                out.append((k, s, d, p, op))
    return out


COMBOS = axis_combos()
# three different per-axis combinations per layer (axis d, h, w), so every combination is covered
LAYERS = [tuple(COMBOS[(i + j * 37) % len(COMBOS)] for j in range(3)) for i in range(len(COMBOS))][::3]


def torch_layer(axes, cin=2, cout=3, groups=1, bias=True, seed=0):
    torch.manual_seed(seed)
    k, s, d, p, op = (tuple(a[i] for a in axes) for i in range(5))
    return torch.nn.ConvTranspose3d(
        cin, cout, k, stride=s, padding=p, output_padding=op, dilation=d, groups=groups, bias=bias
    ).double()


def options(axes):
    names = ("--stride", "--padding", "--output-padding", "--dilation")
    out = []
    for name, i in zip(names, (1, 3, 4, 2)):
        out += [name, ",".join(str(a[i]) for a in axes)]
    return out


def test_the_enumeration_covers_what_torch_allows():
    assert len(COMBOS) == 240
    covered = {c for layer in LAYERS for c in layer}
    assert covered == set(COMBOS)
    assert any(s > 1 and d > 1 for _, s, d, _, _ in COMBOS)  # Keras refuses these; the extension does not
    assert any(op >= s for _, s, _, _, op in COMBOS)  # op < dilation only


@pytest.mark.parametrize("chunk", range(4))
def test_every_combination_torch_allows_imports_exactly(chunk, tmp_path):
    for i, axes in enumerate(LAYERS[chunk::4]):
        m = torch_layer(axes, seed=i)
        path = tmp_path / f"l{i}.pt"
        torch.save(m.state_dict(), path)
        k, s, d, p, op = (tuple(a[j] for a in axes) for j in range(5))
        result = importers.import_layer(
            path,
            torch_options={"stride": list(s), "padding": list(p), "output_padding": list(op), "dilation": list(d)},
            data_format="channels_first",
        )
        x = torch.randn(2, 2, LENGTH, LENGTH, LENGTH, dtype=torch.float64)
        with torch.no_grad():
            ref = m(x).numpy()
        y = run_array(result.spec, x.numpy(), precision="fp64")
        assert y.shape == ref.shape, axes
        np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-10, err_msg=str(axes))


CLI_CASES = [
    ((2, 2, 1, 1, 1), (3, 1, 2, 0, 1), (1, 3, 1, 0, 2)),  # padding > 0, op on a dilation-only axis
    ((2, 2, 2, 1, 1), (3, 2, 1, 2, 0), (2, 1, 1, 0, 0)),  # stride and dilation together
    ((3, 3, 1, 3, 2), (1, 1, 1, 0, 0), (2, 2, 1, 0, 1)),  # a large crop
    ((2, 2, 1, 0, 1), (3, 1, 1, 0, 0), (4, 3, 1, 0, 2)),  # padding 0: written in Keras's form
]


@pytest.mark.parametrize("axes", CLI_CASES)
@pytest.mark.parametrize("tile", [None, "1,2,3"])
def test_round_trip_through_the_cli(axes, tile, tmp_path):
    m = torch_layer(axes).float()
    torch.save(m.state_dict(), tmp_path / "up.pt")
    res = run("spec", "import", tmp_path / "up.pt", "-o", tmp_path / "up.yaml", "--data-format", "channels_first",
              *options(axes))  # fmt: skip
    assert res.exit_code == 0, res.output
    data = yaml.safe_load((tmp_path / "up.yaml").read_text())
    if all(a[3] == 0 for a in axes):
        assert data["padding"] == "valid" and data["output_padding"] == [a[4] for a in axes]
    else:
        assert data["padding"] == [a[3] for a in axes]
    x = torch.randn(1, 2, 4, 3, 5)
    np.save(tmp_path / "x.npy", x.numpy())
    args = ["upsample", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--spec", tmp_path / "up.yaml", "--json"]
    res = run(*args, *(["--tile", tile] if tile else []))
    assert res.exit_code == 0, res.output
    if tile:
        assert json.loads(res.stdout)["tiles"] > 1
    with torch.no_grad():
        ref = m(x).numpy()
    y = np.load(tmp_path / "y.npy")
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(ref).max())))


def test_sidecar_per_layer_groups_and_activation(tmp_path):
    torch.manual_seed(3)
    net = torch.nn.Sequential(
        torch.nn.Conv3d(2, 4, 1),
        torch.nn.ConvTranspose3d(4, 6, (2, 3, 2), stride=2, padding=1, groups=2),
        torch.nn.ConvTranspose3d(6, 1, 1, bias=False),
    )
    torch.save({"epoch": 3, "state_dict": net.state_dict()}, tmp_path / "net.pt")
    res = run("spec", "import", tmp_path / "net.pt", "--list")
    assert res.exit_code == 0
    for name in ("state_dict.0", "state_dict.1", "state_dict.2"):
        assert name + ":" in res.stdout
    sidecar = tmp_path / "net.yaml"
    sidecar.write_text(
        yaml.safe_dump({"state_dict.1": {"stride": 2, "padding": 1, "groups": 2, "kernel_size": [2, 3, 2]}})
    )
    res = run("spec", "import", tmp_path / "net.pt", "--layer", "1", "--sidecar", sidecar, "--activation", "relu",
              "-o", tmp_path / "up.yaml", "--data-format", "channels_first")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "groups=2" in res.stderr
    x = torch.randn(1, 4, 3, 4, 2)
    with torch.no_grad():
        ref = torch.relu(net[1](x)).numpy()
    y = run_array(LayerSpec.from_yaml(tmp_path / "up.yaml"), x.numpy())
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


def test_missing_hyperparameters_are_the_torch_defaults_and_bias_false_is_kept(tmp_path):
    m = torch.nn.ConvTranspose3d(1, 2, 3, bias=False)
    torch.save(m.state_dict(), tmp_path / "m.pt")
    result = importers.import_layer(tmp_path / "m.pt")
    spec = result.spec
    assert spec.use_bias is False and spec.bias is None and spec.padding == "valid"
    assert spec.strides == (1, 1, 1) and spec.output_padding == (0, 0, 0) and result.layer == ""
    x = torch.randn(1, 1, 3, 4, 2)
    with torch.no_grad():
        ref = m(x)[0].movedim(0, -1).numpy()  # channels_last (D, H, W, F)
    np.testing.assert_allclose(run_array(spec, x[0, 0].numpy()), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "opts, field, fragment",
    [
        ({"stride": 2, "output_padding": 2}, "output_padding", "< stride or < dilation"),
        ({"groups": 3}, "groups", "does not divide"),
        ({"padding": -1}, "padding", ">= 0"),
    ],
)
def test_hyperparameters_torch_refuses_are_refused(opts, field, fragment, tmp_path):
    torch.save(torch.nn.ConvTranspose3d(4, 2, 2).state_dict(), tmp_path / "m.pt")
    with pytest.raises(SpecError) as info:
        importers.import_layer(tmp_path / "m.pt", torch_options=opts)
    assert info.value.field == field and fragment in info.value.message


def test_sidecar_that_contradicts_the_weights_is_refused(tmp_path):
    torch.save(torch.nn.ConvTranspose3d(4, 2, 2).state_dict(), tmp_path / "m.pt")
    for sidecar, field in (
        ({"in_channels": 3}, "in_channels"),
        ({"kernel_size": 3}, "kernel_size"),
        ({"bias": False}, "bias"),
        ({"padding": "same"}, "padding"),
        ({"padding_mode": "reflect"}, "padding_mode"),
        ({"strides": 2}, "strides"),
    ):
        (tmp_path / "s.json").write_text(json.dumps(sidecar))
        with pytest.raises(SpecError) as info:
            importers.import_layer(tmp_path / "m.pt", sidecar=tmp_path / "s.json")
        assert info.value.field == field, (sidecar, info.value)


# --------------------------------------------------------------------------- the spec's PyTorch padding
def test_explicit_padding_geometry_matches_torch_formula():
    for k, s, d, p, op in COMBOS:
        ax = Axis(LENGTH, k, s, d, EXPLICIT, op, pad=p)
        assert (
            ax.out == (LENGTH - 1) * s - 2 * p + d * (k - 1) + op + 1 == explicit_output_length(LENGTH, k, s, p, op, d)
        )
        assert ax.crop == p
    a = axes_for((5, 6, 7), (3, 3, 3), (2, 2, 2), (1, 1, 1), [1, 0, 2], None)
    assert [ax.padding for ax in a] == [EXPLICIT] * 3 and [ax.crop for ax in a] == [1, 0, 2]
    assert [ax.out for ax in a] == [9, 13, 11]


def test_spec_padding_extension_rules():
    spec = LayerSpec.create(filters=1, kernel_size=2, strides=2, dilation_rate=2, padding=[1, 0, 1], output_padding=1)
    assert spec.explicit_padding and spec.to_config()["padding"] == [1, 0, 1]
    assert "padding=[1, 0, 1] (torch)" in spec.describe()
    with pytest.raises(SpecError, match="smaller than the stride or the dilation"):
        LayerSpec.create(filters=1, kernel_size=2, strides=2, padding=[0, 0, 0], output_padding=2)
    with pytest.raises(SpecError, match="'valid' or 'same'"):
        LayerSpec.create(filters=1, kernel_size=2, padding=[1, 1])
    spec = LayerSpec.create(filters=1, kernel_size=2, padding=[2, 0, 0])
    with pytest.raises(SpecError) as info:
        spec.output_shape((2, 4, 4, 1))  # (2 - 1) * 1 - 4 + 2 = -1
    assert info.value.field == "padding" and "PyTorch refuses that too" in info.value.message
    # and it round-trips through YAML
    spec = LayerSpec.create(filters=1, kernel_size=2, padding=[1, 2, 3], kernel=np.ones((2, 2, 2, 1, 1)), bias=[0.0])
    assert spec.kernel is not None


def test_round_trip_of_explicit_padding_through_save(tmp_path):
    spec = LayerSpec.create(
        filters=2, kernel_size=3, strides=(2, 1, 3), padding=[1, 2, 0], output_padding=(1, 0, 2),
        kernel=np.ones((3, 3, 3, 2, 1), np.float32), bias=np.zeros(2, np.float32),
    )  # fmt: skip
    spec.save(tmp_path / "s.yaml")
    again = LayerSpec.from_yaml(tmp_path / "s.yaml")
    assert again.padding == (1, 2, 0) and again.output_padding == (1, 0, 2)
    assert again.fingerprint() == spec.fingerprint()
    res = run("spec", "validate", tmp_path / "s.yaml")
    assert res.exit_code == 0 and "(torch)" in res.stdout
