"""Hostile specs, weights and model files: bounded memory, one line, exit 2, nothing written.

Memory cases run the real CLI in a child process under an address-space limit (so a regression fails
fast instead of taking the machine) and assert the child's own peak resident memory: a 500-byte YAML
alias bomb, a 0.5 MB .npz / .pt that inflate to 512 MiB, `spec init` sizes that would allocate
gigabytes. The others go through Click's CliRunner.
"""

from __future__ import annotations

import io
import os
import resource
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hostile_files import (
    MIB,
    alias_bomb,
    cli,
    deflated,
    npy_bytes,
    npy_header,
    one_error_line,
    stored,
    write_zip,
    zeros_bomb,
)

from deconv3d_cli import LayerSpec, SpecError
from deconv3d_cli.cli import main
from deconv3d_cli.layer import textconfig

FIX = Path(__file__).resolve().parent / "fixtures_import"
AS_LIMIT = {resource.RLIMIT_AS: 3 << 30}  # a regression dies of MemoryError instead of swapping
PEAK_MIB = 200  # the CLI without torch peaks near 35 MiB; every bomb below inflates to 512 MiB or more


def refused(args: list, *fragments: str) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 2, (res.exit_code, res.output)
    return one_error_line([line for line in res.stderr.splitlines() if line.strip()], *fragments)


