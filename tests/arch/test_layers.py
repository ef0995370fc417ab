"""The layer rule, checked on the code's own imports (docs/ARCHITECTURE.md).

    CLI (weightguard_cli)  ->  public orchestration (weightguard.<module>)
        ->  weightguard._internal.*  ->  public data types (weightguard.errors, ...)

- ``_internal`` never imports an orchestration module (only errors and data modules);
- the CLI imports only public modules (no ``_internal``);
- no import cycles between modules, counting imports inside functions too (a lazy
  import is still a dependency), but not ``if TYPE_CHECKING:`` blocks;
- the runtime package never imports the test infrastructure;
- public modules import only public modules of a lower rank (:data:`PUBLIC_RANKS`):
  verification (``verifying``) sits below signing and the loader, so the loader never
  reaches verification through ``signing``; a new public module needs a rank here.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Public modules that hold only data types / the error hierarchy: the bottom layer.
DATA_MODULES = {
    "weightguard.errors",
    "weightguard.manifest",
    "weightguard.trust",
    "weightguard.vocabulary",
}
# The public modules' order: each imports only modules of a lower rank (0: data).
PUBLIC_RANKS = {
    "weightguard.vocabulary": -1,  # the words hints use: errors tells them through it
    "weightguard.errors": 0,
    "weightguard.manifest": 0,
    "weightguard.trust": 0,  # trust anchors and proofs (data shared by policy/verifying)
    "weightguard.fingerprint": 0,
    "weightguard.integrations": 0,  # the package's __init__: docs and a version check
    "weightguard.audit": 1,
    "weightguard.doctor": 1,
    "weightguard.crypt": 1,
    "weightguard.policy": 1,
    "weightguard.verifying": 2,  # the one front of verification
    "weightguard.integrations._settings": 2,
    "weightguard.signing": 3,  # signs; re-exports verify_bundle for its callers
    "weightguard.loader": 3,  # verifies through verifying, never through signing
    "weightguard.lazy": 4,
    "weightguard.transfer": 4,
    "weightguard.watermark": 4,
    "weightguard.report": 5,
    "weightguard.integrations._side_files": 5,
    "weightguard.integrations.safetensors": 5,
    "weightguard.integrations.kserve": 6,  # uses _side_files.audit_refusal
    "weightguard.bom": 6,
    "weightguard.integrations.peft": 6,
    "weightguard.integrations.sentence_transformers": 6,
    "weightguard.integrations.transformers": 6,
    "weightguard.integrations.vllm_lora": 6,  # LoRA adapters; the vllm plugin calls it
    "weightguard.integrations.vllm": 7,  # its plugin registers vllm_lora too
}


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


def _imports(path: Path, module: str, *, type_checking: bool = False) -> set[str]:
    """What ``module`` imports; ``type_checking``: ``if TYPE_CHECKING:`` blocks too."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    is_pkg = path.name == "__init__.py"

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node) and not type_checking:
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


def _graph(*, type_checking: bool = False) -> dict[str, set[str]]:
    files = list((ROOT / "weightguard").rglob("*.py")) + list(
        (ROOT / "cli" / "weightguard_cli").rglob("*.py")
    )
    mods = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        found = _imports(path, name, type_checking=type_checking)
        graph[name] = {d for d in found if d in mods and d != name}
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


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
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
    return cycles


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_no_import_cycles_even_through_type_annotations() -> None:
    """``if TYPE_CHECKING:`` imports too: two modules that need each other's types
    share a third (e.g. the loader's Record in _internal/load/records.py)."""
    assert _cycles(_graph(type_checking=True)) == []


def test_every_public_module_has_a_rank() -> None:
    public = {m for m in _graph() if _layer(m) in ("public", "data")}
    assert sorted(public - set(PUBLIC_RANKS)) == [], "give the new module a PUBLIC_RANKS entry"
    assert sorted(set(PUBLIC_RANKS) - public) == [], "remove the entry of a module that is gone"


def test_public_modules_import_only_lower_ranks() -> None:
    """No upward (or sideways) import between public modules: e.g. the loader verifies
    through ``weightguard.verifying``, not ``weightguard.signing`` (same rank)."""
    bad = [
        f"{m} (rank {PUBLIC_RANKS[m]}) imports {d} (rank {PUBLIC_RANKS[d]})"
        for m, deps in _graph().items()
        if m in PUBLIC_RANKS
        for d in sorted(deps)
        if d in PUBLIC_RANKS and PUBLIC_RANKS[d] >= PUBLIC_RANKS[m]
    ]
    assert bad == []


def test_runtime_never_imports_test_infrastructure() -> None:
    for path in (ROOT / "weightguard").rglob("*.py"):
        deps = _imports(path, _module_name(path))
        assert not any(d == "tests" or d.startswith("tests.") for d in deps), path
