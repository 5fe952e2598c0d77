"""Secure aggregation: the sum of every party's own data as a shared tensor, with no dealer.

Each party adds its zero-share (pairwise PRG masks that cancel, see
:mod:`veil.mpc.providers.pairwise`) to its own tensor on its own node; the masked tensors
are shares of the sum, and no single one says anything about its party's data.

Example:
    >>> import torch, veil
    >>> alice, bob = veil.VirtualWorker("alice"), veil.VirtualWorker("bob")
    >>> sess = veil.mpc.MPCSession([alice, bob], veil.mpc.DealerFree())
    >>> xs = [torch.tensor([1.0, 2.0]).send(alice), torch.tensor([0.5, -1.0]).send(bob)]
    >>> secure_sum(xs, sess).reconstruct()
    tensor([1.5000, 1.0000])
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from veil.errors import WorkerMismatch
from veil.mpc.protocols.session import MPCSession
from veil.mpc.providers.remote import node_call
from veil.mpc.tensors.shared import SharedTensor
from veil.pointers import PointerTensor

_COUNTER = itertools.count(1)


def secure_sum(pointers: Sequence[Any], session: MPCSession) -> SharedTensor:
    """The sum of ``pointers`` (one float tensor per party, on that party's node, in party
    order, all of one shape) as a :class:`SharedTensor`, encoded on each node.

    Raises:
        WorkerMismatch: a pointer is not on its party's node.
    """
    if len(pointers) != session.n or any(
        p.location is not w for p, w in zip(pointers, session.parties, strict=True)
    ):
        raise WorkerMismatch("secure_sum takes one tensor per party, on that party's node, "
                             "in party order")  # fmt: skip
    enc = session.encoding
    counter = next(_COUNTER)

    def mask(i: int) -> PointerTensor:
        p = pointers[i]
        fixed = (p.double() * float(enc.scale)).round().long()
        info = node_call(session.parties[i], "mpc.masked_input", session.sid, fixed, counter)
        return PointerTensor(session.parties[i], info)  # type: ignore[arg-type]

    shares = session.fanout(mask, range(session.n))
    return SharedTensor(shares, session, enc)


__all__ = ["secure_sum"]
