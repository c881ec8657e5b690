"""The arrows of docs/architecture.md, checked on every import of the package (lazy ones included).

An AST scan, not an import: a forbidden import inside a function that no test happens to call is
found all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "deconv3d_cli"
ROOT = "deconv3d_cli"

# part -> modules (ours as parts, or third-party top-level names) it must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "geometry": ("layer", "engine", "io", "run", "importers", "views", "cli", "api", "errors", "torch", "click"),
    "layer": ("engine", "io", "run", "views", "cli", "api", "torch", "click"),
    "engine": ("io", "run", "views", "cli", "importers", "click"),
    "io": ("engine", "run", "views", "cli", "layer", "importers", "api", "torch", "click"),
    "importers": ("engine", "io", "run", "views", "cli", "api", "click"),
    "views": ("engine", "run", "cli", "api", "torch", "click"),
    "run": ("cli", "views", "click"),
    "api": ("io", "run", "views", "cli", "click"),
    "errors": ("layer", "geometry", "engine", "io", "run", "importers", "views", "cli", "api", "torch", "click"),
}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _dotted(path: Path) -> list[str]:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE).parts
    if rel == ("__main__.py",):
        return "cli"  # `python -m deconv3d_cli` is the command line's other door
    return rel[0][:-3] if len(rel) == 1 else rel[0]


def _imports(path: Path) -> list[tuple[int, list[str], list[str]]]:
    """(line, imported module as dotted parts, names imported from it) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    here = _dotted(path)
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((node.lineno, alias.name.split("."), []))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = base + (node.module.split(".") if node.module else [])
            else:
                module = node.module.split(".")
            names = [a.name for a in node.names]
            if not node.module and node.level:  # from . import x, y: each name may be a module
                for name in names:
                    found.append((node.lineno, module + [name], []))
            else:
                found.append((node.lineno, module, names))
    return found


def _target(module: list[str]) -> str:
    """The part of ours an import reaches ('layer', 'io', ...), or the third-party top-level name."""
    if module[0] != ROOT:
        return module[0]
    return module[1] if len(module) > 1 else ROOT


CASES = [(p, *imp) for p in _modules() for imp in _imports(p)]


def test_the_scan_sees_the_package():
    parts = {_part(p) for p in _modules()}
    assert {"cli", "layer", "geometry", "engine", "io", "run", "importers", "views"} <= parts
    assert len(CASES) > 200


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_no_forbidden_arrow(part):
    bad = []
    for path, line, module, _ in CASES:
        if _part(path) != part:
            continue
        target = _target(module)
        if target != part and target in FORBIDDEN[part]:
            bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {'.'.join(module)}")
    assert not bad, "\n".join(bad)


def test_nothing_below_the_cli_imports_click_or_the_cli():
    bad = [
        f"{p.relative_to(PACKAGE.parent)}:{line}"
        for p, line, module, _ in CASES
        if _part(p) != "cli" and _target(module) in ("click", "cli")
    ]
    assert not bad, "\n".join(bad)


def test_no_module_imports_another_modules_private_name():
    bad = []
    for path, line, module, names in CASES:
        if module[0] != ROOT:
            continue
        for name in names:
            if name.startswith("_") and not name.startswith("__"):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {'.'.join(module)}.{name}")
        if module[-1].startswith("_") and not module[-1].startswith("__"):
            bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports private module {'.'.join(module)}")
    assert not bad, "\n".join(bad)


def test_no_module_reaches_into_another_modules_private_attribute():
    """`mod._name` where `mod` is one of our modules imported here (an alias of `from . import mod`)."""
    bad = []
    for path in _modules():
        tree = ast.parse(path.read_text())
        ours = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(ROOT)):
                ours.update(a.asname or a.name for a in node.names)
            elif isinstance(node, ast.Import):
                ours.update((a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith(ROOT))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in ours
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.value.id}.{node.attr}")
    assert not bad, "\n".join(bad)


def test_module_and_function_sizes():
    """No module over 450 lines; no function over 60 lines in run/ and cli/."""
    bad = []
    for path in _modules():
        src = path.read_text()
        n = len(src.splitlines())
        if n > 450:
            bad.append(f"{path.relative_to(PACKAGE.parent)}: {n} lines")
        if _part(path) in ("run", "cli"):
            for node in ast.walk(ast.parse(src)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > 60:
                        bad.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}: {length} lines")
    assert not bad, "\n".join(bad)


def test_every_part_says_what_it_may_import():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in doc, f"{init.relative_to(PACKAGE.parent)} has no docstring naming what it may import"
