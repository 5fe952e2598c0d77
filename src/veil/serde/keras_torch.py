"""Keras models as plain torch layers: a chain of Keras built-in layers rebuilt as an ``nn.Sequential``.

Private inference (MPC, CKKS) runs layer by layer on veil's own layer types, which know
``torch.nn`` layers: :func:`keras_to_torch` translates a Keras ``Sequential`` model, or a
functional one whose layers form a single chain, into the ``nn.Sequential`` computing the
same function, with copies of its weights laid out as torch lays them (a ``Dense`` kernel
is ``(in, out)``, a ``Linear`` weight ``(out, in)``; a ``channels_first`` ``Conv2D`` kernel
``(kh, kw, in, out)`` becomes ``(out, in, kh, kw)``).

Keras is never imported here: a Keras model exists only once ``keras`` is in
``sys.modules``.

Example:
    >>> import pytest; keras = pytest.importorskip("veil.keras").keras
    >>> import torch
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"),
    ...                           keras.layers.Dense(2)])
    >>> twin = keras_to_torch(model)
    >>> twin
    Sequential(
      (0): Linear(in_features=3, out_features=4, bias=True)
      (1): ReLU()
      (2): Linear(in_features=4, out_features=2, bias=True)
    )
    >>> x = torch.randn(5, 3)
    >>> torch.allclose(twin(x), model(x), atol=1e-6)
    True
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from veil.errors import UnsupportedError

__all__ = ["SUPPORTED_KERAS", "is_keras", "keras_to_torch", "torch_to_keras"]

#: What :func:`keras_to_torch` translates (Keras layer and activation names).
SUPPORTED_KERAS = (
    "InputLayer, Dense, Activation, ReLU (plain), Softmax (last axis), Flatten (channels_last), "
    "Dropout (identity in inference), Conv2D / MaxPooling2D / AveragePooling2D "
    "(channels_first, padding='valid'); activations linear, relu, sigmoid, tanh, softmax"
)

_ACTIVATIONS: dict[str, Any] = {
    "linear": None, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh,
    "softmax": lambda: nn.Softmax(-1),
}  # fmt: skip


def is_keras(obj: Any) -> bool:
    """Whether ``obj`` is a Keras layer or model (without importing Keras).

    Example:
        >>> is_keras(nn.Linear(2, 2))
        False
    """
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(obj, keras.Layer)


def _chain(model: Any) -> list[Any]:
    """The model's layers in order, if they form one chain (else UnsupportedError)."""
    keras = sys.modules["keras"]
    if isinstance(model, keras.Sequential):
        return list(model.layers)
    if not isinstance(model, keras.Model):
        return [model]  # one layer on its own
    from keras.src.models.functional import Functional

    if not isinstance(model, Functional):
        raise UnsupportedError(
            f"{model.name} ({type(model).__name__}) is a subclassed model: its call() is "
            "code; build it as a Sequential or functional model of built-in layers"
        )
    layers = list(model.layers)
    real = [lay for lay in layers if not isinstance(lay, keras.layers.InputLayer)]
    ok = len(model.inputs) == 1 and len(model.outputs) == 1 and bool(real)
    prev = model.inputs[0] if ok else None
    for lay in real if ok else []:
        if len(lay._inbound_nodes) != 1 or lay.input is not prev:
            ok = False
            break
        prev = lay.output
    if not ok or prev is not model.outputs[0]:
        raise UnsupportedError(
            f"{model.name}: only Sequential models, or functional models whose layers form "
            "one chain (one input, one output, each layer fed by the one before), translate "
            "to torch layers"
        )
    return layers


def _activation(fn: Any, where: str) -> list[nn.Module]:
    name = getattr(fn, "__name__", str(fn))
    if name not in _ACTIVATIONS:
        raise UnsupportedError(f"{where}: activation {name!r} (supported: {SUPPORTED_KERAS})")
    make = _ACTIVATIONS[name]
    return [] if make is None else [make()]


def _param(t: Any) -> nn.Parameter:
    return nn.Parameter(torch.as_tensor(t).detach().contiguous().clone(), requires_grad=False)


