"""Layering of the package, read from the source with `ast` (nothing is imported but in (c)'s subprocess).

(a) Only `thinkrm.cli` imports `thinkrm.cli`: the library never reaches up into the command line.
(b) Module-level imports among thinkrm's modules form no cycle (imports inside functions are the deliberate
    way to break one, and to keep heavy dependencies lazy).
(c) `import thinkrm` stays light: no torch, transformers, fastapi or numpy.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "thinkrm"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MAIN_GUARDS = {"__name__ == '__main__'", "'__main__' == __name__"}
MODULES = {_module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _known(name: str) -> str | None:
    """The thinkrm module `name` refers to: itself if it is one, else its longest known prefix."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(module-level, function-level) thinkrm modules that `module` imports. Module level includes class
    bodies and `if`/`try` blocks at the top. Ignored: `if TYPE_CHECKING:` blocks (never run) and
    `if __name__ == "__main__":` blocks (run only when the file is a program, e.g. `python -m thinkrm.train`,
    which then is no library module: there the CLI may be imported)."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    top: set[str] = set()
    inner: set[str] = set()

    def targets(node: ast.Import | ast.ImportFrom) -> set[str]:
        found = set()
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            base = _resolve(module, is_package, node)
            # `from pkg import sub` imports pkg.sub when that is a module, and pkg either way.
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                known = _known(name)
                if known and known != module:
                    found.add(known)
        return found

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ("TYPE_CHECKING" in ast.unparse(child.test)
                                              or ast.unparse(child.test) in MAIN_GUARDS):
                for grandchild in child.orelse:
                    visit_one(grandchild, in_function)
                continue
            visit_one(child, in_function)

    def visit_one(child: ast.AST, in_function: bool) -> None:
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            (inner if in_function else top).update(targets(child))
        visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False)
    # Importing a submodule runs its packages' __init__ first.
    for name in list(top):
        parent = name.rpartition(".")[0]
        while parent and parent != module and not module.startswith(parent + "."):
            if parent in MODULES:
                top.add(parent)
            parent = parent.rpartition(".")[0]
    return top, inner - top


GRAPH = {m: _imports(m) for m in MODULES}


def test_the_package_is_parsed():
    assert {"thinkrm", "thinkrm.cli", "thinkrm.serving", "thinkrm.llm", "thinkrm.lite"} <= set(MODULES)
    assert GRAPH["thinkrm.cli"][0] or GRAPH["thinkrm.cli"][1]  # the CLI does import the library


def test_only_the_cli_imports_the_cli():
    offenders = sorted(f"{m} -> {t}" for m, (top, inner) in GRAPH.items()
                       if not (m + ".").startswith("thinkrm.cli.")
                       for t in top | inner if (t + ".").startswith("thinkrm.cli."))
    assert offenders == [], "library modules import the command line:\n" + "\n".join(offenders)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan), as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(edges)))
    for v in sorted(edges):
        if v not in index:
            connect(v)
    cycles = []
    for component in components:  # a shortest path from the smallest member back to itself
        start = min(component)
        paths = {start: [start]}
        frontier = [start]
        cycle = None
        while frontier and cycle is None:
            nxt = []
            for v in frontier:
                for w in sorted(edges[v] & component):
                    if w == start:
                        cycle = paths[v] + [start]
                        break
                    if w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
                if cycle:
                    break
            frontier = nxt
        cycles.append(cycle)
    return cycles


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_module_level_imports():
    cycles = _cycles({m: top for m, (top, _) in GRAPH.items()})
    assert cycles == [], "module-level import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_importing_the_package_loads_no_heavy_dependency():
    heavy = ["torch", "transformers", "fastapi", "numpy"]
    code = f"import sys, thinkrm; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [], f"`import thinkrm` loads {out.stdout.split()}"
