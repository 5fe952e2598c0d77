"""``remote.fit`` on pointers: parity with Keras's own fit run locally, privacy of what
training on private data reports, and what the node refuses (code in compile configs,
epochs over its limits, shapes it cannot take)."""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
import pytest
import torch

import veil
from veil.errors import (
    InvalidRequest,
    OpNotAllowed,
    PermissionDenied,
    UnsupportedError,
    WorkerMismatch,
)

#: Sets KERAS_BACKEND=torch before Keras loads; skips this module where Keras is missing.
vk = pytest.importorskip("veil.keras", reason="Keras is not installed: pip install 'veil[keras]'")
keras = vk.keras

from tests.keras import test_models as models  # noqa: E402  (its model builders)

from veil.keras import training  # noqa: E402
from veil.node import capability  # noqa: E402
from veil.serde.keras_models import keras_to_wire  # noqa: E402
from veil.serde.keras_training import KerasMetrics, KerasRun  # noqa: E402
from veil.serde.messages import SendObject  # noqa: E402


def _compile(model: Any, metrics: tuple[str, ...] = ("mae",)) -> Any:
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse", metrics=list(metrics)
    )
    return model


def _mlp() -> Any:
    return _compile(models._mlp())


def _cnn() -> Any:
    return _compile(models._cnn())


MODELS = {"mlp": (_mlp, (6,)), "cnn": (_cnn, (8, 8, 1))}