def _one(layer: Any) -> list[nn.Module]:
    keras = sys.modules["keras"]
    L = keras.layers  # noqa: N806
    where = f"{layer.name} ({type(layer).__name__})"
    kind = type(layer)
    if kind is L.InputLayer:
        return []
    if kind is L.Dense:
        if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
            raise UnsupportedError(f"{where}: LoRA or quantized Dense layers do not translate")
        kernel = layer.kernel.value
        lin = nn.Linear(kernel.shape[0], kernel.shape[1], bias=layer.use_bias)
        lin.weight = _param(kernel.t())
        if layer.use_bias:
            lin.bias = _param(layer.bias.value)
        return [lin, *_activation(layer.activation, where)]
    if kind is L.Activation:
        return _activation(layer.activation, where)
    if kind is L.ReLU:
        if layer.max_value is not None or layer.negative_slope or layer.threshold:
            raise UnsupportedError(f"{where}: ReLU with max_value, negative_slope or threshold")
        return [nn.ReLU()]
    if kind is L.Softmax:
        if layer.axis not in (-1,):
            raise UnsupportedError(f"{where}: Softmax over another axis than the last")
        return [nn.Softmax(-1)]
    if kind is L.Dropout:
        return [nn.Dropout(float(layer.rate))]
    if kind is L.Flatten:
        if layer.data_format != "channels_last":
            raise UnsupportedError(f"{where}: Flatten(data_format='channels_first') reorders")
        return [nn.Flatten()]
    if kind in (L.Conv2D, L.MaxPooling2D, L.AveragePooling2D):
        if layer.data_format != "channels_first" or layer.padding != "valid":
            raise UnsupportedError(
                f"{where}: only data_format='channels_first' and padding='valid' translate "
                "(torch's layout); build the model that way"
            )
        if kind is not L.Conv2D:
            cls = nn.MaxPool2d if kind is L.MaxPooling2D else nn.AvgPool2d
            return [cls(tuple(layer.pool_size), tuple(layer.strides))]
        if layer.groups != 1 or tuple(layer.dilation_rate) != (1, 1):
            raise UnsupportedError(f"{where}: Conv2D with groups or dilation does not translate")
        kernel = layer.kernel.value  # (kh, kw, in, out)
        conv = nn.Conv2d(kernel.shape[2], kernel.shape[3], tuple(kernel.shape[:2]),
                         stride=tuple(layer.strides), bias=layer.use_bias)  # fmt: skip
        conv.weight = _param(kernel.permute(3, 2, 0, 1))
        if layer.use_bias:
            conv.bias = _param(layer.bias.value)
        return [conv, *_activation(layer.activation, where)]
    raise UnsupportedError(f"{where} has no torch translation; supported: {SUPPORTED_KERAS}")


def keras_to_torch(model: Any) -> nn.Sequential:
    """The ``nn.Sequential`` computing what the Keras ``model`` computes in inference.

    Args:
        model: a Keras ``Sequential`` model, a functional model whose layers form one chain,
            or a single layer, of the layers in :data:`SUPPORTED_KERAS`.

    Returns:
        An ``nn.Sequential`` in eval mode holding copies of the weights (not tracking
        gradients): translate again after training the Keras model.

    Raises:
        UnsupportedError: naming every layer that does not translate, and what does.

    Example:
        >>> import pytest; keras = pytest.importorskip("veil.keras").keras
        >>> lstm = keras.Sequential([keras.Input((3, 2)), keras.layers.LSTM(2)])
        >>> keras_to_torch(lstm)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        veil.errors.UnsupportedError: cannot translate this Keras model to torch layers: lstm...
    """
    if not is_keras(model):
        raise TypeError(f"expected a Keras model, got {type(model).__name__}")
    out: list[nn.Module] = []
    problems = []
    for layer in _chain(model):
        try:
            out += _one(layer)
        except UnsupportedError as exc:
            problems.append(str(exc))
    if problems:
        raise UnsupportedError(
            "cannot translate this Keras model to torch layers: " + "; ".join(problems)
        )
    return nn.Sequential(*out).eval()


def torch_to_keras(twin: nn.Module, model: Any) -> Any:
    """Write the weights of ``twin`` (made by :func:`keras_to_torch` from ``model``, then
    trained) back into the Keras ``model``, in Keras's layouts; returns ``model``.

    Example:
        >>> import pytest; keras = pytest.importorskip("veil.keras").keras
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> twin = keras_to_torch(model)
        >>> with torch.no_grad():
        ...     _ = twin[0].weight.fill_(0.5)
        >>> x = torch.ones(1, 3)
        >>> torch.allclose(torch_to_keras(twin, model)(x), twin(x))
        True
    """
    keras = sys.modules["keras"]
    L = keras.layers  # noqa: N806
    layers = [lay for lay in _chain(model) if type(lay) in (L.Dense, L.Conv2D)]
    mods = [m for m in twin.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    if len(layers) != len(mods):
        raise ValueError("these torch layers were not made from this Keras model")
    for layer, mod in zip(layers, mods, strict=True):
        w = mod.weight.detach()
        layer.kernel.assign(w.t() if isinstance(mod, nn.Linear) else w.permute(2, 3, 1, 0))
        if layer.use_bias and mod.bias is not None:
            layer.bias.assign(mod.bias.detach())
    return model
