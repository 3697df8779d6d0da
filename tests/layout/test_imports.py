"""The house's two trees: the product never imports the experiments, and nothing imports in a circle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("common", "models", "export", "service", "loadtests")
EXPERIMENTS = ("bench",)
TOP_LEVEL = PRODUCT + EXPERIMENTS


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every project module ``path`` imports, at module level or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in TOP_LEVEL}


def project_files(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (REPO_ROOT / pkg).rglob("*.py"))


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in project_files(*TOP_LEVEL)}
    # "from pkg import name" names a module only when pkg.name is one; keep those edges alone.
    return {name: {m for m in imported_modules(path) if m in modules and m != name}
            for name, path in modules.items()}


@pytest.mark.parametrize("path", project_files(*PRODUCT), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_product_never_imports_the_experiments(path):
    upward = sorted(m for m in imported_modules(path) if m.split(".")[0] in EXPERIMENTS)
    assert not upward, f"{path.relative_to(REPO_ROOT)} imports experiments: {upward}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (as the modules along it), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_find_cycle_sees_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
