"""The layer rule, checked on the code's own imports (docs/ARCHITECTURE.md).

    CLI (weightguard_cli)  ->  public orchestration (weightguard.<module>)
        ->  weightguard._internal.*  ->  public data types (weightguard.errors, ...)

- ``_internal`` never imports an orchestration module (only errors and data modules);
- the CLI imports only public modules (no ``_internal``);
- no import cycles between modules, counting imports inside functions too (a lazy
  import is still a dependency), but not ``if TYPE_CHECKING:`` blocks;
- the runtime package never imports the test infrastructure.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Public modules that hold only data types / the error hierarchy: the bottom layer.
DATA_MODULES = {"weightguard.errors", "weightguard.manifest"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT / "cli" if path.is_relative_to(ROOT / "cli") else ROOT)
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    is_pkg = path.name == "__init__.py"

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            for a in node.names:  # `from pkg import submodule`
                found.add(f"{target}.{a.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    files = list((ROOT / "weightguard").rglob("*.py")) + list(
        (ROOT / "cli" / "weightguard_cli").rglob("*.py")
    )
    mods = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = {d for d in _imports(path, name) if d in mods and d != name}
        graph[name] = deps
    return graph


def _layer(mod: str) -> str:
    if mod.startswith("weightguard_cli"):
        return "cli"
    if mod in DATA_MODULES:
        return "data"
    if mod == "weightguard" or mod.startswith("weightguard._internal"):
        return "internal" if mod != "weightguard" else "root"
    return "public"


def test_internal_never_imports_orchestration() -> None:
    bad = [
        (m, d)
        for m, deps in _graph().items()
        if _layer(m) == "internal"
        for d in deps
        if _layer(d) in ("public", "cli")
    ]
    assert bad == []


def test_data_modules_import_nothing_above_them() -> None:
    bad = [
        (m, d)
        for m, deps in _graph().items()
        if _layer(m) == "data"
        for d in deps
        if _layer(d) != "data"
    ]
    assert bad == []


def test_cli_imports_only_public_api() -> None:
    bad = [
        (m, d)
        for m, deps in _graph().items()
        if _layer(m) == "cli"
        for d in deps
        if _layer(d) == "internal"
    ]
    assert bad == []


def test_no_import_cycles() -> None:
    graph = _graph()
    # The package root only re-exports lazily (PEP 562 __getattr__); edges into it
    # (`from weightguard import __version__`) are not module dependencies.
    graph = {m: {d for d in deps if d != "weightguard"} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def dfs(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                dfs(nxt, stack)
        stack.pop()
        state[node] = 2

    for mod in sorted(graph):
        if mod not in state:
            dfs(mod, [])
    assert cycles == []


def test_runtime_never_imports_test_infrastructure() -> None:
    for path in (ROOT / "weightguard").rglob("*.py"):
        deps = _imports(path, _module_name(path))
        assert not any(d == "tests" or d.startswith("tests.") for d in deps), path
