"""A data owner's Keras model served from its node as a dataset: weights private, config public.

A model owner keeps a trained model on its own node and lets data scientists predict with
it, without handing over the weights. veil stores it the way it stores any private data:
:func:`upload_model` (owners and admins only) creates a dataset with one asset per model
variable, named by its path (``"dense/kernel"``), whose private value is the trained
weight and whose mock is a freshly initialized one; plus the asset ``"keras_config"``,
the model's Keras config as UTF-8 bytes, the same in the private value and the mock: the
architecture is public, only the weights are private.

A scientist calls :func:`model_pointer`: it builds the architecture from the config (checked
against :data:`~veil.ops.keras.KERAS_ALLOWLIST` before Keras sees it, ``safe_mode=True``),
sends it to the node as its own model, and copies the dataset's private weights into it on
the node. The node's ordinary rules then apply: that model, and every prediction made with
it, is derived from the dataset, hence private. ``get()`` raises
:class:`~veil.errors.PermissionDenied` until the owner approves a request for that exact
result (``out.request("why")``); the weights themselves are read by no one but the owner.
(Each approved prediction does tell something about the model: an owner who approves many
lets a scientist fit a copy of it.) The scientist's inputs, sent to the node as their own
tensors, are visible to the node's owner (for inputs the owner must not see, use
``veil.mpc`` or ``veil.he``).
"""

from __future__ import annotations

import json
from typing import Any

import torch

from veil.errors import InvalidRequest, OpNotAllowed, UnsupportedError
from veil.ops.keras import check_config
from veil.serde.keras_models import MAX_CONFIG_CHARS, keras_to_wire, load_keras

__all__ = ["CONFIG_ASSET", "model_pointer", "upload_model"]

#: The asset holding the model's Keras config (UTF-8 JSON bytes; its mock is the same).
CONFIG_ASSET = "keras_config"
_PARAMS = "_torch_params."  # where Keras's torch backend keeps a layer's variables


def upload_model(owner: Any, name: str, model: Any, *, description: str = "") -> Any:
    """Owners: put a Keras model on the node as the dataset ``name``, its weights private.

    Args:
        owner: a worker logged in as the node's owner or an admin (a
            :class:`~veil.VirtualWorker` or ``veil.connect(...)``).
        name: the dataset's name, which scientists pass to :func:`model_pointer`.
        model: a Sequential or functional Keras model (e.g. from
            :func:`veil.keras.load_model`), of built-in layers only.
        description: shown to the node's users with the dataset.

    Returns:
        The dataset (``veil.node.worker.Dataset``): an asset per variable plus
        :data:`CONFIG_ASSET`.

    Raises:
        UnsupportedError: a subclassed model or a config the allowlist refuses.
        PermissionDenied: ``owner`` is not the node's owner or an admin.

    Example:
        >>> import pytest; keras = pytest.importorskip("veil.keras").keras
        >>> import veil
        >>> node = veil.VirtualWorker("lab")
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="out")])
        >>> sorted(upload_model(node, "scores", model).assets)
        ['keras_config', 'out/bias', 'out/kernel']
    """
    keras = load_keras()
    config = keras_to_wire(model).config  # refuses what a node would refuse
    fresh = keras.saving.deserialize_keras_object(json.loads(config), safe_mode=True)
    paths = [str(v.path) for v in fresh.weights]  # as a node names them, built from the config
    if len(set(paths)) != len(paths) or len(paths) != len(model.weights):
        raise UnsupportedError(
            f"the variables of this Keras model do not have unique paths ({paths[:20]}); "
            "give its layers unique names"
        )
    private: dict[str, torch.Tensor] = {}
    mock: dict[str, torch.Tensor] = {}
    for path, var, init in zip(paths, model.weights, fresh.weights, strict=True):
        private[path] = var.value.detach().clone()
        mock[path] = init.value.detach().clone()
    text = torch.frombuffer(bytearray(config.encode()), dtype=torch.uint8)
    private[CONFIG_ASSET], mock[CONFIG_ASSET] = text, text.clone()
    return owner.datasets.create(name, private=private, mock=mock, description=description)


def model_pointer(worker: Any, name: str) -> Any:
    """Scientists: your own copy, on the node, of the Keras model in dataset ``name``.

    The copy is private (derived from the dataset): predict with it on pointers to your
    inputs (``remote(x.send(worker))``), and ``get()`` a prediction once the owner approved
    your request for it. ``remote.get()`` and the weights' ``get()`` are refused.

    Args:
        worker: your session on the node.
        name: a dataset made by :func:`upload_model`.

    Returns:
        A :class:`~veil.PointerModule`.

    Raises:
        InvalidRequest: the dataset holds no Keras model.
        OpNotAllowed: its config names a class outside the allowlist (nothing was built).

    Example:
        >>> import pytest; keras = pytest.importorskip("veil.keras").keras
        >>> import torch, veil
        >>> lab = veil.VirtualWorker("lab")
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> _ = upload_model(lab, "scores", model)
        >>> _ = lab.create_user("ds@x.org", "pw-123456")
        >>> scientist = lab.login("ds@x.org", "pw-123456")
        >>> remote = model_pointer(scientist, "scores")
        >>> out = remote(torch.ones(1, 3).send(scientist))
        >>> out.private
        True
        >>> lab.requests.approve(out.request("scores for my patient").id).status
        'approved'
        >>> torch.allclose(out.get(), model(torch.ones(1, 3)))
        True
    """
    dataset = worker.datasets[name]
    assets = dict(dataset.assets)
    if CONFIG_ASSET not in assets:
        raise InvalidRequest(
            f"dataset {name!r} holds no Keras model (no {CONFIG_ASSET!r} asset); the node's "
            "owner uploads one with veil.keras.upload_model"
        )
    text = assets.pop(CONFIG_ASSET).mock
    if text.numel() > MAX_CONFIG_CHARS:
        raise InvalidRequest(f"dataset {name!r}: its Keras config is over {MAX_CONFIG_CHARS} bytes")
    try:
        config = json.loads(bytes(text.to(torch.uint8).numpy()).decode())
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"dataset {name!r}: its Keras config is not JSON: {exc}") from None
    problems = check_config(config)
    if problems:
        raise OpNotAllowed(f"dataset {name!r}: Keras config refused: " + "; ".join(problems[:10]))
    if not isinstance(config, dict) or config.get("class_name") not in ("Sequential", "Functional"):
        raise InvalidRequest(f"dataset {name!r}: its config is not a Keras model")
    keras = load_keras()
    shell = keras.saving.deserialize_keras_object(config, safe_mode=True)
    for var in shell.weights:  # the mock weights: nothing private is in the shell sent
        if str(var.path) in assets:
            var.assign(assets[str(var.path)].mock)
    remote = worker.send(shell)
    filled = set()
    for param_name, param in remote.named_parameters():
        path = param_name.rsplit(_PARAMS, 1)[-1]
        if path in assets and path not in filled:
            param.detach()[...] = assets[path].private  # on the node: the copy is private
            filled.add(path)
    if filled != set(assets):
        raise InvalidRequest(
            f"dataset {name!r}: assets {sorted(set(assets) - filled)[:10]} match no variable "
            "of the model its config describes"
        )
    remote.private = True  # as the node now holds it: derived from the dataset
    return remote
