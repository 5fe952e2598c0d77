"""Encrypted inference of a small model on CKKS: dense layers and polynomial activations.

:func:`predict` runs a torch ``nn.Sequential`` (or a Keras model of built-in layers,
translated by :func:`veil.serde.keras_torch.keras_to_torch`) on a :class:`CKKSTensor`:
each ``Linear`` is one plaintext ``x @ Wᵀ + b`` (one level), each sigmoid a polynomial
approximation (:func:`veil.he.ckks.sigmoid`, two levels at degree 3), so whoever holds the
model computes on inputs it cannot read, and only the key owner decrypts the scores.
CKKS evaluates only additions and multiplications: ReLU, tanh and softmax have no place
here (apply softmax after decrypting).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from veil.he import ckks
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(3, 2))
    >>> x = torch.randn(2, 3)
    >>> out = predict(model, ckks.encrypt(x, ckks.context())).decrypt()
    >>> bool(torch.allclose(out.float(), model(x), atol=1e-3))
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from veil.errors import UnsupportedError
from veil.he.ckks import CKKSTensor, sigmoid
from veil.serde.keras_torch import is_keras, keras_to_torch

__all__ = ["levels_needed", "predict"]

_SUPPORTED = "Linear, Sigmoid (polynomial approximation), Dropout, Identity"


def _layers(model: Any) -> list[nn.Module]:
    if is_keras(model):
        model = keras_to_torch(model)
    layers = list(model) if isinstance(model, nn.Sequential) else [model]
    problems = [
        f"{i} ({type(m).__name__})"
        for i, m in enumerate(layers)
        if not isinstance(m, nn.Linear | nn.Sigmoid | nn.Dropout | nn.Identity)
    ]
    if problems:
        raise UnsupportedError(
            f"CKKS evaluates additions and multiplications only; these layers have no "
            f"encrypted form: {', '.join(problems)}. Supported: {_SUPPORTED} (use sigmoid or "
            "linear activations; apply softmax to the decrypted scores)"
        )
    return layers


def levels_needed(model: Any, sigmoid_degree: int = 3) -> int:
    """Multiplicative depth :func:`predict` uses: one per Linear, ``degree.bit_length()``
    per sigmoid (2 at degree 3; build the context with ``ckks.context(depth=...)`` at least this deep).

    Example:
        >>> levels_needed(nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 1)))
        4
    """
    per_sigmoid = sigmoid_degree.bit_length()
    return sum(
        1 if isinstance(m, nn.Linear) else per_sigmoid if isinstance(m, nn.Sigmoid) else 0
        for m in _layers(model)
    )


def predict(model: Any, x: CKKSTensor, *, sigmoid_degree: int = 3,
            interval: tuple[float, float] = (-8.0, 8.0)) -> CKKSTensor:  # fmt: skip
    """The model's output on an encrypted batch ``x`` (rows are examples), encrypted.

    Args:
        model: an ``nn.Sequential`` of Linear / Sigmoid / Dropout / Identity layers, or a
            Keras model whose layers translate to those (``Dense`` with a ``linear`` or
            ``sigmoid`` activation).
        x: a :class:`CKKSTensor` of shape ``(batch, features)``, or ``(features,)``.
        sigmoid_degree / interval: the sigmoid's polynomial approximation (accurate only
            for pre-activations inside ``interval``; see :func:`veil.he.ckks.sigmoid`).

    Raises:
        UnsupportedError: a layer with no encrypted form (ReLU, tanh, softmax...).
        DepthExceeded: the context has fewer levels than :func:`levels_needed`.
    """
    layers = _layers(model)
    out: Any = x
    for m in layers:
        if isinstance(m, nn.Linear):
            with torch.no_grad():
                out = out @ m.weight.detach().t().double()
                if m.bias is not None:
                    out = out + m.bias.detach().double()
        elif isinstance(m, nn.Sigmoid):
            out = sigmoid(out, sigmoid_degree, interval)
    return out  # type: ignore[no-any-return]