def spec_with(folder: Path, weights: str, **extra: object) -> Path:
    lines = ["filters: 1", "kernel_size: 2", "strides: 2", "use_bias: false", f"weights: {weights}"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    path = folder / "spec.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def only(folder: Path, *names: str) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


# ----------------------------------------------------------------------------------------- .npz
def test_npz_bomb_is_refused_before_decompressing(tmp_path):
    head = npy_header((128 << 20,))  # 512 MiB of float32 zeros, about 0.5 MB on disk
    write_zip(tmp_path / "w.npz", [zeros_bomb("kernel.npy", head, 512)])
    assert (tmp_path / "w.npz").stat().st_size < MIB
    res = cli("spec", "validate", spec_with(tmp_path, "w.npz"), limits=AS_LIMIT)
    assert res.code == 2, res
    one_error_line(res.lines, "w.npz", "kernel.npy declares", "refused before decompressing")
    assert res.peak_mib < PEAK_MIB, res.peak_mib


def test_npz_member_larger_than_its_header_is_refused(tmp_path):
    kernel = npy_bytes(np.ones((2, 2, 2, 1, 1), np.float32))
    write_zip(tmp_path / "w.npz", [deflated("kernel.npy", kernel + bytes(1000))])
    refused(["spec", "validate", spec_with(tmp_path, "w.npz")], "declares", "needs", "damaged")


def test_npz_kernel_shape_is_checked_before_its_data_is_read(tmp_path):
    head = npy_header((64, 64, 64, 1, 1))  # a shape the spec (kernel_size 2) cannot take
    write_zip(tmp_path / "w.npz", [zeros_bomb("kernel.npy", head, 1)])
    refused(["spec", "validate", spec_with(tmp_path, "w.npz")], "field 'kernel'", "(64, 64, 64, 1, 1)")


def test_truncated_npz_is_one_line(tmp_path):
    np.savez(tmp_path / "full.npz", kernel=np.ones((2, 2, 2, 1, 1), np.float32))
    data = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "w.npz").write_bytes(data[: len(data) // 2])
    refused(["spec", "validate", spec_with(tmp_path, "w.npz")], "w.npz", "not a readable .npz", "truncated")


def test_npz_member_with_a_bad_crc_is_one_line(tmp_path):
    member = stored("kernel.npy", npy_bytes(np.ones((2, 2, 2, 1, 1), np.float32)))
    member.crc ^= 0xFFFF
    write_zip(tmp_path / "w.npz", [member])
    refused(["spec", "validate", spec_with(tmp_path, "w.npz")], "w.npz", "CRC")


def test_weights_that_are_a_fifo_are_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / "w.npz")
    res = cli("spec", "validate", spec_with(tmp_path, "w.npz"), timeout=60)
    assert res.code == 2, res
    one_error_line(res.lines, "w.npz", "regular .npz file")


def test_npz_weights_load_exactly(tmp_path):
    kernel = np.arange(8, dtype=np.float32).reshape(2, 2, 2, 1, 1)
    np.savez(tmp_path / "w.npz", kernel=kernel, bias=np.array([0.5], np.float32))
    (tmp_path / "spec.yaml").write_text("filters: 1\nkernel_size: 2\nstrides: 2\nweights: w.npz\n")
    spec = LayerSpec.from_yaml(tmp_path / "spec.yaml")
    assert np.array_equal(spec.kernel, kernel) and spec.bias.tolist() == [0.5] and spec.kernel.flags.writeable
    np.savez(tmp_path / "f.npz", kernel=np.asfortranarray(np.arange(16, dtype=np.float64).reshape(2, 2, 2, 1, 2)))
    (tmp_path / "f.yaml").write_text("filters: 1\nkernel_size: 2\nuse_bias: false\nweights: f.npz\n")
    assert np.array_equal(LayerSpec.from_yaml(tmp_path / "f.yaml").kernel, np.arange(16.0).reshape(2, 2, 2, 1, 2))


# ----------------------------------------------------------------------------------------- YAML
def test_yaml_alias_bomb_is_refused_by_validate(tmp_path):
    (tmp_path / "spec.yaml").write_text(alias_bomb())
    assert (tmp_path / "spec.yaml").stat().st_size < 1024
    res = cli("spec", "validate", tmp_path / "spec.yaml", limits=AS_LIMIT)
    assert res.code == 2, res
    one_error_line(res.lines, "spec.yaml", "aliases expand to more than")
    assert res.peak_mib < PEAK_MIB, res.peak_mib


def test_yaml_alias_bomb_never_reaches_a_run(tmp_path):
    (tmp_path / "spec.yaml").write_text(alias_bomb())
    np.save(tmp_path / "x.npy", np.ones((4, 4, 4), np.float32))
    spec = tmp_path / "spec.yaml"
    res = cli("upsample", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--spec", spec, limits=AS_LIMIT)
    assert res.code == 2, res
    one_error_line(res.lines, "aliases expand")
    assert res.peak_mib < 400, res.peak_mib  # a run may import torch; the bomb took it to 5.4 GiB
    only(tmp_path, "spec.yaml", "x.npy")


def test_yaml_merge_key_bomb_is_refused(tmp_path):
    lines = ["m0: &m0 {a: 1, b: 2, c: 3, d: 4}"]
    for i in range(1, 8):
        lines.append(f"m{i}: &m{i} [" + ", ".join([f"*m{i - 1}"] * 8) + "]")
    (tmp_path / "spec.yaml").write_text("filters: 1\nkernel_size: 2\nname:\n" + "\n".join("  " + x for x in lines))
    refused(["spec", "validate", tmp_path / "spec.yaml"], "aliases expand")


def test_recursive_yaml_alias_is_refused(tmp_path):
    (tmp_path / "spec.yaml").write_text("filters: 1\nkernel_size: 2\nname: &a [1, *a]\n")
    refused(["spec", "validate", tmp_path / "spec.yaml"], "recursive alias")


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_nesting_20000_deep_is_one_line(tmp_path, suffix):
    deep = "[" * 20000 + "]" * 20000
    text = f'{{"filters": 1, "kernel_size": 2, "name": {deep}}}' if suffix == ".json" else f"filters: 1\nname: {deep}\n"
    (tmp_path / f"spec{suffix}").write_text(text)
    deeper = f"nested deeper than {textconfig.MAX_DEPTH}"
    refused(["spec", "validate", tmp_path / f"spec{suffix}"], f"spec{suffix}", deeper)


def test_name_must_be_a_string(tmp_path):
    (tmp_path / "spec.yaml").write_text("filters: 1\nkernel_size: 2\nname: [1, 2]\n")
    refused(["spec", "validate", tmp_path / "spec.yaml"], "field 'name'", "must be a string")


def test_a_spec_that_is_a_fifo_is_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / "spec.yaml")
    res = cli("spec", "validate", tmp_path / "spec.yaml", timeout=60)
    assert res.code == 2, res
    one_error_line(res.lines, "spec.yaml", "not a regular file")


def test_the_bounded_reader_reads_ordinary_documents():
    assert textconfig.loads("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}
    assert textconfig.loads('{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}
    assert textconfig.loads("{a: 1}") == {"a": 1}  # YAML flow style that json refuses
    nested = "[" * textconfig.MAX_DEPTH + "]" * textconfig.MAX_DEPTH
    assert textconfig.loads(nested) is not None
    with pytest.raises(SpecError, match="nested deeper"):
        textconfig.loads("[" + nested + "]")
    with pytest.raises(SpecError, match="nested deeper"):
        textconfig.loads("x: " + "[" * 150 + "]" * 150)


# ----------------------------------------------------------------------------------------- spec init
def test_spec_init_huge_filters_is_refused_before_allocating(tmp_path):
    res = cli(
        "spec",
        "init",
        "--filters",
        10_000_000,
        "--kernel-size",
        4,
        "--strides",
        2,
        "--in-channels",
        1,
        "-o",
        tmp_path / "s.yaml",
        limits=AS_LIMIT,
    )
    assert res.code == 2, res
    one_error_line(res.lines, "field 'filters'", "over the limit of 65536")
    assert res.peak_mib < PEAK_MIB, res.peak_mib
    only(tmp_path)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--kernel-size", "10000"], ["field 'kernel_size'", "<= 4096"]),
        (["--kernel-size", "1000"], ["field 'kernel_size'", "1000000000 weights", "over the limit"]),
        (["--kernel-size", "3", "--dilation-rate", "100000"], ["field 'dilation_rate'", "<= 4096"]),
    ],
)
def test_spec_init_huge_kernels_are_refused_without_a_memory_hint(tmp_path, args, fragments):
    command = ["spec", "init", "--filters", "1", "--in-channels", "1", *args, "-o", tmp_path / "s.yaml"]
    line = refused(command, *fragments)
    assert "memory-limit" not in line
    only(tmp_path)


def test_spec_in_channels_over_the_bound_is_refused(tmp_path):
    (tmp_path / "spec.yaml").write_text("filters: 1\nkernel_size: 1\nin_channels: 1000000\n")
    refused(["spec", "validate", tmp_path / "spec.yaml"], "field 'in_channels'", "65536")


# ----------------------------------------------------------------------------------------- models
def torch_bomb(path: Path, mib: int) -> Path:
    """A valid torch zip whose first storage record is `mib` MiB of deflated zeros (a 1-voxel kernel)."""
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(1, 1, 1, 1, 1)}, buf)
    members = []
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        for info in z.infolist():
            data = z.read(info)
            members.append(
                zeros_bomb(info.filename, data, mib)
                if info.filename.endswith("/data/0")
                else stored(info.filename, data)
            )
    return write_zip(path, members)


