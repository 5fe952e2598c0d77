"""``import veil.keras`` runs Keras on torch, says why when it cannot, and ``import veil``
alone never loads Keras (each case in a fresh interpreter: Keras's backend is per process)."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

from veil.serde.keras_models import load_keras

#: Sets KERAS_BACKEND=torch before Keras loads; skips this module where Keras is missing.
keras = pytest.importorskip(
    "veil.keras", reason="Keras is not installed: pip install 'veil[keras]'"
).keras


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    return subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


def test_import_veil_keras_sets_the_torch_backend_and_import_veil_loads_no_keras() -> None:
    code = (
        "import sys, torch, veil\n"
        "veil.VirtualWorker('a').send(torch.ones(1))\n"
        "assert 'keras' not in sys.modules, 'import veil loaded Keras'\n"
        "import veil.keras, keras\n"
        "print(keras.backend.backend())\n"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "torch"


def test_keras_loaded_with_another_backend_is_a_clear_import_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = types.SimpleNamespace(backend=types.SimpleNamespace(backend=lambda: "tensorflow"))
    monkeypatch.setitem(sys.modules, "keras", other)  # as if imported before veil.keras

    with pytest.raises(ImportError, match="imported with the 'tensorflow' backend before"):
        load_keras()


def test_keras_backend_naming_another_backend_is_a_clear_import_error() -> None:
    out = _run("import veil.keras", KERAS_BACKEND="jax")

    assert out.returncode != 0
    assert "ImportError: KERAS_BACKEND is 'jax'" in out.stderr, out.stderr[-2000:]


def test_a_node_without_keras_loaded_builds_a_keras_model_when_one_arrives() -> None:
    code = (
        "import sys, veil, veil.keras, keras, torch\n"
        "from veil.serde.keras_models import keras_to_wire\n"
        "m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])\n"
        "print(keras_to_wire(m).config)\n"
    )
    made = _run(code)
    assert made.returncode == 0, made.stderr[-2000:]
    node = (
        "import sys, torch, veil\n"
        "from veil.serde.messages import KerasModelData, SendObject, Value, GetObject\n"
        "from veil.serde.tensors import tensor_to_data\n"
        "w = veil.VirtualWorker('n')\n"
        "data = KerasModelData(sys.stdin.read(), [], [tensor_to_data(torch.ones(2, 1)),\n"
        "                                             tensor_to_data(torch.zeros(1))])\n"
        "assert 'keras' not in sys.modules\n"
        "info = w.call(SendObject(data))\n"
        "print(sys.modules['keras'].backend.backend(), info.kind, len(info.names))\n"
    )
    clean = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    out = subprocess.run(
        [sys.executable, "-c", node], input=made.stdout, env=clean, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["torch", "module", "2"]


def test_missing_keras_is_an_import_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "keras", None)  # what `import keras` meets uninstalled

    with pytest.raises(ImportError, match=r"pip install 'veil\[keras\]'"):
        load_keras()
