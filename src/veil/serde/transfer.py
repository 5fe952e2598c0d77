"""Moving objects between nodes on the wire: the ``transfer`` capability's messages.

A move of an object from node *bob* to node *alice* that never passes through the client
(see :mod:`veil.transfer`) takes three calls: the client asks alice for a one-time
:class:`Ticket` (:class:`IssueTicket`); then bob, asked to push the object
(:class:`PushObject`), checks that the caller may read it and that its owner approved the
destination (:class:`Peer`), and delivers it to alice with the ticket; alice stores it
as the caller's object and answers its :class:`~veil.serde.messages.ObjectInfo`.

Example:
    >>> import msgspec
    >>> m = PushObject(id=7, destination="http://10.0.0.2:8765", ticket="t", requires_grad=True)
    >>> msgspec.msgpack.decode(msgspec.msgpack.encode(m), type=PushObject) == m
    True
"""

from __future__ import annotations

import msgspec

__all__ = [
    "AddPeer",
    "CancelTicket",
    "CheckMove",
    "IssueTicket",
    "ListPeers",
    "MoveCheck",
    "Peer",
    "PeerList",
    "PushObject",
    "RemovePeer",
    "Ticket",
]

_OPTS = {"frozen": True, "forbid_unknown_fields": True, "omit_defaults": True}


class IssueTicket(msgspec.Struct, **_OPTS):  # type: ignore[call-arg]
    """Ask the destination node for a one-time ticket that lets another node deliver one
    object into the caller's store there."""


class Ticket(msgspec.Struct, **_OPTS):  # type: ignore[call-arg]
    """A one-time ticket: whoever presents it may deliver one object, which becomes the
    issuing user's object. ``expires``: seconds since the epoch."""

    ticket: str
    node: str
    expires: float


class PushObject(msgspec.Struct, **_OPTS):  # type: ignore[call-arg]
    """Ask the node holding object ``id`` to deliver it to ``destination`` (a peer its owner
    approved: its URL or name) with ``ticket``, then delete it here."""

    id: int
    destination: str
    ticket: str
    requires_grad: bool = False


class AddPeer(msgspec.Struct, **_OPTS):  # type: ignore[call-arg]
    """Owners and admins: approve a node objects may be moved to."""

    name: str
    url: str


class RemovePeer(msgspec.Struct, **_OPTS):  # type: ignore[call-arg]
    """Owners and admins: withdraw a destination's approval."""

    name: str


class ListPeers(msgspec.Struct, **_OPTS):  # type: ignore[call-arg]
    """Owners and admins: the approved destinations."""


class Peer(msgspec.Struct, **_OPTS):  # type: ignore[call-arg]
    """An approved destination: its name, base URL, who approved it and when."""

    name: str
    url: str
    added_by: str = ""
    added: float = 0.0


class PeerList(msgspec.Struct, **_OPTS):  # type: ignore[call-arg]
    items: list[Peer] = []


class CancelTicket(msgspec.Struct, **_OPTS):  # type: ignore[call-arg]
    """Drop an unused ticket of yours (a move that did not happen)."""

    ticket: str


class CheckMove(msgspec.Struct, **_OPTS):  # type: ignore[call-arg]
    """Ask the node holding object ``id`` whether it would move it to ``destination`` now
    (you may read it, it is not a dataset's data, the destination is approved); no data
    moves. Answered with :class:`MoveCheck`, or the error a push would give."""

    id: int
    destination: str


class MoveCheck(msgspec.Struct, **_OPTS):  # type: ignore[call-arg]
    ok: bool = True
