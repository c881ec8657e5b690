"""Hostile and broken files are refused cleanly: nothing executed, nothing written outside the target.

Every payload below would create a marker file if it ran (a pickle calling `open(marker, "w")`, a YAML
Python tag doing the same); every test checks the marker is absent, the exit status is 2 with one
error line and no traceback, and the folder holds nothing but what the test put there.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from deconv3d_cli import LayerSpec, SpecError, importers
from deconv3d_cli.cli import main

FIX = Path(__file__).resolve().parent / "fixtures_import"


class Payload:
    """Unpickling this calls open(marker, 'w'): the marker exists only if the pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def refused(res, *fragments):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    err = res.stderr.strip().splitlines()
    assert err and err[-1].startswith("deconv3d: error: ")
    for frag in fragments:
        assert frag in res.stderr, (frag, res.stderr)


@pytest.fixture
def box(tmp_path):
    """A folder for the test's files, inside another, so writes outside it would show."""
    inner = tmp_path / "box"
    inner.mkdir()
    yield inner
    assert [p.name for p in tmp_path.iterdir()] == ["box"], "something was written outside the folder"


def only(folder: Path, *names: str) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


# --------------------------------------------------------------------------- pickles
@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_pt_carrying_a_pickle_is_refused_unexecuted(zipped, box):
    marker = box / "executed"
    state = {"weight": torch.zeros(2, 1, 2, 2, 2), "extra": Payload(marker)}
    torch.save(state, box / "evil.pt", _use_new_zipfile_serialization=zipped)
    res = run("spec", "import", box / "evil.pt", "-o", box / "s.yaml")
    refused(res, "evil.pt", "pickled Python objects", "state_dict")
    assert not marker.exists()
    only(box, "evil.pt")


def test_a_bare_pickle_is_refused_unexecuted(box):
    marker = box / "executed"
    (box / "model.pth").write_bytes(pickle.dumps(Payload(marker)))
    refused(run("spec", "import", box / "model.pth", "-o", box / "s.yaml"), "model.pth")
    assert not marker.exists()


def test_npz_carrying_a_pickle_is_refused_everywhere(box):
    marker = box / "executed"
    arr = np.empty(1, dtype=object)
    arr[0] = Payload(marker)
    np.savez(box / "evil.npz", kernel=arr)
    (box / "spec.yaml").write_text("filters: 1\nkernel_size: 1\nuse_bias: false\nweights: evil.npz\n")
    refused(run("spec", "validate", box / "spec.yaml"), "pickled objects")
    np.save(box / "x.npy", np.zeros((2, 2, 2), np.float32))
    refused(run("upsample", box / "x.npy", "-o", box / "y.npy", "--spec", box / "spec.yaml"), "pickled objects")
    (box / "layer.json").write_text(json.dumps({"filters": 1, "kernel_size": 1, "use_bias": False}))
    refused(run("spec", "import", box / "layer.json", "--weights", box / "evil.npz", "-o", box / "s.yaml"), "pickled")
    assert not marker.exists()
    only(box, "evil.npz", "spec.yaml", "x.npy", "layer.json")


# --------------------------------------------------------------------------- YAML tags
def test_yaml_with_a_python_tag_is_refused_unexecuted(box):
    marker = box / "executed"
    tag = f"!!python/object/apply:builtins.open [{str(marker)!r}, 'w']"
    (box / "spec.yaml").write_text(f"filters: 1\nkernel_size: 1\nname: {tag}\n")
    refused(run("spec", "validate", box / "spec.yaml"), "YAML tag not allowed")
    refused(run("spec", "import", box / "spec.yaml", "-o", box / "s.yaml"), "YAML tag not allowed")
    torch.save(torch.nn.ConvTranspose3d(1, 1, 2).state_dict(), box / "m.pt")
    (box / "side.yaml").write_text(f"stride: {tag}\n")
    refused(run("spec", "import", box / "m.pt", "--sidecar", box / "side.yaml", "-o", box / "s.yaml"), "YAML tag")
    assert not marker.exists()
    only(box, "spec.yaml", "m.pt", "side.yaml")


# --------------------------------------------------------------------------- archives
def keras_archive(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)


def valid_members() -> dict[str, bytes]:
    with zipfile.ZipFile(FIX / "k3_channels_first.keras") as z:
        return {n: z.read(n) for n in z.namelist()}


@pytest.mark.parametrize("evil", ["../escaped.txt", "/tmp/absolute.txt", "a/../../escaped.txt", "..\\win.txt"])
def test_keras_archive_with_path_traversal_names_is_refused(evil, box):
    members = valid_members()
    members[evil] = b"owned"
    keras_archive(box / "evil.keras", members)
    refused(run("spec", "import", box / "evil.keras", "-o", box / "s.yaml"), "unsafe path")
    refused(run("spec", "import", box / "evil.keras", "--list"), "unsafe path")
    only(box, "evil.keras")
    assert not Path("/tmp/absolute.txt").exists() or evil != "/tmp/absolute.txt"


def test_keras_archive_with_a_wrong_kernel_shape_is_refused(box):
    config = {
        "class_name": "Functional",
        "config": {
            "layers": [{"class_name": "Conv3DTranspose", "config": {"name": "up", "filters": 2, "kernel_size": 3}}]
        },
    }
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.create_dataset("layers/conv3d_transpose/vars/0", data=np.zeros((3, 3, 3, 5, 1), np.float32))
        f.create_dataset("layers/conv3d_transpose/vars/1", data=np.zeros(2, np.float32))
    keras_archive(box / "bad.keras", {"config.json": json.dumps(config).encode(), "model.weights.h5": buf.getvalue()})
    refused(run("spec", "import", box / "bad.keras", "-o", box / "s.yaml"), "kernel", "(3, 3, 3, 5, 1)", "(3, 3, 3, 2")
    only(box, "bad.keras")


