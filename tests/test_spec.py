"""LayerSpec: every refusal of SEMANTICS.md, normalisation, YAML and Keras-serialised loading, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from deconv3d_cli import LayerSpec, SpecError, conv3d_transpose
from deconv3d_cli.engine import Engine
from deconv3d_cli.layer.spec import load_npz


def make(**kw):
    base = dict(filters=2, kernel_size=3)
    base.update(kw)
    return LayerSpec.create(**base)


def refused(field: str, *fragments: str, **kw) -> SpecError:
    with pytest.raises(SpecError) as info:
        make(**kw)
    err = info.value
    assert err.field == field, f"field {err.field!r}, wanted {field!r}: {err}"
    text = str(err)
    assert f"field '{field}'" in text
    for frag in fragments:
        assert frag in text, f"{frag!r} not in {text!r}"
    assert err.exit_code == 2
    return err


def rand_kernel(spec_shape, in_channels=1, seed=0):
    return np.random.default_rng(seed).standard_normal((*spec_shape, in_channels)).astype(np.float32)


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("padding", ["causal", "CAUSAL", "full", "", 3, None])
def test_padding_other_than_valid_or_same_is_refused(padding):
    err = refused("padding", "'valid' or 'same'", padding=padding)
    assert ("causal" in err.message.lower()) == (str(padding).lower() == "causal")
    if str(padding).lower() == "causal":
        assert "1-D" in err.message


@pytest.mark.parametrize(
    "strides, dilation",
    [(2, 2), ((1, 1, 2), (2, 1, 1)), ((3, 1, 1), (1, 1, 2))],
)
def test_stride_with_dilation_is_refused(strides, dilation):
    refused("dilation_rate", "strides", "dilation_rate", strides=strides, dilation_rate=dilation)


@pytest.mark.parametrize("strides", [1, (2, 2, 2), (1, 1, 5)])
def test_stride_without_dilation_and_dilation_without_stride_are_accepted(strides):
    want = (strides,) * 3 if isinstance(strides, int) else tuple(strides)
    assert make(strides=strides).strides == want
    assert make(dilation_rate=(1, 2, 3)).dilation_rate == (1, 2, 3)


@pytest.mark.parametrize(
    "strides, op, axis",
    [(2, 2, 0), ((2, 3, 2), (1, 3, 1), 1), ((2, 2, 2), (0, 0, 5), 2), (1, 1, 0)],
)
def test_output_padding_not_below_stride_is_refused(strides, op, axis):
    err = refused("output_padding", f"axis {axis}", "smaller than strides", strides=strides, output_padding=op)
    s = (strides,) * 3 if isinstance(strides, int) else strides
    assert f"at most {s[axis] - 1}" in err.message


def test_negative_output_padding_is_refused():
    refused("output_padding", ">= 0", strides=2, output_padding=-1)


@pytest.mark.parametrize(
    "kernel_size, dilation, op, axis, k_eff",
    [
        ((4, 3, 3), 1, (0, 1, 1), 0, 4),
        ((3, 2, 3), 1, (1, 0, 1), 1, 2),
        ((3, 3, 2), 1, (1, 1, 0), 2, 2),
        ((3, 3, 2), (1, 1, 3), (0, 0, 0), 2, 4),  # stride 1: op must be 0, so the axis has no way out
    ],
)
def test_same_with_even_effective_kernel_and_zero_output_padding_is_refused(kernel_size, dilation, op, axis, k_eff):
    strides = 2 if dilation == 1 else 1
    err = refused(
        "output_padding",
        f"axis {axis}",
        "output_padding >= 1",
        "null",
        f"({k_eff})",
        kernel_size=kernel_size,
        strides=strides,
        padding="same",
        output_padding=op,
        dilation_rate=dilation,
    )
    assert "TensorFlow" in err.message


def test_same_with_even_kernel_is_fine_without_output_padding_or_with_op_at_least_one():
    assert make(kernel_size=4, strides=2, padding="same").output_padding is None
    assert make(kernel_size=4, strides=2, padding="same", output_padding=1).output_padding == (1, 1, 1)
    # odd K with op 0 is fine; valid with even K and op 0 too
    assert make(kernel_size=3, strides=2, padding="same", output_padding=0).output_padding == (0, 0, 0)
    assert make(kernel_size=4, strides=2, padding="valid", output_padding=0).output_padding == (0, 0, 0)


@pytest.mark.parametrize(
    "field, value",
    [
        ("filters", 0),
        ("filters", -3),
        ("filters", 2.0),
        ("filters", True),
        ("filters", "2"),
        ("kernel_size", 0),
        ("kernel_size", (3, 0, 3)),
        ("kernel_size", (3, 3)),
        ("kernel_size", (3, 3, 3.5)),
        ("strides", 0),
        ("strides", (1, -1, 1)),
        ("dilation_rate", 0),
        ("dilation_rate", (1, 1, -2)),
        ("dilation_rate", True),
    ],
)
def test_non_positive_or_non_integer_hyperparameters_are_refused(field, value):
    refused(field, **{field: value})


def test_missing_filters_and_kernel_size_are_named():
    with pytest.raises(SpecError) as info:
        LayerSpec.create(kernel_size=3)
    assert info.value.field == "filters"
    with pytest.raises(SpecError) as info:
        LayerSpec.create(filters=1)
    assert info.value.field == "kernel_size"


def test_kernel_shape_mismatch_names_both_shapes():
    with pytest.raises(SpecError) as info:
        make(kernel_size=(2, 3, 4), kernel=np.zeros((2, 3, 3, 2, 1)), bias=np.zeros(2))
    err = info.value
    assert err.field == "kernel"
    assert "(2, 3, 3, 2, 1)" in err.message and "(2, 3, 4, 2, in_channels)" in err.message


def test_kernel_with_wrong_filters_or_rank_is_refused():
    for bad in (np.zeros((3, 3, 3, 5, 1)), np.zeros((3, 3, 3, 2)), np.zeros((3, 3, 3, 2, 1, 1))):
        with pytest.raises(SpecError) as info:
            make(kernel=bad, bias=np.zeros(2))
        assert info.value.field == "kernel"
        assert str(tuple(bad.shape)) in info.value.message


def test_bias_shape_mismatch_names_both_shapes():
    with pytest.raises(SpecError) as info:
        make(kernel=rand_kernel((3, 3, 3, 2)), bias=np.zeros(3))
    assert info.value.field == "bias"
    assert "(3,)" in info.value.message and "(2,)" in info.value.message


def test_kernel_channels_against_declared_in_channels_and_input():
    with pytest.raises(SpecError) as info:
        make(in_channels=3, kernel=rand_kernel((3, 3, 3, 2), 2), bias=np.zeros(2))
    assert info.value.field == "kernel" and "in_channels is 3" in info.value.message
    spec = make(kernel=rand_kernel((3, 3, 3, 2), 2), bias=np.zeros(2))
    assert spec.in_channels == 2
    with pytest.raises(SpecError) as info:
        Engine(spec, 3)
    assert info.value.field == "kernel"
    assert "3 channel(s)" in info.value.message and "(3, 3, 3, 2, 2)" in info.value.message
    with pytest.raises(SpecError):
        conv3d_transpose(np.zeros((4, 4, 4, 3), np.float32), spec.kernel, spec.bias)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused(bad):
    kernel = rand_kernel((3, 3, 3, 2))
    kernel[1, 2, 0, 1, 0] = bad
    with pytest.raises(SpecError) as info:
        make(kernel=kernel, bias=np.zeros(2))
    assert info.value.field == "kernel" and "NaN or infinite" in info.value.message
    bias = np.array([0.0, bad])
    with pytest.raises(SpecError) as info:
        make(kernel=rand_kernel((3, 3, 3, 2)), bias=bias)
    assert info.value.field == "bias" and "NaN or infinite" in info.value.message


def test_use_bias_without_bias_and_bias_without_use_bias_are_refused():
    with pytest.raises(SpecError) as info:
        make(kernel=rand_kernel((3, 3, 3, 2)))
    assert info.value.field == "bias" and "use_bias" in info.value.message and "(2,)" in info.value.message
    with pytest.raises(SpecError) as info:
        make(use_bias=False, kernel=rand_kernel((3, 3, 3, 2)), bias=np.zeros(2))
    assert info.value.field == "bias"
    spec = make(use_bias=False, kernel=rand_kernel((3, 3, 3, 2)))
    assert spec.bias is None


@pytest.mark.parametrize(
    "field, value",
    [
        ("activation", "swishy"),
        ("activation", "lambda x: x"),
        ("use_bias", "yes"),
        ("data_format", "channels_middle"),
        ("kernel_initializer", "glorot_uniformm"),
        ("groups", 2),
        ("seed", 1.5),
        ("in_channels", 0),
        ("kernel_regularizer", "l3"),
        ("kernel_constraint", "positive"),
    ],
)
def test_other_bad_fields_are_named(field, value):
    refused(field, **{field: value})


def test_unknown_activation_lists_the_valid_ones():
    err = refused("activation", "relu6", "hard_sigmoid", "mish", activation="gelu_fast")
    assert "gelu_fast" in err.message


# --------------------------------------------------------------------------- normalisation
def test_normalisation_of_ints_case_and_defaults():
    spec = LayerSpec.create(filters=np.int64(3), kernel_size=np.int32(2), strides=[2], padding="SAME")
    assert spec.filters == 3 and type(spec.filters) is int
    assert spec.kernel_size == (2, 2, 2) and all(type(v) is int for v in spec.kernel_size)
    assert spec.strides == (2, 2, 2)
    assert spec.dilation_rate == (1, 1, 1)
    assert spec.padding == "same"
    assert spec.data_format == "channels_last"
    assert spec.activation == "linear"
    assert spec.use_bias is True
    assert spec.output_padding is None
    assert spec.kernel_initializer == {"name": "glorot_uniform", "config": {}}
    assert spec.bias_initializer == {"name": "zeros", "config": {}}
    spec = LayerSpec.create(
        filters=1,
        kernel_size=(1, 2, 3),
        output_padding=0,
        data_format="CHANNELS_FIRST",
        padding="Valid",
        activation="ReLU",
    )
    assert spec.output_padding == (0, 0, 0)
    assert spec.data_format == "channels_first"
    assert spec.padding == "valid"
    assert spec.activation == "relu"
    assert LayerSpec.create(filters=1, kernel_size=1, data_format=None).data_format == "channels_last"
    assert LayerSpec.create(filters=1, kernel_size=1, activation="None").activation == "linear"


def test_regularizers_and_constraints_are_normalised_with_keras_defaults():
    spec = make(kernel_regularizer="L2", bias_constraint="maxnorm", kernel_constraint={"class_name": "NonNeg"})
    assert spec.kernel_regularizer == {"name": "l2", "config": {"l2": 0.01}}
    assert spec.bias_constraint == {"name": "max_norm", "config": {"max_value": 2.0, "axis": 0}}
    assert spec.kernel_constraint == {"name": "non_neg", "config": {}}


def test_output_shape_follows_layout_and_geometry():
    spec = make(filters=4, kernel_size=(3, 4, 1), strides=(2, 2, 3), padding="valid")
    assert spec.output_shape((2, 5, 6, 7, 3)) == (2, 11, 14, 21, 4)
    spec_cf = make(filters=4, kernel_size=(3, 4, 1), strides=(2, 2, 3), data_format="channels_first")
    assert spec_cf.output_shape((3, 5, 6, 7)) == (4, 11, 14, 21)
    assert make(filters=1, kernel_size=2, strides=2).output_shape((5, 6, 7)) == (10, 12, 14)
    assert make(filters=2, kernel_size=2, strides=2).output_shape((5, 6, 7)) == (10, 12, 14, 2)


# --------------------------------------------------------------------------- YAML
def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_weights_path_is_relative_to_the_spec_file(tmp_path, monkeypatch):
    kernel = rand_kernel((2, 2, 2, 1), 3)
    bias = np.array([0.5], np.float32)
    sub = tmp_path / "models" / "deep"
    sub.mkdir(parents=True)
    np.savez(sub / "w.npz", kernel=kernel, bias=bias)
    spec_path = write(sub / "layer.yaml", "filters: 1\nkernel_size: 2\nstrides: 2\nweights: w.npz\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = LayerSpec.from_yaml(spec_path)
    np.testing.assert_array_equal(spec.kernel, kernel)
    np.testing.assert_array_equal(spec.bias, bias)
    assert spec.in_channels == 3
    assert spec.source == str(spec_path)
    # and a relative path to the spec itself, resolved from the cwd, still finds the weights beside it
    monkeypatch.chdir(tmp_path)
    spec2 = LayerSpec.from_yaml("models/deep/layer.yaml")
    np.testing.assert_array_equal(spec2.kernel, kernel)


def test_yaml_weights_layout_torch_is_transposed_to_keras(tmp_path):
    rng = np.random.default_rng(1)
    torch_kernel = rng.standard_normal((2, 3, 2, 3, 4)).astype(np.float32)  # (in, filters, kd, kh, kw)
    np.savez(tmp_path / "t.npz", kernel=torch_kernel, bias=np.zeros(3, np.float32))
    spec = LayerSpec.from_yaml(
        write(tmp_path / "s.yaml", "filters: 3\nkernel_size: [2, 3, 4]\nweights: t.npz\nweights_layout: torch\n")
    )
    assert spec.kernel.shape == (2, 3, 4, 3, 2)
    for idx in [(0, 0, 0, 0, 0), (1, 2, 3, 2, 1), (0, 1, 2, 1, 0), (1, 0, 3, 0, 1)]:
        a, b, c, f, i = idx
        assert spec.kernel[idx] == torch_kernel[i, f, a, b, c]
    with pytest.raises(SpecError) as info:
        LayerSpec.from_yaml(write(tmp_path / "b.yaml", "filters: 3\nkernel_size: 1\nweights_layout: tensorflow\n"))
    assert info.value.field == "weights_layout"


def test_yaml_python_tags_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    text = f"filters: !!python/object/apply:os.system ['touch {marker}']\nkernel_size: 3\n"
    with pytest.raises(SpecError) as info:
        LayerSpec.from_yaml(write(tmp_path / "evil.yaml", text))
    assert "tag" in info.value.message.lower()
    assert not marker.exists()
    text = f"!!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(SpecError):
        LayerSpec.from_yaml(write(tmp_path / "evil2.yaml", text))
    assert not marker.exists()


def test_yaml_errors_are_spec_errors(tmp_path):
    with pytest.raises(SpecError) as info:
        LayerSpec.from_yaml(tmp_path / "missing.yaml")
    assert "not found" in info.value.message
    with pytest.raises(SpecError) as info:
        LayerSpec.from_yaml(write(tmp_path / "empty.yaml", "# nothing\n"))
    assert "empty" in info.value.message
    with pytest.raises(SpecError) as info:
        LayerSpec.from_yaml(write(tmp_path / "broken.yaml", "filters: [1, 2\nkernel_size: 3\n"))
    assert "line" in info.value.message
    with pytest.raises(SpecError):
        LayerSpec.from_yaml(write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(SpecError) as info:
        LayerSpec.from_yaml(write(tmp_path / "now.yaml", "filters: 1\nkernel_size: 1\nweights: nope.npz\n"))
    assert info.value.field == "weights" and "not found" in info.value.message


@pytest.mark.parametrize(
    "key, suggestion",
    [("kernal_size", "kernel_size"), ("stride", "strides"), ("activaton", "activation"), ("use_bais", "use_bias")],
)
def test_unknown_key_suggests_the_nearest_valid_one(tmp_path, key, suggestion):
    path = write(tmp_path / "s.yaml", f"filters: 1\nkernel_size: 3\n{key}: 2\n")
    with pytest.raises(SpecError) as info:
        LayerSpec.from_yaml(path)
    assert info.value.field == key
    assert f"did you mean '{suggestion}'" in info.value.message
    assert str(path) in str(info.value)


def test_keras_serialised_form_with_keras3_initializer_dicts(tmp_path):
    kernel_init = {
        "module": "keras.initializers",
        "class_name": "HeNormal",
        "config": {"seed": None},
        "registered_name": None,
    }
    bias_init = {"module": "keras.initializers", "class_name": "Constant", "config": {"value": 0.25}}
    data = {
        "module": "keras.layers",
        "class_name": "Conv3DTranspose",
        "config": {
            "name": "up1",
            "trainable": True,
            "dtype": "float32",
            "filters": 2,
            "kernel_size": [3, 3, 3],
            "strides": [2, 2, 2],
            "padding": "same",
            "output_padding": None,
            "data_format": "channels_last",
            "dilation_rate": [1, 1, 1],
            "activation": "relu",
            "use_bias": True,
            "kernel_initializer": kernel_init,
            "bias_initializer": bias_init,
            "kernel_regularizer": None,
            "bias_regularizer": None,
            "activity_regularizer": None,
            "kernel_constraint": None,
            "bias_constraint": None,
        },
        "registered_name": None,
        "build_config": {"input_shape": [None, 8, 8, 8, 3]},
    }
    spec = LayerSpec.from_mapping(data)
    assert spec.name == "up1"
    assert spec.filters == 2 and spec.strides == (2, 2, 2) and spec.padding == "same"
    assert spec.activation == "relu"
    assert spec.kernel_initializer == {"name": "he_normal", "config": {"seed": None}}
    assert spec.bias_initializer == {"name": "constant", "config": {"value": 0.25}}
    assert spec.in_channels == 3
    kernel, bias = spec.materialise(3)
    assert kernel.shape == (3, 3, 3, 2, 3)
    np.testing.assert_array_equal(bias, [0.25, 0.25])
    # the same from YAML, with our own weights key next to the serialised form
    np.savez(tmp_path / "w.npz", kernel=rand_kernel((3, 3, 3, 2), 3), bias=np.ones(2, np.float32))
    path = write(tmp_path / "k.yaml", yaml.safe_dump({**data, "weights": "w.npz"}))
    loaded = LayerSpec.from_yaml(path)
    np.testing.assert_array_equal(loaded.kernel, rand_kernel((3, 3, 3, 2), 3))
    assert loaded.to_config() == spec.to_config()


def test_keras_serialised_form_refusals():
    with pytest.raises(SpecError) as info:
        LayerSpec.from_mapping({"class_name": "Conv2DTranspose", "config": {"filters": 1, "kernel_size": 3}})
    assert info.value.field == "class_name"
    with pytest.raises(SpecError) as info:
        LayerSpec.from_mapping({"class_name": "Conv3DTranspose", "config": {"filters": 1, "kernal_size": 3}})
    assert info.value.field == "kernal_size" and "kernel_size" in info.value.message
    with pytest.raises(SpecError) as info:
        LayerSpec.from_mapping({"class_name": "Conv3DTranspose", "config": [1, 2]})
    assert info.value.field == "config"


def test_npz_with_pickled_object_array_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, kernel=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(SpecError) as info:
        load_npz(path)
    assert "pickle" in info.value.message
    write(tmp_path / "s.yaml", "filters: 1\nkernel_size: 1\nweights: evil.npz\n")
    with pytest.raises(SpecError):
        LayerSpec.from_yaml(tmp_path / "s.yaml")


def test_npz_contents_are_checked(tmp_path):
    np.savez(tmp_path / "nokernel.npz", weights=np.zeros(3))
    with pytest.raises(SpecError) as info:
        load_npz(tmp_path / "nokernel.npz")
    assert info.value.field == "kernel" and "weights" in info.value.message
    np.savez(tmp_path / "extra.npz", kernel=np.zeros((1, 1, 1, 1, 1)), gamma=np.zeros(1))
    with pytest.raises(SpecError) as info:
        load_npz(tmp_path / "extra.npz")
    assert "gamma" in info.value.message
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(SpecError):
        load_npz(tmp_path / "junk.npz")


def test_save_then_from_yaml_round_trips_config_and_weights(tmp_path):
    rng = np.random.default_rng(3)
    spec = LayerSpec.create(
        filters=3,
        kernel_size=(2, 3, 1),
        strides=(2, 1, 3),
        padding="same",
        output_padding=(1, 0, 2),
        data_format="channels_first",
        activation="tanh",
        kernel_initializer={"class_name": "VarianceScaling", "config": {"scale": 2.0, "mode": "fan_out"}},
        kernel_regularizer="l1",
        name="my_layer",
        seed=11,
        kernel=rng.standard_normal((2, 3, 1, 3, 2)),
        bias=rng.standard_normal(3),
    )
    path = spec.save(tmp_path / "layer.yaml")
    assert (tmp_path / "layer.npz").is_file()
    back = LayerSpec.from_yaml(path)
    assert back.to_config() == spec.to_config()
    np.testing.assert_array_equal(back.kernel, spec.kernel)
    np.testing.assert_array_equal(back.bias, spec.bias)
    assert back.kernel.dtype == spec.kernel.dtype
    assert back.seed == 11 and back.in_channels == 2
    assert back.fingerprint() == spec.fingerprint()
    # without weights: initializers and seed survive, and materialise the same arrays
    bare = LayerSpec.create(filters=2, kernel_size=3, seed=5, in_channels=4, kernel_initializer="he_uniform")
    back = LayerSpec.from_yaml(bare.save(tmp_path / "bare.yaml"))
    assert not (tmp_path / "bare.npz").exists()
    assert back.to_config() == bare.to_config() and back.in_channels == 4 and back.seed == 5
    for a, b in zip(back.materialise(4), bare.materialise(4)):
        np.testing.assert_array_equal(a, b)


def test_fingerprint_tracks_weights_and_hyperparameters():
    kernel = rand_kernel((3, 3, 3, 2), 2)
    bias = np.array([0.1, 0.2], np.float32)
    spec = make(kernel=kernel, bias=bias)
    assert spec.fingerprint() == make(kernel=kernel.copy(), bias=bias.copy()).fingerprint()
    changed = kernel.copy()
    changed[2, 1, 0, 1, 1] += 1e-3
    assert make(kernel=changed, bias=bias).fingerprint() != spec.fingerprint()
    assert make(kernel=kernel, bias=bias + np.float32(1e-3)).fingerprint() != spec.fingerprint()
    assert make(kernel=kernel, bias=bias, activation="relu").fingerprint() != spec.fingerprint()
    assert make(kernel=kernel, bias=bias, strides=2).fingerprint() != spec.fingerprint()
    assert make(seed=1).fingerprint() != make(seed=2).fingerprint()
