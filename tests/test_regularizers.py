"""Regularization penalties: Keras's values (kernel, bias, activity over tiles), reported in runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from deconv3d_cli import LayerSpec, SpecError
from deconv3d_cli.cli import main
from deconv3d_cli.engine.activity import ActivityAccumulator
from deconv3d_cli.layer.regularizers import format_report, normalise, penalty, run_report

FIX = Path(__file__).resolve().parent / "fixtures_import"
KERAS = np.load(FIX / "regularizers.npz")
ENTRIES = json.loads(str(KERAS["index"]))
PLAIN = [e for e in ENTRIES if "kernel" in e]
ORTHO = [e for e in ENTRIES if "matrix" in e]
LAYER = dict(filters=3, kernel_size=(2, 3, 2), strides=(2, 1, 2), padding="same", activation="tanh")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("entry", PLAIN, ids=[e["id"] for e in PLAIN])
def test_weight_penalties_and_defaults_equal_keras(entry):
    reg = normalise(entry["value"])
    assert reg["config"] == pytest.approx(entry["keras_config"], rel=1e-6)
    for which in ("kernel", "bias"):
        value, why = penalty(reg, KERAS[which])
        assert why is None and value == pytest.approx(entry[which], rel=1e-5)


@pytest.mark.parametrize("entry", ORTHO, ids=[e["id"] for e in ORTHO])
def test_orthogonal_regularizer_equals_keras_on_matrices_and_is_not_evaluated_on_the_kernel(entry):
    value, why = penalty(entry["value"], KERAS["matrix"])
    assert why is None and value == pytest.approx(entry["matrix"], rel=1e-5)
    value, why = penalty(entry["value"], KERAS["kernel"])
    assert value is None and "rank-2" in why
    assert "rank 2" in entry["kernel_error"]  # what Keras itself said


def test_l1l2_class_defaults_to_zero_but_the_l1_l2_alias_to_001():
    assert normalise({"class_name": "L1L2", "config": {"l1": 0.5}})["config"] == {"l1": 0.5, "l2": 0.0}
    assert normalise("L1L2")["config"] == {"l1": 0.0, "l2": 0.0}
    assert normalise("l1_l2")["config"] == {"l1": 0.01, "l2": 0.01}


@pytest.mark.parametrize(
    "value, fragment",
    [
        ({"class_name": "L2", "config": {"l2": -1}}, ">= 0"),
        ({"class_name": "L1", "config": {"l1": "x"}}, "finite number"),
        ({"class_name": "OrthogonalRegularizer", "config": {"mode": "diagonal"}}, "rows, columns"),
        ("l3", "valid: "),
    ],
)
def test_bad_regularizers_are_refused(value, fragment):
    with pytest.raises(SpecError) as info:
        LayerSpec.create(filters=1, kernel_size=1, kernel_regularizer=value)
    assert info.value.field == "kernel_regularizer" and fragment in info.value.message


# --------------------------------------------------------------------------- in runs
def spec_file(folder: Path, **regs) -> Path:
    spec = LayerSpec.create(**LAYER, kernel=KERAS["kernel"], bias=KERAS["bias"], **regs)
    return spec.save(folder / "layer.yaml")


@pytest.mark.parametrize("entry", [e for e in PLAIN], ids=[e["id"] for e in PLAIN])
def test_run_reports_keras_penalties_including_activity_over_tiles(entry, tmp_path):
    reg = entry["value"]
    path = spec_file(tmp_path, kernel_regularizer=reg, bias_regularizer=reg, activity_regularizer=reg)
    np.save(tmp_path / "x.npy", KERAS["x"])  # batch 2: Keras divides the activity penalty by it
    tile = ["--tile", "2,1,3"] if entry["keras"] == "2" else []
    res = run("upsample", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--spec", path, "--json", *tile)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), KERAS[f"y_k{entry['keras']}"], rtol=1e-5, atol=1e-6)
    if tile:
        assert report["tiles"] > 1
    r = report["regularization"]
    for which in ("kernel", "bias", "activity"):
        assert r[which]["value"] == pytest.approx(entry[which], rel=1e-5), which
    assert r["total"] == pytest.approx(entry["kernel"] + entry["bias"] + entry["activity"], rel=1e-5)
    assert "divided by the batch size 2" in r["activity"]["note"]


def test_summary_line_and_orthogonal_notes(tmp_path):
    path = spec_file(tmp_path, kernel_regularizer={"class_name": "L2", "config": {"l2": 0.5}},
                     activity_regularizer="orthogonal_regularizer")  # fmt: skip
    np.save(tmp_path / "x.npy", KERAS["x"])
    res = run("upsample", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--spec", path)
    assert res.exit_code == 0, res.output
    line = next(x for x in res.stderr.splitlines() if x.strip().startswith("regularization:"))
    assert "kernel l2 = " in line and "activity orthogonal_regularizer = n/a" in line
    res = run("upsample", tmp_path / "x.npy", "-o", tmp_path / "y2.npy", "--spec", path, "--json")
    r = json.loads(res.stdout)["regularization"]
    assert r["activity"]["value"] is None and "rank 5" in r["activity"]["note"]
    assert r["total"] == r["kernel"]["value"]


def test_runs_without_regularizers_report_nothing_new(tmp_path):
    path = spec_file(tmp_path)
    np.save(tmp_path / "x.npy", KERAS["x"])
    res = run("upsample", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--spec", path, "--json")
    report = json.loads(res.stdout)
    assert "regularization" not in report and "constraints" not in report
    assert "regularization" not in res.stderr


def test_initializer_weights_are_penalised_as_the_engine_drew_them(tmp_path):
    spec = LayerSpec.create(**LAYER, kernel_regularizer="l1", seed=5, in_channels=2)
    spec.save(tmp_path / "layer.yaml")
    np.save(tmp_path / "x.npy", KERAS["x"])
    res = run("upsample", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--spec", tmp_path / "layer.yaml", "--json")
    kernel, _ = spec.materialise(2)
    value = json.loads(res.stdout)["regularization"]["kernel"]["value"]
    assert value == pytest.approx(0.01 * np.abs(kernel.astype(np.float64)).sum(), rel=1e-6)


def test_accumulator_sums_equal_the_whole_and_resumed_runs_say_so():
    reg = normalise({"class_name": "L1L2", "config": {"l1": 0.3, "l2": 0.2}})
    y = torch.randn(2, 3, 4, 5, 6)
    whole = ActivityAccumulator(reg)
    whole.add(y)
    parts = ActivityAccumulator(reg)
    for chunk in torch.split(y, [1, 3, 2], dim=4):
        parts.add(chunk.permute(0, 2, 3, 4, 1))  # any layout, any split
    expect = (0.3 * y.double().abs().sum() + 0.2 * (y.double() ** 2).sum()).item() / 2
    assert whole.value(2) == pytest.approx(expect, rel=1e-12)
    assert parts.value(2) == pytest.approx(expect, rel=1e-12) and parts.tiles == 3
    spec = LayerSpec.create(filters=1, kernel_size=1, activity_regularizer=reg)
    out = run_report(spec, np.ones((1, 1, 1, 1, 1)), None, parts, batch=2, complete=False)
    assert out["regularization"]["activity"]["value"] is None and "resumed" in out["regularization"]["activity"]["note"]
    assert format_report(out) == "activity l1_l2 = n/a"
    assert ActivityAccumulator(None).active is False
