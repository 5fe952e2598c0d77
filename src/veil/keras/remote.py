"""``remote.fit(x, y)``: Keras's fit, evaluate and predict on a node, from pointers.

A Keras model sent to a node (``remote = worker.send(model)``, a
:class:`~veil.PointerModule`) trains there on pointers to data there, with the loss,
optimizer and metrics it was compiled with: one message per epoch, each running one epoch
of Keras's own ``fit`` on the node (:mod:`veil.keras.training`). The client shows
Keras's own progress bar per epoch and returns a ``keras.callbacks.History``.

The privacy rules are the node's: a model trained on private data (a dataset's) becomes
private, and so do the epoch's metrics, which are then never sent in the clear: each entry
of ``history.history`` is a :class:`~veil.PointerTensor` to a private scalar instead of a
float, to ``request`` from the data's owner as any private result
(``history.history["loss"][-1].request("to pick the learning rate")``).

Example:
    >>> import pytest; keras = pytest.importorskip("veil.keras").keras
    >>> import torch, veil
    >>> alice = veil.VirtualWorker("alice")
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", metrics=["mae"])
    >>> remote = alice.send(model)
    >>> x, y = torch.ones(8, 3).send(alice), torch.zeros(8, 1).send(alice)
    >>> history = remote.fit(x, y, epochs=2, batch_size=4, verbose=0)
    >>> sorted(history.history), len(history.history["loss"])
    (['loss', 'mae'], 2)
"""

from __future__ import annotations

import math
from typing import Any

from veil.errors import InvalidRequest, UnsupportedError, WorkerMismatch
from veil.keras.training import DEFAULT_BATCH_SIZE
from veil.node import capability
from veil.pointers import PointerModule, PointerTensor, classes
from veil.serde.keras_models import load_keras
from veil.serde.keras_training import KerasMetrics, KerasRun

__all__ = ["MAX_EPOCHS", "evaluate", "fit", "predict"]

#: The most epochs one ``fit`` call runs (each is one message; a node bounds each epoch).
MAX_EPOCHS = 100_000


def fit(model: PointerModule, x: PointerTensor, y: PointerTensor, batch_size: int | None = None,
        epochs: int = 1, verbose: int | str = "auto", *, validation_data: Any = None,
        shuffle: bool = True, validation_batch_size: int | None = None,
        **unsupported: Any) -> Any:  # fmt: skip
    """Train the Keras model behind ``model`` on its node, as ``keras.Model.fit`` would.

    Each epoch is one message: the node runs one epoch of Keras's ``fit`` with the model's
    compiled loss, optimizer and metrics, and answers the epoch's metrics: as numbers when
    no input was private, else as pointers to private scalars.

    Args:
        model: a Keras model on a node (``worker.send(keras_model)``), compiled before it
            was sent.
        x, y: pointers to the inputs and targets on the same node (a dataset's private
            data too).
        batch_size: samples per step (Keras's default, 32, when None).
        epochs: epochs to run, each one message.
        verbose: 0 silent, 1 a progress bar per epoch, 2 one line per epoch ("auto": 1),
            as in Keras.
        validation_data: ``(x_val, y_val)``, pointers on the same node: the ``val_``
            metrics at the end of each epoch.
        shuffle: shuffle the samples before each epoch (on the node).
        validation_batch_size: batch size of the validation (``batch_size`` when None).

    Returns:
        A ``keras.callbacks.History``: ``history.history`` maps each metric to one value per
        epoch, a float, or a private :class:`~veil.PointerTensor` when the data was private.

    Raises:
        UnsupportedError: a Keras option that does not run on a node (``callbacks``,
            ``validation_split``, ``sample_weight``...).
        InvalidRequest: a model sent without ``compile``, shapes it does not take, or an
            epoch over the node's step limit (the message says what batch size fits).
        WorkerMismatch: data on another node than the model.

    Example:
        >>> import pytest; keras = pytest.importorskip("veil.keras").keras
        >>> import torch, veil
        >>> alice = veil.VirtualWorker("alice")
        >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> m.compile(optimizer="sgd", loss="mse")
        >>> h = fit(alice.send(m), torch.ones(4, 2).send(alice), torch.ones(4, 1).send(alice),
        ...         epochs=3, verbose=0)
        >>> h.epoch, [type(v).__name__ for v in h.history["loss"]]
        ([0, 1, 2], ['float', 'float', 'float'])
    """
    _refuse(unsupported, "fit")
    keras = load_keras()
    if type(epochs) is not int or not 0 <= epochs <= MAX_EPOCHS:
        raise ValueError(f"epochs must be an int in [0, {MAX_EPOCHS}], got {epochs!r}")
    bs = _batch_size(batch_size)
    model_id, x_id, y_id = _ids(model, x, y)
    vx_id = vy_id = 0
    if validation_data is not None:
        if not (isinstance(validation_data, list | tuple) and len(validation_data) == 2):
            raise UnsupportedError(
                "validation_data must be (x_val, y_val), pointers on the model's node "
                "(sample weights do not run on a node)"
            )
        _, vx_id, vy_id = _ids(model, *validation_data)
    vbs = 0 if validation_batch_size is None else _batch_size(validation_batch_size)
    steps = math.ceil(x.shape[0] / bs)
    mode = _verbose(verbose)
    params = {"verbose": mode, "epochs": epochs, "steps": steps}
    history = keras.callbacks.History()
    history.set_params(params)
    history.on_train_begin()
    progbar = keras.callbacks.ProgbarLogger() if mode else None
    if progbar is not None:
        progbar.set_params(params)
        progbar.on_train_begin()
    run = KerasRun("fit", model_id, x_id, y_id, bs, bool(shuffle), vx_id, vy_id, vbs)
    for epoch in range(epochs):
        if progbar is not None:
            progbar.on_epoch_begin(epoch)
        logs = _call(model, run)
        if progbar is not None:
            progbar.on_epoch_end(epoch, _public(logs))
        history.epoch.append(epoch)
        for name, value in logs.items():
            history.history.setdefault(name, []).append(value)
    if progbar is not None:
        progbar.on_train_end()
    return history


