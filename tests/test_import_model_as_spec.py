"""A model, weights or volume file given where a spec (YAML/JSON) is expected: recognised by content.

`--spec model.keras`, `spec validate model.h5` or an `.npz` as spec once printed the UTF-8 codec's
complaint ("'utf-8' codec can't decode byte 0x89 ..."). Each kind is recognised by its first bytes (and
zip member names, HDF5 root attributes) and refused in one line, exit 2, with the command that reads it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from deconv3d_cli import LayerSpec
from deconv3d_cli.cli import main
from deconv3d_cli.errors import SpecError

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures_import"
SAMPLE = ROOT / "sample_data"


def _torch_file(path: Path) -> Path:
    import torch

    torch.save(torch.nn.ConvTranspose3d(1, 2, 2).state_dict(), path)
    return path


# (file to give as the spec, a suffix to give it, fragments the one line must hold)
CASES = {
    "keras-archive": (FIX / "k3_sequential.keras", ["Keras model (.keras archive)", "spec import", "-o spec.yaml",
                                                    "running a whole model is not supported yet"]),
    "keras-h5": (FIX / "k3_sequential.h5", ["Keras .h5 model", "spec import", "not supported yet"]),
    "keras-weights": (FIX / "k3_model.weights.h5", ["Keras weights (save_weights)", "--config MODEL.json"]),
    "npz": (SAMPLE / "sample_spec.npz", ["an .npz of weights", "weights: ", "--weights"]),
    "npy": (SAMPLE / "phantom.npy", ["a volume (.npy)", "as INPUT"]),
    "nifti-gz": (SAMPLE / "phantom.nii.gz", ["gzip", "as INPUT"]),
    "hdf5-volume": (SAMPLE / "phantom.h5", ["HDF5 file with no Keras model", "as INPUT"]),
}  # fmt: skip


def _check_line(stderr: str, path: Path, fragments: list[str]) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"deconv3d: error: {path}: is ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "codec" not in lines[0] and "Traceback" not in stderr


@pytest.mark.parametrize("kind", list(CASES))
def test_spec_validate_names_the_file_kind_and_the_command(kind):
    path, fragments = CASES[kind]
    res = CliRunner().invoke(main, ["spec", "validate", str(path)])
    assert res.exit_code == 2, res.output
    _check_line(res.stderr, path, fragments)
    if kind.startswith("keras"):
        assert f"deconv3d spec import {path}" in res.stderr


def test_upsample_with_a_model_as_spec_exits_2_naming_spec_import(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 2, 3, 1), np.float32))
    path = tmp_path / "sr.keras"  # named as a user would; recognised by content
    shutil.copy(FIX / "k3_nested.keras", path)
    args = ["upsample", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"), "--spec", str(path)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    _check_line(res.stderr, path, ["Keras model", f"deconv3d spec import {path} -o spec.yaml"])
    assert not (tmp_path / "y.npy").exists()


def test_a_torch_file_and_a_plain_binary_as_spec(tmp_path):
    pt = _torch_file(tmp_path / "up.yaml")  # the name says YAML; the content is a torch zip
    with pytest.raises(SpecError, match=r"is a PyTorch file, not a spec: .*spec import .*--stride S"):
        LayerSpec.from_yaml(pt)
    junk = tmp_path / "junk.yaml"
    junk.write_bytes(b"filters: 2\n\xb6\xff\x00")
    with pytest.raises(SpecError, match=r"is not UTF-8 text \(byte 11\), so not a spec") as info:
        LayerSpec.from_yaml(junk)
    assert "codec" not in str(info.value)


def test_a_model_given_as_keras_config_says_what_reads_it(tmp_path):
    """`spec import WEIGHTS.h5 --config MODEL.h5`: the config is expected as text; the .h5 model is named."""
    res = CliRunner().invoke(
        main, ["spec", "import", str(FIX / "k3_model.weights.h5"), "--config", str(FIX / "k3_legacy.h5"),
               "-o", str(tmp_path / "s.yaml")],
    )  # fmt: skip
    assert res.exit_code == 2
    _check_line(res.stderr, FIX / "k3_legacy.h5", ["Keras .h5 model, not a YAML or JSON file"])


def test_a_keras_model_config_as_spec_names_spec_import():
    """model.to_json() is text, so it parses; its class is a model's, and the error says what reads it."""
    path = FIX / "k3_model.json"
    res = CliRunner().invoke(main, ["spec", "validate", str(path)])
    assert res.exit_code == 2
    line = res.stderr.strip()
    assert "\n" not in line and "'Functional' is a Keras model config, not a layer spec" in line
    assert f"`deconv3d spec import {path} --layer NAME -o spec.yaml`" in line and "not supported yet" in line
