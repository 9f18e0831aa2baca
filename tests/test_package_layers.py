"""The package's import graph: no circle, and data flows one way (data -> models -> losses -> engine -> eval -> tools).

Read with ``ast`` from the source, function-level imports included: a lazy import
is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import dist_gan

PACKAGE = Path(dist_gan.__file__).resolve().parent

# Lower layers never import higher ones. Modules not listed sit in the layer of their folder.
LAYERS: List[Set[str]] = [
    {"dist_gan", "dist_gan.errors", "dist_gan.files", "dist_gan.progress", "dist_gan.imaging", "dist_gan.recipes"},
    {"dist_gan.data"},
    {"dist_gan.models"},
    {"dist_gan.augment", "dist_gan.losses"},
    {"dist_gan.engine"},
    {"dist_gan.config"},
    {"dist_gan.eval"},
    {"dist_gan.tools"},
    {"dist_gan.quickstart", "dist_gan.train", "dist_gan.slurm"},
    {"dist_gan.cli"},
    {"dist_gan.__main__"},
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str) -> Set[str]:
    """dist_gan modules that ``path`` imports anywhere in its body, resolved to module names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m == "dist_gan" or m.startswith("dist_gan.")}


def graph() -> Dict[str, Set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports_of(path, name) if m in modules and m != name} for name, path in modules.items()}


def layer(name: str) -> int:
    for i, members in enumerate(LAYERS):
        if any(name == m or name.startswith(m + ".") for m in members if m != "dist_gan") or name in members:
            return i
    raise AssertionError(f"{name} is in no layer: add it to LAYERS")


def test_every_module_has_a_layer():
    for name in graph():
        layer(name)


def upward_imports(g: Dict[str, Set[str]]) -> List[str]:
    return sorted(f"{a} -> {b}" for a, deps in g.items() for b in deps if b != "dist_gan" and layer(b) > layer(a))


def find_circle(g: Dict[str, Set[str]]) -> List[str]:
    """One import circle as a path that ends where it starts, or [] when there is none."""
    state: Dict[str, int] = {}

    def visit(node: str, path: List[str]) -> List[str]:
        state[node] = 1
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (circle := visit(dep, path + [dep])):
                return circle
        state[node] = 2
        return []

    for node in sorted(g):
        if node not in state and (circle := visit(node, [node])):
            return circle
    return []


def test_no_module_imports_a_higher_layer():
    upward = upward_imports(graph())
    assert not upward, "imports against the flow:\n" + "\n".join(upward)


def test_nothing_below_the_cli_imports_it():
    users = sorted(a for a, deps in graph().items() if "dist_gan.cli" in deps)
    assert users == ["dist_gan.__main__"]


def test_the_import_graph_has_no_circle():
    assert find_circle(graph()) == []


def test_the_checks_catch_a_circle_and_an_upward_import():
    """The checks above can fail: the evaluator importing the CLI, as it once did, is caught by both."""
    g = {k: set(v) for k, v in graph().items()}
    g["dist_gan.eval.run"].add("dist_gan.cli")
    assert "dist_gan.eval.run -> dist_gan.cli" in upward_imports(g)
    circle = find_circle(g)
    assert circle and circle[0] == circle[-1] and "dist_gan.cli" in circle
