"""The house's shape: imports flow one way (commands -> sweep -> job -> spec -> record/core), no cycles.

Every ``import`` in nnlab and hydra_plugins is read with ``ast`` (those inside functions too: a lazy
import is still a dependency), so the test fails on a cycle or on an import that goes up a layer.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# lower layers never import higher ones; within a layer, only inside the same package
LAYERS: list[tuple[str, ...]] = [
    ("nnlab.core", "nnlab.record.names", "nnlab.record.signals", "nnlab._cli", "nnlab.extras"),
    ("nnlab.data", "nnlab.theory", "nnlab.record"),
    ("nnlab.spec",),
    ("nnlab.job", "nnlab.analysis"),
    ("nnlab.sweep",),
    ("nnlab.run", "nnlab.runs", "nnlab.sync", "nnlab.server", "nnlab.report", "nnlab.notebook"),
    ("hydra_plugins",),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    files = [*ROOT.glob("nnlab/**/*.py"), *ROOT.glob("hydra_plugins/**/*.py")]
    return {_module_name(p): p for p in files}


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The nnlab module an imported name belongs to (``nnlab.core.train.fit`` -> ``nnlab.core.train``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """The nnlab modules ``module`` imports, anywhere in its body."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            target = _resolve(name)
            if target is not None and target != module and not module.startswith(target + "."):
                found.add(target)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def layer(module: str) -> int:
    if module == "nnlab":
        return 0  # the package's __init__: a docstring
    best = None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (i, len(prefix))
    assert best is not None, f"{module} is in no layer of tests/test_layout.py: place it"
    return best[0]


def package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or module in ("nnlab.core", "nnlab.record", "nnlab.sweep",
                                                                  "nnlab.analysis") else module


def test_every_module_has_a_layer():
    for module in MODULES:
        layer(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_never_go_up_a_layer(module):
    upward = sorted(t for t in GRAPH[module]
                    if layer(t) > layer(module) or (layer(t) == layer(module) and package(t) != package(module)))
    assert not upward, f"{module} (layer {layer(module)}) imports {upward}"


def test_the_core_imports_only_the_core():
    for module, targets in GRAPH.items():
        if module.startswith("nnlab.core"):
            assert all(t.startswith("nnlab.core") for t in targets), (module, targets)


def test_there_is_no_import_cycle():
    """Tarjan's strongly connected components over the import graph: each must be a single module."""
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
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
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_a_cycle_and_an_upward_import():
    """The checks above can fail: a module importing its importer is a cycle, the core importing the
    record goes up."""
    assert "nnlab.core.network" in GRAPH["nnlab.core.train"]
    assert layer("nnlab.record.store") > layer("nnlab.core.train")
    assert package("nnlab.sweep.callback") != package("nnlab.job")
