"""`deconv3d spec init`: specs whose weights come from Keras initializers, through the command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from deconv3d_cli import LayerSpec
from deconv3d_cli.cli import main
from deconv3d_cli.layer.initializers import NAMES
from deconv3d_cli.layer.named import parse_option


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


BASE = ["spec", "init", "--filters", "8", "--kernel-size", "3", "--strides", "2", "--padding", "same"]


def test_init_writes_a_spec_whose_weights_follow_the_initializer(tmp_path):
    out = tmp_path / "layer.yaml"
    res = run(*BASE, "--in-channels", "4", "--kernel-initializer", "he_uniform", "--seed", "3", "-o", out, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["weights"]["kernel"]["shape"] == [3, 3, 3, 8, 4] and report["config"]["in_channels"] == 4
    spec = LayerSpec.from_yaml(out)
    limit = math.sqrt(6.0 / (8 * 27))  # Keras's fan_in for the (kd, kh, kw, filters, in) layout
    assert np.abs(spec.kernel).max() <= limit * (1 + 1e-6) and np.abs(spec.kernel).max() > 0.9 * limit
    np.testing.assert_array_equal(spec.bias, np.zeros(8))
    # the same seed draws the same weights; the spec runs
    res = run(
        *BASE, "--in-channels", "4", "--kernel-initializer", "he_uniform", "--seed", "3", "-o", tmp_path / "b.yaml"
    )
    assert res.exit_code == 0 and "wrote" in res.stderr
    np.testing.assert_array_equal(LayerSpec.from_yaml(tmp_path / "b.yaml").kernel, spec.kernel)
    np.save(tmp_path / "x.npy", np.ones((3, 4, 5, 4), np.float32))
    res = run("upsample", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--spec", out)
    assert res.exit_code == 0 and np.load(tmp_path / "y.npy").shape == (6, 8, 10, 8)


@pytest.mark.parametrize("name", sorted(set(NAMES) - {"identity"}))
def test_every_keras_initializer_name_works(name, tmp_path):
    bias = "zeros" if name == "orthogonal" else name  # Keras's orthogonal needs 2-D weights; a bias is 1-D
    res = run("spec", "init", "--filters", "2", "--kernel-size", "2", "--in-channels", "3", "--seed", "0",
              "--kernel-initializer", name, "--bias-initializer", bias, "-o", tmp_path / "s.yaml")  # fmt: skip
    assert res.exit_code == 0, res.output
    spec = LayerSpec.from_yaml(tmp_path / "s.yaml")
    assert spec.kernel_initializer["name"] == name and spec.kernel.shape == (2, 2, 2, 2, 3)


def test_identity_and_a_1d_orthogonal_are_refused_with_the_reason(tmp_path):
    res = run(*BASE, "--in-channels", "1", "--kernel-initializer", "identity", "-o", tmp_path / "s.yaml")
    assert res.exit_code == 2 and "2-D" in res.stderr and "field 'kernel_initializer'" in res.stderr
    res = run(*BASE, "--in-channels", "1", "--bias-initializer", "orthogonal", "-o", tmp_path / "s.yaml")
    assert res.exit_code == 2 and "2-D" in res.stderr and "field 'bias_initializer'" in res.stderr
    assert not list(tmp_path.iterdir())


def test_initializer_arguments_regularizers_constraints_and_torch_padding(tmp_path):
    out = tmp_path / "s.yaml"
    res = run(
        "spec", "init", "--filters", "4", "--kernel-size", "2,3,2", "--strides", "2", "--padding", "1,0,1",
        "--output-padding", "1", "--in-channels", "2", "--seed", "1",
        "--kernel-initializer", "variance_scaling:scale=3,mode=fan_out,distribution=uniform",
        "--kernel-regularizer", "l2:l2=0.5", "--activity-regularizer", "l1",
        "--kernel-constraint", "max_norm:max_value=0.5,axis=[0,1,2]", "--bias-constraint", "non_neg",
        "--bias-initializer", "{class_name: RandomNormal, config: {mean: 1.0, stddev: 0.1}}",
        "--activation", "relu", "-o", out,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    data = yaml.safe_load(out.read_text())
    assert data["padding"] == [1, 0, 1] and data["output_padding"] == [1, 1, 1]
    assert data["kernel_regularizer"] == {"name": "l2", "config": {"l2": 0.5}}
    assert data["kernel_constraint"]["config"] == {"max_value": 0.5, "axis": [0, 1, 2]}
    raw = np.load(tmp_path / "s.npz")["kernel"]
    limit = math.sqrt(3 * 3.0 / (2 * 12))  # fan_out = in * kd*kh*kw
    assert np.abs(raw).max() <= limit * (1 + 1e-6)
    spec = LayerSpec.from_yaml(out)  # the constraint applies when the weights are loaded
    assert np.sqrt((spec.kernel.astype(np.float64) ** 2).sum(axis=(0, 1, 2))).max() <= 0.5 * (1 + 1e-6)


def test_no_weights_writes_only_the_spec(tmp_path):
    res = run(*BASE, "--in-channels", "2", "--seed", "9", "--no-weights", "-o", tmp_path / "s.yaml")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]
    spec = LayerSpec.from_yaml(tmp_path / "s.yaml")
    assert spec.kernel is None and spec.seed == 9 and spec.in_channels == 2


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--kernel-size", "3", "--padding", "causal"], "causal"),
        (["--kernel-size", "3,3"], "three"),
        (["--kernel-size", "3", "--strides", "2", "--dilation-rate", "2"], "dilation"),
        (["--kernel-size", "3", "--kernel-initializer", "xavier"], "valid: "),
        (["--kernel-size", "3", "--kernel-initializer", "he_normal:seed=[1"], "YAML mapping"),
    ],
)
def test_bad_arguments_exit_2_and_write_nothing(args, fragment, tmp_path):
    res = run("spec", "init", "--filters", "1", "--in-channels", "1", "-o", tmp_path / "s.yaml", *args)
    assert res.exit_code == 2 and fragment in res.output, res.output
    assert not list(tmp_path.iterdir())


def test_parse_option_forms():
    assert parse_option("he_normal") == "he_normal"
    assert parse_option("max_norm:max_value=3,axis=[0,1]") == {
        "class_name": "max_norm",
        "config": {"max_value": 3, "axis": [0, 1]},
    }
    assert parse_option("{class_name: L2, config: {l2: 0.1}}") == {"class_name": "L2", "config": {"l2": 0.1}}
