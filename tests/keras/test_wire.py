"""Attacks on the Keras wire format: what a node refuses before Keras ever sees a config
(veil.ops.keras.check_config), and weights that do not fit the config they came with."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
import torch

from veil.errors import InvalidRequest, OpNotAllowed
from veil.serde.keras_models import MAX_CONFIG_CHARS, keras_from_wire, keras_to_wire
from veil.serde.messages import KerasModelData, SendObject

#: Sets KERAS_BACKEND=torch before Keras loads; skips this module where Keras is missing.
keras = pytest.importorskip(
    "veil.keras", reason="Keras is not installed: pip install 'veil[keras]'"
).keras


def _wire() -> KerasModelData:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="relu")])
    return keras_to_wire(model)


def _edit(data: KerasModelData, change: Any) -> KerasModelData:
    config = json.loads(data.config)
    change(config["config"]["layers"][1])
    return msgspec.structs.replace(data, config=json.dumps(config))


def _send(deployment: Any, data: KerasModelData) -> Any:
    return deployment.scientist().call(SendObject(data))


def _rename(cls: str, module: str = "keras.layers") -> Any:
    def change(layer: dict[str, Any]) -> None:
        layer["class_name"], layer["module"] = cls, module

    return change


def test_an_unknown_keras_class_is_refused_on_the_wire(deployment: Any) -> None:
    with pytest.raises(OpNotAllowed, match="'TFSMLayer' is not an allowlisted Keras class"):
        _send(deployment, _edit(_wire(), _rename("TFSMLayer")))


def test_a_lambda_layer_is_refused_on_the_wire(deployment: Any) -> None:
    def to_lambda(layer: dict[str, Any]) -> None:
        layer["class_name"] = "Lambda"
        layer["config"]["function"] = {
            "class_name": "__lambda__",
            "config": {"code": "4wEAAAAAAAAA", "defaults": None, "closure": None},
        }

    with pytest.raises(OpNotAllowed, match="Lambda layers carry Python code"):
        _send(deployment, _edit(_wire(), to_lambda))


def test_a_config_naming_a_module_outside_keras_is_refused(deployment: Any) -> None:
    with pytest.raises(OpNotAllowed, match="module 'os' is not part of Keras"):
        _send(deployment, _edit(_wire(), _rename("Dense", module="os")))
    with pytest.raises(OpNotAllowed, match="not part of Keras"):
        _send(deployment, _edit(_wire(), _rename("Dense", module="kerasx.layers")))
    with pytest.raises(OpNotAllowed, match="not one of the Keras modules"):  # Keras imports it
        _send(deployment, _edit(_wire(), _rename("Dense", module="keras.src.utils.io_utils")))


def test_custom_registered_names_and_functions_are_refused() -> None:
    def custom(layer: dict[str, Any]) -> None:
        layer["registered_name"] = "mypkg>Dense"

    def activation(layer: dict[str, Any]) -> None:
        layer["config"]["activation"] = "mypkg>evil"

    def fn(layer: dict[str, Any]) -> None:
        layer["config"]["activation"] = {
            "module": "keras.activations", "class_name": "function", "config": "system",
            "registered_name": None,
        }  # fmt: skip

    for change, message in [
        (custom, "registered name 'mypkg>Dense' is not Keras's"),
        (activation, "'mypkg>evil' is not a built-in Keras function"),
        (fn, "function 'system' is not a built-in Keras function"),
    ]:
        with pytest.raises(OpNotAllowed, match=message):
            keras_from_wire(_edit(_wire(), change))


def test_every_problem_is_listed_at_once() -> None:
    def two(layer: dict[str, Any]) -> None:
        layer["class_name"] = "Evil"
        layer["config"]["kernel_initializer"]["module"] = "subprocess"

    with pytest.raises(OpNotAllowed, match="'Evil' is not.*'subprocess' is not part of Keras"):
        keras_from_wire(_edit(_wire(), two))


def test_weights_that_do_not_fit_the_config_are_refused(deployment: Any) -> None:
    data = _wire()
    wrong = msgspec.structs.replace(data, weights=data.weights[:1])
    with pytest.raises(InvalidRequest, match="has 2 weights; 1 were sent"):
        _send(deployment, wrong)


def test_a_config_cannot_make_the_node_allocate_what_was_not_sent() -> None:
    data = _wire()
    config = json.loads(data.config)
    inputs, dense = config["config"]["layers"]
    inputs["config"]["batch_shape"] = dense["build_config"]["input_shape"] = [None, 1_000_000]
    dense["config"]["units"] = 1_000_000  # 4 TB of float32 weights, were they made
    huge = msgspec.structs.replace(data, config=json.dumps(config))

    with pytest.raises(InvalidRequest, match=r"\(1000000, 1000000\)"):  # checked on meta
        keras_from_wire(huge)


def test_malformed_configs_get_a_clear_error() -> None:
    data = _wire()
    for config, message in [
        ("{not json", "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "not valid JSON|nested deeper"),
        (" " * (MAX_CONFIG_CHARS + 1), "longer than"),
        (json.dumps({"module": "keras.layers", "class_name": "Dense", "config": {}}),
         "Sequential or functional"),
    ]:  # fmt: skip
        with pytest.raises((InvalidRequest, OpNotAllowed), match=message):
            keras_from_wire(msgspec.structs.replace(data, config=config))


def test_the_node_keeps_serving_after_a_refused_model(deployment: Any) -> None:
    sci = deployment.scientist()
    with pytest.raises(OpNotAllowed):
        sci.call(SendObject(_edit(_wire(), _rename("Evil"))))
    x = torch.ones(2, 3)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert torch.allclose(model.send(sci)(x.send(sci)).get(), model(x))


def test_every_allowlisted_name_is_one_of_keras_s_own() -> None:
    from veil.ops.keras import KERAS_ALLOWLIST

    where = {
        "layer": [keras.layers], "model": [keras, keras.src.models.functional],
        "activation": [keras.activations], "initializer": [keras.initializers],
        "regularizer": [keras.regularizers], "constraint": [keras.constraints],
        "loss": [keras.losses], "optimizer": [keras.optimizers],
    }  # fmt: skip
    for kind, places in where.items():
        names = KERAS_ALLOWLIST[kind]
        if kind == "loss":  # classes, functions and the short names keras.losses.get knows
            assert all(keras.losses.get(n) is not None for n in names)
            continue
        missing = sorted(n for n in names if not any(hasattr(p, n) for p in places))
        assert not missing, f"{kind}: {missing}"


def test_a_compiled_model_travels_with_its_optimizer_and_loss() -> None:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", metrics=["mae"])

    back = keras_from_wire(keras_to_wire(model))

    assert back.compiled and type(back.optimizer).__name__ == "Adam"
    assert torch.equal(back(torch.ones(1, 3)), model(torch.ones(1, 3)))


def test_every_allowlisted_optimizer_and_layer_family_passes_the_check() -> None:
    from veil.ops.keras import KERAS_ALLOWLIST, check_config

    layers = keras.layers
    inputs = keras.Input((10, 8))
    x = layers.LSTM(4, return_sequences=True)(inputs)
    x = layers.GRU(4, return_sequences=True)(x)
    x = layers.Bidirectional(layers.SimpleRNN(3))(x)
    x = layers.BatchNormalization()(layers.Dropout(0.1)(x))
    regularizer, constraint = keras.regularizers.L1L2(0.1, 0.1), keras.constraints.MaxNorm(2)
    x = layers.Dense(3, kernel_regularizer=regularizer, kernel_constraint=constraint)(x)
    model = keras.Model(inputs, x)
    for name in sorted(KERAS_ALLOWLIST["optimizer"]):
        model.compile(optimizer=getattr(keras.optimizers, name)(), loss=keras.losses.Huber())

        assert check_config(keras.saving.serialize_keras_object(model)) == [], name
