"""The structure DESIGN.md promises, checked on the source: the import direction (protocol <-
core <- server, etc.), the composition roots, no import cycle, no module over 700 lines.

What other work removes is listed, with its issue, in `KNOWN_CYCLES` and `KNOWN_LONG_MODULES`;
a listed violation that is gone fails the test as well, so those lists can only shrink.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable, Mapping
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


# -- the import graph of the first-party modules ---------------------------------------------

#: The modules whose imports form the graph (tests are not imported by them).
GRAPH_PACKAGES = ("broker", "cluster", "management", "benchmarks")


def _module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted name -> file, for every `.py` under `packages` (a package is its `__init__`)."""
    files: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    return files


def _import_graph(root: Path, packages: Iterable[str]) -> dict[str, set[str]]:
    """module -> the first-party modules it imports.

    Every import statement counts, wherever it stands: at the top, inside a function (a lazy
    import is a dependency all the same) and under `if TYPE_CHECKING:` (DESIGN.md: two modules
    that name each other are one room). `from a.b import c` is an edge to `a.b.c` when that is a
    module, else to `a.b`; relative imports are resolved.
    """
    files = _module_files(root, packages)

    def owner(name: str) -> str | None:
        while name:
            if name in files:
                return name
            name = name.rpartition(".")[0]
        return None

    graph: dict[str, set[str]] = {module: set() for module in files}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = module.split(".") if is_package else module.split(".")[:-1]
                    here = here[: len(here) - (node.level - 1)]
                    base = ".".join([*here, base] if base else here)
                names = [f"{base}.{alias.name}" for alias in node.names]
            for name in names:
                target = owner(name)
                if target is not None and target != module:
                    graph[module].add(target)
    return graph


def _cycles(graph: Mapping[str, set[str]]) -> set[frozenset[str]]:
    """The import cycles: each set of two or more modules that all reach each other."""
    reach: dict[str, set[str]] = {}
    for start in graph:
        seen: set[str] = set()
        todo = list(graph[start])
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo.extend(graph.get(module, ()))
        reach[start] = seen
    return {
        frozenset({module} | {other for other in reach[module] if module in reach[other]})
        for module in graph
        if module in reach[module]
    }


GRAPH = _import_graph(ROOT, GRAPH_PACKAGES)

# -- composition roots ---------------------------------------------------------------------

#: The composition roots: they wire everything together, so they may import any module, and
#: nothing imports them but the console scripts (pyproject.toml [project.scripts], and the
#: pytest11 entry point) and each other as listed in `ROOT_IMPORTS`.
COMPOSITION_ROOTS = {
    "broker.app",
    "broker.cli",
    "broker.cluster_cli",
    "broker.embedded",
    "broker.pytest_plugin",
}
#: Every allowed import of a composition root: `broker.cli` (the `minibroker` console script)
#: serves `minibroker cluster` from `broker.cluster_cli` and starts a node through `broker.app`
#: (lazily, in `start`). `broker.app` and `broker.cluster_cli` import no root (`cluster_cli`
#: runs its nodes as `python -m broker.cli` processes); no other first-party module imports one
#: (the benchmark runs `python -m broker.cli` too; tests are outside the graph). The library's
#: entries: `broker.embedded` (the public embedding API, imported by users' code) starts nodes
#: through `broker.app`; the pytest plugin (entry point `pytest11`) and the start-up and memory
#: benchmarks use `broker.embedded`.
ROOT_IMPORTS = {
    ("broker.cli", "broker.cluster_cli"),
    ("broker.cli", "broker.app"),
    ("broker.embedded", "broker.app"),
    ("broker.pytest_plugin", "broker.embedded"),
    ("benchmarks.embedded_start", "broker.embedded"),
    ("benchmarks.memory", "broker.embedded"),
}


