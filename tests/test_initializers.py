"""Keras initializers on the transposed kernel layout (kd, kh, kw, filters, in): fans, bounds, variances."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deconv3d_cli import LayerSpec, SpecError
from deconv3d_cli.layer.initializers import NAMES, compute_fans, make, normalise

TRUNC_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2]

kernel_shapes = st.tuples(*(st.integers(1, 5) for _ in range(3)), st.integers(1, 16), st.integers(1, 16))


def keras_fans(shape):
    """Keras's _compute_fans, transcribed."""
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = 1
    for dim in shape[:-2]:
        receptive *= dim
    return shape[-2] * receptive, shape[-1] * receptive


def variance_for(name, shape, scale=None, mode=None):
    fan_in, fan_out = keras_fans(shape)
    family = {
        "glorot_uniform": (1.0, "fan_avg"),
        "glorot_normal": (1.0, "fan_avg"),
        "he_uniform": (2.0, "fan_in"),
        "he_normal": (2.0, "fan_in"),
        "lecun_uniform": (1.0, "fan_in"),
        "lecun_normal": (1.0, "fan_in"),
    }
    sc, md = family.get(name, (scale, mode))
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[md]
    return sc / max(1.0, fan)


# --------------------------------------------------------------------------- fans
@settings(max_examples=60, deadline=None)
@given(shape=kernel_shapes)
def test_fans_follow_keras_on_the_transposed_layout(shape):
    kd, kh, kw, filters, cin = shape
    assert compute_fans(shape) == keras_fans(shape)
    # The transposed kernel's "input depth" axis holds the filters: Keras's fan_in is filters * receptive.
    assert compute_fans(shape) == (filters * kd * kh * kw, cin * kd * kh * kw)


def test_fans_of_small_ranks():
    assert compute_fans(()) == (1, 1)
    assert compute_fans((7,)) == (7, 7)
    assert compute_fans((3, 5)) == (3, 5)


# --------------------------------------------------------------------------- uniform
UNIFORM = ["glorot_uniform", "he_uniform", "lecun_uniform"]


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(UNIFORM), shape=kernel_shapes, seed=st.integers(0, 2**31 - 1))
def test_uniform_family_stays_within_the_keras_limit(name, shape, seed):
    limit = math.sqrt(3.0 * variance_for(name, shape))
    w = make(name, shape, seed)
    assert w.shape == shape and w.dtype == np.float32
    assert np.abs(w).max() <= limit * (1 + 1e-6)


@pytest.mark.parametrize("name", UNIFORM)
def test_uniform_family_reaches_the_limit_on_large_draws(name):
    shape = (3, 3, 3, 48, 40)
    fan_in, fan_out = 48 * 27, 40 * 27
    limit = {
        "glorot_uniform": math.sqrt(6.0 / (fan_in + fan_out)),
        "he_uniform": math.sqrt(6.0 / fan_in),
        "lecun_uniform": math.sqrt(3.0 / fan_in),
    }[name]
    w = make(name, shape, seed=0).astype(np.float64)
    assert np.abs(w).max() <= limit * (1 + 1e-6)
    assert w.max() > 0.999 * limit and w.min() < -0.999 * limit
    assert abs(w.mean()) < 0.01 * limit
    assert w.var() == pytest.approx(limit**2 / 3, rel=0.03)


def test_random_uniform_bounds_and_defaults():
    w = make("random_uniform", (4, 4, 4, 16, 16), seed=1)
    assert w.min() >= -0.05 and w.max() <= 0.05 and w.max() > 0.0499 and w.min() < -0.0499
    w = make({"class_name": "RandomUniform", "config": {"minval": 2.0, "maxval": 3.0}}, (4, 4, 4, 16, 16), seed=1)
    assert w.min() >= 2.0 and w.max() <= 3.0 and w.min() < 2.001 and w.max() > 2.999
    assert make("uniform", (2, 2), seed=3).max() <= 0.05  # Keras's alias


