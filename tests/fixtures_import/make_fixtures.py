#!/usr/bin/env python
"""Generate the fixtures of `deconv3d spec import`, constraints, regularizers and initializers.

Why this exists
---------------
`deconv3d spec import` reads Keras files with h5py/zipfile/json only, and the tests must run without
TensorFlow. This script builds tiny models with the real Keras (tf.keras 2 through `tf_keras`, and
Keras 3 on the TensorFlow backend), saves them in every format the importer reads, and records what
Keras itself computes: each Conv3DTranspose layer's output on a stored input, Keras's constrained
weights, Keras's regularization penalties and the statistics of Keras's own initializer draws. The tests
(`tests/test_import_keras.py`, `test_constraints.py`, `test_regularizers.py`, `test_initializers.py`)
compare the package against those numbers.

How to regenerate
-----------------
    pip install -e '.[golden]'                        # tensorflow-cpu + tf-keras (Keras 3 comes with TF)
    python tests/fixtures_import/make_fixtures.py     # rewrites tests/fixtures_import/*, prints a summary

e.g. `.venv-golden/bin/python tests/fixtures_import/make_fixtures.py` (`make golden`; about 15 s). The numbers are
deterministic (fixed seeds); the model files' bytes are not (HDF5 and `.keras` metadata hold save
times). No network is needed and nothing outside tests/fixtures_import/ is written.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["KERAS_BACKEND"] = "tensorflow"

import h5py  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
SEED = 20240901


def f32(a):
    return np.asarray(a, dtype=np.float32)


def tensor(a):
    """A TensorFlow tensor (what both Keras generations' regularizers and constraints are given)."""
    import tensorflow as tf

    return tf.convert_to_tensor(np.asarray(a))


def rnd(rng, shape, scale=1.0):
    return f32(rng.standard_normal(shape) * scale)


def set_random_weights(layer, rng, in_channels, constraint=None):
    """Random kernel (scaled by the fan) and bias; with a constraint, the weights Keras's projection gives
    (as a trained layer's weights would be: Keras applies the constraint after every update)."""
    cfg = layer.get_config()
    k = cfg["kernel_size"]
    shape = (*k, cfg["filters"], in_channels)
    kernel = rnd(rng, shape, 1.0 / np.sqrt(np.prod(k) * in_channels))
    if constraint is not None:
        kernel = f32(constraint(tensor(kernel)))
    weights = [kernel]
    if cfg["use_bias"]:
        weights.append(rnd(rng, (cfg["filters"],), 0.5))
    layer.set_weights(weights)


class Recorder:
    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}
        self.cases: list[dict] = []

    def case(self, source, layer_name, keras_layer, x, extra_args=(), data_format="channels_last", **info):
        """The Keras layer's own output on x, for `spec import SOURCE --layer layer_name`."""
        cid = f"{source}|{layer_name}|{'|'.join(extra_args)}"
        y = f32(keras_layer(x))
        self.arrays[f"{cid}|x"] = f32(x)
        self.arrays[f"{cid}|y"] = y
        self.cases.append(
            {
                "id": cid,
                "source": source,
                "layer": layer_name,
                "args": list(extra_args),
                "data_format": data_format,
                **info,
            }
        )
        return y


