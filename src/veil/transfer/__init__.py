"""Moving objects between nodes without passing through the client (``ptr.move(alice)``).

PySyft 0.2's ``ptr.move(alice)`` sent the data from bob straight to alice. veil does the
same: the client asks alice for a one-time ticket, then asks bob to push the object there;
bob delivers it to alice himself and deletes his copy. The data never reaches the client.

What a move may do is what ``get()`` followed by ``send()`` may do, no more:

* bob pushes only what the caller could ``get()``: private data needs its owner's approval
  of a request first (``ptr.request(...)``), exactly as for ``get()``;
* bob connects only to destinations his owner approved (``veil peers add NAME URL``): a
  scientist cannot make a node open connections to addresses of their choosing;
* alice stores the object as the ticket's user's own (never private, with her limits), as
  if that user had sent it; a ticket is used once and expires after five minutes.

Between VirtualWorkers (one process) the nodes hand the bytes to each other directly, with
no approval of destinations. When no direct way exists (bob's owner did not approve alice,
or one side is in-process and the other a server) the move falls back to passing through
the client, with a warning that says how to make it direct.

Example:
    >>> import torch, veil
    >>> bob, alice = veil.VirtualWorker("bob"), veil.VirtualWorker("alice")
    >>> x = torch.tensor([1.0, 2.0]).send(bob)
    >>> y = x.move(alice, requires_grad=True)
    >>> y.location.name, y.requires_grad, bob.node.object_count()
    ('alice', True, 0)
"""

from __future__ import annotations

import builtins
import warnings
from typing import TYPE_CHECKING, Any

import msgspec

from veil.errors import DestinationNotApproved
from veil.node.capability import call
from veil.pointers import classes
from veil.serde.messages import ObjectInfo
from veil.serde.transfer import (
    AddPeer,
    CancelTicket,
    CheckMove,
    IssueTicket,
    ListPeers,
    MoveCheck,
    Peer,
    PeerList,
    RemovePeer,
    Ticket,
)

if TYPE_CHECKING:
    from veil.pointers.remote import Remote
    from veil.pointers.tensor import PointerTensor

__all__ = ["Peer", "Peers", "Ticket", "move_direct", "peers", "ticket"]


def ticket(worker: Remote) -> Ticket:
    """A one-time ticket from ``worker``'s node: whoever presents it may deliver one object
    there, which becomes your object.

    Example:
        >>> import veil
        >>> t = veil.transfer.ticket(veil.VirtualWorker("alice"))
        >>> t.node, len(t.ticket) > 40
        ('alice', True)
    """
    return call(worker, "transfer", "ticket", IssueTicket(), Ticket)


class Peers:
    """The destinations a node's owner approved for moves (``veil.transfer.peers(worker)``).

    Example:
        >>> import veil
        >>> bob = veil.VirtualWorker("bob")
        >>> veil.transfer.peers(bob).add("alice", "http://10.0.0.2:8765").url
        'http://10.0.0.2:8765'
        >>> [p.name for p in veil.transfer.peers(bob).list()]
        ['alice']
        >>> veil.transfer.peers(bob).remove("alice").name
        'alice'
    """

    def __init__(self, worker: Remote) -> None:
        self.worker = worker

    def add(self, name: str, url: str) -> Peer:
        """Owners and admins: approve the node at ``url`` (its base URL) as ``name``."""
        return call(self.worker, "transfer", "peers.add", AddPeer(name, url), Peer)

    def remove(self, name: str) -> Peer:
        """Owners and admins: withdraw the approval of peer ``name``."""
        return call(self.worker, "transfer", "peers.remove", RemovePeer(name), Peer)

    def list(self) -> builtins.list[Peer]:
        """Owners and admins: the approved destinations."""
        return call(self.worker, "transfer", "peers.list", ListPeers(), PeerList).items

    def __repr__(self) -> str:
        return f"Peers({self.worker.name!r}: {[p.name for p in self.list()]})"


def peers(worker: Remote) -> Peers:
    """The approved destinations of ``worker``'s node (see :class:`Peers`)."""
    return Peers(worker)


def move_direct(ptr: PointerTensor, destination: Any, requires_grad: bool) -> PointerTensor | None:
    """Move ``ptr``'s data to ``destination`` node to node; None when there is no direct
    way (the caller then moves it through the client). Used by :meth:`PointerTensor.move`.
    """
    from veil.node.client import NodeClient
    from veil.node.worker import VirtualWorker
    from veil.pointers.tensor import PointerTensor
    from veil.transfer.node import DELIVERY_TIMEOUT, local_address, state_of

    src = ptr.location
    src.flush()  # the object may still be a pipelined op's result
    if isinstance(src, VirtualWorker) and isinstance(destination, VirtualWorker):
        if src.node is destination.node:
            return None  # two logins on one node
        t = ticket(destination)
        try:
            info = state_of(src.node).push(
                src.session, ptr.id, local_address(destination.node), t.ticket,
                requires_grad=requires_grad, in_process=True,
            )  # fmt: skip
        except BaseException:
            _cancel(destination, t)
            raise
    elif isinstance(src, NodeClient) and isinstance(destination, NodeClient):
        if src.url.rstrip("/") == destination.url.rstrip("/"):
            return None
        try:  # before any ticket: may bob move it there? (no data moves)
            call(src, "transfer", "check", CheckMove(ptr.id, destination.url), MoveCheck)
        except DestinationNotApproved as exc:
            warnings.warn(
                f"{exc}. The data passed through this client instead (with the same "
                "permission a get() needs).",
                stacklevel=3,
            )
            return None
        t = ticket(destination)
        body = {"id": ptr.id, "destination": destination.url, "ticket": t.ticket,
                "requires_grad": requires_grad}  # fmt: skip
        try:
            out = src._authorized("POST", "/api/v1/transfer/push", json=body,
                                  timeout=DELIVERY_TIMEOUT + 30)  # fmt: skip
        except BaseException:
            _cancel(destination, t)
            raise
        info = msgspec.convert(out, ObjectInfo)
    else:
        return None
    ptr._owned = False  # the push deleted it at its source
    moved = PointerTensor(destination, info)
    moved._leaf = True
    return moved


def _cancel(worker: Remote, t: Ticket) -> None:
    """Drop a ticket a failed move left unused (best effort: it expires anyway)."""
    try:
        call(worker, "transfer", "cancel", CancelTicket(t.ticket), MoveCheck)
    except Exception:  # noqa: S110 - the move's own error is the one to report
        pass


classes.move_direct = move_direct