@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg"])
def test_variance_scaling_uniform_uses_the_chosen_fan(mode):
    shape = (3, 3, 3, 24, 64)
    cfg = {"class_name": "VarianceScaling", "config": {"scale": 3.0, "mode": mode, "distribution": "uniform"}}
    limit = math.sqrt(3.0 * variance_for(None, shape, 3.0, mode))
    w = make(cfg, shape, seed=4)
    assert np.abs(w).max() <= limit * (1 + 1e-6)
    assert np.abs(w).max() > 0.999 * limit


# --------------------------------------------------------------------------- normal families
NORMAL = ["glorot_normal", "he_normal", "lecun_normal"]


@pytest.mark.parametrize("name", NORMAL)
@pytest.mark.parametrize("seed", [0, 1])
def test_truncated_normal_family_variance_and_truncation(name, seed):
    shape = (3, 3, 3, 40, 48)  # 51840 draws: the sample variance is within ~1% (3 sigma < 3%)
    var = variance_for(name, shape)
    w = make(name, shape, seed).astype(np.float64)
    std = math.sqrt(var) / TRUNC_STD  # Keras widens the normal so that the truncated draw keeps `var`
    assert np.abs(w).max() <= 2 * std * (1 + 1e-6)
    assert np.abs(w).max() > 1.99 * std  # truncated at 2 std, not narrower
    assert w.var() == pytest.approx(var, rel=0.03)
    assert abs(w.mean()) < 0.02 * math.sqrt(var)


@pytest.mark.parametrize("mode", ["fan_in", "fan_out", "fan_avg"])
@pytest.mark.parametrize("distribution", ["truncated_normal", "normal", "untruncated_normal"])
def test_variance_scaling_normal_distributions(mode, distribution):
    shape = (3, 3, 3, 32, 56)
    cfg = {"class_name": "VarianceScaling", "config": {"scale": 0.5, "mode": mode, "distribution": distribution}}
    var = variance_for(None, shape, 0.5, mode)
    w = make(cfg, shape, seed=9).astype(np.float64)
    assert w.var() == pytest.approx(var, rel=0.03)
    peak = np.abs(w).max() / math.sqrt(var)
    if distribution == "untruncated_normal":
        assert peak > 2 / TRUNC_STD * 1.2  # 48k normal draws reach well past the truncation point
    else:  # Keras 2's "normal" means truncated_normal
        assert peak <= 2 / TRUNC_STD * (1 + 1e-6)


def test_random_normal_mean_and_stddev():
    w = make({"class_name": "RandomNormal", "config": {"mean": 1.5, "stddev": 0.2}}, (4, 4, 4, 32, 32), seed=2)
    w = w.astype(np.float64)
    assert w.mean() == pytest.approx(1.5, abs=0.005)
    assert w.std() == pytest.approx(0.2, rel=0.02)
    assert np.abs(w - 1.5).max() > 0.2 * 3.5  # untruncated
    w = make("random_normal", (4, 4, 4, 32, 32), seed=2).astype(np.float64)
    assert w.std() == pytest.approx(0.05, rel=0.02)


def test_truncated_normal_is_within_two_stddev_and_not_rescaled():
    cfg = {"class_name": "TruncatedNormal", "config": {"mean": -1.0, "stddev": 0.3}}
    w = make(cfg, (4, 4, 4, 32, 32), seed=5).astype(np.float64)
    assert np.abs(w + 1.0).max() <= 0.6 * (1 + 1e-6)
    assert np.abs(w + 1.0).max() > 0.59
    assert w.mean() == pytest.approx(-1.0, abs=0.005)
    # Keras's TruncatedNormal keeps stddev as the pre-truncation parameter: the draw's std is smaller.
    assert w.std() == pytest.approx(0.3 * TRUNC_STD, rel=0.02)


# --------------------------------------------------------------------------- constants
def test_constants():
    shape = (2, 3, 4, 5, 6)
    np.testing.assert_array_equal(make("zeros", shape), np.zeros(shape, np.float32))
    np.testing.assert_array_equal(make("Zeros", shape), np.zeros(shape, np.float32))
    np.testing.assert_array_equal(make("ones", shape), np.ones(shape, np.float32))
    np.testing.assert_array_equal(make("one", shape), np.ones(shape, np.float32))
    np.testing.assert_array_equal(make("constant", shape), np.zeros(shape, np.float32))
    w = make({"class_name": "Constant", "config": {"value": -2.5}}, shape)
    np.testing.assert_array_equal(w, np.full(shape, -2.5, np.float32))
    assert make("zeros", (3,), dtype=np.float64).dtype == np.float64


