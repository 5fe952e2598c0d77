"""The module-level import graph of a package, read from its source (ast), and its cycles.

An edge ``a -> b`` means module ``a`` imports module ``b``, at module level or inside a
function, but not under ``if TYPE_CHECKING:`` (those imports never run). ``from p import x``
is an edge to the submodule ``p.x`` when ``x`` is one, else to ``p`` itself (the package's
``__init__``); ``import p.q`` is an edge to ``p.q``; relative imports are resolved against
the importing module's package. Imports of anything outside the package are left out.

Used by ``tests/test_structure.py`` (no import cycles) and ``scripts/architecture.py`` (the
package diagram). Standard library only.

Example (run from the repository root):
    >>> from pathlib import Path
    >>> g = import_graph(Path("src/veil"))
    >>> "veil.errors" in g["veil.node.node"]
    True
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["cycle_path", "find_cycles", "import_graph", "module_names", "strongly_connected"]


def module_names(root: Path, package: str | None = None) -> dict[str, Path]:
    """Every ``.py`` file under ``root`` (the package's directory) by dotted module name.

    ``root/__init__.py`` is ``package`` (default: the directory's name), ``root/a/b.py`` is
    ``package.a.b`` and ``root/a/__init__.py`` is ``package.a``.
    """
    package = package or root.name
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join([package, *parts])] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, skipping the bodies of ``if TYPE_CHECKING:`` blocks."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the else branch does run
            continue
        stack.extend(ast.iter_child_nodes(node))


def _known(name: str, known: Iterable[str]) -> str | None:
    """``name`` if it is a module of the package, else its longest prefix that is one."""
    known = set(known)
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``module`` (the file at ``path``) imports."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    root = next(iter(known)).split(".")[0] if known else ""
    out: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == root and (hit := _known(alias.name, known)):
                    out.add(hit)
            continue
        if node.level:  # relative: from . import x, from ..a import y
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - (node.level - 1)])
            source = f"{base}.{node.module}" if node.module else base
        else:
            source = node.module or ""
        if source.split(".")[0] != root:
            continue
        for alias in node.names:
            sub = f"{source}.{alias.name}"
            hit = sub if sub in known else _known(source, known)
            if hit:
                out.add(hit)
    out.discard(module)
    return out


def import_graph(root: Path, package: str | None = None) -> dict[str, set[str]]:
    """Each module of the package under ``root`` -> the package's modules it imports."""
    names = module_names(root, package)
    known = set(names)
    return {m: imports_of(m, p, known) for m, p in names.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted, in a stable order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = []
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        work.append((start, iter(sorted(graph.get(start, ())))))
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                out.append(sorted(component))
    return sorted(out)


def find_cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The import cycles: strongly connected components of more than one module, sorted."""
    return [tuple(c) for c in strongly_connected(graph) if len(c) > 1]


def cycle_path(graph: dict[str, set[str]], component: Iterable[str]) -> list[str]:
    """One shortest cycle through the first module of ``component`` (inside it), as
    ``[a, b, ..., a]``: a concrete chain of imports to show in a message."""
    members = sorted(component)
    start = members[0]
    inside = set(members)
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph.get(node, ())):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [start, *reversed(path[:-1]), start] if node != start else [start, start]
            if child in inside and child not in parent:
                parent[child] = node
                queue.append(child)
    return members
