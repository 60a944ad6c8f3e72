"""mixq's imports go one way: core → observers → graph → targets → plan → rules → sim →
analysis → transforms → export → search → api → cli (zoo sits just above core).

Every import counts, function-local ones included (read with `ast`, nothing is imported).
A module may import its own layer or a lower one; no set of modules may import each other
in a circle at run time (imports under ``if TYPE_CHECKING:`` only name types: they must still
go downward, but they cannot close a circle). The one allowed upward seam: a Sim's convenience
methods in `mixq.sim.base` (``report``, ``export_onnx``, ``export``, ``dump_profile`` /
``load_profile``) call the analysis and export layers from inside the method.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

import pytest

import mixq

ROOT = Path(mixq.__file__).parent
LAYERS = [
    "core",
    "zoo",
    "observers",
    "graph",
    "targets",
    "plan",
    "rules",
    "sim",
    "analysis",
    "transforms",
    "export",
    "search",
    "api",
    "cli",
]
SEAM = {("mixq.sim.base", "analysis"), ("mixq.sim.base", "export")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


class Import(NamedTuple):
    module: str
    line: int
    local: bool  # inside a function or an ``if`` block
    type_only: bool  # under ``if TYPE_CHECKING:``


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def _imports(path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every mixq import in ``path``: ``from a.b import c`` imports ``a.b.c`` when that is a
    module (the package ``a.b`` is then already being imported), else ``a.b``."""
    tree = ast.parse(path.read_text())
    type_only = _type_checking_lines(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            subs = [f"{node.module}.{a.name}" for a in node.names]
            names = [s for s in subs if s in modules]
            if len(names) < len(subs):
                names.append(node.module)
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name in modules and name != "mixq":
                local, typing_only = node.col_offset > 0, node.lineno in type_only
                found.append(Import(name, node.lineno, local, typing_only))
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 else len(LAYERS)


def _in_seam(module: str, imported: str) -> bool:
    return (module, imported.split(".")[1]) in SEAM


def _graph() -> dict[str, set[str]]:
    """Module -> the modules it imports at run time (type-only and seam imports left out)."""
    modules = _modules()
    return {
        m: {
            i.module
            for i in _imports(p, modules)
            if not i.type_only and not (i.local and _in_seam(m, i.module))
        }
        - {m}
        for m, p in modules.items()
    }


def upward_imports() -> list[str]:
    modules = _modules()
    bad = []
    for module, path in modules.items():
        for i in _imports(path, modules):
            if _layer(i.module) <= _layer(module) or (i.local and _in_seam(module, i.module)):
                continue
            where = f"{path.relative_to(ROOT.parent)}:{i.line}"
            bad.append(f"{module} -> {i.module} ({where}{', function-local' if i.local else ''})")
    return bad


def cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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


def test_every_folder_has_a_layer():
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= set(LAYERS), f"folders without a layer: {sorted(folders - set(LAYERS))}"


def test_package_root_holds_only_the_front_door():
    files = {p.name for p in ROOT.glob("*.py")}
    assert files == {"__init__.py", "api.py"}


def test_no_import_goes_up_the_layers():
    bad = upward_imports()
    assert not bad, "imports up the layer order:\n" + "\n".join(bad)


def test_no_import_cycles():
    found = cycles()
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: p.name)
def test_modules_stay_small(path: Path):
    lines = len(path.read_text().splitlines())
    assert lines <= 400, f"{path.relative_to(ROOT.parent)} has {lines} lines (split it)"


def test_the_checks_can_fail():
    """The walker sees function-local imports (the kind that hid the old cycles)."""
    source = "def f():\n    from mixq.cli.main import main\n"
    tree = ast.parse(source)
    local = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert local[0].col_offset > 0 and _layer("mixq.cli.main") > _layer("mixq.core.table")
