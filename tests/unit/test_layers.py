"""The import direction of DESIGN.md, checked on the source: protocol <- core <- server, etc."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: package -> first-party packages it may import (itself always allowed).
ALLOWED: dict[str, set[str]] = {
    "broker.protocol": set(),
    "broker.core": {"broker.protocol"},
    "broker.server": {"broker.protocol", "broker.core"},
    # plugins sit beside management: they use the core's hooks and the server's config/files
    "broker.plugins": {"broker.protocol", "broker.core", "broker.server"},
    "cluster": {"broker.protocol", "broker.core"},
    "management": {"broker.protocol", "broker.core", "broker.server", "broker.plugins", "cluster"},
}
FIRST_PARTY = ("broker", "cluster", "management", "benchmarks")
#: stdlib modules that would mean I/O or a clock inside the sans-IO layers.
FORBIDDEN_IN_PURE = {"asyncio", "socket", "ssl", "time", "selectors", "aiohttp", "msgpack"}


def _package_of(module: str) -> str | None:
    for package in sorted(ALLOWED, key=len, reverse=True):
        if module == package or module.startswith(package + "."):
            return package
    return None


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        module = ".".join(rel.parts)
        if _package_of(module) is not None:
            found.append((module, path))
    return found


@pytest.mark.parametrize(("module", "path"), _modules(), ids=lambda v: str(v))
def test_imports_point_downwards(module: str, path: Path) -> None:
    package = _package_of(module)
    assert package is not None
    for imported in _imports(path):
        if imported.split(".")[0] not in FIRST_PARTY:
            if package in ("broker.protocol", "broker.core"):
                assert imported.split(".")[0] not in FORBIDDEN_IN_PURE, (
                    f"{module} imports {imported}: the {package} layer does no I/O"
                )
            continue
        target = _package_of(imported)
        if imported == "broker" or target == package:
            continue
        assert target in ALLOWED[package], f"{module} imports {imported} against DESIGN.md"
