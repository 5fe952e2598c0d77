"""veil.mpc's sub-packages import only downward: ring < providers < protocols < tensors < node,
and no mpc module imports another in a cycle (function-local imports count too; only
``if TYPE_CHECKING:`` blocks are exempt). See CONVENTIONS.md, "MPC in three layers"."""

from __future__ import annotations

import ast
from pathlib import Path

import veil.mpc

MPC = Path(veil.mpc.__file__).parent
#: Rank of each part of veil.mpc; a module may import mpc modules of its own rank or lower.
LAYERS = {"ring": 0, "stats": 0, "messages": 0, "providers": 1, "protocols": 2, "tensors": 3,
          "linreg": 3, "node": 4, "__init__": 5}  # fmt: skip


def _module(path: Path) -> str:
    rel = path.relative_to(MPC).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"] if rel.parts != ("__init__",) else []
    return ".".join(["veil.mpc", *parts])


def _part(module: str) -> str:
    rest = module.split(".")[2:]
    return rest[0] if rest else "__init__"


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, known: set[str]) -> set[str]:
    """The mpc modules ``path`` imports anywhere but under ``if TYPE_CHECKING:``."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("veil.mpc"):
            for a in node.names:  # ``from veil.mpc.ring import r128`` imports a module
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("veil.mpc"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return out


def _graph() -> dict[str, set[str]]:
    paths = {_module(p): p for p in MPC.rglob("*.py")}
    known = set(paths)
    return {m: _imports(p, known) & known - {m} for m, p in paths.items()}


def test_every_part_of_mpc_has_a_layer() -> None:
    parts = {_part(m) for m in _graph()}
    assert parts <= set(LAYERS), f"give these a layer in {__file__}: {parts - set(LAYERS)}"


def test_mpc_imports_point_downward_only() -> None:
    bad = [
        f"{m} imports {i}"
        for m, deps in _graph().items()
        for i in deps
        if LAYERS[_part(i)] > LAYERS[_part(m)]
    ]
    assert not bad, "upward imports in veil.mpc:\n" + "\n".join(sorted(bad))


def test_no_import_cycles_among_mpc_modules() -> None:
    graph = _graph()
    # a package's __init__ may import its own modules; its modules must not import it back
    state: dict[str, int] = {}
    cycles: list[str] = []

    def walk(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(" -> ".join([*stack[stack.index(d) :], d]))
            elif d not in state:
                walk(d, [*stack, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m, [m])
    assert not cycles, "import cycles in veil.mpc:\n" + "\n".join(cycles)


def test_no_mpc_module_is_over_600_lines() -> None:
    big = {str(p.relative_to(MPC)): n for p in MPC.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > 600}  # fmt: skip
    assert not big, f"split these modules: {big}"


def test_the_checks_see_function_local_imports_and_skip_type_checking(tmp_path: Path) -> None:
    fake = tmp_path / "x.py"
    fake.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from veil.mpc.node import ops\n"
        "def f():\n    from veil.mpc.tensors import shared\n    import veil.mpc.ring.r128\n"
    )
    known = {"veil.mpc.tensors.shared", "veil.mpc.ring.r128", "veil.mpc.node.ops"}
    assert _imports(fake, known) == {"veil.mpc.tensors.shared", "veil.mpc.ring.r128"}