# --------------------------------------------------------------------------- orthogonal / identity
# Wide kernels too (prod(shape[:-1]) < shape[-1]), where Keras transposes Q to get orthonormal rows.
wide_kernel_shapes = st.tuples(*(st.integers(1, 2) for _ in range(4)), st.integers(8, 40))


@settings(max_examples=60, deadline=None)
@given(shape=st.one_of(kernel_shapes, wide_kernel_shapes), seed=st.integers(0, 2**31 - 1), gain=st.floats(0.5, 3.0))
def test_orthogonal_flattened_kernel_has_orthonormal_columns_or_rows(shape, seed, gain):
    w = make({"class_name": "Orthogonal", "config": {"gain": gain}}, shape, seed).astype(np.float64)
    assert w.shape == shape
    rows, cols = math.prod(shape[:-1]), shape[-1]
    flat = w.reshape(rows, cols) / gain
    if rows >= cols:
        np.testing.assert_allclose(flat.T @ flat, np.eye(cols), atol=2e-6)
    else:
        np.testing.assert_allclose(flat @ flat.T, np.eye(rows), atol=2e-6)


@pytest.mark.parametrize("shape", [(1, 1, 1, 2, 8), (1, 1, 1, 1, 5), (2, 1, 1, 3, 16), (3, 3, 3, 4, 4)])
def test_orthogonal_known_shapes(shape):
    w = make("orthogonal", shape, seed=0).astype(np.float64)
    rows, cols = math.prod(shape[:-1]), shape[-1]
    flat = w.reshape(rows, cols)
    gram = flat.T @ flat if rows >= cols else flat @ flat.T
    np.testing.assert_allclose(gram, np.eye(min(rows, cols)), atol=2e-6)


def test_orthogonal_refuses_vectors():
    with pytest.raises(ValueError, match="orthogonal"):
        make("orthogonal", (5,))


def test_identity_is_refused_for_5d_kernels():
    with pytest.raises(ValueError, match="2-D"):
        make("identity", (3, 3, 3, 2, 2))
    np.testing.assert_array_equal(make({"class_name": "Identity", "config": {"gain": 2.0}}, (2, 3)), 2 * np.eye(2, 3))
    spec = LayerSpec.create(filters=2, kernel_size=3, kernel_initializer="identity")
    with pytest.raises(SpecError) as info:
        spec.materialise(2)
    assert info.value.field == "kernel_initializer" and "2-D" in info.value.message


# --------------------------------------------------------------------------- seeds
@pytest.mark.parametrize("name", sorted(set(NAMES) - {"identity"}))
def test_seed_determinism(name):
    shape = (2, 3, 2, 4, 5)
    a, b = make(name, shape, seed=123), make(name, shape, seed=123)
    np.testing.assert_array_equal(a, b)
    if name not in ("zeros", "ones", "constant"):
        assert not np.array_equal(a, make(name, shape, seed=124))
    # a seed in the initializer's own config is honoured too
    cfg = {"class_name": name, "config": {"seed": 77}}
    np.testing.assert_array_equal(make(cfg, shape), make(cfg, shape))


def test_spec_seed_makes_materialise_deterministic_and_bias_uses_its_own_stream():
    spec = LayerSpec.create(filters=3, kernel_size=2, seed=42, bias_initializer="random_normal")
    k1, b1 = spec.materialise(2)
    k2, b2 = spec.materialise(2)
    np.testing.assert_array_equal(k1, k2)
    np.testing.assert_array_equal(b1, b2)
    assert k1.shape == (2, 2, 2, 3, 2) and b1.shape == (3,)
    assert not np.array_equal(k1, LayerSpec.create(filters=3, kernel_size=2, seed=43).materialise(2)[0])


