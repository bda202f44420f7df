"""The package's internal imports flow one way (issue #12): no import cycles among hf_attnswap's modules (imports
inside functions count too), ``hf_attnswap.kernels`` imports nothing of the package outside ``kernels/`` (kernels know
only tensors: no options, no errors of the options layer, no Transformers), and no module imports the top package
``hf_attnswap`` (only ``__init__.py`` re-exports): each imports a thing from the module that defines it.
``hf_attnswap.errors``, which every layer above the kernels imports, imports nothing of the package.

The graph is read from the source with ``ast``, so nothing is imported and every ``import`` statement counts, wherever
it is (module level, inside a function, under ``if TYPE_CHECKING``). Importing ``a.b.c`` counts as an import of
``a.b.c`` only, not of the packages above it (Python runs those first anyway, for every module).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "hf_attnswap"
TOP = "hf_attnswap"
KERNELS = f"{TOP}.kernels"
#: Modules that import nothing of hf_attnswap: the package's exceptions, which every layer imports. (The kernels raise
#: only Python's own ``ValueError`` on bad shapes; option errors are raised by the mechanisms that read the options.)
LEAVES = {f"{TOP}.errors", f"{TOP}._version"}


@dataclass(frozen=True)
class Edge:
    source: str  # the importing module
    target: str  # the imported module
    where: str  # path:line of the import
    statement: str  # the import statement, as written (normalised by ast.unparse)
    names_top: bool  # the statement takes a name from the top package itself (not one of its submodules)

    def __str__(self) -> str:
        return f"{self.source} -> {self.target}: `{self.statement}` at {self.where}"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module of ``from <level dots><name> import ...`` written in ``module``."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _edges() -> list[Edge]:
    edges = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        where_of = lambda node: f"{path.relative_to(ROOT.parent)}:{node.lineno}"  # noqa: E731
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == TOP or alias.name.startswith(TOP + "."):
                        statement = ast.unparse(ast.Import(names=[alias]))
                        edges.append(Edge(module, alias.name, where_of(node), statement, alias.name == TOP))
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(module, is_package, node.level, node.module) if node.level else node.module or ""
                if target != TOP and not target.startswith(TOP + "."):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    statement = ast.unparse(ast.ImportFrom(module=node.module, names=[alias], level=node.level))
                    if sub in MODULES:  # `from . import options`: the submodule
                        edges.append(Edge(module, sub, where_of(node), statement, False))
                    else:
                        edges.append(Edge(module, target, where_of(node), statement, target == TOP))
    return [e for e in edges if e.source != e.target]


EDGES = _edges()


def _strongly_connected(nodes: list[str], succ: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; only the components of more than one module (a module importing itself is
    dropped above)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(succ[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(succ[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
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
    return components


def test_the_scan_sees_the_package():
    """Guards the scan itself: it finds the modules and the imports it is meant to judge."""
    assert {TOP, f"{TOP}.registry", f"{TOP}.patching", f"{TOP}.transformers_hooks", f"{KERNELS}.mask"} <= set(MODULES)
    pairs = {(e.source, e.target) for e in EDGES}
    assert (TOP, f"{TOP}.registry") in pairs and (f"{TOP}.patching", f"{TOP}.registry") in pairs
    assert (f"{TOP}.registry", f"{TOP}.transformers_hooks") in pairs


def test_resolve_relative_imports():
    assert _resolve("hf_attnswap.data.wiki", False, 1, None) == "hf_attnswap.data"
    assert _resolve("hf_attnswap.data.wiki", False, 2, "errors") == "hf_attnswap.errors"
    assert _resolve("hf_attnswap.diagnostics", True, 1, "measures") == "hf_attnswap.diagnostics.measures"
    assert _resolve("hf_attnswap", True, 1, "registry") == "hf_attnswap.registry"


def test_no_import_cycles():
    succ: dict[str, set[str]] = {m: set() for m in MODULES}
    for e in EDGES:
        if e.target in MODULES:
            succ[e.source].add(e.target)
    components = _strongly_connected(sorted(MODULES), succ)
    if components:
        report = []
        for component in components:
            members = set(component)
            report.append(f"cycle among {len(component)} modules: {', '.join(component)}")
            report += [f"    {e}" for e in EDGES if e.source in members and e.target in members]
        print("\n".join(report))
        pytest.fail("import cycles in hf_attnswap (imports inside functions count):\n" + "\n".join(report),
                    pytrace=False)


def _in_kernels(module: str) -> bool:
    return module == KERNELS or module.startswith(KERNELS + ".")


def test_kernels_import_nothing_above_them():
    bad = [e for e in EDGES if _in_kernels(e.source) and not _in_kernels(e.target)]
    assert not bad, ("hf_attnswap.kernels must import nothing of hf_attnswap outside kernels (they take tensors and "
                     "plain numbers; what needs options or the package's errors belongs in mechanisms/):\n"
                     + "\n".join(f"    {e}" for e in bad))


def test_the_leaves_import_nothing_of_the_package():
    assert LEAVES <= set(MODULES)
    bad = [e for e in EDGES if e.source in LEAVES]
    assert not bad, "these modules are imported everywhere and must import nothing of hf_attnswap:\n" + "\n".join(
        f"    {e}" for e in bad)


def test_nothing_imports_the_top_package():
    bad = [e for e in EDGES if e.names_top and e.source != TOP]
    assert not bad, ("import a name from the module that defines it, not from the top package hf_attnswap "
                     "(only hf_attnswap/__init__.py re-exports):\n" + "\n".join(f"    {e}" for e in bad))


def test_kernels_import_no_model_library():
    """Kernels know only tensors: no Transformers, Accelerate, PEFT or Hub import (torch, triton and the standard
    library only), wherever the import statement is."""
    bad = []
    for module, path in MODULES.items():
        if not _in_kernels(module):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            bad += [f"{module}: import {n} at line {node.lineno}" for n in names
                    if n.split(".")[0] in ("transformers", "accelerate", "peft", "huggingface_hub")]
    assert not bad, "hf_attnswap.kernels must not import model libraries:\n" + "\n".join(f"    {b}" for b in bad)
