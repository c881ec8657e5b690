"""Sizes as pipelines write them (binary K/M/G/T, decimal KB/MB/GB/TB) and the default memory budget
under cgroup and SLURM limits, from faked /proc, /sys and environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deconv3d_cli.geometry import tiling
from deconv3d_cli.geometry.sizes import (
    DEFAULT_MEMORY_LIMIT,
    GIB,
    KIB,
    MIB,
    budget_for,
    cgroup_memory_limits,
    default_memory_limit,
    format_bytes,
    memory_limits,
    parse_bytes,
    slurm_memory_limits,
)

UNITS = {
    "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40,
    "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
    "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "": 1, "B": 1,
}  # fmt: skip


@pytest.mark.parametrize("unit, factor", sorted(UNITS.items()))
def test_each_unit_in_either_case(unit, factor):
    assert parse_bytes(f"3{unit}") == 3 * factor
    assert parse_bytes(f"3{unit.lower()}") == 3 * factor
    assert parse_bytes(f"3{unit.upper()}") == 3 * factor


def test_binary_letters_are_what_slurm_means():
    assert parse_bytes("1G") == parse_bytes("1g") == parse_bytes("1GiB") == 1 << 30
    assert parse_bytes("4096M") == 4 << 30  # sbatch --mem=4096M
    assert parse_bytes("1GB") == 10**9 and parse_bytes("1gb") == 10**9
    assert parse_bytes("1kB") == 1000  # SI's own spelling


@pytest.mark.parametrize(
    "text, value",
    [
        (" 2 GiB ", 2 << 30),
        ("2 G", 2 << 30),
        ("1.5G", 3 << 29),
        ("1.5 GB", 1_500_000_000),
        (".5M", 1 << 19),
        ("0.1G", 107374182),  # exactly 107374182.4, rounded down
        ("1e9", 10**9),
        ("1E3K", 1000 << 10),
        ("2.5e-3G", 2684354),
        ("+7", 7),
        ("4096", 4096),
        ("1", 1),
        ("123456789012345678", 123456789012345678),  # exact, no float rounding
    ],
)
def test_spaces_decimals_and_exponents(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize(
    "text, says",
    [
        ("0", "positive"),
        ("0G", "positive"),
        ("-1", "positive"),
        ("-2G", "positive"),
        ("nan", "not a size"),
        ("NaN", "not a size"),
        ("inf", "not a size"),
        ("1e999", "larger than 8 EiB"),
        ("1e999999999", "larger than 8 EiB"),
        ("9E", "not a size"),
        ("8192P", "not a size"),
        ("12Q", "not a size"),
        ("12 parsecs", "not a size"),
        ("GiB", "not a size"),
        ("", "not a size"),
        ("1.2.3G", "not a size"),
        ("1 G B", "not a size"),
        ("0.1", "less than 1 byte"),
        ("9000000T", "larger than 8 EiB"),
    ],
)
def test_refusals_say_what_would_work(text, says):
    with pytest.raises(ValueError) as err:
        parse_bytes(text)
    message = str(err.value)
    assert says in message and "512M" in message and "1024" in message and "\n" not in message


@given(st.integers(1, 1 << 20), st.sampled_from(sorted(UNITS)))
def test_integers_times_units_are_exact(n, unit):
    assert parse_bytes(f"{n}{unit}") == n * UNITS[unit]
    assert parse_bytes(f" {n} {unit} ") == n * UNITS[unit]


@given(st.integers(1, 1 << 50))
def test_format_bytes_reads_back_within_its_rounding(n):
    text = format_bytes(n)
    assert abs(parse_bytes(text) - n) <= 0.05 * n + 1


def test_tiling_still_exports_the_same_functions():
    assert tiling.parse_bytes is parse_bytes and tiling.format_bytes is format_bytes
    assert format_bytes(512) == "512 B" and format_bytes(3 << 29) == "1.5 GiB"


# ----------------------------------------------------------------------------------- memory limits


def fake_system(tmp_path: Path, cgroup: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A /proc with `self/cgroup` holding `cgroup`, and a /sys with `files` (paths under fs/cgroup)."""
    proc, sys = tmp_path / "proc", tmp_path / "sys"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup)
    for rel, text in files.items():
        path = sys / "fs" / "cgroup" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return proc, sys


def test_no_limit_anywhere_is_the_default_512_mib(tmp_path):
    proc, sys = fake_system(tmp_path, "0::/user.slice/session-1.scope\n", {"user.slice/memory.max": "max\n"})
    assert default_memory_limit(proc, sys, {}) == DEFAULT_MEMORY_LIMIT == 512 * MIB
    assert default_memory_limit(tmp_path / "no-proc", tmp_path / "no-sys", {}) == 512 * MIB
    assert memory_limits(proc, sys, {}) == []