# --------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    "value, name",
    [
        ("GlorotUniform", "glorot_uniform"),
        ("glorot_uniform", "glorot_uniform"),
        ("HeNormal", "he_normal"),
        ("LecunUniform", "lecun_uniform"),
        ("RandomNormal", "random_normal"),
        ("TruncatedNormal", "truncated_normal"),
        ("VarianceScaling", "variance_scaling"),
        ("Orthogonal", "orthogonal"),
        ("normal", "random_normal"),
        ({"class_name": "GlorotNormal", "config": {}}, "glorot_normal"),
        (
            {"module": "keras.initializers", "class_name": "HeUniform", "config": {"seed": 3}, "registered_name": None},
            "he_uniform",
        ),
    ],
)
def test_names_class_names_and_keras3_dicts(value, name):
    spec = normalise(value)
    assert spec["name"] == name
    w = make(value, (2, 2, 2, 3, 4), seed=1)
    assert w.shape == (2, 2, 2, 3, 4)


def test_keras3_dict_config_is_used():
    cfg = {
        "module": "keras.initializers",
        "class_name": "VarianceScaling",
        "config": {"scale": 2.0, "mode": "fan_out", "distribution": "uniform", "seed": None},
        "registered_name": None,
    }
    spec = normalise(cfg)
    assert spec == {
        "name": "variance_scaling",
        "config": {"scale": 2.0, "mode": "fan_out", "distribution": "uniform", "seed": None},
    }
    shape = (3, 3, 3, 8, 64)
    limit = math.sqrt(3 * 2.0 / (64 * 27))
    w = make(cfg, shape, seed=0)
    assert np.abs(w).max() <= limit * (1 + 1e-6) and np.abs(w).max() > 0.99 * limit


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("xavier", "valid: "),
        ("GlorotUniformish", "glorot_uniform"),
        ({"class_name": "MyInit", "config": {}}, "he_normal"),
        ({"config": {}}, "class_name"),
        (3, "name or a mapping"),
        ({"class_name": "RandomUniform", "config": {"low": 0}}, "minval"),
        ({"class_name": "VarianceScaling", "config": {"mode": "fan_sum"}}, "fan_avg"),
        ({"class_name": "VarianceScaling", "config": {"distribution": "cauchy"}}, "untruncated_normal"),
    ],
)
def test_unknown_names_and_arguments_are_refused_with_the_valid_list(value, fragment):
    with pytest.raises(ValueError) as info:
        normalise(value)
    assert fragment in str(info.value)
    with pytest.raises(SpecError) as info:
        LayerSpec.create(filters=1, kernel_size=1, kernel_initializer=value)
    assert info.value.field == "kernel_initializer"


def test_unknown_name_lists_every_initializer():
    with pytest.raises(ValueError) as info:
        normalise("xavier")
    for name in NAMES:
        assert name in str(info.value)


# --------------------------------------------------------------------------- Keras 3's input_axes / output_axes
@settings(max_examples=60, deadline=None)
@given(shape=kernel_shapes, data=st.data())
def test_keras3_fan_axes_multiply_the_named_axes(shape, data):
    perm = data.draw(st.permutations(range(5)))
    cut = data.draw(st.integers(1, 4))
    ins, outs = sorted(perm[:cut]), sorted(perm[cut:])
    assert compute_fans(shape, ins, outs) == (math.prod(shape[a] for a in ins), math.prod(shape[a] for a in outs))
    # Keras uses them only when both are given; one alone (or null) is the ordinary rule
    assert compute_fans(shape, ins, None) == compute_fans(shape)


