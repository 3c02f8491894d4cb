"""The layers stay layers: the library never imports its applications, and no import cycles.

``ecf8_jax`` and ``pallas_kernels`` are the library; ``training`` (knows nothing of storage),
``bench`` and ``ecf8_cli`` (the ``ecf8`` command) are applications on top. The static checks read
every ``import`` statement, also those inside functions, so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ecf8_jax", "ecf8_cli", "pallas_kernels", "training", "bench")
LIBRARY = ("ecf8_jax", "pallas_kernels")
APPLICATIONS = ("training", "bench", "ecf8_cli")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its source."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if base else package
                # `from pkg import sub` imports the submodule when there is one, else pkg.
                names = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            else:
                continue
            targets.update(r for r in map(resolve, names) if r is not None)
        targets.discard(module)
        graph[module] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_reader_sees_every_kind_of_import():
    graph = _import_graph()
    # from pkg import sub; from pkg.sub import name
    assert "ecf8_jax.io.safetensors_raw" in graph["ecf8_jax.io.safetensors"]
    assert "ecf8_jax.format.tensor" in graph["ecf8_jax.checkpoint.layout"]
    assert "training" in graph["ecf8_cli.finetune"]  # import pkg, inside a function
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_two_modules_import_each_other():
    graph = _import_graph()
    mutual = sorted((a, b) for a in graph for b in graph[a] if a < b and a in graph.get(b, ()))
    assert mutual == []
    assert _cycles(graph) == []


def test_the_library_source_never_imports_an_application():
    graph = _import_graph()
    bad = {
        module: sorted(t for t in targets if t.split(".")[0] in APPLICATIONS)
        for module, targets in graph.items()
        if module.split(".")[0] in LIBRARY
    }
    assert {m: t for m, t in bad.items() if t} == {}


_IMPORT_ALL = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    import ecf8_jax, pallas_kernels
    names = []
    for pkg in (ecf8_jax, pallas_kernels):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            importlib.import_module(info.name)
            names.append(info.name)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in {apps!r})
    print(len(names), loaded)
    """
)


def test_importing_every_library_module_loads_no_application():
    code = _IMPORT_ALL.format(apps=set(APPLICATIONS))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    count, loaded = proc.stdout.split(" ", 1)
    assert int(count) >= 30  # it really walked the packages
    assert loaded.strip() == "[]"
