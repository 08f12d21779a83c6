"""The design card's rules, checked: dependencies point one way, heavy imports live once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGES = ("topology", "policies", "scheduler", "engines", "api", "sidecar", "sim")
#: What each package may import from the project (ARCHITECTURE.md's layout table).
ALLOWED = {
    "topology": set(),
    "policies": {"topology"},
    "scheduler": {"topology", "policies"},
    "engines": {"topology", "policies", "scheduler"},
    "api": {"topology", "policies", "scheduler", "engines", "sidecar", "sim"},
    "sidecar": {"topology", "scheduler", "engines"},
    "sim": {"topology", "policies", "scheduler", "engines"},
}
#: Heavy libraries and the only places (path prefixes) allowed to import each.
HEAVY: dict[str, str | tuple[str, ...]] = {
    "ortools": "scheduler/placement/cpsat.py",
    "redis": "scheduler/state/redis",
    "fastapi": "api/",
    "nixl": "sidecar/nixl_adapter.py",
    "zmq": "engines/",
    # the engines' wire formats, and the prefix index's KV-event JSON (its hot path)
    "msgspec": ("engines/", "scheduler/prefix/wire.py"),
    "msgpack": "engines/",
    "prometheus_client": "engines/",
    # the engine legs' HTTP/1.1 client (uvicorn drives its own copy on the server side)
    "httptools": "engines/pd/http.py",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _modules() -> list[tuple[str, Path]]:
    return [(pkg, path) for pkg in PACKAGES for path in sorted((ROOT / pkg).rglob("*.py"))]


@pytest.mark.parametrize(("package", "path"), _modules(),
                         ids=lambda value: str(value.relative_to(ROOT))
                         if isinstance(value, Path) else value)
def test_dependencies_point_one_way(package: str, path: Path) -> None:
    project = set(PACKAGES) & _imports(path)
    forbidden = project - ALLOWED[package] - {package}
    assert not forbidden, f"{path.relative_to(ROOT)} imports {forbidden}"


@pytest.mark.parametrize("library", sorted(HEAVY))
def test_heavy_library_is_imported_in_one_place(library: str) -> None:
    importers = [str(path.relative_to(ROOT)) for _, path in _modules()
                 if library in _imports(path)]
    assert all(p.startswith(HEAVY[library]) for p in importers), importers


def test_cli_loads_only_the_chosen_commands_native_libraries() -> None:
    """OR-Tools and NIXL bundle clashing abseil builds: one process must never load both."""
    import subprocess
    import sys

    probe = ("import sys, api.cli.main as m\n"
             "for command in ('topo', 'demo', 'kv', 'route', None):\n"
             "    if command: m.build_parser(command)\n"
             "print(sorted(k for k in ('nixl', 'ortools') if k in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=ROOT, check=True, timeout=60)
    assert done.stdout.strip() == "[]"
