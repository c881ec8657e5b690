"""Keras constraints on the loaded weights: equal to Keras's own results, their invariants, and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from deconv3d_cli import LayerSpec, SpecError
from deconv3d_cli.cli import main
from deconv3d_cli.layer.constraints import apply, apply_to_weights, format_report, normalise

FIX = Path(__file__).resolve().parent / "fixtures_import"
KERAS = np.load(FIX / "constraints.npz")
CASES = json.loads(str(KERAS["index"]))


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_constraint_equals_keras(case):
    w = KERAS[case["weight"]]
    got = apply({"class_name": case["class_name"], "config": case["config"]}, w)
    assert got.dtype == np.float32 and got.shape == w.shape
    np.testing.assert_allclose(got, KERAS[case["id"]], rtol=2e-6, atol=1e-7)


def test_fixture_covers_both_keras_generations_and_every_constraint():
    assert {c["keras"] for c in CASES} == {"2", "3"}
    assert {c["class_name"] for c in CASES} == {"MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm"}
    assert {c["weight"] for c in CASES} == {"kernel", "bias"}


# --------------------------------------------------------------------------- invariants
shapes = st.tuples(*(st.integers(1, 3) for _ in range(3)), st.integers(1, 4), st.integers(1, 4))
axes = st.one_of(
    st.integers(-5, 4),
    st.lists(st.integers(0, 4), min_size=1, max_size=4, unique=True),
)


def draw(shape, seed, scale=2.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float64)


def norms(w, axis):
    axis = tuple(axis) if isinstance(axis, list) else (axis,)
    return np.sqrt((w**2).sum(axis=axis, keepdims=True))


@settings(max_examples=60, deadline=None)
@given(shape=shapes, axis=axes, seed=st.integers(0, 2**16), max_value=st.floats(0.1, 3.0))
def test_max_norm_caps_the_norms_and_keeps_directions(shape, axis, seed, max_value):
    w = draw(shape, seed)
    c = {"class_name": "MaxNorm", "config": {"max_value": max_value, "axis": axis}}
    out = apply(c, w)
    assert np.all(norms(out, axis) <= max_value * (1 + 1e-6))
    ratio = np.where(w != 0, out / np.where(w == 0, 1, w), 1.0)
    # each slice along `axis` is scaled by one non-negative factor (<= 1)
    assert np.all(ratio >= 0) and np.all(ratio <= 1 + 1e-12)
    # a projection, idempotent up to Keras's epsilon: the norm gains 1e-7, so no value moves by more
    np.testing.assert_allclose(apply(c, out), out, rtol=0, atol=1.01e-7)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, axis=axes, seed=st.integers(0, 2**16), lo=st.floats(0.1, 1.0), width=st.floats(0.0, 2.0))
def test_min_max_norm_with_rate_1_brings_norms_into_range(shape, axis, seed, lo, width):
    w = draw(shape, seed)
    c = {"class_name": "MinMaxNorm", "config": {"min_value": lo, "max_value": lo + width, "rate": 1.0, "axis": axis}}
    n, n0 = norms(apply(c, w), axis), norms(w, axis)
    shrink = n0 / (1e-7 + n0)  # Keras's epsilon in the denominator: tiny norms fall just short
    assert np.all(n >= lo * shrink * (1 - 1e-9)) and np.all(n <= (lo + width) * (1 + 1e-6))


@settings(max_examples=40, deadline=None)
@given(shape=shapes, axis=axes, seed=st.integers(0, 2**16))
def test_unit_norm_and_non_neg(shape, axis, seed):
    w = draw(shape, seed)
    n = norms(apply({"class_name": "UnitNorm", "config": {"axis": axis}}, w), axis)
    n0 = norms(w, axis)
    np.testing.assert_allclose(n, n0 / (1e-7 + n0), rtol=1e-12)  # 1, but for Keras's epsilon
    assert np.all(np.abs(n - 1) <= 1.01e-7 / n0)
    nn = apply("non_neg", w)
    assert np.all(nn >= 0) and np.array_equal(nn[w > 0], w[w > 0])


# --------------------------------------------------------------------------- names and refusals
@pytest.mark.parametrize(
    "value, name, config",
    [
        ("maxnorm", "max_norm", {"max_value": 2.0, "axis": 0}),
        ("MinMaxNorm", "min_max_norm", {"min_value": 0.0, "max_value": 1.0, "rate": 1.0, "axis": 0}),
        ({"class_name": "UnitNorm", "config": {"axis": [0, 1, 2]}}, "unit_norm", {"axis": [0, 1, 2]}),
        ({"module": "keras.constraints", "class_name": "NonNeg", "config": {}, "registered_name": None}, "non_neg", {}),
    ],
)
def test_normalise_fills_keras_defaults(value, name, config):
    assert normalise(value) == {"name": name, "config": config}


@pytest.mark.parametrize(
    "value, fragment",
    [
        ({"class_name": "MaxNorm", "config": {"max_value": "big"}}, "number"),
        ({"class_name": "MaxNorm", "config": {"max_value": -1}}, ">= 0"),
        ({"class_name": "MinMaxNorm", "config": {"min_value": 2, "max_value": 1}}, "min_value <= max_value"),
        ({"class_name": "UnitNorm", "config": {"axis": "rows"}}, "axis"),
        ("clip", "valid: "),
    ],
)
def test_bad_constraints_are_refused_by_the_spec(value, fragment):
    with pytest.raises(SpecError) as info:
        LayerSpec.create(filters=1, kernel_size=1, kernel_constraint=value)
    assert info.value.field == "kernel_constraint" and fragment in info.value.message


def test_radial_constraint_and_bad_axes_are_refused_when_applied():
    kernel, bias = np.ones((2, 2, 2, 1, 1)), np.ones(1)
    with pytest.raises(ValueError, match="rank 4"):
        apply_to_weights(kernel, bias, normalise("radial_constraint"), None)
    with pytest.raises(ValueError, match="axis 3 is out of range"):
        apply_to_weights(kernel, bias, None, normalise({"class_name": "MaxNorm", "config": {"axis": 3}}))


# --------------------------------------------------------------------------- on a spec, and reported
def write_spec(folder: Path, kernel, bias, **extra) -> Path:
    spec = LayerSpec.create(filters=kernel.shape[3], kernel_size=kernel.shape[:3], kernel=kernel, bias=bias, **extra)
    return spec.save(folder / "layer.yaml")


def test_loaded_weights_are_constrained_and_the_report_says_what_changed(tmp_path):
    kernel = draw((2, 2, 2, 2, 1), 0, scale=3.0).astype(np.float32)
    bias = np.array([-1.0, 2.0], np.float32)
    path = write_spec(tmp_path, kernel, bias, kernel_constraint={"class_name": "MaxNorm", "config": {"max_value": 1.0}},
                      bias_constraint="non_neg")  # fmt: skip
    spec = LayerSpec.from_yaml(path)
    np.testing.assert_allclose(spec.kernel, apply({"class_name": "MaxNorm", "config": {"max_value": 1.0}}, kernel))
    np.testing.assert_array_equal(spec.bias, [0.0, 2.0])
    report = {e["weight"]: e for e in spec.constraints_applied}
    assert report["kernel"]["changed"] > 0 and report["bias"]["changed"] == 1 and report["bias"]["values"] == 2
    assert report["bias"]["max_abs_change"] == 1.0
    text = format_report(list(spec.constraints_applied))
    assert "kernel max_norm(max_value=1.0, axis=0)" in text and "bias non_neg(): 1 of 2 values changed" in text
    res = run("spec", "validate", path)
    assert res.exit_code == 0 and "constraints applied to the loaded weights" in res.stdout
    np.save(tmp_path / "x.npy", np.ones((3, 3, 3), np.float32))
    res = run("upsample", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--spec", path, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["constraints"] == json.loads(json.dumps(list(spec.constraints_applied)))
    res = run("upsample", tmp_path / "x.npy", "-o", tmp_path / "y2.npy", "--spec", path)
    assert "constraints: kernel max_norm" in res.stderr


def test_constraint_that_cannot_apply_is_a_spec_error(tmp_path):
    path = write_spec(tmp_path, np.ones((1, 1, 1, 1, 1), np.float32), np.zeros(1, np.float32),
                      kernel_constraint="radial_constraint")  # fmt: skip
    res = run("spec", "validate", path)
    assert res.exit_code == 2 and "field 'kernel_constraint'" in res.stderr and "rank 4" in res.stderr


def test_specs_without_weights_or_constraints_are_untouched():
    spec = LayerSpec.create(filters=1, kernel_size=1, kernel_constraint="non_neg")
    assert spec.constrained() is spec
    spec = LayerSpec.create(filters=1, kernel_size=1, kernel=-np.ones((1, 1, 1, 1, 1)), bias=[0.0])
    assert spec.constrained() is spec and not spec.constraints_applied
