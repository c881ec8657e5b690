"""Golden tests: the package against tf.keras's own Conv3DTranspose output.

The fixtures in tests/golden/cases.npz were produced by tests/golden/make_golden.py with
TensorFlow + tf-keras (Keras 2 semantics; dilated cases via Keras 3 on the TensorFlow backend,
cross-checked against a zero-inserted kernel). See tests/golden/README.md to regenerate them.
These tests need neither TensorFlow nor Keras.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deconv3d_cli import Conv3DTranspose, LayerSpec, SpecError, conv3d_transpose

FIXTURE = Path(__file__).resolve().parent / "golden" / "cases.npz"

# Keras's Conv3DTranspose keyword arguments that `conv3d_transpose` takes (filters and kernel_size
# are inferred from the kernel unless given).
HYPER = ("strides", "padding", "output_padding", "data_format", "dilation_rate", "activation", "use_bias")

_DATA = np.load(FIXTURE, allow_pickle=False)
CASES: list[str] = json.loads(str(_DATA["index"]))
REFUSALS: list[dict] = json.loads(str(_DATA["refusals"]))


def load(cid: str):
    """x, kernel, bias (or None), config dict, y (float32), y64 (float64 or None)."""
    x = _DATA[cid + "__x"]
    kernel = _DATA[cid + "__kernel"]
    bias = _DATA[cid + "__bias"] if cid + "__bias" in _DATA.files else None
    config = json.loads(str(_DATA[cid + "__config"]))
    y = _DATA[cid + "__y"]
    y64 = _DATA[cid + "__y64"] if cid + "__y64" in _DATA.files else None
    return x, kernel, bias, config, y, y64


def hyper(config: dict) -> dict:
    return {k: config[k] for k in HYPER}


def assert_matches(got, want, rtol=1e-5, scale=1e-5):
    got = np.asarray(got)
    assert got.shape == want.shape, f"shape {got.shape} != reference {want.shape}"
    np.testing.assert_allclose(
        got.astype(np.float64),
        want.astype(np.float64),
        rtol=rtol,
        atol=scale * max(1.0, float(np.abs(want).max())),
    )


def weights(kernel, bias):
    return [kernel] if bias is None else [kernel, bias]


# A few stable subsets (every n-th case) for the slower or more specialised checks.
SUBSET = CASES[::4]
BATCH1 = [c for c in CASES if _DATA[c + "__x"].shape[0] == 1][::3]


def test_fixture_sanity():
    assert len(CASES) >= 60
    assert len(REFUSALS) >= 4
    acts = {json.loads(str(_DATA[c + "__config"]))["activation"] for c in CASES}
    assert {"linear", "softmax", "log_softmax", "gelu", "mish"} <= acts


# ---------------------------------------------------------------- functional API, every case
@pytest.mark.parametrize("cid", CASES)
def test_functional_fp32(cid):
    x, kernel, bias, config, y, _ = load(cid)
    got = conv3d_transpose(x, kernel, bias, **hyper(config))
    assert_matches(got, y)


@pytest.mark.parametrize("cid", CASES)
def test_functional_fp64(cid):
    x, kernel, bias, config, y, y64 = load(cid)
    got = conv3d_transpose(x, kernel, bias, precision="fp64", **hyper(config))
    assert_matches(got, y)
    if y64 is not None:
        # Against Keras run in float64: much tighter. (Not 1e-12: TF's float64 leaky_relu uses
        # a float32 alpha, its gelu differs at ~1e-9; 1e-7 still catches any real mistake.)
        assert_matches(got, y64, rtol=1e-7, scale=1e-7)


@pytest.mark.parametrize("cid", SUBSET)
def test_functional_explicit_filters_and_kernel_size(cid):
    x, kernel, bias, config, y, _ = load(cid)
    got = conv3d_transpose(
        x, kernel, bias, filters=config["filters"], kernel_size=config["kernel_size"], **hyper(config)
    )
    assert_matches(got, y)


@pytest.mark.parametrize("cid", BATCH1)
def test_functional_without_batch_axis(cid):
    x, kernel, bias, config, y, _ = load(cid)
    got = conv3d_transpose(x[0], kernel, bias, **hyper(config))
    assert_matches(got, y[0])


# ---------------------------------------------------------------- Keras-like class
@pytest.mark.parametrize("cid", CASES)
def test_layer_class_from_get_config(cid):
    x, kernel, bias, config, y, _ = load(cid)
    layer = Conv3DTranspose(**config)  # the full tf.keras get_config(), name/dtype/... included
    layer.build(x.shape)
    layer.set_weights(weights(kernel, bias))
    assert_matches(layer(x), y)


@pytest.mark.parametrize("cid", SUBSET)
def test_layer_spec_from_mapping(cid):
    config = load(cid)[3]
    plain = LayerSpec.from_mapping(config)
    wrapped = LayerSpec.from_mapping({"class_name": "Conv3DTranspose", "config": config})
    if type(plain).__eq__ is object.__eq__:
        assert vars(plain) == vars(wrapped)
    else:
        assert plain == wrapped


# ---------------------------------------------------------------- refusals
def refusal_arrays(r):
    cfg = r["config"]
    ks = cfg["kernel_size"]
    ks = tuple(ks) if isinstance(ks, (list, tuple)) else (ks,) * 3
    shape = tuple(r["input_shape"])
    cin = shape[1] if cfg["data_format"] == "channels_first" else shape[-1]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    kernel = rng.standard_normal(ks + (max(cfg["filters"], 0), cin)).astype(np.float32)
    bias = rng.standard_normal(max(cfg["filters"], 0)).astype(np.float32) if cfg["use_bias"] else None
    return x, kernel, bias


def assert_names_field(err, r):
    text = str(err).lower() + " " + str(getattr(err, "field", "") or "").lower()
    assert any(word.lower() in text for word in r["field"]), (
        f"error for {r['id']} ({r['why']}) should name one of {r['field']}: {err}"
    )


@pytest.mark.parametrize("r", REFUSALS, ids=[r["id"] for r in REFUSALS])
def test_refusal_functional(r):
    x, kernel, bias = refusal_arrays(r)
    cfg = r["config"]
    with pytest.raises(SpecError) as ei:
        conv3d_transpose(x, kernel, bias, filters=cfg["filters"], kernel_size=cfg["kernel_size"], **hyper(cfg))
    assert isinstance(ei.value, ValueError)
    assert_names_field(ei.value, r)


@pytest.mark.parametrize("r", REFUSALS, ids=[r["id"] for r in REFUSALS])
def test_refusal_layer_class(r):
    x, kernel, bias = refusal_arrays(r)
    with pytest.raises(SpecError) as ei:
        layer = Conv3DTranspose(**r["config"])
        layer.build(x.shape)
        layer.set_weights(weights(kernel, bias))
        layer(x)
    assert_names_field(ei.value, r)
