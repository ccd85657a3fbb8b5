"""Modules import only downward through the package's layers (nilearn's rule), and the package
has no import cycles.

MetaResult is a container that estimators and correctors fill, so ``results`` sits below them
(DESIGN.md's sketch put it above; only its container role is used by them).

Imports are read from the source (``ast``), at module level and inside functions alike, and
resolved to the module they load: ``import daskmeta.x``, ``from daskmeta.x import y`` (which
is the submodule ``daskmeta.x.y`` when there is one), and relative imports. Imports under
``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "daskmeta"

# The top-level units of the package (a module, or a subpackage taken whole) by layer: a unit
# imports only from its own layer and the layers below. A new module goes in the set of the
# layer it belongs to.
LAYERS = {
    0: {"exceptions", "_version", "_stats", "_labels", "_rows", "_docs", "space", "cluster",
        "config", "_numba_cache", "_fs", "progress", "_methods"},
    1: {"dataset", "io", "results", "storage", "_integrity"},
    2: {"kernels", "_combine", "_combine_kernels", "_summary_kernels", "_pass", "collection",
        "_build", "_verify", "simulate", "imagestack"},
    3: {"estimators", "montecarlo", "correct", "decode", "diagnostics"},
    4: {"workflows", "plotting", "reports", "precompile", "conjunction", "macm"},
    5: {"cli", "__init__", "__main__"},
}
LAYER_OF = {name: level for level, names in LAYERS.items() for name in names}

# The same rule inside daskmeta.io: the shared helpers (and the self-contained downloader)
# under the readers, the readers under the registry that dispatches to them, the registry
# under the package's __init__. So a reader never imports the registry or daskmeta.io.
IO_LAYERS = {
    0: {"_common", "download", "_studyset", "_fetch", "_archive", "_neurostore_fetch"},
    1: {"sleuth", "nimare_json", "table", "neurosynth", "nimads", "neurostore", "neurovault"},
    2: {"_registry"},
    3: {"__init__"},
}
IO_LAYER_OF = {name: level for level, names in IO_LAYERS.items() for name in names}

# Import cycles outside daskmeta.io that predate the cycle test, as the (importer, imported)
# edges that close them; the cycle test leaves these edges out. Each entry is a debt to pay by
# moving code, never a place to park a new cycle, and never one inside daskmeta.io.
KNOWN_CYCLE_EDGES_OUTSIDE_IO: set[tuple[str, str]] = set()

# Methods of a lower layer's class that hand their work to a higher layer when called, as
# nilearn's estimators' ``generate_report`` does: ``MetaResult.report`` imports
# daskmeta.reports inside the method. Each edge is an import inside one function, never at
# module level (checked), and both rules leave it out; no other code may go up the layers.
FACADE_EDGES: set[tuple[str, str]] = {("daskmeta.results", "daskmeta.reports")}


# -- reading the import graph ---------------------------------------------------------------


def _module_name(path: Path, root: Path) -> str:
    """Dotted name of the module at ``path``, ``root`` being the top package's directory."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST):
    """Every Import / ImportFrom node that can run, at any depth (functions included)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve(name: str, modules) -> str:
    """The longest prefix of dotted ``name`` that is a module of the package."""
    parts = name.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path = PACKAGE) -> dict[str, dict[str, int]]:
    """``{module: {imported module of the same package: line}}`` for the package at ``root``."""
    files = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    top = root.name
    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        edges = graph.setdefault(module, {})
        is_package = path.name == "__init__.py"
        for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = module.split(".")
                    if not is_package:
                        base = base[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.append(sub if sub in files else source)
            for target in targets:
                if target.split(".")[0] != top:
                    continue
                target = _resolve(target, files)
                if target and target != module:
                    edges.setdefault(target, node.lineno)
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a list of modules, the first repeated last) through each strongly connected
    component of more than one module (Tarjan's algorithm), starting at its first module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)

    cycles = []
    for component in components:
        members = set(component)
        start = component[0]
        # Breadth-first search inside the component for the shortest way back to start.
        previous = {start: None}
        queue = [start]
        end = None
        while queue and end is None:
            v = queue.pop(0)
            for w in sorted(graph[v]):
                if w == start:
                    end = v
                    break
                if w in members and w not in previous:
                    previous[w] = v
                    queue.append(w)
        path = [start]
        while end is not None:
            path.append(end)
            end = previous[end]
        cycles.append(path[::-1])
    return cycles


def _describe_cycle(cycle, graph) -> str:
    """``a (line 3) -> b (line 9) -> a``: each module and the line of its import of the next."""
    return " -> ".join(
        f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)
    ) + f" -> {cycle[-1]}"


# -- the rules ------------------------------------------------------------------------------

GRAPH = import_graph()


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _resolve_unit(module: str) -> str:
    """``daskmeta.x`` for any module of the unit ``x``."""
    return ".".join(module.split(".")[:2])


def _io_unit(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] != ["daskmeta", "io"]:
        return None
    return parts[2] if len(parts) > 2 else "__init__"


def test_every_module_has_a_layer():
    units = {_unit(m) for m in GRAPH}
    assert units <= set(LAYER_OF), f"modules without a layer: {sorted(units - set(LAYER_OF))}"
    io_units = {_io_unit(m) for m in GRAPH} - {None}
    assert io_units <= set(IO_LAYER_OF), (
        f"daskmeta.io modules without a layer: {sorted(io_units - set(IO_LAYER_OF))}"
    )


def test_facade_edges_are_function_level_imports():
    for module, target in FACADE_EDGES:
        assert target in GRAPH.get(module, {}), f"stale facade entry: {module} -> {target}"
        path = PACKAGE.parent / (module.replace(".", "/") + ".py")
        tree = ast.parse(path.read_text())
        top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name for n in top_level if isinstance(n, ast.Import) for a in n.names}
        names |= {name for n in top_level if isinstance(n, ast.ImportFrom)
                  for name in [n.module or ""] + [f"{n.module}.{a.name}" for a in n.names]}
        assert not any(name == target or name.startswith(target + ".") for name in names), (
            f"{module} imports {target} at module level")


def test_imports_go_downward():
    problems = []
    for module, edges in sorted(GRAPH.items()):
        unit = _unit(module)
        for target, line in sorted(edges.items()):
            other = _unit(target)
            if other == unit or (module, _resolve_unit(target)) in FACADE_EDGES:
                continue
            if LAYER_OF[other] > LAYER_OF[unit]:
                problems.append(f"{module}:{line} imports {target} "
                                f"(layer {LAYER_OF[other]} > {LAYER_OF[unit]})")
    assert not problems, "\n".join(problems)


def test_io_imports_go_downward():
    problems = []
    for module, edges in sorted(GRAPH.items()):
        unit = _io_unit(module)
        if unit is None:
            continue
        for target, line in sorted(edges.items()):
            other = _io_unit(target)
            if other is None:
                continue
            if IO_LAYER_OF[other] > IO_LAYER_OF[unit]:
                problems.append(f"{module}:{line} imports {target} "
                                f"(io layer {IO_LAYER_OF[other]} > {IO_LAYER_OF[unit]})")
    assert not problems, "\n".join(problems)


def test_readers_do_not_import_the_registry():
    readers = {f"daskmeta.io.{name}" for name in IO_LAYERS[1]}
    assert readers <= set(GRAPH), f"readers not found: {sorted(readers - set(GRAPH))}"
    forbidden = {"daskmeta.io", "daskmeta.io._registry"}
    problems = [f"{reader}:{line} imports {target}"
                for reader in sorted(readers)
                for target, line in sorted(GRAPH[reader].items()) if target in forbidden]
    assert not problems, "\n".join(problems)


def test_no_import_cycles():
    for a, b in KNOWN_CYCLE_EDGES_OUTSIDE_IO:
        assert b in GRAPH.get(a, {}), f"stale allow-list entry: {a} no longer imports {b}"
        assert not (_io_unit(a) or _io_unit(b)), f"cycles inside daskmeta.io are not allowed: {a, b}"
    graph = {m: {t: ln for t, ln in edges.items()
                 if (m, t) not in KNOWN_CYCLE_EDGES_OUTSIDE_IO
                 and (m, _resolve_unit(t)) not in FACADE_EDGES}
             for m, edges in GRAPH.items()}
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(_describe_cycle(c, graph) for c in cycles)


def test_known_cycle_edges_still_close_cycles():
    """Each allow-listed edge is needed: without the allow-list its cycle shows up."""
    for edge in KNOWN_CYCLE_EDGES_OUTSIDE_IO:
        graph = {m: {t: ln for t, ln in edges.items()
                     if (m, t) == edge or (m, t) not in KNOWN_CYCLE_EDGES_OUTSIDE_IO}
                 for m, edges in GRAPH.items()}
        cycles = find_cycles(graph)
        assert any(edge[0] in c and edge[1] in c for c in cycles), f"{edge} closes no cycle"


# -- the graph reader itself, on a made-up package ------------------------------------------


@pytest.fixture
def fake_package(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from pkg import a\n",
        "a.py": "import os\nimport pkg.b\n",
        "b.py": "def f():\n    from .sub import c\n",
        "sub/__init__.py": "from . import c\n",
        "sub/c.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from pkg import b\n"
            "def g():\n    from ..a import x\n"
        ),
        "d.py": "from pkg.sub.c import g\nfrom pkg import nothing_here\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    return pkg


def test_import_graph_reads_every_kind_of_import(fake_package):
    graph = import_graph(fake_package)
    assert graph == {
        "pkg": {"pkg.a": 1},
        "pkg.a": {"pkg.b": 2},
        "pkg.b": {"pkg.sub.c": 2},
        "pkg.sub": {"pkg.sub.c": 1},
        "pkg.sub.c": {"pkg.a": 5},
        "pkg.d": {"pkg.sub.c": 1, "pkg": 2},
    }
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]
    assert _describe_cycle(find_cycles(graph)[0], graph) == (
        "pkg.a (line 2) -> pkg.b (line 2) -> pkg.sub.c (line 5) -> pkg.a"
    )
