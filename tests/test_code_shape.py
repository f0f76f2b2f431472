"""The code's shape: no function in `src/` over 60 lines, imports point down the layers of
docs/contracts.md, and no modules import each other in a circle."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "salience"
# lowest first; a module may import its own layer and those before it
LAYERS = [
    "registry",
    "distributed",
    "data",
    "models",
    "attribution",
    "guidance",
    "io",
    "store",
    "measures",
    "training",
    "report",
    "study",
    "view",
    "cli",
    "__main__",
]
MODULES = {
    ".".join(p.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__"): p
    for p in sorted(SRC.rglob("*.py"))
}


def _layer(module: str) -> int | None:
    """The layer of `salience.<top>...`; None for the package itself (`salience/__init__.py`)."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else None


def _imports(module: str) -> set[str]:
    """The salience modules `module` imports anywhere in its file (a name imported from a package counts as
    its submodule where one exists)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names
            }
    return {m for m in found if m in MODULES and m != module}


def test_no_function_is_over_60_lines():
    long = [
        f"{path.relative_to(SRC.parent)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in MODULES.values()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert not long, "split by what the code does:\n" + "\n".join(long)


@pytest.mark.parametrize("module", [m for m in MODULES if _layer(m) is not None])
def test_imports_point_down(module):
    up = [m for m in _imports(module) if _layer(m) is not None and _layer(m) > _layer(module)]
    assert not up, f"{module} imports a higher layer: {up} (order: {' < '.join(LAYERS)})"


def test_no_modules_import_each_other_in_a_circle():
    graph = {m: _imports(m) for m in MODULES}
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            pytest.fail("import circle: " + " -> ".join([*path[path.index(m) :], m]))
        if m in done:
            return
        for n in sorted(graph[m]):
            visit(n, [*path, m])
        done.add(m)

    for m in graph:
        visit(m, [])
