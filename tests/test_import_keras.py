"""`deconv3d spec import` from Keras files: round trips against Keras's own outputs, listing, warnings.

The fixtures in tests/fixtures_import/ were saved by Keras itself (`make_fixtures.py`, tf.keras 2.21 and
Keras 3.15): every case imports one layer through the command line, runs `deconv3d upsample` on the stored
input through the command line, and compares with what that Keras layer computed (1e-5 relative).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from deconv3d_cli import LayerSpec, importers
from deconv3d_cli.cli import main

FIX = Path(__file__).resolve().parent / "fixtures_import"
EXPECTED = np.load(FIX / "expected.npz")
CASES = json.loads(str(EXPECTED["index"]))


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def import_case(case: dict, out: Path, *extra: str):
    args = ["spec", "import", FIX / case["source"], "--layer", case["layer"], "-o", out]
    opts = case["args"]
    for key, value in zip(opts[::2], opts[1::2]):
        args += [key, value if key == "--keras2-dilation" else FIX / value]
    return run(*args, *extra)


def assert_close(y: np.ndarray, ref: np.ndarray) -> None:
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(ref).max())))


@pytest.mark.parametrize("case", CASES, ids=[c["id"].replace("|", ":").rstrip(":") for c in CASES])
def test_round_trip_through_the_cli_equals_keras(case, tmp_path):
    spec_path = tmp_path / "layer.yaml"
    res = import_case(case, spec_path)
    assert res.exit_code == 0, res.output
    assert spec_path.exists() and spec_path.with_suffix(".npz").exists()
    assert ("warning" in res.stderr) == bool(case.get("warns"))
    x = EXPECTED[case["id"] + "|x"]
    np.save(tmp_path / "x.npy", x)
    res = run("upsample", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--spec", spec_path, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert_close(np.load(tmp_path / "y.npy"), EXPECTED[case["id"] + "|y"])
    if "penalties" in case:  # the layer's regularizers, evaluated as Keras did
        reg = report["regularization"]
        for which, value in case["penalties"].items():
            assert reg[which]["value"] == pytest.approx(value, rel=1e-5), which
        assert report["constraints"][0]["weight"] == "kernel"
        assert report["constraints"][0]["changed"] == 0  # Keras's own projection already holds


def test_tiled_run_of_an_imported_spec_equals_keras(tmp_path):
    case = next(c for c in CASES if c["id"] == "k3_model.keras|dec/up2|")
    assert import_case(case, tmp_path / "s.yaml").exit_code == 0
    np.save(tmp_path / "x.npy", EXPECTED[case["id"] + "|x"])
    res = run("upsample", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--spec", tmp_path / "s.yaml", "--tile", "2")
    assert res.exit_code == 0, res.output
    assert_close(np.load(tmp_path / "y.npy"), EXPECTED[case["id"] + "|y"])


def test_imported_spec_keeps_the_keras_arguments(tmp_path):
    res = run("spec", "import", FIX / "k2_model.h5", "--layer", "up", "-o", tmp_path / "up.yaml")
    assert res.exit_code == 0, res.output
    data = yaml.safe_load((tmp_path / "up.yaml").read_text())
    assert data["weights"] == "up.npz" and data["in_channels"] == 2
    assert data["padding"] == "same" and data["strides"] == [2, 1, 2] and data["activation"] == "relu"
    assert data["kernel_constraint"]["name"] == "max_norm"
    assert data["kernel_constraint"]["config"] == {"max_value": 1.5, "axis": [0, 1, 2, 4]}
    assert data["activity_regularizer"]["name"] == "l1_l2"
    spec = LayerSpec.from_yaml(tmp_path / "up.yaml")
    assert spec.kernel.shape == (3, 2, 3, 3, 2) and spec.name == "up"
    assert [e["weight"] for e in spec.constraints_applied] == ["kernel"]


# --------------------------------------------------------------------------- listing and choosing
def test_list_shows_every_layer_with_its_path():
    res = run("spec", "import", FIX / "k3_model.keras", "--list")
    assert res.exit_code == 0, res.output
    assert "Keras 3 .keras archive, 3 layer(s)" in res.stdout
    for name in ("dil:", "dec/up2:", "tail:"):
        assert name in res.stdout
    res = run("spec", "import", FIX / "k2_model.h5", "--list", "--json")
    layers = [c["name"] for c in json.loads(res.stdout)["layers"]]
    assert layers == ["up", "sub/inner", "head"]


def test_missing_layer_lists_the_candidates_and_exits_2(tmp_path):
    res = run("spec", "import", FIX / "k2_model.keras", "-o", tmp_path / "s.yaml")
    assert res.exit_code == 2
    assert "layers that can be imported" in res.stderr
    assert "  sub/inner: filters=2" in res.stderr
    assert "field '--layer'" in res.stderr and "choose one with --layer" in res.stderr
    assert "Traceback" not in res.output
    assert not list(tmp_path.iterdir())


def test_wrong_layer_suggests_the_closest(tmp_path):
    res = run("spec", "import", FIX / "k3_legacy.h5", "--layer", "up3", "-o", tmp_path / "s.yaml")
    assert res.exit_code == 2
    assert "no Conv3DTranspose layer named 'up3'" in res.stderr and "did you mean 'up2'" in res.stderr
    assert not list(tmp_path.iterdir())


def test_a_nested_layer_can_be_named_by_its_own_name(tmp_path):
    res = run("spec", "import", FIX / "k3_model.keras", "--layer", "up2", "-o", tmp_path / "s.yaml")
    assert res.exit_code == 0, res.output
    assert "imported layer dec/up2" in res.stderr


def test_single_layer_files_need_no_layer_option(tmp_path):
    res = run("spec", "import", FIX / "k3_channels_first.keras", "-o", tmp_path / "cf.yaml", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["layer"] == "cf" and report["config"]["data_format"] == "channels_first"
    assert report["written"] == [str(tmp_path / "cf.yaml"), str(tmp_path / "cf.npz")]


# --------------------------------------------------------------------------- Keras 2 dilation, configs
def test_keras2_dilation_warns_and_keep_applies_it(tmp_path):
    res = run("spec", "import", FIX / "k2_dilated.h5", "-o", tmp_path / "keep.yaml")
    assert res.exit_code == 0, res.output
    assert "warning" in res.stderr and "the trained layer ran without it" in res.stderr
    assert "--keras2-dilation drop" in res.stderr
    assert LayerSpec.from_yaml(tmp_path / "keep.yaml").dilation_rate == (1, 2, 1)
    res = run("spec", "import", FIX / "k2_dilated.h5", "-o", tmp_path / "drop.yaml", "--keras2-dilation", "drop")
    assert res.exit_code == 0 and "dropped it" in res.stderr
    assert LayerSpec.from_yaml(tmp_path / "drop.yaml").dilation_rate == (1, 1, 1)


def test_keras3_dilation_does_not_warn(tmp_path):
    res = run("spec", "import", FIX / "k3_model.keras", "--layer", "dil", "-o", tmp_path / "s.yaml")
    assert res.exit_code == 0 and "warning" not in res.stderr
    assert LayerSpec.from_yaml(tmp_path / "s.yaml").dilation_rate == (2, 1, 3)


def test_config_only_import_keeps_the_initializers(tmp_path):
    res = run("spec", "import", FIX / "k2_layer_up.json", "-o", tmp_path / "s.yaml")
    assert res.exit_code == 0, res.output
    assert "no weights" in res.stderr
    assert not (tmp_path / "s.npz").exists()
    spec = LayerSpec.from_yaml(tmp_path / "s.yaml")
    assert spec.kernel is None and spec.kernel_initializer["name"] == "glorot_uniform"
    assert spec.kernel_regularizer == {"name": "l2", "config": {"l2": pytest.approx(0.05)}}
    # a model's to_json() also lists its layers; the build config gives the input channels (Keras 3)
    res = run("spec", "import", FIX / "k3_model.json", "--layer", "tail", "-o", tmp_path / "t.yaml")
    assert res.exit_code == 0, res.output
    assert LayerSpec.from_yaml(tmp_path / "t.yaml").in_channels == 3


def test_weights_only_h5_needs_a_config(tmp_path):
    res = run("spec", "import", FIX / "k2_weights.h5", "-o", tmp_path / "s.yaml")
    assert res.exit_code == 2 and "--config FILE" in res.stderr
    # a .keras archive's config.json serves as the config too
    res = run(
        "spec", "import", FIX / "k3_model.weights.h5", "--config", FIX / "k3_model.keras",
        "--layer", "tail", "-o", tmp_path / "s.yaml",
    )  # fmt: skip
    assert res.exit_code == 0, res.output


def test_library_import_reports_format_candidates_and_notes():
    result = importers.import_layer(FIX / "k2_model.h5", "up")
    assert result.format == "Keras 2 .h5 model"
    assert [c.name for c in result.candidates] == ["up", "sub/inner", "head"]
    assert any("kernel_constraint: max_norm" in n for n in result.notes)
    assert result.spec.kernel.dtype == np.float32
    assert importers.detect(FIX / "k3_model.keras") == "keras-archive"
    assert importers.detect(FIX / "k3_model.json") == "config"


def test_existing_output_is_not_replaced_without_overwrite(tmp_path):
    out = tmp_path / "s.yaml"
    out.write_text("keep me")
    res = run("spec", "import", FIX / "k3_channels_first.keras", "-o", out)
    assert res.exit_code == 2 and "--overwrite" in res.stderr
    assert out.read_text() == "keep me" and not out.with_suffix(".npz").exists()
    res = run("spec", "import", FIX / "k3_channels_first.keras", "-o", out, "--overwrite")
    assert res.exit_code == 0 and LayerSpec.from_yaml(out).filters == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npz", "s.yaml"]  # no temporary left behind


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--stride", "2"], "--stride is for PyTorch sources"),
        (["--activation", "relu"], "--activation is for PyTorch sources"),
        (["--weights", "x.npz"], "drop --config/--weights"),
    ],
)
def test_options_that_do_not_fit_the_source_are_refused(args, fragment, tmp_path):
    res = run("spec", "import", FIX / "k3_channels_first.keras", "-o", tmp_path / "s.yaml", *args)
    assert res.exit_code == 2 and fragment in res.stderr, res.output


# --------------------------------------------------------------------------- what each generation writes
def _legacy_weight_names(path: Path) -> dict[str, list[str]]:
    import h5py

    with h5py.File(path, "r") as f:
        root = f["model_weights"]
        return {str(n): [str(w) for w in root[n].attrs["weight_names"]] for n in root.attrs["layer_names"]}


def test_keras3_legacy_h5_of_a_sequential_names_weights_after_the_model(tmp_path):
    """Keras 3 writes 'sequential_1/up/kernel' for a top-level Sequential's layer (the fixture must hold
    what Keras writes, or the round-trip cases above prove nothing about it), and the import finds them."""
    names = _legacy_weight_names(FIX / "k3_sequential.h5")
    assert names["up"] == ["sequential_1/up/kernel", "sequential_1/up/bias"]
    assert _legacy_weight_names(FIX / "k3_nested.h5")["tail"] == ["outer/tail/kernel", "outer/tail/bias"]
    assert _legacy_weight_names(FIX / "k2_sequential.h5")["up"] == ["up/kernel:0", "up/bias:0"]
    res = run("spec", "import", FIX / "k3_sequential.h5", "--layer", "out", "-o", tmp_path / "o.yaml")
    assert res.exit_code == 0, res.output
    spec = LayerSpec.from_yaml(tmp_path / "o.yaml")
    case = next(c for c in CASES if c["id"] == "k3_sequential.h5|out|")
    assert spec.kernel.shape == (2, 2, 2, 1, 2) and case["keras"] == "3"


def test_list_names_every_layer_and_marks_what_can_be_imported():
    res = run("spec", "import", FIX / "k3_sequential.h5", "--list")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].endswith("Keras 3 .h5 model, 3 layer(s), 2 importable (marked +)")
    assert lines[1].startswith("  + up: filters=2, kernel_size=[2, 3, 2]")
    assert lines[2] == "  - mix: Conv3D (not importable: only Conv3DTranspose layers are)"
    assert lines[3].startswith("  + out: filters=1")
    assert "running a whole model is not supported yet" in lines[4]
    for src in ("k2_sequential.keras", "k3_nested.keras", "k2_model.h5"):
        res = run("spec", "import", FIX / src, "--list", "--json")
        layers = json.loads(res.stdout)["layers"]
        expect = {
            "k2_sequential.keras": [("up", True), ("mix", False), ("out", True)],
            "k3_nested.keras": [("inner/a", True), ("block/b", True), ("tail", True)],
            "k2_model.h5": [("up", True), ("sub/inner", True), ("head", True)],
        }[src]
        assert [(c["name"], c["importable"]) for c in layers] == expect, src
    # a layer that cannot be imported is named as such when asked for
    res = run("spec", "import", FIX / "k3_sequential.h5", "--layer", "mix", "-o", "unused.yaml")
    assert res.exit_code == 2 and "no Conv3DTranspose layer named 'mix'" in res.stderr


def test_force_and_quiet_as_upsample_spells_them(tmp_path):
    out = tmp_path / "s.yaml"
    out.write_text("keep me")
    res = run("spec", "import", FIX / "k3_channels_first.keras", "-o", out, "-f", "-q")
    assert res.exit_code == 0, res.output
    assert res.stderr == "" and res.stdout == ""
    assert LayerSpec.from_yaml(out).filters == 3
    res = run("spec", "import", FIX / "k3_channels_first.keras", "-o", out, "--force", "--quiet")
    assert res.exit_code == 0 and res.output == ""
    # -q keeps warnings: they say what was imported differently from the file
    res = run("spec", "import", FIX / "k2_dilated.h5", "-o", tmp_path / "d.yaml", "-q")
    assert res.exit_code == 0
    assert res.stderr.startswith("deconv3d: warning: layer 'dil' sets dilation_rate")
    assert "imported layer" not in res.stderr and "wrote" not in res.stderr
    args = ["spec", "init", "--filters", "2", "--kernel-size", "2", "--in-channels", "1", "--seed", "0", "-o", out]
    res = run(*args, "-f", "-q")
    assert res.exit_code == 0 and res.output == ""
    assert LayerSpec.from_yaml(out).filters == 2 and LayerSpec.from_yaml(out).in_channels == 1
