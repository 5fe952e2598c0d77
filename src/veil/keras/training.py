"""Keras training on a node: the ``keras`` capability (Keras's own fit, one epoch a message).

A Keras model on a node trains with its *compile config*: the loss, optimizer and metrics
that came with the model (Keras's own serialized configs, checked against
:data:`veil.ops.keras.KERAS_ALLOWLIST` when the model arrived), never code. Three ops run
Keras's own loops on the node, through the node's privacy rules like any torch op:

* ``keras.fit_epoch(model, x, y, batch_size, shuffle, validation_x, validation_y,
  validation_batch_size)``: one epoch of ``model.fit``; it writes the model, so a model
  trained on private data (or already private) becomes private, as with
  :class:`~veil.RemoteOptimizer`. Returns the epoch's metrics as scalars.
* ``keras.evaluate(model, x, y, batch_size)``: ``model.evaluate``; returns its metrics.
* ``keras.predict(model, x, batch_size)``: ``model.predict``; returns the outputs.

Their results are stored like any result: private if any input was. The capability's
method ``run`` (:class:`~veil.serde.keras_training.KerasRun`, what ``remote.fit`` sends
each epoch) runs ``fit_epoch`` or ``evaluate`` and answers the metrics in the clear only
when none of them is private; otherwise it answers pointers to them, which the scientist
may ``request`` like any private result (:mod:`veil.keras.remote`).

What the scientist learns before an approval comes from public facts only: the metrics'
names follow from the compile config and the data's shapes (the node finds them with a
dry run of one batch of zeros, which also checks that the shapes fit the model, with
Keras's own message), and an epoch is refused, with what to do, when it would take more
than :data:`MAX_STEPS_PER_EPOCH` steps.

Example:
    >>> import pytest; keras = pytest.importorskip("veil.keras").keras
    >>> import torch, veil
    >>> alice = veil.VirtualWorker("alice")
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> model.compile(optimizer="sgd", loss="mse")
    >>> remote = alice.send(model)
    >>> x, y = torch.ones(8, 3).send(alice), torch.zeros(8, 1).send(alice)
    >>> [t.shape for t in alice.run_op("keras.fit_epoch", remote, x, y, batch_size=4)]
    [torch.Size([])]
"""

from __future__ import annotations

import inspect
import math
import weakref
from typing import Any

import numpy as np
import torch

from veil.errors import InvalidRequest
from veil.node import capability
from veil.node.capability import Capability, Method
from veil.ops import OpFacts, OpSpec
from veil.serde.keras_models import is_keras_model
from veil.serde.keras_training import KerasMetrics, KerasRun
from veil.serde.messages import ObjectInfo, Ref, Results, RunOp

__all__ = ["MAX_STEPS_PER_EPOCH", "install", "metric_names"]

#: The most batches one message may run (an epoch of ``fit``, an ``evaluate``, a
#: ``predict``); a longer one is refused with the batch size that would fit.
MAX_STEPS_PER_EPOCH = 10_000
DEFAULT_BATCH_SIZE = 32  # Keras's own default

#: Metric names by model and data description (public facts: a dry run finds them once).
_NAMES: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], list[str]]] = (
    weakref.WeakKeyDictionary()
)


def _model(model: Any, op: str) -> Any:
    if not is_keras_model(model):
        raise InvalidRequest(
            f"{op} takes a Keras model (a pointer from worker.send(keras_model)); got a "
            f"{type(model).__name__}"
        )
    if not getattr(model, "compiled", False):
        raise InvalidRequest(
            f"{op}: this Keras model was sent without its compile config; call "
            "model.compile(optimizer=..., loss=..., metrics=[...]) before sending it (the node "
            "trains with the compiled loss and optimizer, checked against its allowlist)"
        )
    return model