def test_keras_archive_with_a_huge_declared_config_is_refused(box):
    members = valid_members()
    members["config.json"] = b" " * (65 << 20) + b"{}"
    keras_archive(box / "big.keras", members)
    refused(run("spec", "import", box / "big.keras", "-o", box / "s.yaml"), "config.json", "refused")


# --------------------------------------------------------------------------- HDF5 links, shapes
def legacy_weights(path: Path, kernel) -> None:
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"up"])
        g = f.create_group("up")
        g.attrs["weight_names"] = np.array([b"up/kernel:0", b"up/bias:0"])
        if isinstance(kernel, np.ndarray):
            g.create_dataset("up/kernel:0", data=kernel)
        else:
            g["up/kernel:0"] = kernel
        g.create_dataset("up/bias:0", data=np.zeros(2, np.float32))


def test_h5_external_link_is_refused(box):
    with h5py.File(box / "other.h5", "w") as f:
        f.create_dataset("data", data=np.ones((3, 3, 3, 2, 1), np.float32))
    legacy_weights(box / "w.h5", h5py.ExternalLink("other.h5", "/data"))
    (box / "up.json").write_text(
        json.dumps({"class_name": "Conv3DTranspose", "config": {"name": "up", "filters": 2, "kernel_size": 3}})
    )
    refused(run("spec", "import", box / "w.h5", "--config", box / "up.json", "-o", box / "s.yaml"), "ExternalLink")
    only(box, "other.h5", "w.h5", "up.json")


def test_wrong_shapes_are_refused(box):
    (box / "up.json").write_text(
        json.dumps({"class_name": "Conv3DTranspose", "config": {"name": "up", "filters": 2, "kernel_size": 3}})
    )
    legacy_weights(box / "w.h5", np.zeros((3, 3, 2, 2, 1), np.float32))
    refused(run("spec", "import", box / "w.h5", "--config", box / "up.json", "-o", box / "s.yaml"), "(3, 3, 2, 2, 1)")
    np.savez(box / "w.npz", kernel=np.zeros((3, 3, 3, 1, 1)), bias=np.zeros(2))
    refused(
        run("spec", "import", box / "up.json", "--weights", box / "w.npz", "-o", box / "s.yaml"), "kernel has shape"
    )
    torch.save({"weight": torch.zeros(2, 3, 2, 2, 2), "bias": torch.zeros(5)}, box / "m.pt")
    refused(run("spec", "import", box / "m.pt", "-o", box / "s.yaml"), "bias has shape (5,)")
    only(box, "up.json", "w.h5", "w.npz", "m.pt")


# --------------------------------------------------------------------------- broken files, targets
@pytest.mark.parametrize(
    "name, data, fragment",
    [
        ("empty.pt", b"", "not a recognised model file"),
        ("noise.pt", bytes(range(256)) * 4, "not a recognised model file"),
        ("cut.keras", (FIX / "k3_model.keras").read_bytes()[:3000], "zip"),
        ("cut.h5", (FIX / "k2_model.h5").read_bytes()[:3000], "HDF5"),
        ("bad.json", b'{"class_name": "Conv3DTranspose", "config": ', "not valid JSON or YAML"),
        ("list.json", b"[1, 2, 3]", "must be a mapping"),
        ("tensor.pt", None, "holds no ConvTranspose3d layer"),
    ],
)
def test_broken_files_fail_with_one_line(name, data, fragment, box):
    if data is None:
        torch.save({"w": torch.zeros(3)}, box / name)
    else:
        (box / name).write_bytes(data)
    refused(run("spec", "import", box / name, "-o", box / "s.yaml"), fragment)
    only(box, name)


def test_directory_and_missing_files(box):
    refused(run("spec", "import", box, "-o", box / "s.yaml"), "SavedModel")
    refused(run("spec", "import", box / "nope.keras", "-o", box / "s.yaml"), "file not found")


def test_output_may_not_be_the_source_or_an_npz(box):
    (box / "layer.yaml").write_text(json.dumps({"filters": 1, "kernel_size": 1}))
    refused(run("spec", "import", box / "layer.yaml", "-o", box / "layer.yaml", "--overwrite"), "source file")
    refused(run("spec", "import", FIX / "k3_channels_first.keras", "-o", box / "w.npz"), "YAML")
    refused(run("spec", "import", FIX / "k3_channels_first.keras", "-o", box / "no" / "s.yaml"), "does not exist")
    only(box, "layer.yaml")


def test_library_errors_name_the_file_and_field(box):
    torch.save(torch.nn.ConvTranspose3d(1, 1, 2).state_dict(), box / "m.pt")
    with pytest.raises(SpecError) as info:
        importers.import_layer(box / "m.pt", torch_options={"output_padding": 1})
    assert str(box / "m.pt") in str(info.value) and info.value.field == "output_padding"
    with pytest.raises(SpecError) as info:
        LayerSpec.from_mapping({"filters": 1, "kernel_size": 1, "padding": [1, 2]})
    assert info.value.field == "padding"
