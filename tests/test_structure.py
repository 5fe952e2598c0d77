"""The package's shape: small modules (CONVENTIONS.md: most 100-400 lines, split past 600),
no import cycles, and docs/ARCHITECTURE.md's diagram drawn from the code as it is."""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import veil

SRC = Path(veil.__file__).parent
ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 600
MAX_MEDIAN_LINES = 200

#: Import cycles tolerated while code is reworked; none today. A cycle listed here that
#: disappears fails the test, so the list only shrinks.
KNOWN_CYCLES: set[tuple[str, ...]] = set()


def _load(name: str) -> ModuleType:
    """A module of ``scripts/`` (not a package), loaded by path."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


importgraph = _load("importgraph")


# ----------------------------------------------------------------------- module sizes
def _sizes() -> list[tuple[int, str]]:
    """(lines, path under src/) of every module, largest first."""
    sizes = [
        (len(p.read_text().splitlines()), str(p.relative_to(SRC.parent))) for p in SRC.rglob("*.py")
    ]
    return sorted(sizes, key=lambda s: (-s[0], s[1]))


def test_modules_stay_small() -> None:
    sizes = _sizes()
    median = statistics.median(n for n, _ in sizes)
    report = (
        f"{len(sizes)} modules; largest {sizes[0][0]} lines, median {median:g} "
        f"(limits: {MAX_LINES} per module, median {MAX_MEDIAN_LINES}); ten largest:\n"
        + "\n".join(f"  {n:5d}  {name}" for n, name in sizes[:10])
    )
    print(report)  # (shown with -s)
    over = [f"{name} ({n} lines)" for n, name in sizes if n > MAX_LINES]
    assert not over, f"split these modules by concern: {over}\n{report}"
    assert median <= MAX_MEDIAN_LINES, f"the median module is over {MAX_MEDIAN_LINES}\n{report}"


# ----------------------------------------------------------------------- import cycles
def _describe(graph: dict[str, set[str]], cycles: list[tuple[str, ...]]) -> str:
    return "\n".join(
        f"  {', '.join(c)}\n    e.g. {' -> '.join(importgraph.cycle_path(graph, c))}"
        for c in cycles
    )


def test_no_new_import_cycles() -> None:
    graph = importgraph.import_graph(SRC)
    new = [c for c in importgraph.find_cycles(graph) if c not in KNOWN_CYCLES]
    assert not new, (
        "import cycles (move the shared piece down, or invert the dependency with a hook "
        "the upper module registers; an import under `if TYPE_CHECKING:` is not one):\n"
        + _describe(graph, new)
    )


def test_every_known_cycle_still_exists() -> None:
    found = set(importgraph.find_cycles(importgraph.import_graph(SRC)))
    gone = sorted(KNOWN_CYCLES - found)
    assert not gone, (
        "these known import cycles are gone (or changed): remove them from KNOWN_CYCLES in "
        "tests/test_structure.py (and add what they became, if they only changed):\n"
        + "\n".join(f"  {c}" for c in gone)
    )


def test_the_cycle_finder_catches_a_synthetic_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "rel").mkdir(parents=True)
    files = {
        "__init__.py": "from pkg.sub import thing\n",  # thing is a name: an edge to pkg.sub
        "sub.py": "thing = 1\n\ndef f():\n    from pkg import helper\n",  # in a function
        "helper.py": "from pkg import thing\n",  # a name from the package's __init__
        "typed.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from pkg.other import X\nelse:\n    import pkg.leaf\n"
        ),
        "other.py": "import pkg.typed\nimport os\n",
        "leaf.py": "",
        "rel/__init__.py": "",
        "rel/x.py": "from . import y\n",
        "rel/y.py": "from .x import z\nfrom .. import leaf\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)

    graph = importgraph.import_graph(pkg)

    assert graph["pkg"] == {"pkg.sub"}
    assert graph["pkg.typed"] == {"pkg.leaf"}  # the TYPE_CHECKING import is not an edge
    assert graph["pkg.rel.y"] == {"pkg.rel.x", "pkg.leaf"}
    cycles = importgraph.find_cycles(graph)
    assert cycles == [("pkg", "pkg.helper", "pkg.sub"), ("pkg.rel.x", "pkg.rel.y")]
    assert importgraph.cycle_path(graph, cycles[0]) == ["pkg", "pkg.sub", "pkg.helper", "pkg"]
    assert "pkg -> pkg.sub -> pkg.helper -> pkg" in _describe(graph, cycles)


# ----------------------------------------------------------------------- architecture doc
def test_the_architecture_diagram_is_current() -> None:
    """``docs/ARCHITECTURE.md`` embeds the package diagram ``scripts/architecture.py`` draws;
    regenerate it with ``python scripts/architecture.py --write`` when imports change."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "architecture.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
