#!/usr/bin/env python
"""Generate the golden fixtures that pin `deconv3d_cli` to tf.keras's Conv3DTranspose.

Why this exists
---------------
The package reproduces `tf.keras.layers.Conv3DTranspose` (Keras 2 semantics, TensorFlow's
SAME/VALID rules; see /work/shared/SEMANTICS.md, the project's semantics spec) with a PyTorch
engine. The tests in `tests/test_golden.py` must run without TensorFlow, so this script runs the
real Keras layer once, on small deterministic random cases, and stores inputs, weights, layer
configs and outputs in `tests/golden/cases.npz`. The tests compare the package against those
arrays.

How to regenerate
-----------------
    pip install -e '.[golden]'          # the `golden` extra pulls tensorflow-cpu and tf-keras
    python tests/golden/make_golden.py  # writes tests/golden/cases.npz (deterministic)

(tf-keras must match TensorFlow's minor version, e.g. tensorflow 2.21 with tf-keras 2.21; keras 3
comes with tensorflow and is used, in a subprocess, for the dilated cases.) Any environment with
those packages works, e.g. `/tmp/tfenv/bin/python tests/golden/make_golden.py`.

What is produced
----------------
* Ordinary cases: a `tf_keras` (Keras 2) Conv3DTranspose layer built in float32 with random normal
  kernel and bias set through `set_weights`; `y` is the layer's output. A float64 reference `y64`
  (same weights, same layer built with dtype float64) is stored for the cases whose output is
  small, so the package's fp64 path can be checked at a tight tolerance.
* Dilated cases: tf.keras 2 accepts `dilation_rate` for Conv3DTranspose and silently ignores it,
  so its output is NOT a reference. The convolution (+ bias) is computed by Keras 3 on the
  TensorFlow backend (`KERAS_BACKEND=tensorflow`) in a separate process
  (`make_golden.py --keras3-dilated IN OUT`, started by this script), and the tf.keras 2 activation
  function is then applied to it (Keras 3 changed some activation formulas, e.g. hard_sigmoid;
  the package follows Keras 2). The result is cross-checked against the exact identity "kernel of
  size k with dilation d == kernel of size (k-1)*d+1 with zeros between the taps, dilation 1" run
  through tf.keras 2; generation fails if the two disagree.
* Refusals: configurations Keras refuses (output_padding >= stride, `same` + output_padding with
  an even effective kernel and op == 0 on some axis (TensorFlow raises AbortedError at call time),
  strides > 1 with dilation > 1, padding 'causal' or unknown, unknown activation, non-positive
  sizes). Each one is tried on tf.keras 2 here and the exception Keras raised is recorded.

Stored layout (np.load(..., allow_pickle=False) works): key `index` is a JSON list of case ids,
key `refusals` a JSON list of refusal records; per case `<id>__x`, `<id>__kernel` (Keras layout
(kd, kh, kw, filters, in)), `<id>__bias` (absent when use_bias is False), `<id>__y` (float32),
optionally `<id>__y64` (float64), and `<id>__config` (JSON: the tf.keras 2 `layer.get_config()`
plus the `dilation_rate` that was intended, since tf.keras 2 drops it from the config).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

HERE = Path(__file__).resolve().parent
OUT_FILE = HERE / "cases.npz"
SEED = 20240607

ACTIVATIONS = [
    "linear",
    "relu",
    "relu6",
    "sigmoid",
    "hard_sigmoid",
    "tanh",
    "softplus",
    "softsign",
    "elu",
    "selu",
    "exponential",
    "swish",
    "silu",
    "gelu",
    "softmax",
    "log_softmax",
    "leaky_relu",
    "mish",
]

# Keep the fixtures small: at most this many output elements per case (and a float64 copy of y
# only below Y64_LIMIT).
MAX_OUT = 4000
Y64_LIMIT = 1200


# --------------------------------------------------------------------------------------------
# Geometry (SEMANTICS.md), used only to size cases and skip illegal ones before running Keras.
# --------------------------------------------------------------------------------------------


def eff_k(k, d):
    return (k - 1) * d + 1


def out_len(i, k, s, d, pad, op):
    K = eff_k(k, d)
    if op is None:
        return i * s + max(K - s, 0) if pad == "valid" else i * s
    return (i - 1) * s + K + op if pad == "valid" else (i - 1) * s + K - 2 * (K // 2) + op


def is_legal(c):
    k, s, d, op = c["kernel_size"], c["strides"], c["dilation_rate"], c["output_padding"]
    if any(si > 1 for si in s) and any(di > 1 for di in d):
        return False
    if op is not None:
        if any(o >= si for o, si in zip(op, s)):
            return False
        if c["padding"] == "same" and any(eff_k(ki, di) % 2 == 0 and o == 0 for ki, di, o in zip(k, d, op)):
            return False
    return True


def out_shape(c):
    op = c["output_padding"] or (None, None, None)
    sp = tuple(
        out_len(i, k, s, d, c["padding"], o)
        for i, k, s, d, o in zip(c["spatial"], c["kernel_size"], c["strides"], c["dilation_rate"], op)
    )
    return sp


def n_out(c):
    return c["batch"] * c["filters"] * int(np.prod(out_shape(c)))


# --------------------------------------------------------------------------------------------
# Case list (deterministic).
# --------------------------------------------------------------------------------------------


def case(
    spatial,
    k,
    s,
    pad="valid",
    op=None,
    df="channels_last",
    act="linear",
    bias=True,
    batch=1,
    cin=2,
    filters=2,
    d=(1, 1, 1),
    gain=1.5,
    tag="",
):
    def t3(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)

    return dict(
        spatial=t3(spatial),
        kernel_size=t3(k),
        strides=t3(s),
        padding=pad,
        output_padding=None if op is None else t3(op),
        data_format=df,
        activation=act,
        use_bias=bias,
        batch=batch,
        cin=cin,
        filters=filters,
        dilation_rate=t3(d),
        gain=gain,
        tag=tag,
    )


def case_id(n, c):
    def j(t):
        return "".join(str(v) for v in t)

    parts = [
        f"{n:03d}",
        c["tag"] or "g",
        f"i{j(c['spatial'])}",
        f"k{j(c['kernel_size'])}",
        f"s{j(c['strides'])}",
    ]
    if any(v > 1 for v in c["dilation_rate"]):
        parts.append(f"d{j(c['dilation_rate'])}")
    parts.append(c["padding"])
    parts.append("opN" if c["output_padding"] is None else f"op{j(c['output_padding'])}")
    parts.append("cf" if c["data_format"] == "channels_first" else "cl")
    parts.append(c["activation"])
    if not c["use_bias"]:
        parts.append("nobias")
    parts.append(f"n{c['batch']}c{c['cin']}f{c['filters']}")
    return "_".join(parts)


def build_cases():
    cases = []

    # A. Every activation, on varied geometry. Gains chosen so that relu6 / hard_sigmoid saturate
    #    somewhere and exponential stays far from overflow.
    geos = [
        dict(spatial=(3, 4, 2), k=(3, 2, 2), s=(2, 1, 2), pad="same"),
        dict(spatial=(2, 3, 3), k=(2, 3, 1), s=(1, 2, 3), pad="valid"),
        dict(spatial=(3, 2, 4), k=(3, 3, 3), s=(2, 2, 1), pad="same", op=(1, 0, 0)),
        dict(spatial=(2, 4, 3), k=(1, 3, 2), s=(3, 1, 2), pad="valid", op=(2, 0, 1)),
    ]
    gains = {
        "relu6": 6.0,
        "hard_sigmoid": 4.0,
        "exponential": 1.0,
        "softmax": 2.5,
        "log_softmax": 2.5,
        "selu": 2.0,
        "elu": 2.0,
    }
    for n, act in enumerate(ACTIVATIONS):
        g = geos[n % len(geos)]
        cases.append(
            case(
                act=act,
                gain=gains.get(act, 1.5),
                batch=1 + n % 2,
                cin=1 + n % 3,
                filters=1 + (n + 1) % 3,
                tag="act",
                **g,
            )
        )
    # softmax / log_softmax under channels_first act on the WIDTH axis in Keras: explicit cases.
    cases.append(
        case(
            (2, 3, 4), (2, 2, 3), (2, 1, 2), "same", df="channels_first", act="softmax", filters=3, gain=2.5, tag="act"
        )
    )
    cases.append(
        case(
            (3, 2, 3),
            (3, 1, 2),
            (1, 2, 3),
            "valid",
            op=(0, 1, 2),
            df="channels_first",
            act="log_softmax",
            batch=2,
            filters=2,
            gain=2.5,
            tag="act",
        )
    )
    cases.append(
        case(
            (2, 2, 2),
            (1, 1, 1),
            (1, 1, 1),
            "valid",
            df="channels_first",
            act="softmax",
            cin=3,
            filters=1,
            gain=2.5,
            tag="act",
        )
    )  # filters=1: softmax over W, not C
    for act in ("gelu", "relu6", "elu", "mish", "hard_sigmoid"):
        cases.append(
            case(
                (2, 3, 2),
                (2, 3, 2),
                (2, 2, 1),
                "same",
                df="channels_first",
                act=act,
                gain=gains.get(act, 1.5) if act != "relu6" else 6.0,
                cin=2,
                filters=2,
                tag="act",
            )
        )

    # B. Explicit geometry corner cases.
    cases += [
        case((1, 1, 1), (1, 1, 1), (1, 1, 1), tag="geo"),  # trivial
        case((1, 1, 1), (4, 3, 2), (3, 2, 1), "same", tag="geo"),  # one voxel
        case((1, 1, 1), (2, 4, 3), (3, 3, 2), "valid", op=(2, 1, 1), tag="geo"),
        case((3, 3, 3), (1, 1, 1), (1, 1, 1), "same", cin=3, filters=3, tag="geo"),  # 1x1x1
        # kernel smaller than stride: bias-only tail positions
        case((3, 2, 4), (1, 2, 1), (3, 3, 2), "valid", tag="kls"),
        case((3, 2, 4), (1, 2, 1), (3, 3, 2), "same", tag="kls"),
        case((2, 3, 2), (1, 1, 2), (3, 2, 3), "valid", op=(2, 1, 2), tag="kls"),
        case((4, 2, 3), (2, 1, 1), (3, 2, 3), "same", op=(1, 1, 2), tag="kls"),
        case((2, 2, 3), (1, 2, 2), (3, 3, 3), "valid", bias=False, tag="kls"),
        case((2, 3, 2), (2, 1, 2), (3, 3, 3), "same", df="channels_first", act="relu", tag="kls"),
        # same + output_padding: odd K with op=0 is legal; even K needs op>=1
        case((3, 4, 2), (3, 1, 3), (2, 2, 1), "same", op=(0, 0, 0), tag="sop"),
        case((3, 3, 3), (2, 4, 2), (2, 3, 2), "same", op=(1, 2, 1), tag="sop"),
        case((2, 3, 4), (4, 3, 1), (3, 2, 3), "same", op=(2, 1, 0), df="channels_first", tag="sop"),
        case((4, 2, 3), (3, 2, 3), (1, 2, 3), "same", op=(0, 1, 2), bias=False, tag="sop"),
        # anisotropic everything, strides 3 with every legal op
        case((2, 2, 2), (4, 4, 4), (3, 3, 3), "valid", op=(2, 1, 0), tag="geo"),
        case((2, 2, 2), (4, 4, 4), (3, 3, 3), "same", tag="geo"),
        case((5, 2, 3), (1, 3, 2), (1, 2, 3), "valid", tag="geo"),
        case((7, 1, 6), (4, 1, 3), (1, 3, 2), "same", cin=1, filters=1, tag="geo"),
        case((1, 7, 5), (2, 4, 1), (2, 1, 1), "valid", cin=3, filters=1, df="channels_first", tag="geo"),
        case((6, 5, 7), (3, 3, 3), (1, 1, 1), "same", cin=1, filters=2, bias=False, tag="geo"),
        case((6, 5, 7), (4, 2, 3), (1, 1, 1), "valid", cin=2, filters=1, tag="geo"),
    ]

    # C. Random sweep over kernel 1..4, stride 1..3, padding, op (None / random legal / max legal),
    #    layout, bias, batch, channels.
    rng = np.random.default_rng(SEED)
    n_random = 34
    made = 0
    while made < n_random:
        k = tuple(int(v) for v in rng.integers(1, 5, 3))
        s = tuple(int(v) for v in rng.integers(1, 4, 3))
        spatial = tuple(int(v) for v in rng.integers(1, 8, 3))
        pad = ("valid", "same")[made % 2]
        mode = (made // 2) % 3
        if mode == 0:
            op = None
        elif mode == 1:
            op = tuple(int(rng.integers(0, si)) for si in s)
        else:
            op = tuple(si - 1 for si in s)
        c = case(
            spatial,
            k,
            s,
            pad,
            op,
            df=("channels_last", "channels_first")[int(rng.integers(0, 2))],
            act=("linear", "linear", "relu", "tanh", "sigmoid", "softplus")[made % 6],
            bias=bool(rng.integers(0, 4) > 0),
            batch=int(rng.integers(1, 3)),
            cin=int(rng.integers(1, 4)),
            filters=int(rng.integers(1, 4)),
            tag="rnd",
        )
        if not is_legal(c) or n_out(c) > MAX_OUT:
            continue
        cases.append(c)
        made += 1

    # D. Dilation (stride 1), reference from Keras 3 (see module docstring).
    cases += [
        case((3, 4, 3), (2, 3, 2), 1, "valid", d=(1, 2, 3), tag="dil"),
        case((3, 4, 3), (2, 3, 2), 1, "same", d=(1, 2, 3), tag="dil"),
        case((4, 3, 3), (3, 2, 3), 1, "same", d=(2, 2, 1), act="relu", batch=2, tag="dil"),
        case((3, 3, 2), (3, 3, 3), 1, "valid", d=(3, 1, 2), df="channels_first", act="tanh", tag="dil"),
        case(
            (3, 3, 2), (2, 2, 3), 1, "same", d=(3, 3, 2), df="channels_first", act="gelu", cin=1, filters=3, tag="dil"
        ),
        # op=0 under same with an odd effective kernel: legal; k=2,d=2 -> K=3 odd (tf.keras 2, which
        # ignores dilation, would abort on this one since its k=2 is even).
        case((3, 2, 4), (2, 4, 1), 1, "same", op=(0, 0, 0), d=(2, 2, 1), tag="dil"),
        case((2, 3, 3), (3, 1, 2), 1, "valid", op=(0, 0, 0), d=(2, 1, 2), bias=False, tag="dil"),
        case((3, 3, 3), (2, 2, 2), 1, "same", d=(2, 2, 2), act="softmax", df="channels_first", gain=2.5, tag="dil"),
        case((2, 4, 3), (4, 1, 3), 1, "valid", d=(2, 3, 3), act="hard_sigmoid", gain=4.0, tag="dil"),
        case((1, 2, 5), (2, 3, 2), 1, "same", d=(3, 2, 3), act="leaky_relu", cin=3, filters=1, tag="dil"),
    ]

    for c in cases:
        assert is_legal(c), c
        assert n_out(c) <= MAX_OUT * 2, (c, n_out(c))
    return cases


def refusal_records():
    """Configurations that must be refused. `config` holds Conv3DTranspose keyword arguments;
    `input_shape` is channels_last (N, D, H, W, C) unless data_format says otherwise; `field`
    lists words of which at least one must appear in the error."""
    base = dict(
        filters=2,
        kernel_size=(2, 3, 1),
        strides=(2, 1, 3),
        padding="valid",
        output_padding=None,
        data_format="channels_last",
        dilation_rate=(1, 1, 1),
        activation="linear",
        use_bias=True,
    )
    R = []

    def add(rid, why, field, shape=(1, 3, 3, 3, 2), **over):
        cfg = dict(base)
        cfg.update(over)
        R.append(dict(id=rid, why=why, field=field, config=cfg, input_shape=list(shape)))

    add("op_eq_stride", "output_padding must be < strides on every axis", ["output_padding"], output_padding=(2, 0, 0))
    add("op_gt_stride_unit", "output_padding 1 on an axis with stride 1", ["output_padding"], output_padding=(0, 1, 0))
    add(
        "op_eq_stride_same",
        "output_padding must be < strides (same padding)",
        ["output_padding"],
        padding="same",
        output_padding=(1, 0, 3),
    )
    add(
        "same_op0_evenK",
        "same + output_padding with even K and op == 0 on axis 0: TF aborts",
        ["output_padding"],
        padding="same",
        output_padding=(0, 0, 0),
    )
    add(
        "same_op0_evenK_lastaxis",
        "same + output_padding, even K (k=4) and op == 0 on the last axis",
        ["output_padding"],
        kernel_size=(3, 3, 4),
        strides=(2, 2, 2),
        padding="same",
        output_padding=(1, 0, 0),
    )
    add(
        "same_op0_evenK_dilated",
        "stride 1, k=2 with dilation 3 -> K=4 even, same + op 0",
        ["output_padding"],
        kernel_size=(2, 3, 3),
        strides=(1, 1, 1),
        padding="same",
        output_padding=(0, 0, 0),
        dilation_rate=(3, 1, 1),
    )
    add(
        "stride_and_dilation",
        "strides > 1 together with dilation_rate > 1",
        ["dilation", "strides"],
        strides=(2, 1, 1),
        dilation_rate=(1, 2, 1),
    )
    add(
        "stride_and_dilation_other_axes",
        "strides > 1 on one axis, dilation > 1 on another",
        ["dilation", "strides"],
        strides=(1, 1, 3),
        dilation_rate=(2, 1, 1),
        kernel_size=2,
    )
    add("padding_causal", "causal padding is Conv1D-only", ["causal", "padding"], padding="causal")
    add("padding_full", "unknown padding", ["padding"], padding="full")
    add("activation_unknown", "unknown activation name", ["activation"], activation="not_an_activation")
    add("filters_zero", "non-positive filters", ["filters"], filters=0)
    add("kernel_size_zero", "non-positive kernel_size", ["kernel_size"], kernel_size=(2, 0, 1))
    add("strides_zero", "non-positive strides", ["strides"], strides=(2, 0, 1))
    add("dilation_zero", "non-positive dilation_rate", ["dilation"], strides=(1, 1, 1), dilation_rate=(1, 0, 1))
    add(
        "op_same_cf_evenK",
        "channels_first: same + op, even K and op == 0 on axis 1",
        ["output_padding"],
        shape=(1, 2, 3, 3, 3),
        data_format="channels_first",
        kernel_size=(3, 2, 3),
        strides=(2, 2, 2),
        padding="same",
        output_padding=(1, 0, 1),
    )
    return R


# --------------------------------------------------------------------------------------------
# Keras runs.
# --------------------------------------------------------------------------------------------


def layer_kwargs(c, activation=None):
    return dict(
        filters=c["filters"],
        kernel_size=c["kernel_size"],
        strides=c["strides"],
        padding=c["padding"],
        output_padding=c["output_padding"],
        data_format=c["data_format"],
        dilation_rate=c["dilation_rate"],
        use_bias=c["use_bias"],
        activation=c["activation"] if activation is None else activation,
    )


def draw_arrays(c, seed):
    rng = np.random.default_rng(seed)
    I = c["spatial"]
    if c["data_format"] == "channels_last":
        xs = (c["batch"],) + I + (c["cin"],)
    else:
        xs = (c["batch"], c["cin"]) + I
    x = rng.standard_normal(xs).astype(np.float32)
    # Scale so that each output sums O(1)-variance terms: std ~ gain.
    taps = c["cin"] * np.prod([math.ceil(k / s) for k, s in zip(c["kernel_size"], c["strides"])])
    kernel = (rng.standard_normal(c["kernel_size"] + (c["filters"], c["cin"])) * (c["gain"] / math.sqrt(taps))).astype(
        np.float32
    )
    bias = (rng.standard_normal(c["filters"]) * 0.5).astype(np.float32) if c["use_bias"] else None
    return x, kernel, bias


def run_tf_keras(c, x, kernel, bias, dtype, name, activation=None, kernel_override=None, dilation=None, call=True):
    import tf_keras as keras

    kw = layer_kwargs(c, activation)
    k = kernel if kernel_override is None else kernel_override
    if kernel_override is not None:
        kw["kernel_size"] = tuple(k.shape[:3])
    if dilation is not None:
        kw["dilation_rate"] = dilation
    layer = keras.layers.Conv3DTranspose(name=name, dtype=dtype, **kw)
    xx = x.astype(dtype)
    layer.build(xx.shape)
    w = [k.astype(dtype)] + ([bias.astype(dtype)] if bias is not None else [])
    layer.set_weights(w)
    # Dilated cases are only built (for get_config): tf.keras 2 would ignore the dilation, and
    # may even abort (same + op with the undilated k even).
    if not call:
        return layer, None
    try:
        return layer, np.asarray(layer(xx))
    except Exception as e:  # noqa: BLE001
        # Without oneDNN, TensorFlow's CPU kernel supports only NDHWC ("Conv3DBackpropInputOpV2
        # only supports NDHWC on the CPU"). Then compute the same layer in channels_last with a
        # linear activation, move the axes back, and apply the layer's own activation function
        # to the channels_first tensor -- exactly what the layer's call() does.
        if kw["data_format"] != "channels_first" or "NDHWC" not in str(e):
            raise
        kw2 = dict(kw, data_format="channels_last", activation="linear")
        l2 = keras.layers.Conv3DTranspose(name=name + "_cl", dtype=dtype, **kw2)
        x2 = np.moveaxis(xx, 1, -1)
        l2.build(x2.shape)
        l2.set_weights(w)
        pre = np.moveaxis(np.asarray(l2(x2)), -1, 1)
        import tensorflow as tf

        return layer, np.asarray(layer.activation(tf.constant(pre)))


def tf_keras_activation(name, y):
    import tensorflow as tf
    import tf_keras as keras

    return np.asarray(keras.activations.get(name)(tf.constant(y)))


def zero_insert(kernel, d):
    K = tuple(eff_k(kernel.shape[a], d[a]) for a in range(3))
    out = np.zeros(K + kernel.shape[3:], kernel.dtype)
    out[:: d[0], :: d[1], :: d[2]] = kernel
    return out


def keras3_child(inp, outp):
    """Subprocess: Keras 3 on the TensorFlow backend, conv + bias only (activation linear)."""
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras

    assert keras.backend.backend() == "tensorflow", keras.backend.backend()
    data = np.load(inp, allow_pickle=False)
    specs = json.loads(str(data["specs"]))
    res = {}
    for sp in specs:
        cid = sp["id"]
        kw = dict(sp["kwargs"])
        kw["activation"] = "linear"
        layer = keras.layers.Conv3DTranspose(dtype="float32", **kw)
        x = data[cid + "__x"]
        layer.build(x.shape)
        w = [data[cid + "__kernel"]]
        if kw["use_bias"]:
            w.append(data[cid + "__bias"])
        layer.set_weights(w)
        try:
            res[cid + "__float32"] = np.asarray(keras.ops.convert_to_numpy(layer(x)))
        except Exception as e:  # noqa: BLE001
            # TF's CPU kernel supports dilation only through oneDNN (float32, x86). Without it the
            # parent falls back to the zero-inserted kernel (an exact identity) and says so.
            print(f"keras3 failed on {cid}: {type(e).__name__}", file=sys.stderr)
        res[cid + "__keras3_config"] = np.array(json.dumps(layer.get_config(), default=str))
    res["keras_version"] = np.array(keras.__version__)
    np.savez(outp, **res)


def try_refusal(r, seed):
    """Run a refusal configuration through tf.keras 2 and record what it raised."""
    import tf_keras as keras

    cfg = dict(r["config"])
    rng = np.random.default_rng(seed)
    try:
        layer = keras.layers.Conv3DTranspose(**cfg)
        x = rng.standard_normal(r["input_shape"]).astype(np.float32)
        y = layer(x)
        if any(d > 1 for d in np.atleast_1d(cfg["dilation_rate"])):
            return f"(accepted by tf.keras 2 with dilation ignored; output {tuple(y.shape)}; refused per SEMANTICS.md)"
        return None
    except Exception as e:  # noqa: BLE001 - we record whatever Keras raised
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"{type(e).__name__}: {msg}"[:300]


def main():
    import tensorflow as tf
    import tf_keras as keras

    tf.random.set_seed(SEED)  # nothing random is drawn from TF, but be safe
    cases = build_cases()
    arrays = {}
    index = []
    dilated = []
    ids = {}
    for n, c in enumerate(cases):
        cid = case_id(n, c)
        ids[cid] = c
        index.append(cid)
        x, kernel, bias = draw_arrays(c, SEED + n)
        is_dil = any(v > 1 for v in c["dilation_rate"])
        layer, y = run_tf_keras(c, x, kernel, bias, "float32", f"golden_{n:03d}", call=not is_dil)
        cfg = layer.get_config()
        assert "dilation_rate" not in cfg or tuple(cfg["dilation_rate"]) == c["dilation_rate"]
        cfg["dilation_rate"] = list(c["dilation_rate"])
        arrays[cid + "__x"] = x
        arrays[cid + "__kernel"] = kernel
        if bias is not None:
            arrays[cid + "__bias"] = bias
        arrays[cid + "__config"] = np.array(json.dumps(cfg, default=list))
        if is_dil:
            dilated.append(cid)
            continue  # y comes from Keras 3 below
        expect = (c["batch"],) + (
            (c["filters"],) + out_shape(c) if c["data_format"] == "channels_first" else out_shape(c) + (c["filters"],)
        )
        assert y.shape == expect, (cid, y.shape, expect)
        arrays[cid + "__y"] = y.astype(np.float32)
        if y.size <= Y64_LIMIT:
            _, y64 = run_tf_keras(c, x, kernel, bias, "float64", f"golden64_{n:03d}")
            arrays[cid + "__y64"] = y64.astype(np.float64)

    # Dilated cases: Keras 3 (TF backend) in a separate process.
    keras3_version = None
    methods = {}
    if dilated:
        with tempfile.TemporaryDirectory() as td:
            inp, outp = Path(td) / "in.npz", Path(td) / "out.npz"
            specs = []
            payload = {}
            for cid in dilated:
                c = ids[cid]
                kw = layer_kwargs(c)
                kw = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()}
                specs.append(dict(id=cid, kwargs=kw))
                for key in ("x", "kernel", "bias"):
                    if f"{cid}__{key}" in arrays:
                        payload[f"{cid}__{key}"] = arrays[f"{cid}__{key}"]
            np.savez(inp, specs=np.array(json.dumps(specs)), **payload)
            env = dict(os.environ, KERAS_BACKEND="tensorflow")
            subprocess.run([sys.executable, __file__, "--keras3-dilated", str(inp), str(outp)], check=True, env=env)
            res = np.load(outp, allow_pickle=False)
            keras3_version = str(res["keras_version"])
            for cid in dilated:
                c = ids[cid]
                n = index.index(cid)
                x, kernel = arrays[cid + "__x"], arrays[cid + "__kernel"]
                bias = arrays.get(cid + "__bias")
                expect = (c["batch"],) + (
                    (c["filters"],) + out_shape(c)
                    if c["data_format"] == "channels_first"
                    else out_shape(c) + (c["filters"],)
                )
                # Zero-inserted kernel, dilation 1, through tf.keras 2 (an exact identity):
                # the float64 reference, the cross-check of Keras 3, and the fallback.
                kz = zero_insert(kernel, c["dilation_rate"])
                cz = dict(c)
                cz["kernel_size"] = tuple(kz.shape[:3])
                cz["dilation_rate"] = (1, 1, 1)
                _, y64 = run_tf_keras(
                    cz, x, kernel, bias, "float64", f"goldenz64_{n:03d}", kernel_override=kz, dilation=(1, 1, 1)
                )
                _, yz32 = run_tf_keras(
                    cz, x, kernel, bias, "float32", f"goldenz32_{n:03d}", kernel_override=kz, dilation=(1, 1, 1)
                )
                assert y64.shape == expect, (cid, y64.shape, expect)
                if cid + "__float32" in res.files:
                    y32 = tf_keras_activation(c["activation"], res[cid + "__float32"])
                    methods[cid] = "keras3-tf-backend conv+bias, tf.keras 2 activation"
                    err32 = np.abs(y64 - y32).max()
                    assert err32 <= 1e-5 * max(1.0, np.abs(y64).max()), (cid, err32)
                else:
                    y32 = yz32
                    methods[cid] = "tf.keras 2 with zero-inserted kernel (Keras 3 unavailable)"
                assert y32.shape == expect, (cid, y32.shape, expect)
                assert np.abs(yz32 - y32).max() <= 1e-5 * max(1.0, np.abs(y64).max()), cid
                arrays[cid + "__y"] = y32.astype(np.float32)
                if y32.size <= Y64_LIMIT:
                    arrays[cid + "__y64"] = y64.astype(np.float64)
                arrays[cid + "__keras3_config"] = res[cid + "__keras3_config"]

    # Refusals.
    refusals = refusal_records()
    for j, r in enumerate(refusals):
        r["keras_error"] = try_refusal(r, SEED + 10_000 + j)
        r["config"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in r["config"].items()}
        if r["keras_error"] is None:
            raise SystemExit(f"refusal {r['id']} was accepted by tf.keras 2; check the case")

    meta = dict(
        tensorflow=tf.__version__,
        tf_keras=keras.__version__,
        keras3=keras3_version,
        numpy=np.__version__,
        seed=SEED,
        n_cases=len(index),
        n_dilated=len(dilated),
        n_refusals=len(refusals),
        dilated_reference=methods,
        y64_reference="tf.keras 2 layer built with dtype float64 (dilated: zero-inserted kernel)",
    )
    arrays["index"] = np.array(json.dumps(index))
    arrays["refusals"] = np.array(json.dumps(refusals))
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez_compressed(OUT_FILE, **arrays)

    # Summary.
    acts = sorted({ids[c]["activation"] for c in index})
    print(json.dumps(meta, indent=1))
    print("activations:", ", ".join(acts))
    print("missing activations:", [a for a in ACTIVATIONS if a not in acts])
    ks = sorted({k for c in index for k in ids[c]["kernel_size"]})
    ss = sorted({s for c in index for s in ids[c]["strides"]})
    print("kernel sizes:", ks, "strides:", ss)
    print("k<s axes:", sum(k < s for c in index for k, s in zip(ids[c]["kernel_size"], ids[c]["strides"])))
    print("with y64:", sum(1 for c in index if c + "__y64" in arrays))
    for r in refusals:
        print(f"refusal {r['id']}: {r['keras_error']}")
    print(f"wrote {OUT_FILE} ({OUT_FILE.stat().st_size} bytes)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--keras3-dilated",
        nargs=2,
        metavar=("IN", "OUT"),
        help="internal: compute dilated references with Keras 3 (TF backend)",
    )
    a = ap.parse_args()
    if a.keras3_dilated:
        keras3_child(*a.keras3_dilated)
    else:
        main()
