"""Models trained with Keras on TensorFlow, served from their owner's node without TensorFlow.

The fixture (tests/keras/fixtures, written by make_tf_fixture.py under TensorFlow) holds two
``.keras`` files trained on TF and TF's own logits for 32 held-out digits. Here, on Keras's
torch backend and with no TensorFlow installed, ``veil.keras.load_model`` loads them (the
config checked before Keras sees it), the owner uploads one to its node as a private model
(``veil.keras.upload_model``), and a scientist predicts on their own inputs with
``veil.keras.model_pointer``: the predictions match TF's, and leave the node only as the
owner's privacy rules allow. ``make test-tf`` also runs the last test, which compares a
fresh TensorFlow run of the fixture script with the checked-in files.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from veil.errors import InvalidRequest, OpNotAllowed, PermissionDenied, SerdeError, UnsupportedError

#: Sets KERAS_BACKEND=torch before Keras loads; skips this module where Keras is missing.
vk = pytest.importorskip("veil.keras", reason="Keras is not installed: pip install 'veil[keras]'")
keras = vk.keras

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = np.load(FIXTURES / "digits_reference.npz")
#: name -> (file, the reference inputs it takes)
MODELS = {"mlp": ("digits_mlp.keras", "x_dense"), "cnn": ("digits_cnn.keras", "x_image")}
#: Keras on torch vs Keras on TensorFlow, float32 logits of order 10 (measured: 4e-6).
TOLERANCE = 1e-5


def _inputs(name: str) -> torch.Tensor:
    return torch.from_numpy(REFERENCE[MODELS[name][1]])


def _tf_logits(name: str) -> torch.Tensor:
    return torch.from_numpy(REFERENCE[f"{name}_logits"])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_tf_trained_model_loads_without_tensorflow_and_predicts_what_tf_predicted(
    name: str,
) -> None:
    model = vk.load_model(FIXTURES / MODELS[name][0])
    out = model(_inputs(name), training=False)

    assert "tensorflow" not in sys.modules
    assert type(model).__name__ == ("Sequential" if name == "mlp" else "Functional")
    assert torch.allclose(out, _tf_logits(name), atol=TOLERANCE)
    assert (out.argmax(1) == torch.from_numpy(REFERENCE["y"])).float().mean() > 0.9


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_owner_serves_a_tf_trained_model_and_a_scientist_predicts_on_their_inputs(
    name: str, deployment: Any
) -> None:
    vk.upload_model(deployment.owner, "digits", vk.load_model(FIXTURES / MODELS[name][0]),
                    description="digit classifier trained with TensorFlow")  # fmt: skip
    sci = deployment.scientist()

    remote = vk.model_pointer(sci, "digits")
    out = remote(_inputs(name).send(sci))
    assert remote.private and out.private and tuple(out.shape) == (32, 10)
    with pytest.raises(PermissionDenied):
        out.get()
    deployment.owner.requests.approve(out.request("labels for my own 32 digits").id)

    assert torch.allclose(out.get(), _tf_logits(name), atol=TOLERANCE)


def test_the_scientist_cannot_get_the_owners_model(deployment: Any) -> None:
    model = vk.load_model(FIXTURES / MODELS["cnn"][0])
    ds = vk.upload_model(deployment.owner, "digits", model)
    sci = deployment.scientist()
    remote = vk.model_pointer(sci, "digits")
    assets = sci.datasets["digits"].assets
    weights = {str(v.path): v.value for v in model.weights}

    with pytest.raises(PermissionDenied):
        remote.get()
    for param in remote.parameters():
        with pytest.raises(PermissionDenied):
            param.get()
    for asset in ds.assets:
        with pytest.raises(PermissionDenied):
            assets[asset].private.get()
    with pytest.raises(PermissionDenied):  # scientists upload no private model
        vk.upload_model(sci, "mine", model)
    # What the scientist does see: the public config, and mocks freshly initialized.
    assert set(assets) == {*weights, "keras_config"}
    assert not torch.allclose(assets["conv2d/kernel"].mock, weights["conv2d/kernel"])
    assert torch.equal(assets["batch_normalization/moving_mean"].mock, torch.zeros(8))
    assert b"Conv2D" in bytes(assets["keras_config"].mock.numpy())


# -- what is refused before Keras deserializes anything ------------------------------------


def _rewrite(src: Path, dst: Path, change: Any = None, extra: dict[str, bytes] | None = None,
             drop: str = "") -> Path:  # fmt: skip
    """A copy of the ``.keras`` archive ``src`` with its config changed by ``change``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == drop:
                continue
            if info.filename == "config.json" and change is not None:
                config = json.loads(data)
                change(config)
                data = json.dumps(config).encode()
            zout.writestr(info.filename, data)
        for member, data in (extra or {}).items():
            zout.writestr(member, data)
    return dst