def _data(t: Any, what: str, op: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() < 1 or t.shape[0] < 1:
        got = f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise InvalidRequest(
            f"{op}: {what} must be a tensor with one sample per row (at least one); got {got}"
        )
    return t


def _steps(n: int, batch_size: Any, what: str, op: str) -> int:
    if type(batch_size) is not int or batch_size < 1:
        raise InvalidRequest(f"{op}: batch_size must be a positive int, got {batch_size!r}")
    steps = math.ceil(n / batch_size)
    if steps > MAX_STEPS_PER_EPOCH:
        fits = math.ceil(n / MAX_STEPS_PER_EPOCH)
        raise InvalidRequest(
            f"{op}: {n} {what} samples in batches of {batch_size} is {steps} steps, over this "
            f"node's limit of {MAX_STEPS_PER_EPOCH} steps per message; use batch_size >= {fits}"
        )
    return steps


def _pair(x: Any, y: Any, batch_size: Any, what: str, op: str) -> None:
    x, y = _data(x, f"{what} x", op), _data(y, f"{what} y", op)
    if x.shape[0] != y.shape[0]:
        raise InvalidRequest(
            f"{op}: {what} x has {x.shape[0]} samples and y has {y.shape[0]}; give both the "
            "same number of rows"
        )
    _steps(int(x.shape[0]), batch_size, what, op)


def _zeros(t: torch.Tensor) -> torch.Tensor:
    return torch.zeros((1, *t.shape[1:]), dtype=t.dtype)


def metric_names(model: Any, x: torch.Tensor, y: torch.Tensor, op: str = "keras") -> list[str]:
    """The names of the metrics ``model`` reports on data shaped like ``x`` and ``y``, in
    the order of its logs (``loss`` first), from public facts only: a dry run of
    ``test_on_batch`` on one row of zeros (cached), which also checks that the shapes fit.

    Raises:
        InvalidRequest: not a compiled Keras model, or data it does not take (Keras's own
            message, computed on zeros).

    Example:
        >>> import pytest; keras = pytest.importorskip("veil.keras").keras
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> m.compile(optimizer="sgd", loss="mse", metrics=["mae"])
        >>> metric_names(m, torch.ones(5, 3), torch.ones(5, 2))
        ['loss', 'mae']
    """
    model = _model(model, op)
    key = (tuple(x.shape[1:]), x.dtype, tuple(y.shape[1:]), y.dtype)
    known = _NAMES.setdefault(model, {})
    names = known.get(key)
    if names is None:
        try:
            with torch.no_grad():
                logs = model.test_on_batch(_zeros(x), _zeros(y), return_dict=True)
        except Exception as exc:  # noqa: BLE001 - Keras raises many types on bad shapes
            raise InvalidRequest(
                f"{op}: the model does not take x of shape {tuple(x.shape)} ({x.dtype}) with y "
                f"of shape {tuple(y.shape)} ({y.dtype}): {type(exc).__name__}: {str(exc)[:400]}"
            ) from None
        names = known[key] = [str(k) for k in logs]
    return list(names)


# ---------------------------------------------------------------------------------- ops
def fit_epoch(model: Any, x: torch.Tensor, y: torch.Tensor, batch_size: int = DEFAULT_BATCH_SIZE,
              shuffle: bool = False, validation_x: torch.Tensor | None = None,
              validation_y: torch.Tensor | None = None,
              validation_batch_size: int | None = None) -> list[torch.Tensor]:  # fmt: skip
    """One epoch of ``model.fit`` (Keras's own loop, its compiled loss and optimizer);
    the epoch's metrics as float32 scalars, in :func:`_fit_names` order."""
    names = _fit_names(model, x, y, batch_size, validation_x, validation_y, validation_batch_size)
    model.jit_compile = False  # a peer's compile config never makes this node compile code
    validation = None if validation_x is None else (validation_x, validation_y)
    history = model.fit(
        x, y, batch_size=batch_size, epochs=1, shuffle=bool(shuffle), verbose=0,
        validation_data=validation, validation_batch_size=validation_batch_size,
    )  # fmt: skip
    return [torch.tensor(float(history.history[n][-1])) for n in names]


def _fit_names(model: Any, x: Any, y: Any, batch_size: Any, validation_x: Any,
               validation_y: Any, validation_batch_size: Any) -> list[str]:  # fmt: skip
    op = "keras.fit_epoch"
    _pair(x, y, batch_size, "training", op)
    names = metric_names(model, x, y, op)
    if validation_x is None and validation_y is None:
        return names
    if validation_x is None or validation_y is None:
        raise InvalidRequest(f"{op}: give both validation_x and validation_y, or neither")
    vbs = batch_size if validation_batch_size is None else validation_batch_size
    _pair(validation_x, validation_y, vbs, "validation", op)
    if metric_names(model, validation_x, validation_y, op) != names:
        raise InvalidRequest(f"{op}: the validation data is shaped unlike the training data")
    return names + [f"val_{n}" for n in names]


def evaluate(model: Any, x: torch.Tensor, y: torch.Tensor,
             batch_size: int = DEFAULT_BATCH_SIZE) -> list[torch.Tensor]:  # fmt: skip
    """``model.evaluate``: the loss and compiled metrics as float32 scalars."""
    names = _evaluate_names(model, x, y, batch_size)
    model.jit_compile = False
    logs = model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
    return [torch.tensor(float(logs[n])) for n in names]


def _evaluate_names(model: Any, x: Any, y: Any, batch_size: Any) -> list[str]:
    _pair(x, y, batch_size, "evaluation", "keras.evaluate")
    return metric_names(model, x, y, "keras.evaluate")


def predict(model: Any, x: torch.Tensor, batch_size: int = DEFAULT_BATCH_SIZE) -> Any:
    """``model.predict``: the outputs as tensors (a list for a model of several outputs)."""
    _output_shapes(model, x, batch_size)
    model.jit_compile = False
    out = model.predict(x, batch_size=batch_size, verbose=0)
    if isinstance(out, list | tuple):
        return [torch.from_numpy(np.ascontiguousarray(o)) for o in out]
    return torch.from_numpy(np.ascontiguousarray(out))


def _output_shapes(model: Any, x: Any, batch_size: Any) -> Any:
    """Meta tensors of ``predict``'s results, from a forward pass on one row of zeros."""
    op = "keras.predict"
    if not is_keras_model(model):
        raise InvalidRequest(f"{op} takes a Keras model; got a {type(model).__name__}")
    x = _data(x, "x", op)
    _steps(int(x.shape[0]), batch_size, "prediction", op)
    try:
        with torch.no_grad():
            out = model(_zeros(x), training=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types on bad shapes
        raise InvalidRequest(
            f"{op}: the model does not take x of shape {tuple(x.shape)} ({x.dtype}): "
            f"{type(exc).__name__}: {str(exc)[:400]}"
        ) from None
    n = int(x.shape[0])

    def meta(t: torch.Tensor) -> torch.Tensor:
        return torch.empty((n, *t.shape[1:]), dtype=t.dtype, device="meta")

    return [meta(t) for t in out] if isinstance(out, list | tuple) else meta(out)


def _bind(fn: Any, args: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as exc:
        raise InvalidRequest(f"keras.{fn.__name__}: {exc}") from None
    bound.apply_defaults()
    return dict(bound.arguments)


def _scalars(names: list[str]) -> list[torch.Tensor]:
    return [torch.empty((), device="meta") for _ in names]


def _predict_fit(args: Any, kwargs: dict[str, Any]) -> list[torch.Tensor]:
    bound = _bind(fit_epoch, args, kwargs)
    del bound["shuffle"]  # no public fact
    return _scalars(_fit_names(**bound))


def _predict_evaluate(args: Any, kwargs: dict[str, Any]) -> list[torch.Tensor]:
    return _scalars(_evaluate_names(**_bind(evaluate, args, kwargs)))


def _predict_predict(args: Any, kwargs: dict[str, Any]) -> Any:
    return _output_shapes(**_bind(predict, args, kwargs))


#: The ops. ``fit_epoch`` writes its ``model`` argument, always (its write switch is that
#: argument itself): the node then checks the caller may write it and, on private data,
#: makes it private. Results are predicted from public facts (shapes, the compile config).
OPS = (
    OpSpec("keras.fit_epoch", fit_epoch, facts=OpFacts(
        writes=("model",), write_switch="model", pipeline="never", predict=_predict_fit)),
    OpSpec("keras.evaluate", evaluate, facts=OpFacts(
        pipeline="never", predict=_predict_evaluate)),
    OpSpec("keras.predict", predict, facts=OpFacts(pipeline="never", predict=_predict_predict)),
)  # fmt: skip


# ------------------------------------------------------------------------ the method
def _run(state: capability.CapabilityState, session: Any, req: KerasRun) -> KerasMetrics:
    """Run :class:`KerasRun` as one op through the node's rules; answer the metrics in the
    clear when none is private, else pointers to them."""
    node = state.node
    value = node.record  # raises ObjectNotFound for what the caller may not use
    model, x, y = (
        value(session, req.model).value,
        value(session, req.x).value,
        value(session, req.y).value,
    )
    kwargs: dict[str, Any] = {"batch_size": req.batch_size}
    if req.kind == "fit":
        vx = value(session, req.validation_x).value if req.validation_x else None
        vy = value(session, req.validation_y).value if req.validation_y else None
        vbs = req.validation_batch_size or None
        names = _fit_names(model, x, y, req.batch_size, vx, vy, vbs)
        kwargs["shuffle"] = req.shuffle
        if req.validation_x:
            kwargs.update(validation_x=Ref(req.validation_x), validation_y=Ref(req.validation_y))
            if vbs is not None:
                kwargs["validation_batch_size"] = vbs
        op = "keras.fit_epoch"
    else:
        if req.validation_x or req.validation_y or req.shuffle:
            raise InvalidRequest("keras.evaluate takes no validation data and does not shuffle")
        names = _evaluate_names(model, x, y, req.batch_size)
        op = "keras.evaluate"
    reply = node.run_op(session, RunOp(op, [Ref(req.model), Ref(req.x), Ref(req.y)], kwargs))
    if not isinstance(reply, Results) or not all(isinstance(i, ObjectInfo) for i in reply.items):
        raise InvalidRequest(f"{op} answered {type(reply).__name__}, not its metrics")
    infos: list[ObjectInfo] = [i for i in reply.items if isinstance(i, ObjectInfo)]
    if req.kind == "fit":
        node.wrote([node.record(session, req.model)])  # a node with a store keeps it
    if any(i.private for i in infos):
        return KerasMetrics(names, pointers=infos)
    values = []
    for info in infos:
        rec = node.record(session, info.id)
        node.check_readable(session, rec)
        values.append(float(rec.value))
    node.release(session, [i.id for i in infos])
    return KerasMetrics(names, values=values)


CAPABILITY = Capability("keras", ops=OPS, methods={"run": Method(KerasRun, _run)})


def install() -> None:
    """Add the ``keras`` capability to every node of this process (``import veil.keras``
    does it; a second call does nothing).

    Example:
        >>> import pytest; _ = pytest.importorskip("veil.keras")
        >>> from veil.node import capability
        >>> install(); capability.is_installed("keras")
        True
    """
    if not capability.is_installed("keras"):
        capability.install(CAPABILITY)
