"""The few entry points veil adds to torch, installed in one place.

``torch.Tensor.send(worker)`` and ``torch.nn.Module.send(worker)`` are the only
additions made here; both just call ``worker.send(obj)``. They are installed when ``veil`` is
imported. (``veil.he`` adds ``torch.Tensor.encrypt(key)`` the same way, from its layer.) :class:`TorchHook` keeps the PySyft 0.2 spelling working and changes nothing.
"""

from __future__ import annotations

from typing import Any

import torch

_INSTALLED = False


def _tensor_send(self: torch.Tensor, worker: Any, **kwargs: Any) -> Any:
    """Send this tensor to ``worker`` and return a :class:`~veil.PointerTensor`."""
    return worker.send(self, **kwargs)


def _module_send(self: torch.nn.Module, worker: Any, **kwargs: Any) -> Any:
    """Send this model to ``worker`` and return a :class:`~veil.PointerModule`."""
    return worker.send(self, **kwargs)


def install() -> None:
    """Add ``Tensor.send`` and ``Module.send`` (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    torch.Tensor.send = _tensor_send  # type: ignore[attr-defined]
    torch.nn.Module.send = _module_send  # type: ignore[attr-defined]
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

    def __repr__(self) -> str:
        return "TorchHook()"
