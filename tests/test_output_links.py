"""A symlink at an output path: refused without --overwrite, replaced itself with it, for every format;
what it points to (a file, a Zarr store elsewhere) is never written nor removed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from deconv3d_cli.cli import main
from deconv3d_cli.io import open_reader

SPEC = "filters: 1\nkernel_size: 2\nstrides: 2\nkernel_initializer: ones\nuse_bias: false\n"


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _upsample(tmp_path: Path, out: Path, *extra: str):
    args = ["upsample", str(tmp_path / "in.npy"), "-o", str(out), "--spec", str(tmp_path / "s.yaml"), *extra]
    return CliRunner().invoke(main, [*args, "--no-progress"])


@pytest.fixture
def setup(tmp_path: Path) -> Path:
    np.save(tmp_path / "in.npy", np.arange(64, dtype=np.float32).reshape(4, 4, 4))
    (tmp_path / "s.yaml").write_text(SPEC)
    (tmp_path / "elsewhere").mkdir()
    return tmp_path


def test_a_zarr_output_that_is_a_link_to_a_store_elsewhere(setup):
    tmp_path = setup
    store = tmp_path / "elsewhere" / "old.zarr"
    zarr.create_array(str(store), shape=(2, 2, 2), dtype="f4", chunks=(2, 2, 2))[...] = 7
    before = _tree(store)
    link = tmp_path / "out.zarr"
    link.symlink_to(store)
    res = _upsample(tmp_path, link)
    assert res.exit_code == 2  # was refused as "is a file, not a Zarr store"
    assert res.output.strip() == (
        f"deconv3d: error: {link}: output exists; pass --overwrite to replace the link (what it points to is "
        "never written)"
    )
    res = _upsample(tmp_path, link, "--overwrite")
    assert res.exit_code == 0, res.output
    assert link.is_dir() and not link.is_symlink()
    reader = open_reader(link)
    out = reader.read((slice(None),) * 3)
    reader.close()
    expected = np.repeat(np.repeat(np.repeat(np.load(tmp_path / "in.npy"), 2, 0), 2, 1), 2, 2)
    np.testing.assert_array_equal(out.reshape(expected.shape), expected)
    assert _tree(store) == before  # the store the link pointed to is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "in.npy", "out.zarr", "s.yaml"]


def test_an_npy_output_that_is_a_link_is_replaced_alike(setup):
    tmp_path = setup
    kept = tmp_path / "elsewhere" / "keep.npy"
    np.save(kept, np.zeros(3))
    before = kept.read_bytes()
    link = tmp_path / "out.npy"
    link.symlink_to(kept)
    res = _upsample(tmp_path, link)
    assert res.exit_code == 2 and "replace the link (what it points to is never written)" in res.output
    assert _upsample(tmp_path, link, "--overwrite").exit_code == 0
    assert not link.is_symlink() and np.load(link).shape == (8, 8, 8)
    assert kept.read_bytes() == before
