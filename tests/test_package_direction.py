"""Dependencies point one way, models <- indexer <- service, and no two modules of a package
import each other (directly or round a loop), counting imports hidden inside functions."""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("models", "indexer", "service")
FORBIDDEN = {"models": {"indexer", "service"}, "indexer": {"service"}, "service": set()}


def module_names(package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


ALL = {name: path for pkg in PACKAGES for name, path in module_names(pkg).items()}


def imports_of(module: str, path: Path) -> set[str]:
    """Modules of our packages that ``module`` imports anywhere in its file."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_pkg, node)
            for alias in node.names:  # `from pkg import submodule` names the submodule
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in ALL else base)
    return {_known(name) for name in found if _known(name)}


def _absolute(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    anchor = parts if is_pkg else parts[:-1]
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def _known(name: str) -> str | None:
    """The longest prefix of ``name`` that is one of our modules."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in ALL:
            return ".".join(parts[:n])
    return None


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_no_package_above_it(package):
    bad = sorted(f"{mod} imports {dep}" for mod, path in module_names(package).items()
                 for dep in imports_of(mod, path) if dep.split(".")[0] in FORBIDDEN[package])
    assert not bad, bad


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_between_modules_of_a_package(package):
    graph = {mod: {d for d in imports_of(mod, path) if d.split(".")[0] == package and d != mod}
             for mod, path in module_names(package).items()}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        pytest.fail(f"import cycle in {package}: {' -> '.join(exc.args[1])}")


# service/'s rooms, lowest first: a module imports from its own room or a room before it (the
# settings; the database and crop files; search; index jobs and the worker; the HTTP API; the app
# that assembles it; the command line)
SERVICE_ROOMS = ("service", "config", "store", "search", "jobs", "api", "main", "cli")
MAX_SERVICE_TOP_MODULES = 10


def service_room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_service_rooms_import_only_rooms_below_them():
    rank = {room: i for i, room in enumerate(SERVICE_ROOMS)}
    modules = module_names("service")
    assert {service_room(m) for m in modules} <= set(SERVICE_ROOMS), "a room missing its rank"
    bad = sorted(f"{mod} imports {dep}" for mod, path in modules.items()
                 for dep in imports_of(mod, path) if dep.startswith("service")
                 and rank[service_room(dep)] > rank[service_room(mod)])
    assert not bad, bad


def test_service_has_few_modules_at_its_top():
    top = sorted(p.name for p in (ROOT / "service").glob("*.py"))
    assert len(top) <= MAX_SERVICE_TOP_MODULES, top


def test_the_cycle_check_sees_imports_inside_functions(tmp_path):
    """The checker itself: an import hidden in a function body counts."""
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    from service.store import crud\n    from . import jobs\n")
    assert imports_of("indexer.reader", path) == {"service.store.crud", "indexer.jobs"}


IMPORT_ALL = """
import importlib, pkgutil, sys
pkg = importlib.import_module(sys.argv[1])
for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
print(" ".join(sorted({m.split(".")[0] for m in sys.modules} & {"models", "indexer", "service"})))
"""


@pytest.mark.parametrize("package", ["models", "indexer"])
def test_importing_every_module_of_a_package_alone_loads_no_package_above(package):
    out = subprocess.run([sys.executable, "-c", IMPORT_ALL, package], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=300).stdout.split()
    assert set(out) & FORBIDDEN[package] == set(), out
    assert package in out
