"""benchmarks/reproduction/'s modules import one way: no cycles (imports inside functions count too), ``config`` and
``files`` import nothing of the package, and none imports ``reproduce`` (the command line on top). Read with ``ast``,
nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "benchmarks" / "reproduction"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def _imports(module: str) -> set[str]:
    """The package modules (and ``reproduce``) that ``module`` imports, wherever the statement is."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level == 1:
                found |= {name} if name else {a.name for a in node.names}
            elif name == "reproduction" or name.startswith("reproduction."):
                found |= {name.split(".")[1]} if "." in name else {a.name for a in node.names}
            elif name == "reproduce":
                found.add("reproduce")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("reproduction."):
                    found.add(alias.name.split(".")[1])
                elif alias.name == "reproduce":
                    found.add("reproduce")
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def test_the_modules_exist():
    assert {"config", "files", "stats", "markdown", "conversions", "claims", "jobs", "measurements", "collect",
            "plots", "report", "record"} <= set(MODULES)
    assert all(target in MODULES or target == "reproduce" for targets in GRAPH.values() for target in targets)


def test_no_cycles_and_nothing_imports_the_command_line():
    assert not any("reproduce" in targets for targets in GRAPH.values())
    assert GRAPH["config"] == set() and GRAPH["files"] == set()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, "import cycle: " + " -> ".join((*path, module))
        if module in done:
            return
        for target in sorted(GRAPH[module]):
            visit(target, (*path, module))
        done.add(module)

    for module in MODULES:
        visit(module, ())
