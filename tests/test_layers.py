"""The layers only point down, and every module has one import name (docs/ARCHITECTURE.md, "Layers").

Read from the source with ast, imports inside functions included, so a lazy import cannot hide
an upward one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What each part of the package may import, besides itself. Prefect only from flows and the CLI.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "rebuild": {"core"},
    "migrate": {"core", "rebuild"},
    "health": {"core"},
    "archive": {"core"},
    "fleet": {"core"},
    "demo": {"core"},
    "tasks": {"core", "rebuild", "migrate"},
    "flows": {"core", "rebuild", "migrate", "health", "archive", "fleet", "demo", "tasks", "prefect"},
    "cli": {"core", "rebuild", "migrate", "health", "archive", "fleet", "demo", "tasks", "flows", "prefect"},
}
# Folders the package reaches through a symlink, read at their real place.
LINKED = {"tasks": ROOT / "tasks", "flows": ROOT / "flows"}


def modules() -> dict[str, Path]:
    """Every module of the package by its one import name."""
    found: dict[str, Path] = {}
    for path in sorted((ROOT / "liteshift").rglob("*.py")):
        rel = path.relative_to(ROOT / "liteshift")
        if rel.parts[0] in LINKED:
            continue
        found[_name(("liteshift", *rel.parts))] = path
    for part, folder in LINKED.items():
        for path in sorted(folder.glob("*.py")):
            found[_name(("liteshift", part, path.name))] = path
    return found


def _name(parts: tuple[str, ...]) -> str:
    dotted = ".".join(parts).removesuffix(".py")
    return dotted.removesuffix(".__init__")


def part_of(module: str) -> str | None:
    """The layer a module belongs to: liteshift.X.y -> X; the package itself -> None."""
    bits = module.split(".")
    if bits[0] == "prefect":
        return "prefect"
    if bits[0] != "liteshift" or len(bits) == 1:
        return None
    return bits[1]


def imports(source: str, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the source, relative ones resolved."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*module.split(".")[: -node.level], *([base] if base else [])])
            if base == "liteshift":  # from liteshift import demo: the names are modules
                found += [(node.lineno, f"liteshift.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, base))
    return found


def violations(module: str, source: str) -> list[str]:
    """Why an import of this module breaks the layers, one line per import."""
    mine = part_of(module)
    allowed = ALLOWED.get(mine or "", set())
    problems = []
    for line, target in imports(source, module):
        top = target.split(".")[0]
        if top in ("tasks", "flows"):
            problems.append(f"{module}:{line} imports {target}: use liteshift.{target} (one import name)")
            continue
        theirs = part_of(target)
        if theirs is None or theirs == mine:
            continue
        if theirs not in allowed:
            problems.append(f"{module}:{line} imports {target}: {mine} may import only {sorted(allowed)}")
    return problems


def test_every_module_belongs_to_a_layer() -> None:
    unknown = sorted(m for m in modules() if part_of(m) not in ALLOWED and m != "liteshift")
    assert unknown == []


@pytest.mark.parametrize("module", sorted(modules()))
def test_imports_only_point_down(module: str) -> None:
    assert violations(module, modules()[module].read_text("utf-8")) == []


def test_the_checker_sees_upward_lazy_and_prefect_imports() -> None:
    source = "from liteshift.tasks.migrate import x\n\ndef f():\n    import prefect\n"
    source += "    from liteshift import fleet\n"
    assert violations("liteshift.core.db", source) == [
        "liteshift.core.db:1 imports liteshift.tasks.migrate: core may import only []",
        "liteshift.core.db:4 imports prefect: core may import only []",
        "liteshift.core.db:5 imports liteshift.fleet: core may import only []",
    ]
    assert violations("liteshift.rebuild.online", "from ..core.db import connection\n") == []
    assert violations("liteshift.rebuild.online", "from ..migrate import ledger\n") == [
        "liteshift.rebuild.online:1 imports liteshift.migrate: rebuild may import only ['core']"
    ]


@pytest.mark.parametrize("folder", ["bench", "tests", "deployments"])
def test_nothing_imports_the_linked_folders_by_their_second_name(folder: str) -> None:
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for line, target in imports(path.read_text("utf-8"), path.stem):
            if target.split(".")[0] in ("tasks", "flows"):
                found.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert found == []


def test_the_second_name_fails_loudly() -> None:
    import subprocess
    import sys

    for name in ("tasks", "flows"):
        run = subprocess.run(
            [sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 1
        assert f"ImportError: import liteshift.{name}, not {name}: one module, one name" in run.stderr
