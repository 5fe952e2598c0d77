"""veil: compute on data you do not own and cannot see.

Example:
    >>> import torch, veil
    >>> alice = veil.VirtualWorker("alice")
    >>> x = torch.tensor([1.0, 2, 3, 4]).send(alice)
    >>> (x * 2).sum().get()
    tensor(20.)
"""

from __future__ import annotations

from veil import errors, ops
from veil.errors import (
    BudgetExceeded,
    ObjectNotFound,
    OpNotAllowed,
    PermissionDenied,
    VeilError,
)
from veil.node import Dataset, Node, VirtualWorker, Worker
from veil.pointers import PointerModule, PointerTensor, RemoteOptimizer, TorchHook, install
from veil.version import WIRE_VERSION, __version__

install()

# The capabilities every node has (veil.node.capability): imported when a node starts.
from veil.node import capability as _capability  # noqa: E402

_capability.declare("dp", "veil.dp.node")

# Capabilities that register object kinds, node ops and Tensor entry points on import.
from veil import dp, he, mpc  # noqa: E402

mpc.install()


def connect(url: str, *, email: str, password: str, timeout: float = 60.0,
            pipeline: bool = True) -> Worker:  # fmt: skip
    """Log in to a node server and return a client for it.

    ``pipeline``: queue ops whose result can be predicted and send them with the next
    call that needs an answer (fewer round trips; a refused queued op raises from that
    call, naming the line that issued it). ``pipeline=False`` sends each op at once.

    Example (needs a running node, so not run as a doctest)::

        hospital = veil.connect("http://127.0.0.1:8765", email="ds@lab.org", password="...")
        hospital.datasets["ct-scans"].private.mean(0)
    """
    from veil.node.client import NodeClient

    return NodeClient(url, email=email, password=password, timeout=timeout, pipeline=pipeline)


__all__ = [
    "BudgetExceeded",
    "Dataset",
    "Node",
    "ObjectNotFound",
    "OpNotAllowed",
    "PermissionDenied",
    "PointerModule",
    "PointerTensor",
    "RemoteOptimizer",
    "TorchHook",
    "VeilError",
    "VirtualWorker",
    "WIRE_VERSION",
    "Worker",
    "__version__",
    "connect",
    "dp",
    "errors",
    "he",
    "mpc",
    "ops",
]
