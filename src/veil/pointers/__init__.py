"""Pointers to remote tensors, models and optimizers, and the torch entry points."""

from __future__ import annotations

from veil.pointers.hook import TorchHook, install
from veil.pointers.module import PointerModule, RemoteOptimizer
from veil.pointers.queue import OpQueue
from veil.pointers.relay import LocalWorker, RelayPointer, local_worker
from veil.pointers.remote import Remote
from veil.pointers.tensor import PointerTensor
from veil.pointers.transport import RecordingTransport, Transport

__all__ = [
    "LocalWorker",
    "OpQueue",
    "PointerModule",
    "PointerTensor",
    "RecordingTransport",
    "RelayPointer",
    "Remote",
    "RemoteOptimizer",
    "TorchHook",
    "Transport",
    "install",
    "local_worker",
]