def test_composition_roots_are_imported_only_from_the_console_scripts() -> None:
    edges = {(m, t) for m, targets in GRAPH.items() for t in targets if t in COMPOSITION_ROOTS}
    assert edges <= ROOT_IMPORTS, (
        f"composition roots imported from elsewhere: {edges - ROOT_IMPORTS}"
    )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    targets = [*project["scripts"].values(), *project["entry-points"]["pytest11"].values()]
    entered = {target.partition(":")[0] for target in targets} & COMPOSITION_ROOTS
    # the console script, the pytest plugin, and the public embedding API (imported by users)
    entered.add("broker.embedded")
    assert entered == {"broker.cli", "broker.pytest_plugin", "broker.embedded"}
    reached = set(entered)
    for _ in COMPOSITION_ROOTS:
        reached |= {t for m, t in ROOT_IMPORTS if m in reached}
    assert reached == COMPOSITION_ROOTS, "a composition root that no console script reaches"
    # The roots are outside the layers of `ALLOWED`: they may import any of them.
    assert all(_package_of(root) is None for root in COMPOSITION_ROOTS)
    assert all(root in GRAPH for root in COMPOSITION_ROOTS)


# -- no import cycle ---------------------------------------------------------------------------

#: Import cycles that work in progress removes, each with its issue. Only what is listed here
#: may remain, exactly as listed; an entry that no longer holds fails the test: delete it.
KNOWN_CYCLES: dict[frozenset[str], str] = {}


def _describe(cycles: Iterable[frozenset[str]]) -> str:
    return "; ".join(" <-> ".join(sorted(cycle)) for cycle in cycles)


def test_no_import_cycle_among_first_party_modules() -> None:
    new = _cycles(GRAPH) - KNOWN_CYCLES.keys()
    assert not new, f"import cycles (TYPE_CHECKING imports count): {_describe(new)}"


def test_known_import_cycles_still_exist() -> None:
    """The allowlist only shrinks: a cycle that was broken (or changed) must leave it."""
    gone = KNOWN_CYCLES.keys() - _cycles(GRAPH)
    assert not gone, f"no longer a cycle, remove from KNOWN_CYCLES: {_describe(gone)}"


def test_the_import_graph_sees_type_checking_lazy_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import B\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\n"
    )
    (pkg / "c.py").write_text("def f():\n    from . import d\n")
    (pkg / "d.py").write_text("from .c import f\nimport json\n")
    (pkg / "e.py").write_text("import pkg.a\n")
    graph = _import_graph(tmp_path, ["pkg"])
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
    assert graph["pkg.c"] == {"pkg.d"} and graph["pkg.d"] == {"pkg.c"}
    assert _cycles(graph) == {frozenset({"pkg.a", "pkg.b"}), frozenset({"pkg.c", "pkg.d"})}
    assert _cycles({"x": {"y"}, "y": {"z"}, "z": set()}) == set()


# -- no module over 700 lines ------------------------------------------------------------------

MAX_LINES = 700
#: Modules over `MAX_LINES` that work in progress splits, each with its issue; an entry that is
#: no longer over the limit fails the test: delete it.
KNOWN_LONG_MODULES: dict[str, str] = {}


def _line_counts() -> dict[str, int]:
    counts: dict[str, int] = {}
    for package in (*GRAPH_PACKAGES, "tests"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if "node_modules" not in path.parts:
                counts[path.relative_to(ROOT).as_posix()] = len(path.read_text().splitlines())
    return counts


def test_no_module_over_700_lines() -> None:
    long = {p: n for p, n in _line_counts().items() if n > MAX_LINES}
    new = {p: n for p, n in long.items() if p not in KNOWN_LONG_MODULES}
    assert not new, f"modules over {MAX_LINES} lines: {new}"


def test_known_long_modules_are_still_long() -> None:
    """The allowlist only shrinks: a module split below the limit must leave it."""
    counts = _line_counts()
    done = [p for p in KNOWN_LONG_MODULES if counts.get(p, 0) <= MAX_LINES]
    assert not done, f"no longer over {MAX_LINES} lines, remove from KNOWN_LONG_MODULES: {done}"
