"""Keras models on nodes: forward and training parity with Keras run locally, privacy of
a model trained on private data, and what never travels (subclassed models)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

import veil
from veil.errors import PermissionDenied, UnsupportedError

#: Sets KERAS_BACKEND=torch before Keras loads; skips this module where Keras is missing.
keras = pytest.importorskip(
    "veil.keras", reason="Keras is not installed: pip install 'veil[keras]'"
).keras


def _mlp() -> Any:
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dense(3),
        ]
    )


def _cnn() -> Any:
    keras.utils.set_random_seed(2)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    skip = keras.layers.Flatten()(x)
    x = keras.layers.Dense(6, activation="relu")(skip)
    x = keras.layers.Concatenate()([x, keras.layers.Dense(2)(skip)])
    return keras.Model(inputs, keras.layers.Dense(3)(x))


MODELS = {"mlp": (_mlp, (6,)), "cnn": (_cnn, (8, 8, 1))}


def _batches(shape: tuple[int, ...], n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    return [(torch.randn(5, *shape, generator=g), torch.randn(5, 3, generator=g)) for _ in range(n)]


def _train_local(model: Any, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x, y in batches:
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_remote_forward_equals_local_forward(name: str, deployment: Any) -> None:
    build, shape = MODELS[name]
    model, sci = build(), deployment.scientist()
    x = torch.randn(4, *shape)

    remote = model.send(sci)
    out = remote(x.send(sci)).get()

    assert isinstance(remote, veil.PointerModule)
    assert torch.allclose(out, model(x), atol=1e-6)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_remote_training_gives_the_weights_of_local_training(name: str, deployment: Any) -> None:
    build, shape = MODELS[name]
    local, sent, sci = build(), build(), deployment.scientist()
    batches = _batches(shape)

    _train_local(local, batches)
    remote = sent.send(sci)
    opt = veil.RemoteOptimizer(torch.optim.SGD, remote.parameters(), lr=0.05, momentum=0.9)
    for x, y in batches:
        loss = torch.nn.functional.mse_loss(remote(x.send(sci)), y.send(sci))
        loss.backward()
        opt.step()
        opt.zero_grad()
    trained = remote.get()

    assert type(trained) is type(local)
    assert [layer.name for layer in trained.layers] == [layer.name for layer in sent.layers]
    for got, want in zip(trained.weights, local.weights, strict=True):
        assert torch.allclose(got.value, want.value, atol=1e-5), got.path
    assert not torch.allclose(local.weights[0].value, build().weights[0].value)  # it trained


def test_a_keras_model_trained_on_private_data_is_private(deployment: Any) -> None:
    deployment.owner.datasets.create(
        "d", private=torch.randn(10, 6), mock=torch.zeros(10, 6), description="features"
    )
    sci = deployment.scientist()
    priv = sci.datasets["d"].private
    remote = _mlp().send(sci)
    opt = veil.RemoteOptimizer(torch.optim.SGD, remote.parameters(), lr=0.1)
    assert remote.get() is not None  # its own model, before it saw private data

    remote(priv).pow(2).mean().backward()
    opt.step()

    with pytest.raises(PermissionDenied):
        remote.get()
    with pytest.raises(PermissionDenied):
        remote.parameters()[0].get()


def test_the_model_comes_back_as_the_same_keras_model(virtual: Any) -> None:
    model = _cnn()
    back = model.send(virtual.owner).get()
    x = torch.randn(2, 8, 8, 1)

    assert back.to_json() == model.to_json()
    assert torch.equal(back(x), model(x))


def test_subclassed_models_and_custom_layers_are_refused_with_what_to_do(virtual: Any) -> None:
    class Tiny(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x: Any) -> Any:
            return torch.tanh(self.dense(x))  # a torch function: does not trace

    model = Tiny()
    model(torch.ones(1, 3))

    with pytest.raises(UnsupportedError, match="functional model.*veil plan"):
        model.send(virtual.owner)

    class Doubling(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            return x * 2

    with pytest.raises(UnsupportedError, match=r"layers\[1\]: module .* is not part of Keras"):
        keras.Sequential([keras.Input((3,)), Doubling()]).send(virtual.owner)
    with pytest.raises(UnsupportedError, match="default mode"):
        _mlp().send(virtual.owner, mode="params")


def test_a_trained_keras_model_survives_a_node_restart(tmp_path: Any) -> None:
    from veil.node import Node
    from veil.node.store.sql import SQLStore

    url, password = f"sqlite:///{tmp_path / 'node.db'}", "owner-password-1"
    node = Node("n", store=SQLStore(url), owner_email="o@x.org", owner_password=password)
    owner = veil.VirtualWorker(node=node)
    model, x = _cnn(), torch.randn(2, 8, 8, 1)
    remote = model.send(owner)
    opt = veil.RemoteOptimizer(torch.optim.SGD, remote.parameters(), lr=0.1)
    remote(x.send(owner)).pow(2).mean().backward()
    opt.step()
    trained = remote.get()
    node.close()

    again = veil.VirtualWorker(node=Node("n", store=SQLStore(url)))
    back = again.pointer(remote.id).get()

    assert back.to_json() == model.to_json()
    assert torch.equal(back(x), trained(x))


def test_a_keras_program_looks_the_same_on_data_that_differs_only_in_values() -> None:
    """Noninterference (DESIGN.md rule 5): what the scientist sees does not depend on the
    private values (replies, shapes, which calls fail) until an approved get."""

    def run(private: torch.Tensor) -> list[Any]:
        keras.backend.clear_session()  # the same layer names in both runs
        owner = veil.VirtualWorker("n")
        owner.datasets.create("d", private=private, mock=torch.zeros_like(private))
        owner.create_user("s@x.org", "password-12345")
        sci = owner.login("s@x.org", "password-12345")
        priv = sci.datasets["d"].private
        remote = _mlp().send(sci)
        opt = veil.RemoteOptimizer(torch.optim.SGD, remote.parameters(), lr=0.1)
        seen: list[Any] = []
        out = remote(priv)
        seen.append((tuple(out.shape), out.dtype, out.private))
        out.pow(2).mean().backward()
        opt.step()
        for attempt in (remote.get, out.get, lambda: remote(priv[:, :5])):
            try:
                seen.append(attempt())
            except Exception as exc:  # noqa: BLE001 - the failure itself is what is compared
                seen.append((type(exc).__name__, re.sub(r"\d{6,}", "<id>", str(exc))))
        return seen

    a = run(torch.randn(10, 6, generator=torch.Generator().manual_seed(0)))
    b = run(torch.randn(10, 6, generator=torch.Generator().manual_seed(1)) * 100)

    assert a == b
    assert a[1][0] == a[2][0] == "PermissionDenied"
