"""The package layers of `llmtrain/` hold: no import cycle, and no import from a lower layer up.

Every import counts, also the ones inside functions (a lazy import is still a dependency: it only
hides a cycle). The layers, bottom to top, are in `LAYERS`; a package may import its own layer and
those below. `FORBIDDEN` adds the rules inside a layer that DESIGN.md states (the model knows
nothing of data or ranks, data nothing of models or ranks).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "llmtrain"

LAYERS = [
    {"config"},
    {"cluster", "dist", "data", "model", "optim", "metrics"},
    {"strategy"},
    {"checkpoint", "tracking"},
    {"train", "generate"},
    {"bench", "cli"},
]
FORBIDDEN = {
    ("model", "data"),
    ("model", "dist"),
    ("data", "model"),
    ("data", "dist"),
    ("data", "metrics"),
    ("optim", "model"),
    ("optim", "data"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every `llmtrain.*` module `path` imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("llmtrain"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "llmtrain":  # `from llmtrain import dist`
                found.update(f"llmtrain.{a.name}" for a in node.names)
            elif node.module.startswith("llmtrain."):
                found.add(node.module)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        # `from llmtrain.x import y` may name a submodule y or an attribute of llmtrain.x.
        graph[name] = {m for m in _imports(path) if m in modules} | {
            m.rsplit(".", 1)[0] for m in _imports(path) if m not in modules
        }
    return graph


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(package: str) -> int:
    for i, layer in enumerate(LAYERS):
        if package in layer:
            return i
    raise AssertionError(f"llmtrain.{package} is in no layer of tests/test_layers.py: add it to LAYERS")


def test_every_package_is_in_a_layer():
    for module in _graph():
        if _package(module):
            _layer(_package(module))


def test_no_package_imports_from_a_higher_layer_or_a_forbidden_neighbour():
    bad = []
    for module, targets in _graph().items():
        src = _package(module)
        for target in targets:
            dst = _package(target)
            if not src or not dst or src == dst:
                continue
            if _layer(dst) > _layer(src) or (src, dst) in FORBIDDEN:
                bad.append(f"{module} imports {target}")
    assert not bad, "imports against the layers:\n  " + "\n  ".join(sorted(bad))


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n  " + "\n  ".join(" -> ".join(c) for c in cycles)


def test_config_does_not_import_torch():
    for path in (PACKAGE / "config").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] == "torch"], path


@pytest.mark.parametrize("limit", [400])
def test_no_file_in_the_package_is_longer_than_the_style_guide_allows(limit):
    # STYLE.md: split a file that grows past ~400 lines; a little slack for docstrings.
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > limit * 1.05
    }
    assert not long, long
