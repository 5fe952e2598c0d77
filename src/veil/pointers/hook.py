"""The few entry points veil adds to torch, installed in one place.

Installed when ``veil`` is imported, each one a method users type, none changing what
torch itself does:

* ``Tensor.send(worker)``: ``worker.send(tensor)``, a :class:`~veil.PointerTensor`.
* ``Tensor.tag(*tags)`` and ``Tensor.describe(text)``: labels that travel with the next
  ``send`` (PySyft 0.2's tags, found again with ``worker.search``).
* ``Module.send(worker)``, ``Module.get()``, ``Module.move(worker)``, ``Module.copy()``:
  PySyft 0.2's models sent *in place* (:mod:`veil.pointers.inplace`).
* one optimizer step pre-hook (torch's public ``register_optimizer_step_pre_hook``) that
  steps the parameters of models sent in place on their node; it does nothing for a local
  model.

(``veil.mpc`` adds ``share``/``fix_precision`` and ``veil.he`` adds ``encrypt`` the same way,
from their layers.) :class:`TorchHook` keeps the PySyft 0.2 spelling working and changes
nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from veil.pointers import classes, inplace
from veil.serde.keras_models import is_keras_model

_INSTALLED = False


def _tensor_send(self: torch.Tensor, worker: Any, **kwargs: Any) -> Any:
    """Send this tensor to ``worker`` and return a :class:`~veil.PointerTensor` (its tags and
    description go with it)."""
    return worker.send(self, **kwargs)


def tags_to_text(tags: Any, description: str) -> str:
    """Tags and a description as one description text: the tags on the first line.

    Example:
        >>> tags_to_text(["#x", "#toy"], "a toy tensor")
        '#x #toy\\na toy tensor'
        >>> text_to_tags(tags_to_text(["#x"], "about x"))
        (('#x',), 'about x')
    """
    if not tags:
        return description
    return " ".join(tags) + "\n" + description


def text_to_tags(text: str) -> tuple[tuple[str, ...], str]:
    """Split a stored description into ``(tags, description)`` (see :func:`tags_to_text`)."""
    first, _, rest = text.partition("\n")
    words = first.split()
    if words and all(w.startswith("#") for w in words):
        return tuple(words), rest
    return (), text


def _tensor_tag(self: torch.Tensor, *tags: str) -> torch.Tensor:
    """Label the tensor (``x.tag("#boston", "#housing")``); returns it. The tags travel with
    the next ``send`` and ``worker.search(["#boston"])`` finds the object again."""
    for t in tags:
        if not isinstance(t, str) or not t.startswith("#") or len(t.split()) != 1:
            raise ValueError(f"a tag is one word starting with '#', got {t!r}")
    old = getattr(self, "_veil_tags", ())
    self._veil_tags = tuple(dict.fromkeys((*old, *tags)))  # type: ignore[attr-defined]
    return self


def _tensor_describe(self: torch.Tensor, description: str) -> torch.Tensor:
    """Describe the tensor for its future node's owner; returns it."""
    self._veil_description = str(description)  # type: ignore[attr-defined]
    return self


def _module_send(self: torch.nn.Module, worker: Any, **kwargs: Any) -> Any:
    """Send this model to ``worker`` in place and return it (see :mod:`veil.pointers.inplace`);
    ``worker.send(model)`` gives a separate :class:`~veil.PointerModule` instead. A Keras
    model's layers call Keras, which cannot run on pointers op by op: it travels whole, as
    its config and weights, and ``send`` returns the :class:`~veil.PointerModule`
    (:mod:`veil.keras`). Keywords of :meth:`Worker.send` (``mode=``...) also ask for a
    :class:`~veil.PointerModule`."""
    if kwargs or is_keras_model(self):
        return worker.send(self, **kwargs)
    return inplace.send_module(self, worker)


def _module_get(self: torch.nn.Module) -> torch.nn.Module:
    """Bring a model sent in place back into this same object and return it."""
    return inplace.get_module(self)


def _module_move(self: torch.nn.Module, worker: Any) -> torch.nn.Module:
    """Move a model sent in place to another worker (in place) and return it."""
    return inplace.move_module(self, worker)


def _module_copy(self: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model (of a sent model: a new remote model on the same worker)."""
    return inplace.copy_module(self)


def install() -> None:
    """Add the entry points listed in the module docstring (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    torch.Tensor.send = _tensor_send  # type: ignore[attr-defined]
    torch.Tensor.tag = _tensor_tag  # type: ignore[attr-defined]
    torch.Tensor.describe = _tensor_describe  # type: ignore[attr-defined]
    torch.nn.Module.send = _module_send  # type: ignore[attr-defined]
    torch.nn.Module.get = _module_get  # type: ignore[attr-defined]
    torch.nn.Module.move = _module_move  # type: ignore[attr-defined]
    torch.nn.Module.copy = _module_copy  # type: ignore[attr-defined]
    register_optimizer_step_pre_hook(inplace.route_step)
    classes.before_backward = inplace.before_backward
    _INSTALLED = True


class TorchHook:
    """PySyft 0.2 compatibility: ``hook = veil.TorchHook(torch)``.

    veil needs no hook (its entry points are installed on import); this object exists so
    old programs run unchanged, and may be passed to ``VirtualWorker(hook, id=...)``.

    Example:
        >>> import torch, veil as sy
        >>> hook = sy.TorchHook(torch)
        >>> bob = sy.VirtualWorker(hook, id="bob")
        >>> torch.tensor([1, 2, 3, 4.0]).send(bob).mul(2).get()
        tensor([2., 4., 6., 8.])
    """

    def __init__(self, torch_module: Any = None) -> None:
        install()
        self.torch = torch_module or torch
        #: This client (PySyft's ``hook.local_worker``; holds nothing, see
        #: :class:`~veil.pointers.relay.LocalWorker`).
        self.local_worker = classes.local_worker

    def __repr__(self) -> str:
        return "TorchHook()"
