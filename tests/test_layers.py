"""Modules import only downward through the package's layers (nilearn's rule).

MetaResult is a container that estimators and correctors fill, so ``results`` sits below them
(DESIGN.md's sketch put it above; only its container role is used by them).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "daskmeta"

LAYERS = {
    0: {"exceptions", "_version", "_stats", "_labels", "_rows", "space", "cluster",
        "config"},
    1: {"dataset", "io", "results", "storage"},
    2: {"kernels", "collection", "simulate"},
    3: {"estimators", "nulls", "correct", "decode"},
    4: {"workflows", "plotting", "reports"},
    5: {"cli", "__init__", "__main__"},
}
LAYER_OF = {name: level for level, names in LAYERS.items() for name in names}


def _unit(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0]


def test_every_module_has_a_layer():
    units = {_unit(p) for p in PACKAGE.rglob("*.py")}
    assert units <= set(LAYER_OF), f"modules without a layer: {sorted(units - set(LAYER_OF))}"


def test_imports_go_downward():
    problems = []
    for path in PACKAGE.rglob("*.py"):
        unit = _unit(path)
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] != "daskmeta" or len(parts) < 2:
                    continue
                target = parts[1]
                if target == unit:
                    continue
                if LAYER_OF[target] > LAYER_OF[unit]:
                    problems.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports "
                                    f"{name} (layer {LAYER_OF[target]} > {LAYER_OF[unit]})")
    assert not problems, "\n".join(problems)
