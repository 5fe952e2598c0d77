"""Imports point downward only, in DESIGN.md's order: ops < serde < pointers < node <
{dp, he, mpc} < plans < fl < cli/demo; capabilities do not import each other. veil.device
(on-device prediction) imports nothing that needs torch."""

from __future__ import annotations

import ast
from pathlib import Path

import veil

SRC = Path(veil.__file__).parent
#: Layer of each top-level part of the package; a module may import only its own layer or lower.
LAYERS = {
    "errors": 0, "types": 0, "version": 0,
    "ops": 1,
    "device": 1,  # numpy + onnxruntime only: must run where torch is not installed
    "serde": 2,
    "pointers": 3,
    "node": 4,
    "dp": 5, "he": 5, "mpc": 5,  # capabilities, on the node's seam (veil.node.capability)
    "keras": 5,  # the Keras front end: its wire format is serde's (veil.serde.keras_models)
    "plans": 6,
    "export": 6, "models": 6,  # on-device prediction: veil.export, model hosting (a capability)
    "transfer": 6,  # node-to-node moves (a capability; its CLI shares veil.models.cli's login)
    "fl": 7,
    "cli": 8, "demo": 8, "sandbox": 8, "__main__": 8, "__init__": 8,
}  # fmt: skip
#: Parts of one layer that must not import each other.
SIBLINGS = {"dp", "he", "keras", "mpc"}


def _part(path: Path) -> str:
    rel = path.relative_to(SRC).parts
    return rel[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("veil."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("veil."))
    return out


def test_every_part_of_the_package_has_a_layer() -> None:
    parts = {_part(p) for p in SRC.rglob("*.py")}
    assert parts <= set(LAYERS), (
        f"give these a layer in tests/test_layers.py: {parts - set(LAYERS)}"
    )


def test_imports_point_downward_only() -> None:
    bad = []
    for path in SRC.rglob("*.py"):
        mine = LAYERS[_part(path)]
        for imported in _imports(path):
            if imported in LAYERS and LAYERS[imported] > mine:
                bad.append(f"{path.relative_to(SRC)} imports veil.{imported}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_capabilities_do_not_import_each_other() -> None:
    bad = []
    for path in SRC.rglob("*.py"):
        mine = _part(path)
        if mine in SIBLINGS:
            bad += [f"{path.relative_to(SRC)} imports veil.{i}"
                    for i in _imports(path) & SIBLINGS if i != mine]  # fmt: skip
    assert not bad, "capabilities meet only through the node's seam:\n" + "\n".join(bad)


def test_the_node_imports_no_capability() -> None:
    """The node knows capabilities only through veil.node.capability (DESIGN.md)."""
    for path in (SRC / "node").rglob("*.py"):
        text = path.read_text()
        for cap in ("dp", "he", "keras", "mpc", "fl", "plans"):
            assert f"veil.{cap}" not in _imports_text(text), f"{path.relative_to(SRC)}: veil.{cap}"


def test_model_hosting_meets_other_capabilities_only_through_the_node() -> None:
    """veil.models is a capability beside plans: it imports no other capability."""
    bad = []
    for path in (SRC / "models").rglob("*.py"):
        found = _imports(path) & {"dp", "he", "mpc", "plans", "fl"}
        bad += [f"{path.relative_to(SRC)} imports veil.{i}" for i in sorted(found)]
    assert not bad, "\n".join(bad)


def test_the_device_runtime_imports_only_numpy_onnxruntime_and_the_standard_library() -> None:
    """``veil.device`` runs in a device install without torch (tests/device/test_torchless.py)."""
    import sys

    allowed = set(sys.stdlib_module_names) | {"numpy", "onnxruntime", "__future__"}
    bad = []
    for path in (SRC / "device").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            for name in names:
                ok = name.split(".")[0] in allowed or name in ("veil.errors", "veil.version")
                if not (ok or name.startswith("veil.device")):
                    bad.append(f"{path.relative_to(SRC)} imports {name}")
    assert not bad, "veil.device must not need torch:\n" + "\n".join(bad)


def _imports_text(text: str) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(".".join(node.module.split(".")[:2]))
        elif isinstance(node, ast.Import):
            out.update(".".join(a.name.split(".")[:2]) for a in node.names)
    return out


def test_the_layer_check_catches_an_upward_import(tmp_path: Path) -> None:
    fake = tmp_path / "x.py"
    fake.write_text("from veil.node import Node\nimport veil.pointers.tensor\n")
    assert _imports(fake) == {"node", "pointers"}


def test_public_surface_is_deliberate() -> None:
    assert veil.__all__ == sorted(veil.__all__)
    assert set(veil.__all__) == {
        "WIRE_VERSION", "BudgetExceeded", "Dataset", "Node", "ObjectNotFound", "OpNotAllowed",
        "PermissionDenied", "PointerModule", "PointerTensor", "RemoteOptimizer", "TorchHook",
        "VeilError", "VirtualWorker", "Worker", "__version__", "connect", "device", "dp", "errors",
        "export", "fl", "he", "models", "mpc", "Plan", "Protocol", "func2plan", "plan", "plans", "ops",
        "BaseDataset", "FederatedDataset", "FederatedDataLoader", "local_worker", "create_sandbox",
        "PrivateGridNetwork",
    }  # fmt: skip
    for name in veil.__all__:
        assert hasattr(veil, name), name


def test_no_pickle_eval_or_exec_in_the_package() -> None:
    import re

    banned = re.compile(
        r"import pickle|pickle\.loads?\(|(?<!def )(?<![.\w])(eval|exec)\(|import dill|cloudpickle"
    )
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        hit = banned.search(text)
        assert hit is None, f"{path.relative_to(SRC)} contains {hit.group(0) if hit else ''!r}"
        if "torch.load(" in text:
            assert "weights_only=True" in text, path