def evaluate(model: PointerModule, x: PointerTensor, y: PointerTensor,
             batch_size: int | None = None, verbose: int | str = "auto", *,
             return_dict: bool = False, **unsupported: Any) -> Any:  # fmt: skip
    """Evaluate the Keras model behind ``model`` on its node, as ``keras.Model.evaluate``:
    one message; the loss and compiled metrics as numbers, or as private pointers when an
    input (the data, or the model itself) is private.

    Returns:
        The loss alone if the model has no other metric, else a list in the order of
        ``history.history``; a dict by name with ``return_dict=True`` (as Keras).

    Example:
        >>> import pytest; keras = pytest.importorskip("veil.keras").keras
        >>> import torch, veil
        >>> alice = veil.VirtualWorker("alice")
        >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False,
        ...                       kernel_initializer="zeros")])
        >>> m.compile(optimizer="sgd", loss="mse", metrics=["mae"])
        >>> evaluate(alice.send(m), torch.ones(4, 2).send(alice),
        ...          torch.full((4, 1), 2.0).send(alice), verbose=0, return_dict=True)
        {'loss': 4.0, 'mae': 2.0}
    """
    _refuse(unsupported, "evaluate")
    keras = load_keras()
    bs = _batch_size(batch_size)
    model_id, x_id, y_id = _ids(model, x, y)
    logs = _call(model, KerasRun("evaluate", model_id, x_id, y_id, bs))
    mode = _verbose(verbose)
    if mode:
        bar = keras.utils.Progbar(math.ceil(x.shape[0] / bs), verbose=mode, unit_name="step")
        bar.update(bar.target, list(_public(logs).items()), finalize=True)
    if return_dict:
        return logs
    values = list(logs.values())
    return values[0] if len(values) == 1 else values


def predict(model: PointerModule, x: PointerTensor, batch_size: int | None = None,
            **unsupported: Any) -> Any:  # fmt: skip
    """``keras.Model.predict`` on the node: a pointer to the outputs (a list of pointers
    for a model of several outputs), private when the data or the model is.

    Example:
        >>> import pytest; keras = pytest.importorskip("veil.keras").keras
        >>> import torch, veil
        >>> alice = veil.VirtualWorker("alice")
        >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
        >>> out = predict(alice.send(m), torch.ones(5, 2).send(alice))
        >>> out.shape, torch.allclose(out.get(), m(torch.ones(5, 2)))
        (torch.Size([5, 3]), True)
    """
    _refuse({k: v for k, v in unsupported.items() if k != "verbose"}, "predict")
    _ids(model, x, x)
    return model.location.run_op("keras.predict", model, x, batch_size=_batch_size(batch_size))


# ---------------------------------------------------------------------------- helpers
def _refuse(unsupported: dict[str, Any], what: str) -> None:
    if unsupported:
        raise UnsupportedError(
            f"{what}() on a node does not take {', '.join(sorted(unsupported))}: the node runs "
            "Keras's own loop with the model's compile config and no client code (no "
            "callbacks); pass validation data as pointers (validation_data=(x_val, y_val))"
        )


def _batch_size(batch_size: int | None) -> int:
    if batch_size is None:
        return DEFAULT_BATCH_SIZE
    if type(batch_size) is not int or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def _verbose(verbose: int | str) -> int:
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}")
    return int(verbose)


def _ids(model: Any, x: Any, y: Any) -> tuple[int, int, int]:
    if not isinstance(model, PointerModule) or model.id is None:
        raise InvalidRequest(
            "fit, evaluate and predict run on a Keras model on a node: send it with "
            "remote = worker.send(model) first"
        )
    for what, p in (("x", x), ("y", y)):
        if not isinstance(p, PointerTensor):
            raise InvalidRequest(
                f"{what} must be a pointer to data on {model.location.name!r} "
                f"(send it first: t.send(worker)), got {type(p).__name__}"
            )
        if p.location is not model.location:
            raise WorkerMismatch(
                f"the model is on {model.location.name!r} but {what} is on "
                f"{p.location.name!r}: send the data where the model is"
            )
    model.location.flush()  # pipelined ops that made x or y run first
    return model.id, x.id, y.id


def _call(model: PointerModule, run: KerasRun) -> dict[str, Any]:
    """One message; the metrics by name, as floats or as pointers to private scalars."""
    try:
        reply = capability.call(model.location, "keras", "run", run, KerasMetrics)
    except InvalidRequest as exc:
        if "capability 'keras'" not in str(exc):
            raise
        raise UnsupportedError(
            f"node {model.location.name!r} does not train Keras models: install the keras "
            "extra where it runs (pip install 'veil[keras]'); see docs/keras.md"
        ) from None
    if reply.pointers:
        if run.kind == "fit":
            model.private = True  # trained with private data (or it was private already)
        if len(reply.pointers) != len(reply.names):
            raise InvalidRequest("the node answered a pointer count unlike its metric names")
        return {n: PointerTensor(model.location, i) for n, i in zip(reply.names, reply.pointers)}
    if len(reply.values) != len(reply.names):
        raise InvalidRequest("the node answered a value count unlike its metric names")
    return dict(zip(reply.names, reply.values, strict=True))


def _public(logs: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in logs.items() if isinstance(v, float)}


classes.keras = {"fit": fit, "evaluate": evaluate, "predict": predict}
