"""What a pip user gets: the licence, the classifiers, the extras and the command, read from
pyproject.toml and from a wheel built here (offline, with this environment's setuptools), and that wheel
installed into a fresh virtual environment (`--no-deps`; its dependencies come from this one)."""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

import deconv3d_cli

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "deconv3d_cli"
MIN_SETUPTOOLS = (77, 0, 3)

pytestmark = pytest.mark.xdist_group("packaging")  # one worker builds the wheel once for all of them


def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


# ----------------------------------------------------------------------------------- pyproject.toml


def test_licence_is_an_spdx_string_with_its_file():
    project = pyproject()["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "deconv3d-cli contributors" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text
    assert not any(c.startswith("License ::") for c in project["classifiers"])  # PEP 639: not both


def test_the_build_backend_is_new_enough_for_the_spdx_string():
    requires = pyproject()["build-system"]["requires"]
    (setuptools,) = [r for r in requires if r.startswith("setuptools")]
    assert setuptools.startswith("setuptools>=") and _version(setuptools) >= MIN_SETUPTOOLS


def test_classifiers_say_linux_python_and_the_field():
    project = pyproject()["project"]
    classifiers = project["classifiers"]
    assert "Operating System :: POSIX :: Linux" in classifiers
    assert not [c for c in classifiers if c.startswith("Operating System ::") and "Linux" not in c]
    assert "Topic :: Scientific/Engineering :: Medical Science Apps." in classifiers
    assert "Topic :: Scientific/Engineering :: Image Processing" in classifiers
    lowest = _version(project["requires-python"])
    versions = sorted(_version(c) for c in classifiers if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c))
    assert versions and versions[0] == lowest[:2]
    assert versions == [(3, m) for m in range(versions[0][1], versions[-1][1] + 1)]  # no gaps
    assert tuple(sys.version_info[:2]) in versions  # the Python these tests run on is one of them


def test_classifiers_are_ones_pypi_accepts():
    trove = pytest.importorskip("trove_classifiers")
    unknown = [c for c in pyproject()["project"]["classifiers"] if c not in trove.classifiers]
    assert not unknown


def test_zarr_is_its_own_extra_and_dask_adds_the_scheduler():
    extras = pyproject()["project"]["optional-dependencies"]

    def names(extra: str) -> set[str]:
        return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in extras[extra]}

    assert names("zarr") == {"zarr"} and "zarr>=3.0" in extras["zarr"]
    assert names("dask") == {"dask", "distributed", "zarr"}
    core = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in pyproject()["project"]["dependencies"]}
    assert not core & {"zarr", "dask", "distributed"}


def test_entry_point_urls_and_one_version():
    project = pyproject()
    assert project["project"]["scripts"] == {"deconv3d": "deconv3d_cli.cli:main"}
    from deconv3d_cli.cli import main

    assert main.name and callable(main)
    assert "version" in project["project"]["dynamic"] and "version" not in project["project"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "deconv3d_cli.__version__"}
    urls = project["project"]["urls"]
    assert {"Homepage", "Source", "Issues", "Documentation"} <= set(urls)
    assert all(u.startswith("https://") for u in urls.values())


def test_the_makefile_installs_the_extras_and_names_torch_once():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install -q -e '\.\[test,zarr,dask\]'", makefile)
    assert len(re.findall(r"^TORCH \?=", makefile, flags=re.M)) == 1


# ----------------------------------------------------------------------------------- a built wheel


def _build_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env["PYTHONWARNINGS"] = "default"  # every deprecation warning printed, none hidden
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel setuptools builds from a copy of the sources (the checkout itself stays untouched)."""
    setuptools = pytest.importorskip("setuptools")
    if _version(setuptools.__version__) < MIN_SETUPTOOLS:
        pytest.skip(f"setuptools {setuptools.__version__} here; the build needs >= 77.0.3 (the test extra has it)")
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(PACKAGE, src / "deconv3d_cli", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path_factory.mktemp("dist")
    code = "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"
    done = subprocess.run(
        [sys.executable, "-c", code, str(dist)], cwd=src, env=_build_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    noise = [line for line in log.splitlines() if re.search(r"warn|deprecat", line, re.I)]
    assert not noise, "\n".join(noise)
    return dist / done.stdout.strip().splitlines()[-1]


def _metadata(whl: Path):
    with zipfile.ZipFile(whl) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(z.read(name).decode())


@pytest.mark.slow
def test_wheel_metadata(wheel):
    meta = _metadata(wheel)
    assert meta["Name"] == "deconv3d-cli" and meta["Version"] == deconv3d_cli.__version__
    assert meta["License-Expression"] == "MIT" and meta.get_all("License-File") == ["LICENSE"]
    assert "License" not in meta  # the deprecated free-text field
    assert "Operating System :: POSIX :: Linux" in meta.get_all("Classifier")
    assert set(meta.get_all("Provides-Extra")) >= {"zarr", "dask", "test"}
    requires = meta.get_all("Requires-Dist")
    assert 'zarr>=3.0; extra == "zarr"' in requires
    scheduler = {f'{r}; extra == "dask"' for r in ("dask>=2024.8", "distributed>=2024.8", "zarr>=3.0")}
    assert scheduler <= set(requires)
    assert not [r for r in requires if r.startswith(("zarr", "dask", "distributed")) and "extra" not in r]
    assert {u.split(",")[0] for u in meta.get_all("Project-URL")} >= {"Homepage", "Source", "Issues"}


@pytest.mark.slow
def test_wheel_holds_the_package_licence_and_command(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        assert z.read(f"{info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    assert "[console_scripts]" in entry_points and "deconv3d = deconv3d_cli.cli:main" in entry_points
    sources = {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    schemas = {p.relative_to(ROOT).as_posix() for p in (PACKAGE / "schemas").glob("*.schema.json")}
    packaged = {n for n in names if not n.startswith(info)}
    assert schemas and packaged == sources | schemas  # every module and the JSON Schemas, nothing else


@pytest.mark.slow
def test_pip_install_into_a_fresh_venv_and_run_the_command(wheel, tmp_path):
    """The wheel installed with this environment's pip into an empty venv that borrows this one's
    site-packages for the dependencies (torch is too big to install per test); the command then runs
    from the new venv, prints its help and no warning."""
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0:
        pytest.skip("no pip in this environment")
    target = tmp_path / "venv"
    venv.create(target, with_pip=False, symlinks=True)
    python = target / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib) / "borrowed-deps.pth").write_text("".join(f"{d}\n" for d in sorted(deps)))
    env = _build_env()
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", str(wheel)]
    done = subprocess.run(pip, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not re.search(r"warn|deprecat", done.stdout + done.stderr, re.I), done.stdout + done.stderr

    clean = {k: v for k, v in env.items() if not k.startswith("PIP_")}
    where = subprocess.run(
        [python, "-c", "import deconv3d_cli; print(deconv3d_cli.__file__)"],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(target), where.stdout + where.stderr
    helped = subprocess.run(
        [target / "bin" / "deconv3d", "--help"], cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=120
    )
    assert helped.returncode == 0 and helped.stderr == "", helped.stderr
    assert "upsample" in helped.stdout and "inspect" in helped.stdout
    version = subprocess.run(
        [target / "bin" / "deconv3d", "--version"], cwd=tmp_path, env=clean, capture_output=True, text=True
    )
    assert version.returncode == 0 and deconv3d_cli.__version__ in version.stdout and version.stderr == ""