def _data(shape: tuple[int, ...], n: int = 12, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randn(n, 3, generator=g)


def _private(deployment: Any, x: torch.Tensor, y: torch.Tensor) -> tuple[Any, Any, Any]:
    """A scientist and pointers to a dataset's private x and y."""
    deployment.owner.datasets.create("x", private=x, mock=torch.zeros_like(x))
    deployment.owner.datasets.create("y", private=y, mock=torch.zeros_like(y))
    sci = deployment.scientist()
    return sci, sci.datasets["x"].private, sci.datasets["y"].private


# ------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("name", sorted(MODELS))
def test_remote_fit_gives_the_weights_and_history_of_local_fit(name: str, deployment: Any) -> None:
    build, shape = MODELS[name]
    local, sent, sci = build(), build(), deployment.scientist()
    x, y = _data(shape)
    xv, yv = _data(shape, n=5, seed=8)

    want = local.fit(x, y, epochs=3, batch_size=5, shuffle=False, verbose=0,
                     validation_data=(xv, yv))  # fmt: skip
    remote = sci.send(sent)
    got = remote.fit(x.send(sci), y.send(sci), epochs=3, batch_size=5, shuffle=False,
                     verbose=0, validation_data=(xv.send(sci), yv.send(sci)))  # fmt: skip
    trained = remote.get()

    assert isinstance(remote, veil.PointerModule) and not remote.private
    assert got.epoch == [0, 1, 2] and got.params["steps"] == 3
    assert list(got.history) == list(want.history) == ["loss", "mae", "val_loss", "val_mae"]
    for key, values in want.history.items():
        assert got.history[key] == pytest.approx(values, abs=1e-5), key
    for w_got, w_want in zip(trained.weights, local.weights, strict=True):
        assert torch.allclose(w_got.value, w_want.value, atol=1e-5), w_got.path
    assert not torch.allclose(local.weights[0].value, build().weights[0].value)  # it trained


def test_evaluate_and_predict_match_keras_locally(deployment: Any) -> None:
    model, sci = _mlp(), deployment.scientist()
    x, y = _data((6,))
    remote = sci.send(model)
    xp, yp = x.send(sci), y.send(sci)

    scores = remote.evaluate(xp, yp, batch_size=4, verbose=0)
    named = remote.evaluate(xp, yp, verbose=0, return_dict=True)
    out = remote.predict(xp, batch_size=5)

    assert scores == pytest.approx(model.evaluate(x, y, batch_size=4, verbose=0), abs=1e-6)
    assert list(named) == ["loss", "mae"]
    assert isinstance(out, veil.PointerTensor) and out.shape == (12, 3)
    assert torch.allclose(out.get(), model(x), atol=1e-6)


def test_fit_shows_keras_s_progress_bar_per_epoch(virtual: Any, capsys: Any) -> None:
    sci = virtual.scientist()
    x, y = _data((6,))

    sci.send(_mlp()).fit(x.send(sci), y.send(sci), epochs=2, batch_size=4)

    out = capsys.readouterr().out
    assert "Epoch 1/2" in out and "Epoch 2/2" in out and "3/3" in out
    assert re.search(r"loss: \d\.\d{4}", out) and "mae:" in out


def test_a_trained_model_is_stored_again_on_a_node_with_a_store(tmp_path: Any) -> None:
    from veil.node import Node
    from veil.node.store.sql import SQLStore

    url, password = f"sqlite:///{tmp_path / 'node.db'}", "owner-password-1"
    node = Node("n", store=SQLStore(url), owner_email="o@x.org", owner_password=password)
    owner = veil.VirtualWorker(node=node)
    x, y = _data((6,))
    remote = owner.send(_mlp())
    remote.fit(x.send(owner), y.send(owner), epochs=2, batch_size=4, verbose=0)
    trained = remote.get()
    node.close()

    back = veil.VirtualWorker(node=Node("n", store=SQLStore(url))).pointer(remote.id).get()

    assert torch.equal(back(x), trained(x))


# ----------------------------------------------------------------------------- privacy
def test_fit_on_private_data_returns_no_loss_in_the_clear_and_the_model_becomes_private(
    deployment: Any, capsys: Any
) -> None:
    sci, px, py = _private(deployment, *_data((6,)))
    remote = sci.send(_mlp())

    history = remote.fit(px, py, epochs=2, batch_size=4)
    raw = capability.call(
        sci, "keras", "run", KerasRun("fit", remote.id, px.id, py.id, 4), KerasMetrics
    )  # what the node sends back: names, and no values

    assert raw.names == ["loss", "mae"] and raw.values == []
    assert [p.private for p in raw.pointers] == [True, True]
    assert remote.private
    for values in history.history.values():
        assert len(values) == 2
        for v in values:
            assert isinstance(v, veil.PointerTensor) and v.private and v.shape == ()
            with pytest.raises(PermissionDenied):
                v.get()
    with pytest.raises(PermissionDenied):
        remote.get()
    with pytest.raises(PermissionDenied):
        remote.parameters()[0].get()
    assert "loss:" not in capsys.readouterr().out  # the progress bar shows no value


def test_the_owner_can_approve_the_loss_of_private_training(virtual: Any) -> None:
    sci, px, py = _private(virtual, *_data((6,)))
    remote = sci.send(_mlp())
    loss = remote.fit(px, py, batch_size=4, verbose=0).history["loss"][0]

    req = loss.request("to choose the learning rate")
    virtual.owner.requests.approve(req.id)

    assert 0 < float(loss.get()) < 100


def test_a_private_model_reports_private_metrics_on_public_data(virtual: Any) -> None:
    sci, px, py = _private(virtual, *_data((6,)))
    remote = sci.send(_mlp())
    remote.fit(px, py, batch_size=4, verbose=0)
    x, y = _data((6,), seed=3)

    scores = remote.evaluate(x.send(sci), y.send(sci), verbose=0)
    again = remote.fit(x.send(sci), y.send(sci), batch_size=4, verbose=0)
    out = remote.predict(x.send(sci))

    assert all(isinstance(s, veil.PointerTensor) and s.private for s in scores)
    assert all(isinstance(v, veil.PointerTensor) for v in again.history["loss"])
    assert out.private
    with pytest.raises(PermissionDenied):
        out.get()


def test_evaluate_on_private_data_leaves_the_model_public(virtual: Any) -> None:
    sci, px, py = _private(virtual, *_data((6,)))
    remote = sci.send(_mlp())

    loss = remote.evaluate(px, py, verbose=0, return_dict=True)["loss"]

    assert loss.private and not remote.private
    assert remote.get() is not None


def test_fit_looks_the_same_on_data_that_differs_only_in_values() -> None:
    """Noninterference (DESIGN.md rule 5): replies, shapes and failures of fit, evaluate and
    predict do not depend on the private values; labels out of range (a failure on private
    values) answer as a success does."""

    def run(labels: torch.Tensor) -> list[Any]:
        keras.backend.clear_session()
        owner = veil.VirtualWorker("n")
        g = torch.Generator().manual_seed(int(labels.sum()))
        owner.datasets.create("x", private=torch.randn(12, 6, generator=g) * labels.sum(),
                              mock=torch.zeros(12, 6))  # fmt: skip
        owner.datasets.create("y", private=labels, mock=torch.zeros_like(labels))
        owner.create_user("s@x.org", "password-12345")
        sci = owner.login("s@x.org", "password-12345")
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(True),
                      metrics=["accuracy"])  # fmt: skip
        remote = sci.send(model)
        px, py = sci.datasets["x"].private, sci.datasets["y"].private
        seen: list[Any] = []
        for attempt in (
            lambda: remote.fit(px, py, epochs=2, batch_size=5, verbose=0).history,
            lambda: remote.evaluate(px, py, verbose=0, return_dict=True),
            lambda: remote.predict(px),
            lambda: remote.fit(px, py[:5], verbose=0),
            remote.get,
        ):
            try:
                got = attempt()
            except Exception as exc:  # noqa: BLE001 - the failure itself is what is compared
                seen.append((type(exc).__name__, re.sub(r"\d{6,}", "<id>", str(exc))))
                continue
            seen.append(re.sub(r"id=\d+", "id=<id>", repr(got)))
        return seen

    good = run(torch.tensor([0, 1, 2, 3] * 3))
    assert run(torch.tensor([3, 2, 1, 0] * 3)) == good
    assert run(torch.tensor([0, 1, 2, 99] * 3)) == good  # class 99 of 4: fails on the node
    assert "private" in good[0] and good[3][0] == "InvalidRequest"