def _lambda(config: dict[str, Any]) -> None:
    layer = config["config"]["layers"][1]
    layer["class_name"] = "Lambda"
    layer["config"]["function"] = {
        "class_name": "__lambda__",
        "config": {"code": "4wEAAAAAAAAAAAAAAAEAAAACAAAAQwAAAHMIAAAAfABkARQAUwA=", "defaults": None,
                   "closure": None},
    }  # fmt: skip


def _unknown(config: dict[str, Any]) -> None:
    config["config"]["layers"][1]["class_name"] = "TFSMLayer"


def _custom(config: dict[str, Any]) -> None:
    layer = config["config"]["layers"][1]
    layer["module"], layer["registered_name"] = "my_layers", "my_layers>Doubling"


def _foreign_activation(config: dict[str, Any]) -> None:
    config["config"]["layers"][1]["config"]["activation"] = "os.system"


TAMPERED = {
    "lambda": (_lambda, "Lambda layers carry Python code"),
    "unknown class": (_unknown, "'TFSMLayer' is not an allowlisted Keras class"),
    "custom class": (_custom, "module 'my_layers' is not part of Keras"),
    "foreign function": (_foreign_activation, "'os.system' is not a built-in Keras function"),
}


@pytest.fixture
def no_keras_deserialization(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if Keras is asked to build anything."""

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Keras deserialized a config veil should have refused")

    monkeypatch.setattr(keras.saving, "deserialize_keras_object", boom)
    monkeypatch.setattr(keras.saving, "load_model", boom)
    monkeypatch.setattr(keras.models, "model_from_json", boom)


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_tampered_keras_file_is_refused_before_deserialization(
    case: str, tmp_path: Path, no_keras_deserialization: None
) -> None:
    change, message = TAMPERED[case]
    path = _rewrite(FIXTURES / MODELS["mlp"][0], tmp_path / "tampered.keras", change)

    with pytest.raises(OpNotAllowed, match=message):
        vk.load_model(path)


def test_keras_files_with_lambda_or_custom_layers_are_refused_with_what_to_do(
    tmp_path: Path,
) -> None:
    lam = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda x: x * 2)])
    lam.save(tmp_path / "lambda.keras")

    @keras.saving.register_keras_serializable(package="mine")
    class Doubling(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            return x * 2

    keras.Sequential([keras.Input((3,)), Doubling()]).save(tmp_path / "custom.keras")

    with pytest.raises(OpNotAllowed, match="Lambda layers carry Python code.*without Lambda"):
        vk.load_model(tmp_path / "lambda.keras")
    with pytest.raises(OpNotAllowed, match=r"layers\[1\]: module .* is not part of Keras"):
        vk.load_model(tmp_path / "custom.keras")


def test_files_that_are_not_plain_keras_archives_are_refused(tmp_path: Path) -> None:
    mlp, cnn = FIXTURES / MODELS["mlp"][0], FIXTURES / MODELS["cnn"][0]
    legacy = tmp_path / "legacy.h5"
    legacy.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    with zipfile.ZipFile(cnn) as z:
        cnn_weights = z.read("model.weights.h5")
    swapped = _rewrite(mlp, tmp_path / "swapped.keras", drop="model.weights.h5",
                       extra={"model.weights.h5": cnn_weights})  # fmt: skip

    with pytest.raises(SerdeError, match="not a .keras archive"):
        vk.load_model(legacy)
    with pytest.raises(UnsupportedError, match="'assets/vocab.txt'.*StringLookup"):
        vk.load_model(_rewrite(mlp, tmp_path / "a.keras", extra={"assets/vocab.txt": b"a"}))
    with pytest.raises(SerdeError, match="has no model.weights.h5"):
        vk.load_model(_rewrite(mlp, tmp_path / "b.keras", drop="model.weights.h5"))
    with pytest.raises(SerdeError, match="weights do not fit its config"):
        vk.load_model(swapped)
    with pytest.raises(SerdeError, match="over max_bytes"):
        vk.load_model(mlp, max_bytes=1000)


def test_weights_that_read_other_files_are_refused(tmp_path: Path) -> None:
    """HDF5 can keep a dataset's bytes in any other file (an external dataset) or link to
    one: loading such weights would copy a local file into a model that then travels."""
    import h5py

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(64 * 32, dtype=np.float32).tobytes())
    mlp = FIXTURES / MODELS["mlp"][0]
    with zipfile.ZipFile(mlp) as z:
        (tmp_path / "w.h5").write_bytes(z.read("model.weights.h5"))
    with h5py.File(tmp_path / "w.h5", "r+") as f:
        del f["layers/dense/vars/0"]
        f.create_dataset("layers/dense/vars/0", shape=(64, 32), dtype="float32",
                         external=[(str(secret), 0, secret.stat().st_size)])  # fmt: skip
    path = _rewrite(mlp, tmp_path / "external.keras", drop="model.weights.h5",
                    extra={"model.weights.h5": (tmp_path / "w.h5").read_bytes()})  # fmt: skip

    with pytest.raises(SerdeError, match="external Dataset"):
        vk.load_model(path)


def test_a_served_model_with_a_refused_config_is_never_built_by_the_scientist(
    virtual: Any, no_keras_deserialization: None
) -> None:
    config = {"module": "keras.layers", "class_name": "Lambda", "config": {}}
    text = torch.frombuffer(bytearray(json.dumps(config).encode()), dtype=torch.uint8)
    virtual.owner.datasets.create("evil", private={"keras_config": text},
                                  mock={"keras_config": text.clone()})  # fmt: skip
    virtual.owner.datasets.create("plain", private=torch.ones(2), mock=torch.zeros(2))
    sci = virtual.scientist()

    with pytest.raises(OpNotAllowed, match="Lambda layers"):
        vk.model_pointer(sci, "evil")
    with pytest.raises(InvalidRequest, match="holds no Keras model"):
        vk.model_pointer(sci, "plain")


# -- make test-tf: a fresh TensorFlow run of the fixture script ------------------------------

FRESH = os.environ.get("VEIL_TF_FIXTURE", "")


def _config(path: Path) -> Any:
    """The config of a ``.keras`` file without the ids of Python objects Keras writes."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "shared_object_id"}
        return [strip(v) for v in node] if isinstance(node, list) else node

    with zipfile.ZipFile(path) as z:
        return strip(json.loads(z.read("config.json")))


@pytest.mark.skipif(not FRESH, reason="make test-tf sets VEIL_TF_FIXTURE to a fresh TF run")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_fresh_tensorflow_run_gives_the_checked_in_fixture(name: str) -> None:
    fresh_dir = Path(FRESH)
    fresh_ref = np.load(fresh_dir / "digits_reference.npz")
    file = MODELS[name][0]
    fresh, kept = vk.load_model(fresh_dir / file), vk.load_model(FIXTURES / file)

    assert list(fresh_ref["versions"]) == list(REFERENCE["versions"])
    assert np.array_equal(fresh_ref[MODELS[name][1]], REFERENCE[MODELS[name][1]])
    assert _config(fresh_dir / file) == _config(FIXTURES / file)
    for a, b in zip(fresh.weights, kept.weights, strict=True):
        assert torch.allclose(a.value, b.value, atol=1e-5), f"{a.path} retrained differently"
    assert np.allclose(fresh_ref[f"{name}_logits"], REFERENCE[f"{name}_logits"], atol=1e-5)
    out = fresh(_inputs(name), training=False)  # the fresh file on torch vs TF's own logits
    assert torch.allclose(out, torch.from_numpy(fresh_ref[f"{name}_logits"]), atol=TOLERANCE)