def test_cgroup_v2_limit_of_the_own_group(tmp_path):
    proc, sys = fake_system(
        tmp_path,
        "0::/system.slice/slurmstepd.scope/job_42/step_0\n",
        {
            "system.slice/slurmstepd.scope/job_42/step_0/memory.max": "max\n",
            "system.slice/slurmstepd.scope/job_42/memory.max": str(2 * GIB) + "\n",
            "system.slice/memory.max": "max\n",
        },
    )
    limits = cgroup_memory_limits(proc, sys)
    assert [m.limit for m in limits] == [2 * GIB]
    assert limits[0].source.startswith("cgroup v2 ") and "job_42/memory.max" in limits[0].source
    assert default_memory_limit(proc, sys, {}) == 512 * MIB  # a quarter of 2 GiB


def test_cgroup_v2_in_a_container_sees_its_group_as_the_root(tmp_path):
    proc, sys = fake_system(tmp_path, "0::/\n", {"memory.max": str(1536 * MIB)})
    assert default_memory_limit(proc, sys, {}) == 384 * MIB
    # the host path recorded, but only the container's own group mounted: the walk reaches the root
    proc, sys = fake_system(tmp_path / "b", "0::/docker/0123abcd\n", {"memory.max": str(1536 * MIB)})
    assert default_memory_limit(proc, sys, {}) == 384 * MIB


def test_cgroup_v1_limit_and_its_unlimited_value(tmp_path):
    proc, sys = fake_system(
        tmp_path,
        "12:pids:/x\n4:memory:/process_api/abc\n0::/\n",
        {
            "memory/process_api/abc/memory.limit_in_bytes": str(800 * MIB),
            "memory/memory.limit_in_bytes": "9223372036854771712",
        },
    )
    limits = cgroup_memory_limits(proc, sys)
    assert [(m.source.split()[1], m.limit) for m in limits] == [("v1", 800 * MIB)]
    assert default_memory_limit(proc, sys, {}) == 200 * MIB
    proc, sys = fake_system(
        tmp_path / "b", "4:cpu,memory:/a\n", {"memory/a/memory.limit_in_bytes": "9223372036854771712"}
    )
    assert default_memory_limit(proc, sys, {}) == DEFAULT_MEMORY_LIMIT  # v1's "no limit"


def test_cgroup_v2_in_a_hybrid_layout(tmp_path):
    proc, sys = fake_system(tmp_path, "0::/job\n", {"unified/job/memory.max": str(400 * MIB)})
    assert default_memory_limit(proc, sys, {}) == 100 * MIB


@pytest.mark.parametrize(
    "environ, limit",
    [
        ({"SLURM_MEM_PER_NODE": "4096"}, 4 * GIB),
        ({"SLURM_MEM_PER_NODE": "1000", "SLURM_MEM_PER_CPU": "10"}, 1000 * MIB),  # per node wins
        ({"SLURM_MEM_PER_CPU": "512", "SLURM_CPUS_ON_NODE": "3"}, 3 * 512 * MIB),
        ({"SLURM_MEM_PER_CPU": "512", "SLURM_JOB_CPUS_PER_NODE": "4(x2),2"}, 4 * 512 * MIB),
        ({"SLURM_MEM_PER_CPU": "512", "SLURM_CPUS_PER_TASK": "2"}, 2 * 512 * MIB),
        ({"SLURM_MEM_PER_CPU": "512"}, 512 * MIB),
    ],
)
def test_slurm_memory_in_mib(environ, limit):
    assert [m.limit for m in slurm_memory_limits(environ)] == [limit]


@pytest.mark.parametrize(
    "environ",
    [{}, {"SLURM_MEM_PER_NODE": "0"}, {"SLURM_MEM_PER_NODE": "lots"}, {"SLURM_MEM_PER_CPU": "-5"}],
)
def test_slurm_without_a_usable_figure_is_no_limit(environ):
    assert slurm_memory_limits(environ) == []


def test_the_tightest_limit_decides(tmp_path):
    proc, sys = fake_system(tmp_path, "0::/job\n", {"job/memory.max": str(3 * GIB)})
    env = {"SLURM_MEM_PER_NODE": "1024"}
    found = memory_limits(proc, sys, env)
    assert [m.limit for m in found] == [GIB, 3 * GIB] and found[0].source == "SLURM_MEM_PER_NODE=1024"
    assert default_memory_limit(proc, sys, env) == 256 * MIB
    assert default_memory_limit(proc, sys, {"SLURM_MEM_PER_NODE": "65536"}) == 512 * MIB  # the cgroup's 768 MiB, capped
    assert default_memory_limit(proc, sys, {"SLURM_MEM_PER_NODE": "1536"}) == 384 * MIB


def test_the_budget_is_a_quarter_never_above_the_default():
    assert budget_for(None) == 512 * MIB
    assert budget_for(64 * GIB) == 512 * MIB  # a big job tiles as a laptop does
    assert budget_for(2 * GIB) == 512 * MIB
    assert budget_for(1536 * MIB) == 384 * MIB
    assert budget_for(1000 * MIB + 3) == 250 * MIB  # whole MiB
    assert budget_for(10 * KIB) == 2560 and budget_for(3) == 1


def test_the_real_machine_gives_a_positive_budget_at_most_the_default():
    assert 1 <= default_memory_limit() <= DEFAULT_MEMORY_LIMIT
