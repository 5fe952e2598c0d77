"""Subclassed Keras models on nodes (veil.serde.keras_subclassed): sent as the functional
model their call() traces to, with forward and training parity with Keras run locally;
what does not trace is refused on the client before anything is sent, and a forged config
naming an op or class outside the allowlist is refused on the node."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import numpy as np
import pytest
import torch

import veil
from veil.errors import OpNotAllowed, PermissionDenied, UnsupportedError
from veil.serde.keras_models import keras_to_wire
from veil.serde.messages import KerasModelData, SendObject

#: Sets KERAS_BACKEND=torch before Keras loads; skips this module where Keras is missing.
vk = pytest.importorskip("veil.keras", reason="Keras is not installed: pip install 'veil[keras]'")
keras = vk.keras
ops = keras.ops


class TextNet(keras.Model):  # type: ignore[misc]
    """The issue's model: an Embedding and an LSTM, with a residual and a concatenation."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embed = keras.layers.Embedding(50, 8)
        self.lstm = keras.layers.LSTM(16)
        self.skip = keras.layers.Dense(16)
        self.drop = keras.layers.Dropout(0.25)
        self.out = keras.layers.Dense(3)

    def call(self, tokens: Any, training: Any = None) -> Any:
        e = self.embed(tokens)
        h = self.lstm(e) + self.skip(ops.mean(e, axis=1))
        h = ops.concatenate([h, ops.tanh(h)], axis=-1)
        return self.out(self.drop(h, training=training))


def _tokens(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 50, (n, 7), generator=torch.Generator().manual_seed(seed))


def _subclassed() -> Any:
    keras.utils.set_random_seed(3)
    model = TextNet()
    model(_tokens(1, 0))  # built: veil traces call() on this shape
    return model


def _sequential() -> Any:
    keras.utils.set_random_seed(3)
    return keras.Sequential(
        [
            keras.Input((7,), dtype="int32"),
            keras.layers.Embedding(50, 8),
            keras.layers.LSTM(16),
            keras.layers.Dense(3),
        ]
    )


MODELS = {"subclassed": _subclassed, "sequential": _sequential}


