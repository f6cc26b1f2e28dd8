"""The layer order of docs/architecture.rst ("The layers"), checked on the source.

Every ``import`` and ``from ... import`` in ``storg/`` (at module level, in
functions, under ``TYPE_CHECKING``: all of them) is read with :mod:`ast`.
A module may import from its own layer or from layers below it; an import
from a layer above is a failure, and so is any cycle between modules, in a
layer or across layers.  The test also checks itself: every module of
``storg/`` must belong to a layer, and a planted upward edge must be caught.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "storg"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("storg", "storg.config", "storg.paths"),
    ("storg.raft",),
    ("storg.raft.sim",),
    ("storg.wire",),
    ("storg.s3",),
    ("storg.storage",),
    ("storg.net",),
    ("storg.node",),
    ("storg.fsm",),
    ("storg.server.permissions", "storg.server.client_port", "storg.server.peer", "storg.server.peer_instances",
     "storg.server.peer_stats"),
    ("storg.server.files",),
    ("storg.server.upkeep", "storg.server.snapshots"),
    ("storg.server.admin",),
    ("storg.server.http",),
    ("storg.server", "storg.server.service"),
    ("storg.client",),
    ("storg.gateway",),
    ("storg.cli",),
    ("storg.daemon",),
    ("storg.testing",),
)
"""Bottom to top.  A module belongs to the layer of its longest matching prefix."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    return rank


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The storg modules ``module`` imports (``from pkg import submodule`` names the submodule)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("storg"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("storg"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    found.discard(module)
    return {name for name in found if name in known}


@functools.cache
def _graph() -> dict[str, frozenset[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: frozenset(imports_of(name, path, known)) for name, path in modules.items()}


def import_graph() -> dict[str, set[str]]:
    """The import graph of storg/, read once per test run; each caller gets its own copy to plant edges in."""
    return {name: set(targets) for name, targets in _graph().items()}


def upward_edges(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
                  for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_belongs_to_a_layer():
    assert [name for name in all_modules() if layer_of(name) < 0] == []


def test_no_import_points_up_the_layer_order():
    assert upward_edges(import_graph()) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_storg_testing_is_imported_only_by_tests_and_benchmarks():
    graph = import_graph()
    assert sorted(a for a, targets in graph.items() if not a.startswith("storg.testing")
                  for b in targets if b.startswith("storg.testing")) == []


@pytest.mark.parametrize("edge", [("storg.raft.core", "storg.wire.codec"),
                                  ("storg.server.files.service", "storg.server.upkeep.repair"),
                                  ("storg.server.files.chunk_io", "storg.client.api")])
def test_a_planted_upward_import_is_caught(edge):
    graph = import_graph()
    graph[edge[0]] = graph[edge[0]] | {edge[1]}
    assert len(upward_edges(graph)) == 1


def test_a_planted_cycle_is_caught():
    graph = import_graph()
    graph["storg.wire.codec"] = graph["storg.wire.codec"] | {"storg.wire.files"}
    assert any("storg.wire.codec" in c and "storg.wire.files" in c for c in cycles(graph))


def test_relative_and_submodule_imports_are_resolved(tmp_path):
    known = {"storg.a", "storg.a.b", "storg.a.c", "storg.d"}
    source = tmp_path / "c.py"
    source.write_text("from . import b\nfrom storg.d import thing\nimport storg.a.b\n"
                      "def f():\n    from .b import x\n")
    # c.py stands for storg.a.c: a module of package storg.a.
    assert imports_of("storg.a.c", source, known) == {"storg.a.b", "storg.d"}


def test_the_state_machine_does_no_io():
    """``apply`` must not write files: storg.fsm imports neither storage nor os-level file helpers."""
    graph = import_graph()
    modules = all_modules()
    for name in (m for m in graph if m.startswith("storg.fsm")):
        assert not [b for b in graph[name] if b.startswith(("storg.storage", "storg.net", "storg.node"))], name
        tree = ast.parse(modules[name].read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & {"os", "shutil", "tempfile", "twisted.internet.threads"}, name
