"""The Python face: Conv3DTranspose and conv3d_transpose against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deconv3d_cli import Conv3DTranspose, LayerSpec, SpecError, conv3d_transpose


def rng_arrays(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def to_ncdhw(x, data_format):
    """(N, D, H, W, C) or (N, C, D, H, W) -> (N, C, D, H, W), written out by hand."""
    return np.transpose(x, (0, 4, 1, 2, 3)) if data_format == "channels_last" else x


# --------------------------------------------------------------------------- the layer object
def test_build_get_set_weights():
    layer = Conv3DTranspose(4, (3, 2, 1), strides=2, seed=0, bias_initializer="ones")
    assert not layer.built and layer.get_weights() == []
    layer.build((None, 5, 5, 5, 3))
    assert layer.built
    kernel, bias = layer.get_weights()
    assert kernel.shape == (3, 2, 1, 4, 3) and kernel.dtype == np.float32
    np.testing.assert_array_equal(bias, np.ones(4, np.float32))
    limit = math.sqrt(6 / (4 * 6 + 3 * 6))  # glorot_uniform with Keras's fans on (3, 2, 1, 4, 3)
    assert np.abs(kernel).max() <= limit * (1 + 1e-6)
    np.testing.assert_array_equal(layer.kernel, kernel)

    new_k, new_b = rng_arrays(1, (3, 2, 1, 4, 3), (4,))
    layer.set_weights([new_k, new_b])
    got_k, got_b = layer.get_weights()
    np.testing.assert_array_equal(got_k, new_k)
    np.testing.assert_array_equal(got_b, new_b)
    with pytest.raises(SpecError) as info:
        layer.set_weights([new_k])
    assert "2 array(s)" in info.value.message
    with pytest.raises(SpecError) as info:
        layer.set_weights([np.zeros((3, 2, 1, 4, 2)), new_b])
    assert "(3, 2, 1, 4, 2)" in info.value.message and "(3, 2, 1, 4, 3)" in info.value.message

    no_bias = Conv3DTranspose(2, 2, use_bias=False)
    no_bias.build((4, 4, 4, 1))
    assert len(no_bias.get_weights()) == 1 and no_bias.bias is None


def test_set_weights_changes_what_call_computes(ref):
    layer = Conv3DTranspose(2, 2, strides=2, padding="same", seed=3)
    (x,) = rng_arrays(0, (1, 3, 4, 5, 3))
    first = layer(x)
    k, b = rng_arrays(2, (2, 2, 2, 2, 3), (2,))
    layer.set_weights([k, b])
    second = layer(x)
    assert not np.allclose(first, second)
    want = ref.layer_3d(to_ncdhw(x, "channels_last"), k, b, (2, 2, 2), (1, 1, 1), "same", None)
    np.testing.assert_allclose(second, want.transpose(0, 2, 3, 4, 1), rtol=1e-5, atol=1e-5)


def test_call_builds_for_the_input_and_refuses_another_channel_count():
    layer = Conv3DTranspose(3, 3, seed=0)
    y = layer(np.zeros((2, 4, 4, 4, 5), np.float32))
    assert y.shape == (2, 6, 6, 6, 3)
    assert layer.kernel.shape == (3, 3, 3, 3, 5)
    with pytest.raises(SpecError):
        layer(np.zeros((2, 4, 4, 4, 4), np.float32))


def test_unexpected_keyword_is_refused():
    with pytest.raises(SpecError) as info:
        Conv3DTranspose(1, 3, paddng="same")
    assert info.value.field == "paddng"


@pytest.mark.parametrize(
    "kw, input_shape, want",
    [
        (dict(strides=2, padding="same"), (None, 4, 5, 6, 3), (None, 8, 10, 12, 7)),
        (dict(strides=(1, 2, 3)), (None, 4, 5, 6, 3), (None, 6, 11, 18, 7)),
        (dict(strides=3, padding="same", output_padding=2), (8, 4, 5, 6, 3), (8, 12, 15, 18, 7)),
        (dict(data_format="channels_first", strides=2), (None, 3, 4, 5, 6), (None, 7, 9, 11, 13)),
        (dict(dilation_rate=2), (4, 5, 6, 3), (8, 9, 10, 7)),
        (dict(strides=2, padding="same"), (None, None, 5, 6, 3), (None, None, 10, 12, 7)),
        (dict(data_format="channels_first"), (None, 3, 4, None, 6), (None, 7, 6, None, 8)),
    ],
)
def test_compute_output_shape(kw, input_shape, want):
    layer = Conv3DTranspose(7, 3, **kw)
    assert layer.compute_output_shape(input_shape) == want
    if None not in input_shape[1:]:
        concrete = tuple(2 if n is None else n for n in input_shape)
        y = layer(np.zeros(concrete, np.float32))
        assert y.shape == tuple(2 if n is None else n for n in want)


def test_get_config_round_trips_through_from_mapping_and_from_config():
    layer = Conv3DTranspose(
        5,
        (3, 3, 4),
        strides=(2, 1, 2),
        padding="same",
        output_padding=(1, 0, 1),
        data_format="channels_first",
        activation="elu",
        use_bias=False,
        kernel_initializer="HeNormal",
        kernel_regularizer={"class_name": "L1L2", "config": {"l1": 0.5}},
        bias_constraint="non_neg",
        name="up",
        trainable=False,
        dtype="float64",
    )
    config = layer.get_config()
    assert config["name"] == "up" and config["trainable"] is False and config["dtype"] == "float64"
    assert config["kernel_size"] == [3, 3, 4] and config["output_padding"] == [1, 0, 1]
    assert config["kernel_initializer"] == {"name": "he_normal", "config": {}}
    spec = LayerSpec.from_mapping(config)
    assert spec.to_config() == layer.spec.to_config()
    again = Conv3DTranspose.from_config(config)
    assert again.get_config() == config
    serialised = {"class_name": "Conv3DTranspose", "config": config}
    assert LayerSpec.from_mapping(serialised).to_config() == layer.spec.to_config()


def test_convolution_op_is_call_without_bias_and_activation():
    (x,) = rng_arrays(4, (2, 4, 3, 5, 2))
    layer = Conv3DTranspose(3, (2, 3, 3), strides=(2, 2, 1), padding="same", activation="tanh", seed=1)
    y = layer(x)
    kernel, bias = layer.get_weights()
    conv = layer.convolution_op(x, kernel)
    np.testing.assert_allclose(np.tanh(conv + bias), y, rtol=1e-5, atol=1e-6)
    linear = Conv3DTranspose(3, (2, 3, 3), strides=(2, 2, 1), padding="same", use_bias=False)
    linear.build(x.shape)
    linear.set_weights([kernel])
    np.testing.assert_array_equal(conv, linear(x))
    # a torch kernel works too, and the op does not touch the layer's own weights
    np.testing.assert_allclose(layer.convolution_op(x, torch.from_numpy(2 * kernel)), 2 * conv, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(layer.kernel, kernel)


# --------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("filters", [1, 2])
def test_3d_4d_5d_inputs_agree_in_both_formats(data_format, filters, ref):
    d, h, w = 3, 4, 5
    vol, kernel, bias = rng_arrays(5, (d, h, w), (3, 2, 3, filters, 1), (filters,))
    kw = dict(strides=(2, 1, 2), padding="same", data_format=data_format, activation="relu")
    want = ref.layer_3d(vol[None, None], kernel, bias, (2, 1, 2), (1, 1, 1), "same", None, "relu")  # (1, F, ...)
    cf = data_format == "channels_first"

    y3 = conv3d_transpose(vol, kernel, bias, **kw)
    if filters == 1:
        assert y3.shape == want.shape[2:]
        np.testing.assert_allclose(y3, want[0, 0], rtol=1e-5, atol=1e-5)
    else:  # a 3-D volume gains a channel axis where the format puts it
        np.testing.assert_allclose(y3, want[0] if cf else np.moveaxis(want[0], 0, -1), rtol=1e-5, atol=1e-5)

    x4 = vol[None] if cf else vol[..., None]
    y4 = conv3d_transpose(x4, kernel, bias, **kw)
    np.testing.assert_allclose(y4, want[0] if cf else np.moveaxis(want[0], 0, -1), rtol=1e-5, atol=1e-5)

    x5 = np.stack([x4, -x4])  # a batch of two: the second entry is the first negated
    y5 = conv3d_transpose(x5, kernel, bias, **kw)
    want_neg = ref.layer_3d(-vol[None, None], kernel, bias, (2, 1, 2), (1, 1, 1), "same", None, "relu")
    both = np.concatenate([want, want_neg])
    np.testing.assert_allclose(y5, both if cf else np.moveaxis(both, 1, -1), rtol=1e-5, atol=1e-5)


def test_multichannel_layouts_are_the_same_data_rearranged(ref):
    x_cl, kernel, bias = rng_arrays(6, (2, 3, 4, 5, 3), (2, 3, 2, 4, 3), (4,))
    kw = dict(strides=(1, 2, 2), padding="valid", output_padding=(0, 1, 1))
    y_cl = conv3d_transpose(x_cl, kernel, bias, data_format="channels_last", **kw)
    x_cf = np.ascontiguousarray(np.transpose(x_cl, (0, 4, 1, 2, 3)))
    y_cf = conv3d_transpose(x_cf, kernel, bias, data_format="channels_first", **kw)
    np.testing.assert_allclose(np.transpose(y_cl, (0, 4, 1, 2, 3)), y_cf, rtol=1e-6, atol=1e-6)
    want = ref.layer_3d(x_cf, kernel, bias, (1, 2, 2), (1, 1, 1), "valid", (0, 1, 1))
    np.testing.assert_allclose(y_cf, want, rtol=1e-5, atol=1e-5)
    # the default data_format is channels_last; non-contiguous and integer inputs are accepted
    np.testing.assert_allclose(conv3d_transpose(x_cl, kernel, bias, **kw), y_cl, rtol=0, atol=0)
    nc = np.transpose(x_cf, (0, 2, 3, 4, 1))
    np.testing.assert_allclose(conv3d_transpose(nc, kernel, bias, **kw), y_cl, rtol=1e-6, atol=1e-6)
    xi = np.arange(2 * 3 * 4 * 5 * 3).reshape(2, 3, 4, 5, 3) % 7 - 3
    np.testing.assert_allclose(
        conv3d_transpose(xi.astype(np.int16), kernel, bias, **kw),
        conv3d_transpose(xi.astype(np.float32), kernel, bias, **kw),
        rtol=0,
        atol=0,
    )


def test_big_endian_half_and_bool_inputs_are_converted():
    x, kernel, bias = rng_arrays(11, (1, 3, 4, 2, 2), (2, 2, 2, 3, 2), (3,))
    want = conv3d_transpose(x, kernel, bias, strides=2)
    np.testing.assert_array_equal(conv3d_transpose(x.astype(">f4"), kernel, bias, strides=2), want)
    half = x.astype(np.float16)
    np.testing.assert_allclose(
        conv3d_transpose(half, kernel, bias, strides=2),
        conv3d_transpose(half.astype(np.float32), kernel, bias, strides=2),
        rtol=0,
        atol=0,
    )
    mask = x > 0
    np.testing.assert_array_equal(
        conv3d_transpose(mask, kernel, bias, strides=2),
        conv3d_transpose(mask.astype(np.float32), kernel, bias, strides=2),
    )
    with pytest.raises(SpecError):
        conv3d_transpose(np.array([["a"]] * 2, dtype=object).reshape(1, 1, 2), kernel[:, :, :, :, :1])


def test_wrong_rank_is_refused():
    with pytest.raises(SpecError):
        conv3d_transpose(np.zeros((4, 4)), np.zeros((1, 1, 1, 1, 1)))
    with pytest.raises(SpecError):
        conv3d_transpose(np.zeros((1, 1, 4, 4, 4, 1)), np.zeros((1, 1, 1, 1, 1)))
    with pytest.raises(SpecError):
        conv3d_transpose(np.zeros((4, 4, 4)), np.zeros((1, 1, 1, 1)))


# --------------------------------------------------------------------------- engine paths
def test_torch_tensor_in_torch_tensor_out():
    x, kernel, bias = rng_arrays(7, (2, 3, 4, 5, 2), (3, 3, 3, 4, 2), (4,))
    y_np = conv3d_transpose(x, kernel, bias, strides=2, padding="same")
    y_t = conv3d_transpose(
        torch.from_numpy(x), torch.from_numpy(kernel), torch.from_numpy(bias), strides=2, padding="same"
    )
    assert isinstance(y_t, torch.Tensor) and y_t.device.type == "cpu"
    assert y_t.dtype == torch.float32 and tuple(y_t.shape) == y_np.shape
    np.testing.assert_array_equal(y_t.numpy(), y_np)
    layer = Conv3DTranspose(4, 3, strides=2, padding="same", data_format="channels_first")
    layer.build((None, 2, 3, 4, 5))
    layer.set_weights([kernel, bias])
    xt = torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 4, 1, 2, 3))))
    yt = layer(xt)
    assert isinstance(yt, torch.Tensor)
    np.testing.assert_allclose(yt.numpy(), np.transpose(y_np, (0, 4, 1, 2, 3)), rtol=1e-6, atol=1e-6)
    # a 3-D tensor (one channel) keeps its rank for one filter
    y3 = conv3d_transpose(torch.ones(3, 3, 3), np.ones((2, 2, 2, 1, 1), np.float32), strides=2)
    assert isinstance(y3, torch.Tensor) and tuple(y3.shape) == (6, 6, 6)
    assert torch.all(y3 == 1)


def test_fp64_path_matches_the_reference_to_double_precision(ref):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 4, 3, 5, 2))
    kernel = rng.standard_normal((3, 2, 3, 3, 2))
    bias = rng.standard_normal(3)
    y = conv3d_transpose(x, kernel, bias, dilation_rate=(2, 1, 3), padding="same", precision="fp64")
    assert y.dtype == np.float64
    want = ref.layer_3d(to_ncdhw(x, "channels_last"), kernel, bias, (1, 1, 1), (2, 1, 3), "same", None)
    np.testing.assert_allclose(y, np.moveaxis(want, 1, -1), rtol=1e-12, atol=1e-12)
    y32 = conv3d_transpose(x, kernel, bias, dilation_rate=(2, 1, 3), padding="same")
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y, rtol=1e-5, atol=1e-5)
    yt = conv3d_transpose(torch.from_numpy(x), kernel, bias, dilation_rate=(2, 1, 3), padding="same", precision="fp64")
    assert yt.dtype == torch.float64


@pytest.mark.parametrize(
    "strides, dilation, op",
    [
        ((1, 1, 1), (1, 1, 1), None),
        ((2, 3, 1), (1, 1, 1), None),
        ((1, 1, 1), (2, 3, 1), None),
        ((2, 3, 2), (1, 1, 1), (1, 2, 0)),
    ],
)
def test_valid_padding_equals_torch_conv_transpose3d(strides, dilation, op):
    x, kernel, bias = rng_arrays(9, (2, 3, 4, 5, 3), (3, 3, 2, 2, 3), (2,))
    y = conv3d_transpose(
        x,
        kernel,
        bias,
        strides=strides,
        dilation_rate=dilation,
        output_padding=op,
        data_format="channels_first",
        precision="fp64",
    )
    # lengths coincide: K >= s on every axis, and torch's output_padding appends the same bias-only rows
    want = F.conv_transpose3d(
        torch.from_numpy(x).double(),
        torch.from_numpy(kernel).double().permute(4, 3, 0, 1, 2),
        torch.from_numpy(bias).double(),
        stride=strides,
        dilation=dilation,
        output_padding=op or 0,
    ).numpy()
    assert y.shape == want.shape
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- activations
def _erf(v):
    return np.vectorize(math.erf)(v)


def _softplus(v):
    return np.log1p(np.exp(-np.abs(v))) + np.maximum(v, 0)


ALPHA, SCALE = 1.6732632423543772, 1.0507009873554805
NUMPY_ACTIVATIONS = {
    "linear": lambda v: v,
    None: lambda v: v,
    "relu": lambda v: np.maximum(v, 0),
    "relu6": lambda v: np.clip(v, 0, 6),
    "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
    "hard_sigmoid": lambda v: np.clip(0.2 * v + 0.5, 0, 1),
    "tanh": np.tanh,
    "softplus": _softplus,
    "softsign": lambda v: v / (1 + np.abs(v)),
    "elu": lambda v: np.where(v > 0, v, np.expm1(np.minimum(v, 0))),
    "selu": lambda v: SCALE * np.where(v > 0, v, ALPHA * np.expm1(np.minimum(v, 0))),
    "exponential": np.exp,
    "swish": lambda v: v / (1 + np.exp(-v)),
    "silu": lambda v: v / (1 + np.exp(-v)),
    "gelu": lambda v: 0.5 * v * (1 + _erf(v / math.sqrt(2))),
    "leaky_relu": lambda v: np.where(v > 0, v, 0.2 * v),
    "mish": lambda v: v * np.tanh(_softplus(v)),
}


@pytest.mark.parametrize("name", list(NUMPY_ACTIVATIONS))
def test_elementwise_activations_match_numpy(name):
    # an identity kernel (1x1x1, weight 1) and zero bias: the layer's output is the activation of the input
    values = np.concatenate([np.linspace(-9, 9, 181), [-30.0, -2.5, -0.5, 0.0, 0.5, 2.5, 5.99, 6.0, 6.01, 30.0]])
    x = values.reshape(1, 1, len(values), 1)  # (D, H, W, C)
    y = conv3d_transpose(x, np.ones((1, 1, 1, 1, 1)), np.zeros(1), activation=name, precision="fp64")
    want = NUMPY_ACTIVATIONS[name](values)
    np.testing.assert_allclose(y.reshape(-1), want, rtol=1e-12, atol=1e-300)


def test_activation_constants_by_value():
    def act(name, v):
        x = np.array(v, dtype=np.float64).reshape(1, 1, -1, 1)
        return conv3d_transpose(x, np.ones((1, 1, 1, 1, 1)), activation=name, precision="fp64").reshape(-1)

    np.testing.assert_allclose(act("hard_sigmoid", [-2.5, -1.0, 0.0, 1.0, 2.5]), [0.0, 0.3, 0.5, 0.7, 1.0])
    np.testing.assert_allclose(act("leaky_relu", [-1.0, 2.0]), [-0.2, 2.0])
    np.testing.assert_allclose(
        act("selu", [1.0, -100.0]), [1.0507009873554805, -1.0507009873554805 * 1.6732632423543772]
    )
    np.testing.assert_allclose(act("gelu", [1.0]), [0.8413447460685429])  # exact erf form, not tanh (0.84119...)
    np.testing.assert_allclose(act("relu6", [-1.0, 3.0, 7.0]), [0.0, 3.0, 6.0])


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_axis_follows_keras_last_axis(name, ref):
    x, kernel, bias = rng_arrays(10, (2, 3, 3, 4, 2), (2, 2, 2, 3, 2), (3,))
    kw = dict(strides=2, padding="same", precision="fp64")
    # channels_last: over the channel (filters) axis
    y = conv3d_transpose(x, kernel, bias, activation=name, **kw)
    lin = conv3d_transpose(x, kernel, bias, **kw)
    want = ref.layer_3d(to_ncdhw(x, "channels_last"), kernel, bias, (2, 2, 2), (1, 1, 1), "same", None, name, 1)
    np.testing.assert_allclose(y, np.moveaxis(want, 1, -1), rtol=1e-10, atol=1e-12)
    if name == "softmax":
        np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-12)
    e = np.exp(lin - lin.max(-1, keepdims=True))
    np.testing.assert_allclose(y, _sm_or_log(e / e.sum(-1, keepdims=True), name), rtol=1e-10, atol=1e-12)
    # channels_first: over the WIDTH axis, Keras's quirk
    x_cf = np.ascontiguousarray(np.transpose(x, (0, 4, 1, 2, 3)))
    y = conv3d_transpose(x_cf, kernel, bias, activation=name, data_format="channels_first", **kw)
    lin = conv3d_transpose(x_cf, kernel, bias, data_format="channels_first", **kw)
    e = np.exp(lin - lin.max(-1, keepdims=True))
    np.testing.assert_allclose(y, _sm_or_log(e / e.sum(-1, keepdims=True), name), rtol=1e-10, atol=1e-12)
    if name == "softmax":
        np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-12)
        assert not np.allclose(y.sum(axis=1), 1.0)


def _sm_or_log(sm, name):
    return sm if name == "softmax" else np.log(sm)


# --------------------------------------------------------------------------- resample_image: the array and its affine
def test_resample_image_returns_the_output_affine_with_the_same_array():
    from deconv3d_cli.api import Resampled, resample, resample_image
    from deconv3d_cli.geometry.grid import output_grid

    x = np.arange(4 * 3 * 5, dtype=np.float32).reshape(4, 3, 5)
    a = np.diag([2.0, 1.0, 3.0, 1.0])
    a[:3, 3] = [10.0, 20.0, 30.0]
    result = resample_image(x, voxel_size=1.0, affine=a, interp="cubic")
    assert isinstance(result, Resampled)
    y, affine = result  # unpacks as (array, affine)
    assert np.array_equal(y, resample(x, voxel_size=1.0, affine=a, interp="cubic"))
    assert y.shape == result.shape == (8, 3, 15)
    # the field of view is kept: origin - spacing_in / 2 + spacing_out / 2 on each axis
    want = np.diag([1.0, 1.0, 1.0, 1.0])
    want[:3, 3] = [9.5, 20.0, 29.0]
    assert affine.dtype == np.float64 and np.array_equal(affine, want)
    assert np.array_equal(affine, output_grid(x.shape, a, voxel_size=1.0).affine)
    assert result.spacing == (1.0, 1.0, 1.0)
    affine[0, 3] = 0.0  # the caller's copy: writable, and the next call is unaffected
    again = resample_image(x * 2, like=resample_image(x, voxel_size=1.0, affine=a), affine=a)
    assert again.shape == (8, 3, 15) and again.affine[0, 3] == 9.5


def test_resample_image_of_a_torch_tensor_keeps_torch_and_gives_a_numpy_affine():
    import torch

    from deconv3d_cli.api import resample_image

    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)  # channels_last, 2 channels
    y, affine = resample_image(x, scale=2, spacing=(1.0, 2.0, 0.5), interp="nearest")
    assert isinstance(y, torch.Tensor) and tuple(y.shape) == (4, 6, 4, 2)
    assert isinstance(affine, np.ndarray)
    assert np.array_equal(np.diag(affine)[:3], [0.5, 1.0, 0.25])
    assert np.array_equal(affine[:3, 3], [-0.25, -0.5, -0.125])
