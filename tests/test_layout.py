"""The tree's architecture holds: imports point one way, no cycles, modules stay small.

Layers, lowest first (README, "Where things are"): the leaves; `observability`; `db`
and `events`; `jobs`; `scheduling`; the entry points. A module may import its own
layer or a lower one, never a higher one; `if TYPE_CHECKING:` imports do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "agentsched"
LAYERS: list[set[str]] = [
    {"errors", "settings", "status", "keys", "serialization", "connections", "registry"}
    | {"script_line"}
    | {"execution"},
    {"observability"},
    {"db", "events"},
    {"jobs"},
    {"scheduling"},
    {"api", "worker", "cli", "dev", "dev_state", "dev_supervisor", "embedded_redis"},
    {"__init__"},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
MAX_LINES = 460


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path, *, top_level_only: bool) -> set[str]:
    """agentsched modules `path` imports (outside `if TYPE_CHECKING:` blocks)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "agentsched":
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "agentsched")
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_unit_has_a_layer() -> None:
    assert {unit_of(m) for m in MODULES} <= set(RANK), "add the new module to LAYERS"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    mine = RANK[unit_of(module)]
    upward = [
        target
        for target in imports(MODULES[module], top_level_only=False)
        if target in MODULES and RANK[unit_of(target)] > mine
    ]
    assert not upward, f"{module} imports a higher layer: {upward}"


def test_no_import_cycle() -> None:
    graph = {
        m: {t for t in imports(p, top_level_only=True) if t in MODULES and t != m}
        for m, p in MODULES.items()
    }
    # A package's own __init__ importing its submodules is how packages work: the
    # cycle that matters is between sibling modules, so drop edges into a parent package.
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not module.startswith(t + ".")}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, " -> ".join([*visiting[visiting.index(module) :], module])
        visiting.append(module)
        for target in sorted(graph[module]):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by responsibility"
