"""Layers point one way: a module imports ours only from its own layer or the ones below,
and never inside a function."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ired_video"
# lowest first; a top-level module or subpackage of ired_video -> its layer
LAYERS = [
    {"config", "paths", "flops", "stats", "devices", "tokens"},
    {"data"},
    {"models"},
    {"reducers"},
    {"cascade"},
    {"build", "budget", "speed", "profiling"},
    {"viz", "explain", "inference"},
    {"engine", "overlay_view"},
    {"commands", "cli"},
]
LAYER = {name: index for index, names in enumerate(LAYERS) for name in names}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYER.get(parts[1]) if len(parts) > 1 and parts[0] == "ired_video" else None


def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """(imported module of ours, inside a function) for every ``from ired_video...`` import."""
    found = []
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    nested = {id(s) for f in functions for s in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ired_video"):
            modules = [f"ired_video.{a.name}" for a in node.names] if node.module == "ired_video" else [node.module]
            found += [(module, id(node) in nested) for module in modules]
    return found


def test_every_module_has_a_layer():
    names = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert names - {"recipes"} <= set(LAYER), sorted(names - set(LAYER))


def test_imports_point_down_and_sit_at_the_top():
    upward, lazy = [], []
    for path in PACKAGE.rglob("*.py"):
        module = "ired_video." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        own = _layer(module.removesuffix(".__init__"))
        for imported, inside_function in _imports(ast.parse(path.read_text())):
            other = _layer(imported)
            if own is not None and other is not None and other > own:
                upward.append(f"{module} -> {imported}")
            if inside_function and path.name != "cli.py":  # the CLI imports a command when it runs
                lazy.append(f"{module} -> {imported}")
    assert not upward, upward
    assert not lazy, lazy
