"""The layering rule (cli -> actors -> runtime -> bus) and the public API."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "actorbus"
LAYERS = ["bus", "runtime", "actors", "cli"]  # each may import only those before it


def layer_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return (
        relative.parts[0].removesuffix(".py")
        if len(relative.parts) > 1 or relative.stem == "cli"
        else ""
    )


def imported_layers(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    package = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level]
                parts = base + (node.module.split(".") if node.module else [])
            else:
                parts = (node.module or "").split(".")
        elif isinstance(node, ast.Import):
            parts = node.names[0].name.split(".")
        else:
            continue
        if parts[:1] == ["actorbus"] and len(parts) > 1 and parts[1] in LAYERS:
            found.add(parts[1])
    return found


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_imports_point_one_way(path: Path) -> None:
    layer = layer_of(path)
    if not layer:
        return  # actorbus/__init__.py re-exports the public API
    allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    assert imported_layers(path) <= allowed, f"{path.name} ({layer}) imports upward"


@pytest.mark.parametrize("module", ["actorbus", "actorbus.bus", "actorbus.runtime"])
def test_public_names_exist(module: str) -> None:
    mod = importlib.import_module(module)
    assert len(set(mod.__all__)) == len(mod.__all__)  # ruff (RUF022) keeps it sorted
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name}"
