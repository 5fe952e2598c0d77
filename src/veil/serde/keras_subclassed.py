"""Subclassed Keras models -> the equivalent functional model, traced on the client.

A subclassed Keras model (a ``keras.Model`` subclass with its own ``call``) is Python code,
and code never crosses the wire. But when ``call`` uses only Keras's built-in layers and
``keras.ops``, Keras itself can record it: calling ``call`` on symbolic ``keras.Input``
tensors runs it once, and every layer and op it reaches adds a node to a graph, which
``keras.Model(inputs, outputs)`` turns into a functional model over *the same layer
objects* (so the same weights). That functional model travels the way every Keras model
does (:mod:`veil.serde.keras_models`): Keras's JSON config, each class checked against
:data:`veil.ops.keras.KERAS_ALLOWLIST` and the ops against :data:`veil.ops.keras.KERAS_OPS`
by the receiver, plus the weights as tensors. The node never sees the subclass.

Why this route and not a veil plan of torch ops: the layers stay layers (an LSTM is one
allowlisted ``LSTM`` with its config, not hundreds of traced torch calls), the node needs
no new runner (it already builds and trains functional models), and what is checked on
the node is the same allowlist as for any Keras model. The trace is a trace: what ``call``
does in Python (a branch, a loop count, a shape it reads) is fixed by the inputs it was
traced on, as in a veil plan. So before anything is sent, the client checks:

* the trace ran: a ``torch`` or ``numpy`` function, a branch on a tensor's value, or a
  call with other required arguments fails on symbolic inputs and is refused with what is
  supported;
* the config names only allowlisted classes (a ``Lambda`` layer, a custom layer or a nested
  subclassed model inside ``call`` is refused, as on the functional path);
* ``call`` does not branch in Python on ``training``: traced with ``training=True`` it
  must record the same layers and ops as traced without it (else ``remote(x,
  training=True)`` would run another model than Keras runs locally);
* the functional model computes what ``model`` computes, on a small batch made here.

The inputs are taken from the shape the model was built with (call it once on a batch
first) with Keras's default ``float32`` dtype, as ``keras.Model.build`` does (an
``Embedding`` casts float indices back to integers); pass ``inputs=`` to
:func:`to_functional` to choose them. A model comes back from a node (``get()``) as the
functional model; :func:`assign_weights` puts its weights into the subclassed one.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import torch

from veil.errors import UnsupportedError
from veil.ops.keras import check_config

#: What the refusals say is supported.
SUPPORTED = (
    "a subclassed Keras model travels when its call() uses only Keras's built-in layers and "
    "the keras.ops in veil.ops.keras.KERAS_OPS (no torch or numpy functions, no Lambda or "
    "custom layers, no Python branch on a tensor's value); otherwise build it as a "
    "functional model (keras.Model(inputs, outputs)) or send the computation as a veil plan"
)


def is_subclassed(model: Any) -> bool:
    """Is ``model`` a Keras model of a class defined outside Keras (its own ``call``)?

    Example:
        >>> import pytest; keras = pytest.importorskip("veil.keras").keras
        >>> is_subclassed(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
        False
    """
    return type(model).__module__.split(".")[0] != "keras"


def to_functional(model: Any, inputs: Any = None) -> Any:
    """The functional Keras model that computes what subclassed ``model`` computes.

    Its layers are ``model``'s own layer objects, so it shares their weights; it names
    only Keras's built-in layers and ``keras.ops``, so it can travel. A Sequential or
    functional model is returned as it is.

    Args:
        model: a Keras model.
        inputs: what to trace ``call`` on: a ``keras.Input``, a batch of example tensors
            (only their shapes past the batch dimension and dtypes are used), a shape with
            its batch dimension (``float32``), or a list of these for a ``call`` that takes
            a list. By default, the shape ``model`` was built with, as ``float32``.

    Returns:
        A ``keras.Model`` built from ``inputs`` and ``model.call(inputs)``, named like
        ``model``.

    Raises:
        UnsupportedError: ``call`` does not trace to built-in layers and allowlisted ops,
            branches on ``training`` in Python, or computes something else than the trace;
            or ``model`` was never built and ``inputs`` is not given.

    Example:
        >>> import pytest; keras = pytest.importorskip("veil.keras").keras
        >>> class Residual(keras.Model):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.dense = keras.layers.Dense(3)
        ...     def call(self, x):
        ...         return x + keras.ops.tanh(self.dense(x))
        >>> model = Residual()
        >>> x = torch.ones(2, 3)
        >>> graph = to_functional(model, x)
        >>> [type(op).__name__ for op in graph.operations]
        ['InputLayer', 'Dense', 'Tanh', 'Add']
        >>> torch.allclose(graph(x), model(x))
        True
    """
    if not is_subclassed(model):
        return model
    keras = sys.modules["keras"]  # a Keras model exists, so Keras is loaded
    specs = _inputs(keras, model, inputs)
    graph = _trace(keras, model, specs, {})
    _check_config(keras, model, graph)
    if "training" in inspect.signature(model.call).parameters:
        again = _trace(keras, model, specs, {"training": True})
        if _structure(keras, graph) != _structure(keras, again):
            raise UnsupportedError(
                f"{type(model).__name__}.call() computes something else when training=True "
                "(a Python branch on `training`), which one trace cannot record; pass "
                "training on to the layers instead (self.dropout(x, training=training)). "
                + SUPPORTED
            )
    _check_same_outputs(keras, model, graph, specs)
    return graph


def assign_weights(model: Any, source: Any) -> None:
    """Put the weights of ``source`` (the functional model a node sent back for subclassed
    ``model``, e.g. ``remote.get()``) into ``model``, in place.

    Raises:
        ValueError: the weights do not fit (another architecture).

    Example:
        >>> import pytest; keras = pytest.importorskip("veil.keras").keras
        >>> class Net(keras.Model):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.dense = keras.layers.Dense(2)
        ...     def call(self, x):
        ...         return keras.ops.relu(self.dense(x))
        >>> a, b = Net(), Net()
        >>> x = torch.ones(1, 3)
        >>> _ = a(x), b(x)
        >>> assign_weights(b, to_functional(a))
        >>> torch.equal(a(x), b(x))
        True
    """
    keras = sys.modules["keras"]
    target = (
        _trace(keras, model, _inputs(keras, model, None), {}) if is_subclassed(model) else model
    )
    mine, theirs = list(target.weights), list(source.weights)
    shapes = [tuple(v.shape) for v in mine]
    if shapes != [tuple(v.shape) for v in theirs]:
        raise ValueError(
            f"{type(source).__name__} has {len(theirs)} weights that do not fit the "
            f"{len(mine)} of {type(model).__name__} ({shapes[:4]}...)"
        )
    with torch.no_grad():
        for var, src in zip(mine, theirs, strict=True):
            var.assign(src.value)


def _inputs(keras: Any, model: Any, inputs: Any) -> Any:
    if inputs is None:
        built = model.get_build_config() if model.built else None
        shape = (built or {}).get("input_shape")
        if shape is None:
            raise UnsupportedError(
                f"{type(model).__name__} has not been built with one input, so veil does not "
                "know what to trace its call() on: call it once on a batch, or pass "
                "inputs=keras.Input(shape, dtype=...) to veil.keras.to_functional"
            )
        inputs = shape
    if _is_shape(inputs):
        return keras.Input(tuple(inputs)[1:])
    if isinstance(inputs, torch.Tensor):
        return keras.Input(tuple(inputs.shape[1:]), dtype=str(inputs.dtype).split(".")[-1])
    if isinstance(inputs, keras.KerasTensor):
        return inputs
    if isinstance(inputs, (list, tuple)) and inputs:
        return [_inputs(keras, model, x) for x in inputs]
    raise UnsupportedError(
        f"cannot trace {type(model).__name__}.call() on {type(inputs).__name__}: pass a "
        "keras.Input, a batch of tensors, or a list of either"
    )


def _is_shape(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(d is None or isinstance(d, int) for d in value)


def _trace(keras: Any, model: Any, specs: Any, kwargs: dict[str, Any]) -> Any:
    try:
        outputs = model.call(specs, **kwargs)
        return keras.Model(specs, outputs, name=model.name)
    except Exception as exc:  # noqa: BLE001 - anything call() does may fail symbolically
        raise UnsupportedError(
            f"{type(model).__name__}.call() does not trace on symbolic Keras inputs "
            f"({type(exc).__name__}: {str(exc)[:300]}); " + SUPPORTED
        ) from None


def _check_config(keras: Any, model: Any, graph: Any) -> None:
    try:
        config = keras.saving.serialize_keras_object(graph)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types
        raise UnsupportedError(
            f"the trace of {type(model).__name__}.call() has no serializable config "
            f"({type(exc).__name__}: {str(exc)[:200]}); " + SUPPORTED
        ) from None
    problems = check_config(config)
    if problems:
        raise UnsupportedError(
            f"{type(model).__name__}.call() uses what a node would refuse: "
            + "; ".join(problems[:10]) + ". " + SUPPORTED
        )  # fmt: skip


def _structure(keras: Any, graph: Any) -> list[Any]:
    """The layers (by name: they are shared) and ops (by class and config) in graph order."""
    out: list[Any] = []
    for op in graph.operations:
        if isinstance(op, keras.layers.Layer):
            out.append(op.name)
        else:
            config = {k: v for k, v in op.get_config().items() if k != "name"}
            out.append((type(op).__name__, repr(config)))
    return out


def _check_same_outputs(keras: Any, model: Any, graph: Any, specs: Any) -> None:
    g = torch.Generator().manual_seed(0)
    batch = [_example(keras, s, g) for s in keras.tree.flatten(specs)]
    args = batch[0] if isinstance(specs, keras.KerasTensor) else batch
    try:
        with torch.no_grad():
            want, got = model(args), graph(args)
    except Exception as exc:  # noqa: BLE001 - the model's own failure, reported
        raise UnsupportedError(
            f"{type(model).__name__} and its trace do not run on a batch shaped like the "
            f"inputs ({type(exc).__name__}: {str(exc)[:300]}); " + SUPPORTED
        ) from None
    flat_want, flat_got = keras.tree.flatten(want), keras.tree.flatten(got)
    if len(flat_want) != len(flat_got) or not all(
        w.shape == o.shape and torch.allclose(w, o, rtol=1e-4, atol=1e-5)
        for w, o in zip(flat_want, flat_got, strict=False)
    ):
        raise UnsupportedError(
            f"the trace of {type(model).__name__}.call() computes something else than the "
            "model (Python values fixed while tracing?); " + SUPPORTED
        )


def _example(keras: Any, spec: Any, g: torch.Generator) -> torch.Tensor:
    """A batch of 2 like ``spec``: values in [0, 1) (integers: zeros, valid indices)."""
    shape = (2, *(1 if d is None else d for d in spec.shape[1:]))
    dtype = getattr(torch, keras.backend.standardize_dtype(spec.dtype))
    if dtype.is_floating_point:
        return torch.rand(shape, generator=g).to(dtype)
    return torch.zeros(shape, dtype=dtype)