@settings(max_examples=60, deadline=None)
@given(
    shape=kernel_shapes,
    data=st.data(),
    scale=st.floats(0.1, 4.0),
    mode=st.sampled_from(["fan_in", "fan_out", "fan_avg"]),
    distribution=st.sampled_from(["uniform", "truncated_normal"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_variance_scaling_bounds_with_fan_axes(shape, data, scale, mode, distribution, seed):
    perm = data.draw(st.permutations(range(5)))
    cut = data.draw(st.integers(1, 4))
    ins, outs = sorted(perm[:cut]), sorted(perm[cut:])
    cfg = {"scale": scale, "mode": mode, "distribution": distribution, "input_axes": ins, "output_axes": outs}
    w = make({"class_name": "VarianceScaling", "config": cfg}, shape, seed).astype(np.float64)
    fan_in, fan_out = math.prod(shape[a] for a in ins), math.prod(shape[a] for a in outs)
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    std = math.sqrt(scale / max(1.0, fan))
    bound = math.sqrt(3) * std if distribution == "uniform" else 2 * std / TRUNC_STD
    assert np.abs(w).max() <= bound * (1 + 1e-6)


def test_keras3_null_fan_axes_are_the_default_and_bad_ones_refused():
    cfg = {"class_name": "HeNormal", "config": {"seed": None, "input_axes": None, "output_axes": None}}
    assert normalise(cfg) == {"name": "he_normal", "config": {"seed": None}}
    for bad in ("rows", [0.5]):
        with pytest.raises(ValueError, match="input_axes"):
            normalise({"class_name": "HeNormal", "config": {"input_axes": bad, "output_axes": [4]}})
    with pytest.raises(ValueError, match="do not fit"):
        make({"class_name": "HeNormal", "config": {"input_axes": [7], "output_axes": [4]}}, (2, 2, 2, 3, 4))


# --------------------------------------------------------------------------- against Keras's own draws
KERAS_DRAWS = json.loads((Path(__file__).resolve().parent / "fixtures_import" / "initializers.json").read_text())
DRAWS = [d for d in KERAS_DRAWS if "error" not in d]


@pytest.mark.parametrize("draw", DRAWS, ids=[f"k{d['keras']}-{d['class_name']}-{i}" for i, d in enumerate(DRAWS)])
def test_statistics_match_kerass_own_draws(draw):
    """Same shape as Keras drew (10368 values): bounds, means and variances agree."""
    cfg = {"class_name": draw["class_name"], "config": draw["config"]}
    w = make(cfg, tuple(draw["shape"]), seed=11).astype(np.float64)
    if draw["var"] == 0:  # zeros, ones, constant: exactly Keras's values
        assert w.min() == pytest.approx(draw["min"]) and w.max() == pytest.approx(draw["max"]) and w.var() == 0
        return
    sd = math.sqrt(draw["var"])
    assert w.var() == pytest.approx(draw["var"], rel=0.06)
    assert abs(w.mean() - draw["mean"]) < 0.05 * sd
    name = normalise(cfg)["name"]
    spread = normalise(cfg)["config"].get("distribution")
    if name in ("glorot_uniform", "he_uniform", "lecun_uniform", "random_uniform") or spread == "uniform":
        # uniform: both reach the same limits
        assert w.min() == pytest.approx(draw["min"], abs=0.01 * sd) and w.max() == pytest.approx(
            draw["max"], abs=0.01 * sd
        )
    elif name == "orthogonal":
        assert w.var() == pytest.approx(draw["var"], rel=2e-3) and draw["gram_error"] < 1e-5
    elif name != "random_normal" and spread != "untruncated_normal":
        # truncated at 2 standard deviations of the underlying normal: the extremes nearly touch it
        assert max(abs(w.min() - draw["mean"]), w.max() - draw["mean"]) == pytest.approx(
            max(abs(draw["min"] - draw["mean"]), draw["max"] - draw["mean"]), rel=0.02
        )


def test_identity_on_a_kernel_is_refused_like_keras():
    errors = [d for d in KERAS_DRAWS if d["class_name"] == "Identity"]
    assert {d["keras"] for d in errors} == {"2", "3"} and all("2D" in d["error"] or "2-D" in d["error"] for d in errors)
    with pytest.raises(ValueError, match="2-D"):
        make("identity", (3, 3, 3, 2, 2))


def test_the_fixture_covers_every_initializer_kind():
    covered = {normalise({"class_name": d["class_name"], "config": d["config"]})["name"] for d in DRAWS}
    assert covered == set(NAMES) - {"identity"}
