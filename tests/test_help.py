"""--help shows what the tool does: grouped options, an example per kind of job, true defaults, short lines."""

from __future__ import annotations

import re
import shlex

import click
import numpy as np
import pytest
from click.testing import CliRunner

from deconv3d_cli.cli import main
from deconv3d_cli.cli.upsample_options import BOUNDARY_DEFAULTS
from deconv3d_cli.geometry.sizes import DEFAULT_MEMORY_LIMIT, format_bytes
from deconv3d_cli.io.chunking import CHUNK_BYTES
from deconv3d_cli.io.formats import DEFAULT_COMPRESSION_LEVEL
from deconv3d_cli.layer import presets, resample
from deconv3d_cli.run.options import ComputeOptions, ReadOptions, WriteOptions

WIDTH = 100
ENTRY = re.compile(r"^  (-\S.*?)(?:\s{2,}\S.*)?$")  # an option's first line: its flags at two spaces


def _commands(group: click.Group = main, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, command in group.commands.items():
        found += _commands(command, (*path, name)) if isinstance(command, click.Group) else [(*path, name)]
    return found


def _help(*path: str) -> str:
    res = CliRunner().invoke(main, [*path, "--help"], terminal_width=WIDTH)
    assert res.exit_code == 0, res.output
    return res.output


def _entries(text: str) -> dict[str, list[str]]:
    """Each option's lines in a help text, keyed by its longest flag."""
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        m = ENTRY.match(line)
        if m:
            current = entries.setdefault(max(re.findall(r"--?[\w-]+", m.group(1)), key=len), [])
            current.append(line)
        elif current is not None and line.startswith("    ") and line.strip():
            current.append(line)
        else:
            current = None
    return entries


def _text(entry: list[str]) -> str:
    return " ".join(" ".join(entry).split())


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p) or "deconv3d")
def test_every_help_fits_a_100_column_terminal(path):
    text = _help(*path)
    assert all(len(line) <= WIDTH for line in text.splitlines()), text
    entries = _entries(text)
    assert "--help" in entries
    too_long = {flag: lines for flag, lines in entries.items() if len(lines) > 3}
    assert not too_long, too_long


def test_upsample_help_groups_its_options():
    titles = [line[:-1] for line in _help("upsample").splitlines() if re.match(r"^[A-Z][^:]*:$", line)]
    assert [t.split(" (")[0] for t in titles] == [
        "Input and output", "What to compute", "Grid", "Run control", "Performance", "Cluster",
        "Other options",
    ]  # fmt: skip


def test_upsample_help_shows_an_example_of_each_kind_of_job_and_each_parses():
    text = _help("upsample")
    examples = [line.split("#")[0].strip() for line in text.splitlines() if line.startswith("    deconv3d upsample")]
    kinds = {"--spec": "a layer", "--preset": "a preset", "--voxel-size": "a resampling", "--like": "a grid",
             "-O": "a batch"}  # fmt: skip
    for flag, kind in kinds.items():
        assert any(flag in shlex.split(e) for e in examples), kind
    command = main.commands["upsample"]
    for example in examples:
        with command.make_context("upsample", shlex.split(example)[2:]) as ctx:  # the options all exist and parse
            assert ctx.params["inputs"]


def test_top_level_help_says_it_resamples():
    text = " ".join(_help().split())
    assert "resampling to a voxel size" in text and "--voxel-size" in text


def test_every_default_in_upsample_help_is_the_one_the_code_uses():
    entries = {flag: _text(lines) for flag, lines in _entries(_help("upsample")).items()}

    def default(flag: str) -> str:
        m = re.search(r"\[default: (.*?)\]", entries[flag])
        assert m, entries[flag]
        return m.group(1)

    assert default("--memory-limit").startswith(f"{format_bytes(DEFAULT_MEMORY_LIMIT)}, or a quarter")
    assert default("--boundary") == (
        f"{BOUNDARY_DEFAULTS['specs']} for specs, {BOUNDARY_DEFAULTS['presets']} for presets and resamplings"
    )
    assert BOUNDARY_DEFAULTS == {"specs": ComputeOptions.boundary, "presets": presets.DEFAULT_BOUNDARY,
                                 "resamplings": resample.DEFAULT_BOUNDARY}  # fmt: skip
    assert default("--compression-level") == str(DEFAULT_COMPRESSION_LEVEL)
    assert default("--chunks") == f"about {format_bytes(CHUNK_BYTES)}"
    assert default("--interp") == resample.DEFAULT_INTERP
    assert default("--checkpoint-every") == f"{WriteOptions.checkpoint_every}; x>=0"
    assert default("--output-dtype") == WriteOptions.dtype
    assert default("--precision") == ComputeOptions.precision
    assert default("--engine-path") == ComputeOptions.engine_path
    assert default("--fourth-axis") == ReadOptions.fourth_axis


def test_the_writers_default_compression_is_the_one_help_states():
    import inspect

    from deconv3d_cli.io.hdf5_writer import Hdf5Writer
    from deconv3d_cli.io.nifti_write import NiftiGzWriter
    from deconv3d_cli.io.zarr_writer import ZarrWriter

    for writer in (Hdf5Writer, NiftiGzWriter, ZarrWriter):
        assert inspect.signature(writer).parameters["compression_level"].default == DEFAULT_COMPRESSION_LEVEL


def test_preset_names_shell_complete():
    env = {"_DECONV3D_COMPLETE": "bash_complete", "COMP_WORDS": "deconv3d upsample --preset tri", "COMP_CWORD": "3"}
    res = CliRunner().invoke(main, [], env=env, prog_name="deconv3d")
    assert res.output.split() == ["plain,trilinear"]
    env["COMP_WORDS"] = "deconv3d upsample --preset "
    res = CliRunner().invoke(main, [], env=env, prog_name="deconv3d")
    assert res.output.split() == [f"plain,{name}" for name in presets.PRESETS]


def test_interp_without_a_grid_says_which_options_give_one(tmp_path):
    src = tmp_path / "x.npy"
    np.save(src, np.zeros((4, 4, 4), "float32"))
    res = CliRunner().invoke(main, ["upsample", str(src), "-o", str(tmp_path / "y.npy"), "--interp", "cubic"])
    assert res.exit_code == 2
    assert "--interp needs a grid option: --voxel-size, --scale, --shape or --like" in res.output
    assert "voxel_size" not in res.output and "field" not in res.output


def test_inspect_dataset_help_names_zarr_too():
    assert "HDF5/Zarr dataset path" in _text(_entries(_help("inspect"))["--dataset"])