# --------------------------------------------------------------------------------------------- Keras 2
def keras2_models(rec: Recorder, rng) -> dict:
    import tf_keras as k

    k.utils.set_random_seed(SEED)
    max_norm = k.constraints.MaxNorm(1.5, axis=[0, 1, 2, 4])
    inp = k.Input((4, 5, 3, 2))
    up = k.layers.Conv3DTranspose(
        3,
        (3, 2, 3),
        strides=(2, 1, 2),
        padding="same",
        activation="relu",
        kernel_constraint=max_norm,
        kernel_regularizer=k.regularizers.L2(0.05),
        bias_regularizer=k.regularizers.L1(0.02),
        activity_regularizer=k.regularizers.L1L2(l1=0.001, l2=0.002),
        name="up",
    )
    inner = k.layers.Conv3DTranspose(
        2,
        2,
        strides=(1, 2, 1),
        padding="valid",
        output_padding=(0, 1, 0),
        use_bias=False,
        activation="tanh",
        name="inner",
    )
    head = k.layers.Conv3DTranspose(1, 1, activation="sigmoid", name="head")
    sub = k.Sequential([inner], name="sub")
    model = k.Model(inp, head(sub(up(inp))))
    set_random_weights(up, rng, 2, constraint=max_norm)
    set_random_weights(inner, rng, 3)
    set_random_weights(head, rng, 2)
    model.save(HERE / "k2_model.h5")
    model.save_weights(HERE / "k2_weights.h5")
    (HERE / "k2_model.json").write_text(json.dumps(json.loads(model.to_json()), indent=1))
    model.save(HERE / "k2_model.keras")
    (HERE / "k2_layer_up.json").write_text(json.dumps(k.layers.serialize(up), indent=1))

    x_up = rnd(rng, (2, 4, 5, 3, 2))
    y_up = f32(up(x_up))
    penalties = {
        "kernel": float(up.kernel_regularizer(up.kernel)),
        "bias": float(up.bias_regularizer(up.bias)),
        "activity": float(up.activity_regularizer(y_up)) / x_up.shape[0],
    }
    up_layer = k.layers.Conv3DTranspose.from_config(up.get_config())  # same layer, fresh losses
    up_layer.build(x_up.shape)
    up_layer.set_weights(up.get_weights())
    _ = up_layer(x_up)
    total = float(sum(float(v) for v in up_layer.losses))  # Keras's own sum of the three penalties
    assert abs(total - sum(penalties.values())) <= 1e-5 * total, (total, penalties)
    x_inner = rnd(rng, (1, 3, 4, 3, 3))
    x_head = rnd(rng, (1, 3, 4, 2, 2))
    for src in ("k2_model.h5", "k2_model.keras"):
        rec.case(src, "up", up, x_up, penalties=penalties, keras="2")
        rec.case(src, "sub/inner", inner, x_inner, keras="2")
        rec.case(src, "head", head, x_head, keras="2")
    rec.case("k2_weights.h5", "sub/inner", inner, x_inner, ("--config", "k2_model.json"), keras="2")
    rec.case("k2_layer_up.json", "up", up, x_up, ("--weights", "k2_weights.h5"), penalties=penalties, keras="2")

    # A tf.keras 2 layer that "sets" dilation_rate: tf.keras 2 ignores it (and drops it from get_config), so
    # the trained layer ran without it. The stored config is patched to carry it, as such a file may.
    inp = k.Input((4, 3, 5, 1))
    dil = k.layers.Conv3DTranspose(2, (2, 3, 2), dilation_rate=(1, 2, 1), padding="valid", name="dil")
    m2 = k.Model(inp, dil(inp))
    set_random_weights(dil, rng, 1)
    m2.save(HERE / "k2_dilated.h5")
    with h5py.File(HERE / "k2_dilated.h5", "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        for layer in cfg["config"]["layers"]:
            if layer["class_name"] == "Conv3DTranspose":
                layer["config"]["dilation_rate"] = [1, 2, 1]
        f.attrs["model_config"] = json.dumps(cfg)
    x = rnd(rng, (1, 4, 3, 5, 1))
    y_model = f32(m2.predict(x, verbose=0))
    y = rec.case("k2_dilated.h5", "dil", dil, x, ("--keras2-dilation", "drop"), keras="2", warns=True)
    assert np.array_equal(y, y_model)
    return {"dil_kernel": dil.get_weights()[0], "dil_bias": dil.get_weights()[1], "dil_x": x}


# --------------------------------------------------------------------------------------------- Keras 3
def keras3_models(rec: Recorder, rng, k2: dict) -> None:
    import keras as k

    k.utils.set_random_seed(SEED)
    inp = k.Input((5, 4, 3, 2))
    dil = k.layers.Conv3DTranspose(2, (2, 3, 2), dilation_rate=(2, 1, 3), padding="same", name="dil")
    up2 = k.layers.Conv3DTranspose(3, 3, strides=2, padding="same", output_padding=1, activation="elu", name="up2")
    dec = k.Sequential([k.Input((5, 4, 3, 2)), up2], name="dec")
    tail = k.layers.Conv3DTranspose(
        1, (1, 2, 1), strides=(1, 3, 1), padding="valid", name="tail", kernel_constraint=k.constraints.NonNeg()
    )
    model = k.Model(inp, tail(dec(dil(inp))))
    set_random_weights(dil, rng, 2)
    set_random_weights(up2, rng, 2)
    set_random_weights(tail, rng, 3, constraint=k.constraints.NonNeg())
    model.save(HERE / "k3_model.keras")
    model.save_weights(HERE / "k3_model.weights.h5")
    (HERE / "k3_model.json").write_text(json.dumps(json.loads(model.to_json()), indent=1))
    model.save(HERE / "k3_legacy.h5")
    x_dil = rnd(rng, (2, 5, 4, 3, 2))
    x_up2 = rnd(rng, (1, 3, 2, 4, 2))
    x_tail = rnd(rng, (1, 2, 3, 2, 3))
    for src, extra in (
        ("k3_model.keras", ()),
        ("k3_model.weights.h5", ("--config", "k3_model.json")),
        ("k3_legacy.h5", ()),
    ):
        rec.case(src, "dil", dil, x_dil, extra, keras="3")
        rec.case(src, "dec/up2", up2, x_up2, extra, keras="3")
        rec.case(src, "tail", tail, x_tail, extra, keras="3")

    # channels_first, alone in its model (softmax acts on the width axis there, in Keras too)
    inp = k.Input((2, 3, 4, 5))
    cf = k.layers.Conv3DTranspose(
        3,
        (2, 1, 3),
        strides=(2, 3, 1),
        padding="valid",
        data_format="channels_first",
        activation="softmax",
        name="cf",
    )
    m = k.Model(inp, cf(inp))
    set_random_weights(cf, rng, 2)
    m.save(HERE / "k3_channels_first.keras")
    x = rnd(rng, (1, 2, 3, 4, 5))
    y = rec.case("k3_channels_first.keras", "cf", cf, x, data_format="channels_first", keras="3")
    assert np.allclose(y, f32(m.predict(x, verbose=0)), rtol=1e-6, atol=1e-7)

    # The tf.keras 2 dilated layer's weights with the dilation applied (what `--keras2-dilation keep` runs).
    d = k.layers.Conv3DTranspose(2, (2, 3, 2), dilation_rate=(1, 2, 1), padding="valid")
    x = k2["dil_x"]
    d.build(x.shape)
    d.set_weights([k2["dil_kernel"], k2["dil_bias"]])
    rec.case("k2_dilated.h5", "dil", d, x, ("--keras2-dilation", "keep"), keras="2", warns=True)


# ------------------------------------------------------------------------- Sequential and nested models
def structures(rec: Recorder) -> None:
    """What each generation writes for a Sequential and for models nested in a Sequential, in `.h5` and `.keras`.

    Keras 3's legacy `.h5` names a top-level Sequential's weights with the model's name first
    (`sequential_1/up/kernel`), a nested Sequential's with its own name (`inner/a/kernel`) and a nested
    functional model's with the layer alone (`b/kernel`); tf.keras 2 names them all by the layer alone.
    A Conv3D between the transposed layers is in the models too, as a layer `--list` shows but cannot import.
    Own random stream, so the cases above keep their numbers.
    """
    import keras as k3
    import tf_keras as k2

    rng = np.random.default_rng(SEED + 1)
    for version, k in (("2", k2), ("3", k3)):
        k.utils.set_random_seed(SEED)
        up = k.layers.Conv3DTranspose(2, (2, 3, 2), strides=(2, 1, 2), padding="same", activation="relu", name="up")
        mix = k.layers.Conv3D(2, 1, name="mix")
        out = k.layers.Conv3DTranspose(1, 2, padding="valid", output_padding=None, name="out")
        seq = k.Sequential([k.Input((3, 2, 3, 1)), up, mix, out], name="sequential_1")
        set_random_weights(up, rng, 1)
        mix.set_weights([rnd(rng, (1, 1, 1, 2, 2), 0.7), rnd(rng, (2,), 0.5)])
        set_random_weights(out, rng, 2)

        a = k.layers.Conv3DTranspose(2, 2, strides=2, use_bias=False, name="a")
        inner = k.Sequential([k.Input((2, 3, 2, 1)), a], name="inner")
        b_in = k.Input((4, 6, 4, 2))
        b = k.layers.Conv3DTranspose(2, (1, 2, 1), strides=(1, 1, 2), activation="tanh", name="b")
        block = k.Model(b_in, b(b_in), name="block")
        tail = k.layers.Conv3DTranspose(1, 1, activation="sigmoid", name="tail")
        nested = k.Sequential([k.Input((2, 3, 2, 1)), inner, block, tail], name="outer")
        set_random_weights(a, rng, 1)
        set_random_weights(b, rng, 2)
        set_random_weights(tail, rng, 2)

        xs = {
            "up": rnd(rng, (1, 3, 2, 3, 1)),
            "out": rnd(rng, (1, 6, 2, 6, 2)),
            "a": rnd(rng, (1, 2, 3, 2, 1)),
            "b": rnd(rng, (1, 4, 6, 4, 2)),
            "tail": rnd(rng, (1, 4, 7, 8, 2)),
        }
        for ext in ("h5", "keras"):
            seq.save(HERE / f"k{version}_sequential.{ext}")
            nested.save(HERE / f"k{version}_nested.{ext}")
            for name, layer in (("up", up), ("out", out)):
                rec.case(f"k{version}_sequential.{ext}", name, layer, xs[name], keras=version)
            for name, layer in (("inner/a", a), ("block/b", b), ("tail", tail)):
                rec.case(f"k{version}_nested.{ext}", name, layer, xs[name.split("/")[-1]], keras=version)


# ------------------------------------------------------------------------------------------ constraints
CONSTRAINT_CASES = [
    ("MaxNorm", {}),
    ("MaxNorm", {"max_value": 1.0, "axis": [0, 1, 2]}),
    ("MaxNorm", {"max_value": 0.5, "axis": 3}),
    ("MaxNorm", {"max_value": 1.0, "axis": -1}),
    ("MaxNorm", {"max_value": 1.2, "axis": [0, 1, 2, 4]}),
    ("MinMaxNorm", {}),
    ("MinMaxNorm", {"min_value": 0.5, "max_value": 1.5, "rate": 0.7, "axis": [0, 1, 2]}),
    ("MinMaxNorm", {"min_value": 2.0, "max_value": 3.0, "rate": 1.0, "axis": 4}),
    ("NonNeg", {}),
    ("UnitNorm", {}),
    ("UnitNorm", {"axis": [0, 1, 2, 3]}),
]


def constraints(rng) -> None:
    import keras as k3
    import tf_keras as k2

    kernel = rnd(rng, (3, 2, 3, 4, 5), 0.7)
    bias = rnd(rng, (4,), 2.0)
    arrays = {"kernel": kernel, "bias": bias}
    index = []
    for n, (cls, cfg) in enumerate(CONSTRAINT_CASES):
        for version, mod in (("2", k2), ("3", k3)):
            c = getattr(mod.constraints, cls)(**cfg)
            for which, w in (("kernel", kernel), ("bias", bias)):
                axis = cfg.get("axis", 0)
                axes = axis if isinstance(axis, list) else [axis]
                if which == "bias" and any(a not in (0, -1) for a in axes):
                    continue
                cid = f"{n:02d}_{cls}_k{version}_{which}"
                arrays[cid] = f32(c(tensor(w)))
                index.append({"id": cid, "keras": version, "weight": which, "class_name": cls, "config": cfg})
    arrays["index"] = np.array(json.dumps(index))
    np.savez_compressed(HERE / "constraints.npz", **arrays)
    print(f"constraints.npz: {len(index)} Keras results")


# ------------------------------------------------------------------------------------------ regularizers
REGULARIZER_CASES = [
    ("l1", None),
    ("l2", None),
    ("l1_l2", None),  # tf.keras 2's function alias: 0.01 for both
    ("L1", {"l1": 0.3}),
    ("L2", {"l2": 0.07}),
    ("L1L2", {"l1": 0.5}),  # the class: l2 defaults to 0
    ("L1L2", {"l1": 0.002, "l2": 0.004}),
]


def regularizers(rng) -> None:
    import keras as k3
    import tf_keras as k2

    kernel = rnd(rng, (2, 3, 2, 3, 2))
    bias = rnd(rng, (3,))
    matrix = rnd(rng, (5, 3))
    x = rnd(rng, (2, 3, 2, 4, 2))
    arrays = {"kernel": kernel, "bias": bias, "matrix": matrix, "x": x}
    index = []
    for version, mod in (("2", k2), ("3", k3)):
        layer = mod.layers.Conv3DTranspose(3, (2, 3, 2), strides=(2, 1, 2), padding="same", activation="tanh")
        layer.build(x.shape)
        layer.set_weights([kernel, bias])
        y = f32(layer(x))
        arrays[f"y_k{version}"] = y
        for n, (cls, cfg) in enumerate(REGULARIZER_CASES):
            value = cls if cfg is None else {"class_name": cls, "config": cfg}
            try:
                r = mod.regularizers.get(value)
            except ValueError:
                continue  # Keras 3 has no 'l1_l2' string alias
            act = mod.layers.Conv3DTranspose(
                3, (2, 3, 2), strides=(2, 1, 2), padding="same", activation="tanh", activity_regularizer=r
            )
            act.build(x.shape)
            act.set_weights([kernel, bias])
            _ = act(x)
            index.append(
                {
                    "id": f"{n:02d}_{cls}_k{version}",
                    "keras": version,
                    "value": value,
                    "keras_config": {k: float(v) for k, v in r.get_config().items()},
                    "kernel": float(r(tensor(kernel))),
                    "bias": float(r(tensor(bias))),
                    "activity": float(act.losses[-1]),  # Keras divides by the batch size
                }
            )
        for mode in ("rows", "columns"):
            r = mod.regularizers.OrthogonalRegularizer(factor=0.3, mode=mode)
            index.append(
                {
                    "id": f"orthogonal_{mode}_k{version}",
                    "keras": version,
                    "value": {"class_name": "OrthogonalRegularizer", "config": {"factor": 0.3, "mode": mode}},
                    "matrix": float(r(tensor(matrix))),
                }
            )
            try:
                r(tensor(kernel))
            except ValueError as exc:
                index[-1]["kernel_error"] = str(exc).splitlines()[0]
            else:
                raise AssertionError("Keras evaluated OrthogonalRegularizer on a rank-5 kernel")
    arrays["index"] = np.array(json.dumps(index))
    np.savez_compressed(HERE / "regularizers.npz", **arrays)
    print(f"regularizers.npz: {len(index)} Keras penalties")


# ------------------------------------------------------------------------------------------ initializers
INITIALIZER_CASES = [
    ("GlorotUniform", {}),
    ("GlorotNormal", {}),
    ("HeUniform", {}),
    ("HeNormal", {}),
    ("LecunUniform", {}),
    ("LecunNormal", {}),
    ("VarianceScaling", {"scale": 2.5, "mode": "fan_out", "distribution": "uniform"}),
    ("VarianceScaling", {"scale": 0.5, "mode": "fan_avg", "distribution": "untruncated_normal"}),
    ("VarianceScaling", {"scale": 1.5, "mode": "fan_in", "distribution": "truncated_normal"}),
    ("RandomUniform", {"minval": -0.3, "maxval": 0.1}),
    ("RandomNormal", {"mean": 0.2, "stddev": 0.3}),
    ("TruncatedNormal", {"mean": -0.1, "stddev": 0.2}),
    ("Orthogonal", {"gain": 1.7}),
    ("Constant", {"value": 0.25}),
    ("Zeros", {}),
    ("Ones", {}),
]


def initializers() -> None:
    import keras as k3
    import tf_keras as k2

    shape = (3, 3, 3, 16, 24)
    out = []
    cases = [(v, cls, cfg) for cls, cfg in INITIALIZER_CASES for v in ("2", "3")]
    cases.append(("3", "GlorotUniform", {"input_axes": [0, 1, 2, 4], "output_axes": [3]}))
    cases.append(("3", "HeNormal", {"input_axes": [4], "output_axes": [0, 1, 2, 3]}))
    for version, cls, cfg in cases:
        mod = k2 if version == "2" else k3
        kwargs = dict(cfg)
        if cls not in ("Constant", "Zeros", "Ones"):
            kwargs["seed"] = 7
        init = getattr(mod.initializers, cls)(**kwargs)
        w = np.asarray(init(shape), dtype=np.float64)
        out.append(
            {
                "keras": version,
                "class_name": cls,
                "config": cfg,
                "shape": list(shape),
                "min": float(w.min()),
                "max": float(w.max()),
                "mean": float(w.mean()),
                "var": float(w.var()),
            }
        )
        if cls == "Orthogonal":
            flat = w.reshape(-1, shape[-1]) / cfg["gain"]
            out[-1]["gram_error"] = float(np.abs(flat.T @ flat - np.eye(shape[-1])).max())
    for version, mod in (("2", k2), ("3", k3)):
        try:
            mod.initializers.Identity()((3, 3, 3, 2, 2))
        except Exception as exc:  # noqa: BLE001 - Keras refuses; the message is what we record
            out.append({"keras": version, "class_name": "Identity", "error": str(exc).splitlines()[0][:200]})
        else:
            raise AssertionError("Keras made an identity kernel of rank 5")
    (HERE / "initializers.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"initializers.json: {len(out)} Keras draws")


def main() -> None:
    import keras
    import tensorflow as tf
    import tf_keras

    rng = np.random.default_rng(SEED)
    rec = Recorder()
    k2 = keras2_models(rec, rng)
    keras3_models(rec, rng, k2)
    structures(rec)
    constraints(rng)
    regularizers(rng)
    initializers()
    rec.arrays["index"] = np.array(json.dumps(rec.cases))
    rec.arrays["meta"] = np.array(
        json.dumps(
            {
                "tensorflow": tf.__version__,
                "tf_keras": tf_keras.__version__,
                "keras": keras.__version__,
                "numpy": np.__version__,
                "h5py": h5py.__version__,
                "seed": SEED,
                "python": sys.version.split()[0],
            }
        )
    )
    np.savez_compressed(HERE / "expected.npz", **rec.arrays)
    total = sum(p.stat().st_size for p in HERE.iterdir() if p.is_file())
    print(f"expected.npz: {len(rec.cases)} round-trip cases; fixtures total {total / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