def test_pt_zip_bomb_is_refused_before_torch_reads_it(tmp_path):
    torch_bomb(tmp_path / "m.pt", 512)
    assert (tmp_path / "m.pt").stat().st_size < MIB
    res = cli("spec", "import", tmp_path / "m.pt", "-o", tmp_path / "s.yaml", limits=AS_LIMIT)
    assert res.code == 2, res
    one_error_line(res.lines, "m.pt", "declare", "refused before decompressing")
    assert res.peak_mib < PEAK_MIB, res.peak_mib
    only(tmp_path, "m.pt")


def keras_members() -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(FIX / "k3_channels_first.keras") as z:
        return [(info.filename, z.read(info)) for info in z.infolist()]


def test_keras_member_with_a_bad_crc_is_one_line(tmp_path):
    members = [deflated(name, data) for name, data in keras_members()]
    for m in members:
        if m.name == "config.json":
            m.crc ^= 1
    write_zip(tmp_path / "m.keras", members)
    refused(["spec", "import", tmp_path / "m.keras", "-o", tmp_path / "s.yaml"], "m.keras", "config.json", "damaged")
    only(tmp_path, "m.keras")


@pytest.mark.parametrize("damage", ["crc", "flipped-byte", "truncated"])
def test_keras_weights_member_damaged_is_one_line(tmp_path, damage):
    members = [deflated(name, data) for name, data in keras_members()]
    for m in members:
        if m.name == "model.weights.h5":
            if damage == "crc":
                m.crc ^= 1
            elif damage == "flipped-byte":
                m.raw = m.raw[: len(m.raw) // 2] + bytes([m.raw[len(m.raw) // 2] ^ 0xFF]) + m.raw[len(m.raw) // 2 + 1 :]
            else:
                m.raw = m.raw[: len(m.raw) // 2]
    write_zip(tmp_path / "m.keras", members)
    refused(["spec", "import", tmp_path / "m.keras", "-o", tmp_path / "s.yaml"], "m.keras", "damaged")
    only(tmp_path, "m.keras")


def test_keras_weights_bomb_is_refused_before_decompressing(tmp_path):
    members = [deflated(name, data) for name, data in keras_members() if name != "model.weights.h5"]
    members.append(zeros_bomb("model.weights.h5", b"", 512))
    write_zip(tmp_path / "m.keras", members)
    refused(["spec", "import", tmp_path / "m.keras", "--list"], "m.keras", "refused before decompressing")


def test_real_models_still_import(tmp_path):
    for name in ("k3_channels_first.keras", "k2_model.keras"):
        res = CliRunner().invoke(main, ["spec", "import", str(FIX / name), "--list"])
        assert res.exit_code == 0, res.output


def test_explicit_padding_that_crops_everything_names_the_padding_field(tmp_path):
    np.savez(tmp_path / "w.npz", kernel=np.ones((2, 2, 2, 1, 1), np.float32))
    spec = spec_with(tmp_path, "w.npz", padding="[1000000, 0, 0]")
    np.save(tmp_path / "x.npy", np.ones((8, 8, 8), np.float32))
    line = refused(["upsample", tmp_path / "x.npy", "-o", tmp_path / "y.npy", "--spec", spec, "--no-progress"],
                   "spec.yaml", "field 'padding'", "use at most 7")  # fmt: skip
    assert "--boundary" not in line
    only(tmp_path, "spec.yaml", "w.npz", "x.npy")
