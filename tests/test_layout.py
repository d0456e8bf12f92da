"""The layout: packages in one order (cli -> actors -> node -> host -> client -> bus), no
module importing another that imports it back, and the public API.

The graph is read from the source with ``ast``: every import a module names is an arrow,
at its top, inside a function, or under ``if TYPE_CHECKING:``. That last kind never runs,
but a pair of modules that need each other's names, even only for type hints, is one
design decision not yet made (the loops this layout broke were all of that kind). An
import of a name re-exported by a package's ``__init__`` is an arrow to that ``__init__``.
"""

from __future__ import annotations

import ast
import importlib
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "actorbus"
LAYERS = ["bus", "client", "host", "node", "actors", "cli"]  # each may import only those before it


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``path`` imports."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from pkg import sub` runs the submodule; `from pkg import Name`, the package.
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.add(sub if sub in modules else source)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def import_graph(root: Path) -> dict[str, set[str]]:
    paths = sorted(root.rglob("*.py"))
    modules = {module_name(p, root) for p in paths}
    return {module_name(p, root): imports_of(p, root, modules) for p in paths}


def loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import loops of ``graph``: its strongly connected components of more than one
    module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


GRAPH = import_graph(PACKAGE)


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""  # "": actorbus/__init__.py, the public API


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_point_one_way(module: str) -> None:
    layer = layer_of(module)
    if not layer:
        return
    assert layer in LAYERS, f"{module}: a package the layering does not know"
    allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    upward = {m for m in GRAPH[module] if layer_of(m) not in allowed}
    assert not upward, f"{module} ({layer}) imports upward: {sorted(upward)}"


def test_no_module_imports_itself_back() -> None:
    assert loops(GRAPH) == []


def test_a_planted_loop_is_found(tmp_path: Path) -> None:
    """The checks above see a loop through a function-level import and a package's
    re-export, and one through ``TYPE_CHECKING``."""
    root = tmp_path / "actorbus"
    files = {
        "__init__.py": "",
        "client/__init__.py": "from .a import A\n",
        "client/a.py": "class A:\n    def f(self):\n        from ..host import b\n",
        "host/__init__.py": "",
        "host/b.py": "from ..client import A\n",
        "host/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import d\n",
        "host/d.py": "from . import c\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    assert loops(import_graph(root)) == [
        ["actorbus.client", "actorbus.client.a", "actorbus.host.b"],
        ["actorbus.host.c", "actorbus.host.d"],
    ]


@pytest.mark.parametrize(
    "module", ["actorbus", "actorbus.bus", "actorbus.client", "actorbus.host", "actorbus.node"]
)
def test_public_names_exist(module: str) -> None:
    mod = importlib.import_module(module)
    assert len(set(mod.__all__)) == len(mod.__all__)  # ruff (RUF022) keeps it sorted
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name}"
