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
``safe_mode=True``. ``Lambda`` layers and custom classes never travel. A subclassed model's
``call`` is code and never travels either: it is traced on the client into the equivalent
functional model of the same layers and ``keras.ops`` (:func:`to_functional`,
:mod:`veil.serde.keras_subclassed`), which travels instead, or refused with what to do.

``remote.fit(x_ptr, y_ptr, epochs=..., batch_size=...)`` trains it on its node with the
loss, optimizer and metrics it was compiled with (its compile config travels with it,
checked like the rest), one message per epoch, showing Keras's progress bar and returning
a ``keras.callbacks.History``; ``remote.evaluate`` and ``remote.predict`` run there too
(:mod:`veil.keras.remote`, :mod:`veil.keras.training`). Metrics computed from private data
come back as pointers to private scalars, never in the clear.

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
from veil.serde.keras_subclassed import assign_weights, to_functional

__all__ = [
    "KERAS_ALLOWLIST",
    "assign_weights",
    "check_config",
    "evaluate",
    "fit",
    "keras",
    "keras_from_wire",
    "keras_to_wire",
    "load_model",
    "model_pointer",
    "predict",
    "to_functional",
    "upload_model",
]

#: The Keras package, loaded on its torch backend.
keras = load_keras()

from veil.keras import training  # noqa: E402 - after Keras is loaded on torch
from veil.keras.remote import evaluate, fit, predict  # noqa: E402

training.install()  # the nodes of this process run Keras's fit (keras.fit_epoch...)