# ---------------------------------------------------------------------- what is refused
def test_a_compile_config_naming_a_custom_loss_is_refused_on_the_node(deployment: Any) -> None:
    data = keras_to_wire(_mlp())
    config = json.loads(data.config)
    config["compile_config"]["loss"] = {
        "module": "__main__", "class_name": "LeakyLoss", "config": {}, "registered_name": "LeakyLoss"
    }  # fmt: skip
    config["compile_config"]["optimizer"]["class_name"] = "MyOptimizer"
    forged = msgspec.structs.replace(data, config=json.dumps(config))

    with pytest.raises(OpNotAllowed) as refused:
        deployment.scientist().call(SendObject(forged))

    text = str(refused.value)
    assert "compile_config.loss: module '__main__' is not part of Keras" in text
    assert "compile_config.optimizer: 'MyOptimizer' is not an allowlisted Keras class" in text


def test_a_custom_loss_function_never_leaves_the_client(virtual: Any) -> None:
    def my_loss(y_true: Any, y_pred: Any) -> Any:
        return keras.ops.mean(keras.ops.abs(y_true - y_pred))

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    model.compile(optimizer="sgd", loss=my_loss)

    with pytest.raises(UnsupportedError, match="a node would refuse this Keras model"):
        virtual.scientist().send(model)


