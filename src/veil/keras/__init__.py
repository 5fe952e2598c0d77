"""Keras 3 models on veil: ``import veil.keras`` runs Keras on its torch backend.

A Keras 3 model on the torch backend is a ``torch.nn.Module`` whose variables are torch
tensors, so it works where a torch module does: ``model.send(node)`` gives a
:class:`~veil.PointerModule`, calling it on pointers runs the forward pass on the node,
its ``parameters()`` train with :class:`~veil.RemoteOptimizer`, and ``get()`` follows the
node's privacy rules (a model trained on private data is private).

On the wire a Keras model is Keras's own JSON config plus its weights as tensors
(:mod:`veil.serde.keras_models`); every class the config names must be one of Keras's
built-in layers, activations, initializers, regularizers, constraints, losses or
optimizers (:data:`KERAS_ALLOWLIST`), checked by the receiver before Keras builds it with
``safe_mode=True``. ``Lambda`` layers, custom classes and subclassed models (whose
``call`` is code) never travel: build the model as a Sequential or functional model of
built-in layers, or send the computation as a veil plan.

Keras layers take their mode from the ``training`` argument, not from torch's training
mode (``model.train()``): call ``remote(x, training=True)`` for Dropout and
BatchNormalization to train (the node then updates BatchNormalization's statistics, and a
model that saw private data that way is private too).

Importing this module sets ``KERAS_BACKEND=torch`` before Keras loads; it raises
``ImportError`` if Keras is missing (``pip install 'veil[keras]'``) or was already
imported with another backend. ``import veil`` alone never imports Keras, and a node
imports it only when the first Keras model arrives.

Example:
    >>> import pytest; vk = pytest.importorskip("veil.keras")
    >>> import torch, keras, veil
    >>> alice = veil.VirtualWorker("alice")
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    >>> remote = model.send(alice)
    >>> x = torch.ones(4, 3)
    >>> torch.allclose(remote(x.send(alice)).get(), model(x))
    True
"""

from __future__ import annotations

from veil.keras.files import load_model
from veil.keras.serving import model_pointer, upload_model
from veil.ops.keras import KERAS_ALLOWLIST, check_config
from veil.serde.keras_models import keras_from_wire, keras_to_wire, load_keras

__all__ = ["KERAS_ALLOWLIST", "check_config", "keras", "keras_from_wire", "keras_to_wire",
           "load_model", "model_pointer", "upload_model"]  # fmt: skip

#: The Keras package, loaded on its torch backend.
keras = load_keras()
