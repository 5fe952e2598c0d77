"""Keras 3 models <-> :class:`KerasModelData`: Keras's own config, checked, plus tensors.

A Keras 3 model on the torch backend is a ``torch.nn.Module`` whose variables are torch
tensors. It travels as the JSON config Keras itself writes
(``keras.saving.serialize_keras_object``) and its variables as veil tensors, never as
pickle or HDF5. The receiver checks every class the config names against
:data:`veil.ops.keras.KERAS_ALLOWLIST` *before* Keras sees it, then builds it with
``safe_mode=True``. Keras is imported only when a Keras model is sent or arrives, with its
backend set to torch (:func:`load_keras`).
"""

from __future__ import annotations

import copy
import json
import os
import sys
from types import ModuleType
from typing import Any

import torch

from veil.errors import InvalidRequest, OpNotAllowed, UnsupportedError
from veil.ops.keras import check_config
from veil.serde.keras_subclassed import to_functional
from veil.serde.messages import KerasModelData
from veil.serde.tensors import tensor_from_data, tensor_to_data

#: Configs longer than this are refused before they are parsed.
MAX_CONFIG_CHARS = 4 * 1024 * 1024
INSTALL_HINT = "install with: pip install 'veil[keras]'"


def load_keras() -> ModuleType:
    """Import Keras on its torch backend (setting ``KERAS_BACKEND=torch`` before it loads).

    Raises:
        ModuleNotFoundError: Keras is not installed.
        ImportError: Keras was imported already with another backend, or
            ``KERAS_BACKEND`` names another one.

    Example:
        >>> import pytest; _ = pytest.importorskip("veil.keras")
        >>> load_keras().backend.backend()
        'torch'
    """
    loaded = sys.modules.get("keras")
    if loaded is None:
        chosen = os.environ.get("KERAS_BACKEND", "torch")
        if chosen != "torch":
            raise ImportError(
                f"KERAS_BACKEND is {chosen!r}, but veil runs Keras on its torch backend: unset "
                "KERAS_BACKEND or set it to 'torch' before importing veil.keras"
            )
        os.environ["KERAS_BACKEND"] = "torch"
        try:
            import keras
        except ImportError as exc:  # a ModuleNotFoundError, as for any missing package
            raise ModuleNotFoundError(
                f"veil.keras needs Keras 3; {INSTALL_HINT}", name="keras"
            ) from exc
        loaded = keras
    backend = loaded.backend.backend()
    if backend != "torch":
        raise ImportError(
            f"Keras was imported with the {backend!r} backend before veil.keras; veil needs the "
            "torch backend: import veil.keras first, or set KERAS_BACKEND=torch"
        )
    return loaded


def is_keras_model(obj: Any) -> bool:
    """Is ``obj`` a Keras model? (Never imports Keras: a Keras object means it is loaded.)

    Example:
        >>> is_keras_model(torch.nn.Linear(2, 2))
        False
    """
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(obj, keras.Model)


def keras_to_wire(model: Any) -> KerasModelData:
    """Describe a Keras model (Sequential or functional) as config plus tensors; a subclassed
    one as the functional model its ``call`` traces to (:func:`to_functional`).

    Raises:
        UnsupportedError: a subclassed model whose ``call`` does not trace to built-in
            layers and allowlisted ops (its code never travels), or a config naming classes
            a node would refuse (custom layers, ``Lambda``).

    Example:
        >>> import pytest; keras = pytest.importorskip("veil.keras").keras
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="out")])
        >>> [(p.split("/")[-2:], t.shape) for p, t in zip(keras_to_wire(m).paths,
        ...                                                keras_to_wire(m).weights)]
        [(['out', 'kernel'], [3, 2]), (['out', 'bias'], [2])]
    """
    keras = load_keras()
    model = to_functional(model)  # a subclassed model: its trace (veil.serde.keras_subclassed)
    try:
        config = keras.saving.serialize_keras_object(model)
        text = json.dumps(config)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types (OSError for a lambda)
        raise UnsupportedError(
            f"this Keras model has no serializable config ({type(exc).__name__}: "
            f"{str(exc)[:200]}); only Keras's built-in layers travel"
        ) from None
    problems = check_config(config)
    if problems:
        raise UnsupportedError(
            "a node would refuse this Keras model: " + "; ".join(problems[:10])
            + " (only Keras's built-in layers travel; see veil.ops.keras.KERAS_ALLOWLIST)"
        )  # fmt: skip
    weights = [
        tensor_to_data(v.value.detach().requires_grad_(bool(v.trainable))) for v in model.weights
    ]
    return KerasModelData(text, [str(v.path) for v in model.weights], weights)


def keras_from_wire(data: KerasModelData) -> Any:
    """Build the Keras model ``data`` describes, after checking its config, and load its
    weights (strictly: the same number, shapes and dtypes as the model declares).

    Raises:
        OpNotAllowed: the config names a class outside the allowlist, a ``Lambda`` layer,
            or a module outside Keras.
        InvalidRequest: a malformed config, or weights that do not fit it.
        UnsupportedError: Keras is not installed here.

    Example:
        >>> import pytest; keras = pytest.importorskip("veil.keras").keras
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> m2 = keras_from_wire(keras_to_wire(m))
        >>> x = torch.ones(1, 3)
        >>> type(m2).__name__, torch.equal(m2(x), m(x))
        ('Sequential', True)
    """
    if len(data.config) > MAX_CONFIG_CHARS:
        raise InvalidRequest(f"Keras config longer than {MAX_CONFIG_CHARS} characters")
    try:
        config = json.loads(data.config)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"Keras config is not valid JSON: {str(exc)[:200]}") from None
    problems = check_config(config)
    if problems:
        raise OpNotAllowed("Keras config refused: " + "; ".join(problems[:10]))
    if not isinstance(config, dict) or config.get("class_name") not in (
        "Sequential",
        "Functional",
    ):
        raise InvalidRequest("a Keras model config must describe a Sequential or functional model")
    try:
        keras = load_keras()
    except ImportError as exc:
        raise UnsupportedError(f"this node cannot hold Keras models: {exc}") from None
    tensors = [tensor_from_data(t, copy=True) for t in data.weights]
    # Built first on the meta device (no memory): its weights must be the ones sent, so a
    # config cannot make this node allocate more than the message brought.
    _match(_build(keras, config, "meta"), tensors, len(data.paths))
    model = _build(keras, config, "cpu")
    with torch.no_grad():
        for var, t in zip(model.weights, tensors, strict=True):
            var.assign(t)
    return model


def _build(keras: ModuleType, config: dict[str, Any], device: str) -> Any:
    try:
        with keras.device(device):
            # a copy: Keras consumes the config it builds from
            return keras.saving.deserialize_keras_object(copy.deepcopy(config), safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types on a bad config
        raise InvalidRequest(f"cannot build the Keras model: {str(exc)[:300]}") from None


def _match(model: Any, tensors: list[torch.Tensor], n_paths: int) -> None:
    variables = list(model.weights)
    if len(variables) != len(tensors) or n_paths not in (0, len(tensors)):
        raise InvalidRequest(
            f"the Keras model has {len(variables)} weights; {len(tensors)} were sent"
        )
    for i, (var, t) in enumerate(zip(variables, tensors, strict=True)):
        if tuple(var.shape) != tuple(t.shape) or var.value.dtype != t.dtype:
            raise InvalidRequest(
                f"weight {i} ({var.path}) is {tuple(var.shape)} {var.dtype}; the tensor sent is "
                f"{tuple(t.shape)} {t.dtype}"
            )
