"""Per-example gradients of Keras 3 layers (torch backend) for DP-SGD.

A Keras model on the torch backend is a ``torch.nn.Module``, but its layers hold their
weights in Keras variables (each wrapping a torch ``Parameter``) and read them through
``variable.value``: ``torch.func.functional_call`` cannot swap them, and the modules that
own the Parameters (``ParameterDict``\\ s) are never called. So
:class:`~veil.dp.sgd.GradSampleModule` records the Keras layers themselves (torch forward
hooks do fire on them: ``Layer.__call__`` goes through ``nn.Module.__call__``) and replays a
layer for each example under Keras's own ``StatelessScope``, which maps each variable to a
tensor: ``vmap(grad(⟨layer(x_i), g_i⟩))`` over the batch, or, for convolutions in
``channels_last`` (their torch kernels ask for a memory format ``vmap`` cannot give), a
loop over the examples.

Only the layers in :data:`SUPPORTED` are trained; every other Keras layer with trainable
weights is listed by :func:`keras_problems` (``veil.dp.validate``), so nothing trains
silently without its per-example gradients. Keras is never imported here: a Keras model
can exist only once ``keras`` is in ``sys.modules``.

Example:
    >>> import pytest; keras = pytest.importorskip("veil.keras").keras
    >>> import torch
    >>> from veil.dp.sgd import GradSampleModule
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> private = GradSampleModule(model)
    >>> (private(torch.randn(4, 3)) ** 2).sum().backward()
    >>> norms, sums = private.clip_and_sum(max_grad_norm=1.0)
    >>> norms.shape, len(sums)
    (torch.Size([4]), 2)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from veil.serde.keras_torch import is_keras

__all__ = [
    "SUPPORTED",
    "is_keras",
    "keras_problems",
    "keras_replay",
    "keras_units",
    "no_param_grads",
]

#: Keras layers DP-SGD computes per-example gradients for (by class name, keras.layers).
SUPPORTED = (
    "Conv1D", "Conv2D", "Conv3D", "Dense", "EinsumDense", "Embedding",
    "GroupNormalization", "LayerNormalization", "PReLU",
)  # fmt: skip


def _keras() -> Any:
    return sys.modules.get("keras")


def _layers(model: Any) -> list[Any]:
    return list(model._flatten_layers(include_self=True, recursive=True))


def _own_trainable(layer: Any) -> list[Any]:
    """The trainable variables ``layer`` holds itself (not those of its sublayers)."""
    inner = {id(v) for sub in layer._flatten_layers(include_self=False, recursive=True)
             for v in sub.trainable_variables}  # fmt: skip
    return [v for v in layer.trainable_variables if id(v) not in inner]


def keras_problems(model: Any) -> list[str]:
    """Every layer of a Keras model DP-SGD cannot train, with what to do instead."""
    keras = _keras()
    problems = []
    for layer in _layers(model):
        name, cls = layer.name, type(layer).__name__
        if isinstance(layer, keras.layers.BatchNormalization):
            problems.append(
                f"{name} (BatchNormalization) mixes examples in a batch, so per-example "
                "gradients do not exist: use keras.layers.GroupNormalization or "
                "LayerNormalization"
            )
        elif _own_trainable(layer) and cls not in SUPPORTED:
            problems.append(
                f"{name} ({cls}): DP-SGD has no per-example gradients for this Keras layer "
                f"yet; supported Keras layers with weights: {', '.join(SUPPORTED)} (freeze it "
                "with layer.trainable = False, or build the model from those)"
            )
    return problems


def keras_units(model: Any) -> list[nn.Module]:
    """The Keras layers whose calls GradSampleModule records (those holding trainable weights)."""
    return [layer for layer in _layers(model) if _own_trainable(layer)]


@contextlib.contextmanager
def no_param_grads(model: nn.Module) -> Iterator[None]:
    """Run a forward with the model's Parameters out of autograd (DP-SGD takes every weight
    gradient from the recorded activations and backprops; restored afterwards)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _needs_loop(layer: Any) -> bool:
    # Keras asks torch for channels_last memory (Tensor.contiguous) in 2-d and 3-d
    # convolutions, which torch.func.vmap does not support
    return getattr(layer, "data_format", None) == "channels_last" and getattr(layer, "rank", 1) >= 2


def keras_replay(layer: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                      Callable[..., Any], bool]:  # fmt: skip
    """What :func:`veil.dp.sgd.grad_sample._functorch` needs to replay a Keras layer: the
    detached values of its variables by name, the Parameters by the same names, a function
    ``(values, args, kwargs) -> outputs`` calling the layer with those values, and whether
    to loop over the examples instead of ``vmap``."""
    from keras.src.backend.common.stateless_scope import StatelessScope

    variables = _own_trainable(layer)
    named = {str(i): v.value for i, v in enumerate(variables)}
    params = {k: p.detach() for k, p in named.items()}

    def call(values: dict[str, torch.Tensor], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        mapping = [(v, values[str(i)]) for i, v in enumerate(variables)]
        with StatelessScope(state_mapping=mapping):
            return layer(*args, **kwargs)

    return params, named, call, _needs_loop(layer)