def _batches(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    return [(_tokens(5, i), torch.randn(5, 3, generator=g)) for i in range(n)]


def _weights(model: Any) -> list[torch.Tensor]:
    """A model's weights in the order of the functional model it travels as."""
    return [v.value.detach().clone() for v in vk.to_functional(model).weights]


def _spy(sci: Any, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    sent: list[Any] = []
    call = sci.call
    monkeypatch.setattr(sci, "call", lambda msg, *a, **k: sent.append(msg) or call(msg, *a, **k))
    return sent


@pytest.mark.parametrize("name", sorted(MODELS))
def test_remote_forward_equals_local_forward(name: str, deployment: Any) -> None:
    model, sci = MODELS[name](), deployment.scientist()
    x = _tokens(4, 1)

    remote = sci.send(model)
    out = remote(x.send(sci)).get()

    assert isinstance(remote, veil.PointerModule)
    assert torch.allclose(out, model(x), atol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_remote_training_gives_the_weights_of_local_training(name: str, deployment: Any) -> None:
    build = MODELS[name]
    local, sent, sci = build(), build(), deployment.scientist()
    opt = torch.optim.SGD(local.parameters(), lr=0.1, momentum=0.9)
    for x, y in _batches():
        torch.nn.functional.mse_loss(local(x), y).backward()  # Dropout off, as remotely
        opt.step()
        opt.zero_grad()

    remote = sci.send(sent)
    ropt = veil.RemoteOptimizer(torch.optim.SGD, remote.parameters(), lr=0.1, momentum=0.9)
    for x, y in _batches():
        loss = torch.nn.functional.mse_loss(remote(x.send(sci)), y.send(sci))
        loss.backward()
        ropt.step()
        ropt.zero_grad()
    back = build()
    vk.assign_weights(back, remote.get())

    for got, want in zip(_weights(back), _weights(local), strict=True):
        assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(_weights(local)[0], _weights(build())[0])  # it trained
    x = _tokens(3, 9)
    assert torch.allclose(back(x), local(x), atol=1e-5)


def test_the_wire_names_no_code_only_built_in_layers_and_ops() -> None:
    model = _subclassed()

    data = keras_to_wire(model)

    config = json.loads(data.config)
    assert config["class_name"] == "Functional"
    assert "TextNet" not in data.config and __name__ not in data.config
    layers = [(layer["module"], layer["class_name"]) for layer in config["config"]["layers"]]
    assert ("keras.layers", "LSTM") in layers
    assert ("keras.src.ops.numpy", "Concatenate") in layers
    assert ("keras.src.ops.numpy", "Add") in layers
    assert vk.check_config(config) == []


class SequenceNet(keras.Model):  # type: ignore[misc]
    """An LSTM over float features with a residual: no Embedding (the Embedding model has its own test below)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lstm = keras.layers.LSTM(4)
        self.out = keras.layers.Dense(4)

    def call(self, x: Any) -> Any:
        return self.out(self.lstm(x)) + ops.mean(x, axis=1)


def _train_on_private(virtual: Any, model: Any, private: torch.Tensor) -> Any:
    virtual.owner.datasets.create(
        "d", private=private, mock=torch.zeros_like(private), description="features"
    )
    sci = virtual.scientist()
    remote = sci.send(model)
    opt = veil.RemoteOptimizer(torch.optim.SGD, remote.parameters(), lr=0.1)
    assert remote.get() is not None  # its own model, before it saw private data

    remote(sci.datasets["d"].private).pow(2).mean().backward()
    opt.step()
    return remote


def test_a_subclassed_model_trained_on_private_data_is_private(virtual: Any) -> None:
    model = SequenceNet()
    model(torch.zeros(1, 5, 4))

    remote = _train_on_private(virtual, model, torch.randn(10, 5, 4))

    with pytest.raises(PermissionDenied):
        remote.get()
    with pytest.raises(PermissionDenied):
        remote.parameters()[0].get()


def test_an_embedding_model_trains_on_private_token_ids(virtual: Any) -> None:
    remote = _train_on_private(virtual, _subclassed(), _tokens(10, 2))

    with pytest.raises(PermissionDenied):
        remote.get()


def test_inputs_can_be_chosen_and_an_unbuilt_model_says_how(virtual: Any) -> None:
    keras.utils.set_random_seed(3)
    model = TextNet()
    with pytest.raises(UnsupportedError, match="call it once on a batch, or pass inputs="):
        virtual.owner.send(model)

    graph = vk.to_functional(model, keras.Input((7,), dtype="int32"))
    remote = virtual.owner.send(graph)
    x = _tokens(2, 3)

    assert graph.inputs[0].dtype == "int32"
    assert torch.allclose(remote(x.send(virtual.owner)).get(), model(x), atol=1e-6)


def test_assign_weights_refuses_another_architecture() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        vk.assign_weights(_subclassed(), _sequential())


# -- refused on the client, before anything is sent -------------------------------------------


class _Doubling(keras.layers.Layer):  # type: ignore[misc]
    def build(self, shape: Any) -> None:
        self.scale = self.add_weight(shape=(shape[-1],), initializer="ones")

    def call(self, x: Any) -> Any:
        return x * self.scale * 2


def _model_calling(fn: Any, **layers: Any) -> Any:
    """A subclassed model built on a batch, whose call() then does ``fn``."""
    steps = [lambda m, h, t: h]

    class Net(keras.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.dense = keras.layers.Dense(4)
            for name, layer in layers.items():
                setattr(self, name, layer)

        def call(self, x: Any, training: Any = None) -> Any:
            return steps[-1](self, self.dense(x), training)

    for layer in layers.values():
        layer(torch.ones(2, 4))
    model = Net()
    model(torch.ones(2, 3))
    steps.append(fn)
    return model


REFUSED = {
    "numpy": (lambda m, h, t: np.tanh(h), r"does not trace"),
    "torch": (lambda m, h, t: torch.tanh(h), r"does not trace"),
    "value branch": (lambda m, h, t: h if ops.sum(h) > 0 else -h, r"does not trace"),
    "custom layer": (lambda m, h, t: m.custom(h), r"module .*test_subclassed.* is not part of"),
    "lambda layer": (lambda m, h, t: m.twice(h), r"Lambda layers carry Python code"),
    "op outside the allowlist": (lambda m, h, t: ops.tile(h, (1, 2)), r"'Tile' is not an allow"),
    "training branch": (lambda m, h, t: ops.relu(h) if t else h, r"when training=True"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_does_not_trace_is_refused_on_the_client_and_nothing_is_sent(
    case: str, virtual: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fn, why = REFUSED[case]
    layers = {"custom": _Doubling(), "twice": keras.layers.Lambda(lambda t: t * 2)}
    model, sci = _model_calling(fn, **layers), virtual.scientist()
    sent = _spy(sci, monkeypatch)

    with pytest.raises(UnsupportedError, match=why) as info:
        sci.send(model)

    assert "built-in layers" in str(info.value) and "veil plan" in str(info.value)
    assert sent == []


# -- refused on the node: forged configs ------------------------------------------------------


def _forge(change: Any) -> KerasModelData:
    data = keras_to_wire(_subclassed())
    config = json.loads(data.config)
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "Concatenate":
            change(layer)
    return msgspec.structs.replace(data, config=json.dumps(config))


FORGED = {
    "an op that runs a callable": (
        lambda layer: layer.update(module="keras.src.ops.core", class_name="WhileLoop"),
        "'WhileLoop' is not an allowlisted Keras op",
    ),
    "an op sized by its config": (
        lambda layer: layer.update(class_name="Full", registered_name="Full"),
        "'Full' is not an allowlisted Keras op",
    ),
    "a layer named under an ops module": (
        lambda layer: layer.update(class_name="Dense", registered_name=None),
        "'Dense' is not an allowlisted Keras op",
    ),
    "an ops module not allowlisted": (
        lambda layer: layer.update(module="keras.src.ops.image", class_name="Resize"),
        "module 'keras.src.ops.image' is not one of the Keras modules",
    ),
    "the subclass itself": (
        lambda layer: layer.update(module=__name__, class_name="TextNet"),
        "is not part of Keras",
    ),
    "a foreign registered name": (
        lambda layer: layer.update(registered_name="Custom>Concatenate"),
        "registered name 'Custom>Concatenate' is not Keras's",
    ),
}


@pytest.mark.parametrize("case", sorted(FORGED))
def test_a_forged_config_is_refused_on_the_node(case: str, deployment: Any) -> None:
    change, why = FORGED[case]
    data = _forge(change)
    sci = deployment.scientist()

    with pytest.raises(OpNotAllowed, match=why):
        sci.call(SendObject(data))
