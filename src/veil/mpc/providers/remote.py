"""The driver's calls to a node's MPC ops: run an op through the public remote-call API, read
a value reply, and a node's MPC public key.

Example:
    >>> import veil
    >>> alice = veil.VirtualWorker("alice")
    >>> len(public_key(alice))
    32
"""

from __future__ import annotations

from typing import Any

import torch

from veil.errors import RemoteError
from veil.mpc.providers import seal
from veil.pointers import PointerTensor
from veil.serde.messages import ObjectInfo, Reply, Value
from veil.serde.tensors import tensor_from_data


def node_call(worker: Any, op: str, *args: Any, expect_bytes: int = 0) -> Reply:
    """Run extension op ``op`` on ``worker`` and return its raw reply
    (:meth:`~veil.pointers.remote.Remote.call_op`; ``expect_bytes``: the reply's size where
    the caller knows it)."""
    return worker.call_op(op, *args, expect_bytes=expect_bytes)  # type: ignore[no-any-return]


def reply_tensor(reply: Reply) -> torch.Tensor:
    """The tensor of a :class:`~veil.serde.messages.Value` reply.

    Raises:
        RemoteError: the node answered something else.
    """
    if not isinstance(reply, Value):
        raise RemoteError(f"expected a value from the node, got {type(reply).__name__}")
    return tensor_from_data(reply.value, copy=True)  # type: ignore[arg-type]


def public_key(worker: Any) -> bytes:
    """A node's MPC public key (32 bytes)."""
    return bytes(reply_tensor(node_call(worker, "mpc.public_key")).numpy().tobytes())


def fingerprint(worker: Any) -> str:
    """The short form of a node's MPC key (what ``veil dealers list`` shows beside a name)."""
    return seal.fingerprint(public_key(worker))


def u8(b: bytes) -> torch.Tensor:
    """``b`` as a 1-d uint8 tensor (keys and sealed boxes travel as these).

    Example:
        >>> u8(b"ab")
        tensor([97, 98], dtype=torch.uint8)
    """
    return torch.frombuffer(bytearray(b), dtype=torch.uint8)


_u8 = u8


def pointer(worker: Any, reply: Reply) -> PointerTensor:
    """A pointer to the new tensor a node answered with (an :class:`ObjectInfo` reply).

    Raises:
        RemoteError: the node answered something else.
    """
    if not isinstance(reply, ObjectInfo):
        raise RemoteError(f"expected a new object from the node, got {type(reply).__name__}")
    return PointerTensor(worker, reply)