def test_an_epoch_over_the_node_s_step_limit_is_refused_with_the_batch_size_that_fits(
    deployment: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(training, "MAX_STEPS_PER_EPOCH", 5)
    sci = deployment.scientist()
    x, y = (t.send(sci) for t in _data((6,), n=40))
    remote = sci.send(_mlp())

    with pytest.raises(InvalidRequest, match=r"40 training samples in batches of 2 is 20 steps.*"
                                             r"limit of 5 steps.*batch_size >= 8"):  # fmt: skip
        remote.fit(x, y, batch_size=2, verbose=0)
    with pytest.raises(InvalidRequest, match="limit of 5 steps"):
        remote.evaluate(x, y, batch_size=1, verbose=0)
    with pytest.raises(InvalidRequest, match="limit of 5 steps"):
        remote.predict(x, batch_size=1)
    with pytest.raises(InvalidRequest, match="limit of 5 steps"):
        sci.run_op("keras.fit_epoch", remote, x, y, batch_size=1)
    assert remote.fit(x, y, batch_size=8, verbose=0).history["loss"][0] > 0


def test_epochs_and_batch_sizes_out_of_range_are_refused_before_anything_runs(
    virtual: Any,
) -> None:
    sci = virtual.scientist()
    x, y = (t.send(sci) for t in _data((6,)))
    remote = sci.send(_mlp())

    for epochs in (10**9, -1, 2.5):
        with pytest.raises(ValueError, match="epochs must be an int in"):
            remote.fit(x, y, epochs=epochs)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        remote.fit(x, y, batch_size=0)
    with pytest.raises(InvalidRequest, match="batch_size must be a positive int"):
        sci.run_op("keras.fit_epoch", remote, x, y, batch_size=-3)


def test_shapes_the_model_cannot_take_get_keras_s_message(deployment: Any) -> None:
    sci = deployment.scientist()
    remote = sci.send(_mlp())
    x, y = _data((6,))

    with pytest.raises(InvalidRequest, match=r"does not take x of shape \(12, 5\)"):
        remote.fit(x[:, :5].send(sci), y.send(sci), verbose=0)
    with pytest.raises(InvalidRequest, match="x has 12 samples and y has 4"):
        remote.fit(x.send(sci), y[:4].send(sci), verbose=0)


def test_a_model_sent_without_compile_is_refused_with_what_to_do(virtual: Any) -> None:
    sci = virtual.scientist()
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    x, y = (t.send(sci) for t in _data((6,)))

    with pytest.raises(
        InvalidRequest, match=r"sent without its compile config; call model\.compile"
    ):
        sci.send(model).fit(x, y, verbose=0)
    assert sci.send(model).predict(x).shape == (12, 3)  # predict needs no compile


def test_what_a_node_cannot_run_is_refused_on_the_client(virtual: Any) -> None:
    sci, other = virtual.scientist(), veil.VirtualWorker("other")
    x, y = (t.send(sci) for t in _data((6,)))
    remote = sci.send(_mlp())

    with pytest.raises(UnsupportedError, match="does not take callbacks"):
        remote.fit(x, y, callbacks=[keras.callbacks.History()])
    with pytest.raises(WorkerMismatch, match="send the data where the model is"):
        remote.fit(x, torch.zeros(12, 3).send(other))
    with pytest.raises(InvalidRequest, match="must be a pointer"):
        remote.fit(x, torch.zeros(12, 3))
    with pytest.raises(InvalidRequest, match="takes a Keras model"):
        sci.send(torch.nn.Linear(6, 3)).fit(x, y, verbose=0)


def test_a_node_loads_the_keras_capability_when_asked_or_says_how_to_get_it(
    virtual: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sci = virtual.scientist()
    x, y = (t.send(sci) for t in _data((6,)))
    remote = sci.send(_mlp())
    capability.uninstall("keras")  # as in a node process that never imported veil.keras
    try:
        remote.fit(x, y, verbose=0)  # loaded on demand (veil declares it so)
        assert capability.is_installed("keras")
        capability.uninstall("keras")
        monkeypatch.setitem(capability._on_demand, "keras", "veil.no_such_module")
        with pytest.raises(UnsupportedError, match=r"pip install 'veil\[keras\]'"):
            remote.fit(x, y, verbose=0)
    finally:
        training.install()
