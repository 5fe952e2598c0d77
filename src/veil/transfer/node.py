"""The ``transfer`` capability on a node: tickets for incoming objects, the owner's approved
destinations (peers), and the push of an object to another node.

A push runs in three steps so that no node lock is held while bytes cross the network:
under the source node's lock it checks that the caller may read the object (the
permission ``get()`` needs: private data leaves only once its owner approved a request)
and that the destination is approved, and encodes a snapshot; then, without the lock, it
delivers the snapshot to the destination with the caller's ticket; last, under the lock
again, it deletes the source and records the move in the audit log. A failed delivery
deletes nothing.

The destination stores what it receives exactly as if the ticket's user had sent it with
``SendObject`` (same checks, same limits, never private), so a move gives nobody more than
a ``get()`` followed by a ``send()`` would; it only keeps the bytes off the client.

Example:
    >>> import torch, veil
    >>> from veil.transfer.node import push
    >>> bob, alice = veil.VirtualWorker("bob"), veil.VirtualWorker("alice")
    >>> x = torch.arange(3.0).send(bob)
    >>> t = veil.transfer.ticket(alice)
    >>> info = push(bob.node, bob.session, x.id, local_address(alice.node), t.ticket,
    ...             in_process=True)
    >>> x._owned = False  # the move deleted it on bob
    >>> alice.pointer(info.id).get(), bob.node.object_count()
    (tensor([0., 1., 2.]), 0)
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import httpx
import msgspec

from veil.errors import (
    DestinationNotApproved,
    InvalidRequest,
    PermissionDenied,
    TransportError,
    VeilError,
    error_from_code,
)
from veil.node.capability import Capability, CapabilityState, Method, install
from veil.node.persistence import value_to_wire
from veil.node.users import Session
from veil.serde import codec
from veil.serde.messages import (
    Call,
    DeleteObjects,
    ErrorReply,
    ModuleSpec,
    ObjectInfo,
    SendObject,
    TensorData,
)
from veil.serde.transfer import (
    AddPeer,
    IssueTicket,
    ListPeers,
    Peer,
    PeerList,
    PushObject,
    RemovePeer,
    Ticket,
)

if TYPE_CHECKING:
    from veil.node.node import Node

__all__ = ["CAPABILITY", "KIND", "Transfers", "local_address", "push", "receive"]

#: ``Node.rows`` kind of the approved destinations; each row's key is ``transfer.peer:<name>``.
KIND = "transfer.peer"
#: How long a ticket stays valid, and how many one user may hold unused on a node.
TICKET_SECONDS, MAX_TICKETS = 300.0, 32
#: Seconds the source node waits for the destination to store a delivered object.
DELIVERY_TIMEOUT = 120.0
#: Destinations in this process (VirtualWorkers): ``local:<token>`` names one.
LOCAL = "local:"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_URL = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
_local: weakref.WeakValueDictionary[str, Node] = weakref.WeakValueDictionary()
_local_lock = threading.Lock()

HOW = (
    "its owner approves a destination with `veil peers add NAME URL` (or `veil node serve "
    "--peer NAME=URL`, or in Python `veil.transfer.peers(worker).add(name, url)`)"
)


@dataclass(frozen=True, slots=True)
class _Issued:
    session: Session
    expires: float


def _norm(url: str) -> str:
    return url.strip().rstrip("/").lower()


class Transfers(CapabilityState):
    """The ``transfer`` capability on one node: unused tickets (in memory: a restart voids
    them) and the owner's approved destinations (durable rows)."""

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        self._tickets: dict[bytes, _Issued] = {}
        self._ticket_lock = threading.Lock()  # redeemed by deliveries, outside the node's lock
        self.token = secrets.token_urlsafe(16)
        with _local_lock:
            _local[self.token] = node

    # -- tickets (the destination's side) ----------------------------------------------
    def issue(self, session: Session, msg: IssueTicket) -> Ticket:
        now = time.time()
        with self._ticket_lock:
            self._tickets = {k: v for k, v in self._tickets.items() if v.expires > now}
            mine = sum(1 for v in self._tickets.values() if v.session.user_id == session.user_id)
            if mine >= MAX_TICKETS:
                raise InvalidRequest(
                    f"you hold {mine} unused move tickets on node {self.node.name!r} (the "
                    f"limit); they expire {TICKET_SECONDS:g} s after they were issued"
                )
            raw = secrets.token_urlsafe(32)
            self._tickets[_hash(raw)] = _Issued(session, now + TICKET_SECONDS)
        return Ticket(raw, self.node.name, now + TICKET_SECONDS)

    def knows(self, ticket: str) -> bool:
        """Is ``ticket`` one this node issued and nobody used yet? (Checked before a
        delivery's body is read, so that a stranger cannot make the node read large bodies.)"""
        with self._ticket_lock:
            issued = self._tickets.get(_hash(ticket))
        return issued is not None and issued.expires >= time.time()

    def redeem(self, ticket: str) -> Session:
        """The session a ticket was issued to; the ticket is used up (valid or not, a
        ticket is tried once)."""
        with self._ticket_lock:
            issued = self._tickets.pop(_hash(ticket), None)
        if issued is None or issued.expires < time.time():
            raise PermissionDenied(
                f"node {self.node.name!r} has no valid move ticket like this one (tickets are "
                f"used once and expire after {TICKET_SECONDS:g} s); ask for a new one"
            )
        if self.node.email_of(issued.session.user_id) != issued.session.email:
            raise PermissionDenied(f"the user of this ticket left node {self.node.name!r}")
        return issued.session

    # -- approved destinations (the source's side) -------------------------------------
    def peers(self) -> dict[str, Peer]:
        rows = self.node.rows(KIND)
        out = {}
        for key, row in sorted(rows.items()):
            if not row.get("removed"):
                name = key.removeprefix(KIND + ":")
                out[name] = Peer(name, row["url"], row.get("by", ""), float(row.get("at", 0.0)))
        return out

    def add_peer(self, session: Session, msg: AddPeer) -> Peer:
        self._admin(session, "approve")
        if not _NAME.match(msg.name):
            raise InvalidRequest(
                "a peer name is 1-64 letters, digits or _.@- (starting with a letter or "
                f"digit), got {msg.name[:80]!r}"
            )
        url = msg.url.strip().rstrip("/")
        if not _URL.match(url) or len(url) > 2000:
            raise InvalidRequest(
                f"a peer is a veil node's base URL (http://HOST:PORT or https://...), got "
                f"{msg.url[:200]!r}"
            )
        self.node.put_row(f"{KIND}:{msg.name}", KIND,
                          {"url": url, "by": session.email, "at": time.time()})  # fmt: skip
        self.node.write_audit(session, "transfer.peer.add", f"{msg.name} {url}")
        return self.peers()[msg.name]

    def remove_peer(self, session: Session, msg: RemovePeer) -> Peer:
        self._admin(session, "remove")
        gone = self.peers().get(msg.name)
        if gone is None:
            raise InvalidRequest(f"node {self.node.name!r} has no approved peer {msg.name[:80]!r}")
        self.node.put_row(f"{KIND}:{msg.name}", KIND,
                          {"removed": True, "by": session.email, "at": time.time()})  # fmt: skip
        self.node.write_audit(session, "transfer.peer.remove", f"{gone.name} {gone.url}")
        return gone

    def list_peers(self, session: Session, msg: ListPeers) -> PeerList:
        self._admin(session, "list")
        return PeerList(list(self.peers().values()))

    def destination(self, name_or_url: str, *, in_process: bool) -> str | Node:
        """The approved peer's URL, or the in-process node, that ``name_or_url`` names."""
        if name_or_url.startswith(LOCAL):
            with _local_lock:
                node = _local.get(name_or_url[len(LOCAL) :])
            if in_process and node is not None and node is not self.node:
                return node  # nodes in one process trust each other's process anyway
            raise DestinationNotApproved(
                f"{name_or_url[:80]!r} is not a node in this process; moves between node "
                "servers name the destination's URL"
            )
        peers = self.peers()
        want = _norm(name_or_url)
        for p in peers.values():
            if _norm(p.url) == want:
                return p.url
        if name_or_url in peers:
            return peers[name_or_url].url
        raise DestinationNotApproved(
            f"node {self.node.name!r} moves objects only to destinations its owner approved, "
            f"and {name_or_url[:200]!r} is not one; {HOW}"
        )

    def _admin(self, session: Session, what: str) -> None:
        if not session.is_admin:
            raise PermissionDenied(
                f"only the owner or an admin of node {self.node.name!r} may {what} the "
                "destinations objects may be moved to"
            )


def _hash(ticket: str) -> bytes:
    return hashlib.sha256(ticket.encode()).digest()


def state_of(node: Node) -> Transfers:
    return cast(Transfers, node.capability_state("transfer"))


def local_address(node: Node) -> str:
    """The name of an in-process node as a move destination (``local:<token>``)."""
    return LOCAL + state_of(node).token


@dataclass(frozen=True, slots=True)
class _Snapshot:
    frame: list[Any]  # the SendObject, encoded (codec.encode_parts)
    where: str | Node
    kind: str
    nbytes: int


def push(node: Node, session: Session, oid: int, destination: str, ticket: str, *,
         requires_grad: bool = False, in_process: bool = False) -> ObjectInfo:  # fmt: skip
    """Move object ``oid`` of ``session`` on ``node`` to ``destination`` (an approved peer's
    URL or name, or with ``in_process`` a :func:`local_address`), delivering it with the
    destination's ``ticket``; returns the new object's info there. See the module's
    docstring for the steps and an example.

    Raises:
        PermissionDenied: the caller may not read the object (as for ``get()``).
        DestinationNotApproved: the node's owner did not approve ``destination``.
        TransportError: the destination could not be reached (nothing was deleted).
    """
    snap = _locked(node, session, PushObject(oid, destination, ticket, requires_grad),
                   lambda s, m: _snapshot(node, s, m, in_process))  # fmt: skip
    assert isinstance(snap, _Snapshot)
    if isinstance(snap.where, str):
        info = _deliver_http(snap.where, ticket, snap.frame)
    else:
        info = receive(snap.where, ticket, snap.frame)
    node.handle(session, Call(DeleteObjects([oid])))  # an error: it was deleted meanwhile
    where = snap.where if isinstance(snap.where, str) else snap.where.name
    _locked(node, session, PushObject(oid, destination, ""), lambda s, m: _audit_moved(
        node, s, oid, snap, where, info))  # fmt: skip
    return info


def _locked(node: Node, session: Session, msg: PushObject, fn: Any) -> Any:
    reply = node._locked(session, Call(cast(Any, msg)), fn)
    if isinstance(reply, ErrorReply):
        raise error_from_code(reply.code, reply.message)
    return reply


def _snapshot(node: Node, session: Session, msg: PushObject, in_process: bool) -> _Snapshot:
    rec = node._record(session, msg.id)
    node._check_readable(session, rec)
    if rec.asset_of is not None or not (session.is_admin or rec.owner == session.user_id):
        raise PermissionDenied(
            f"object {msg.id} is data of dataset {rec.asset_of!r} on node {node.name!r}: a "
            "move deletes its source, and a dataset's data stays; move a copy: "
            "ptr.clone().move(...)"
        )
    where = state_of(node).destination(msg.destination, in_process=in_process)
    if rec.error:
        raise InvalidRequest(f"object {msg.id} on node {node.name!r} holds an error, not a value")
    value = value_to_wire(rec.value, storage=False)
    if isinstance(value, TensorData):
        if msg.requires_grad and not value.requires_grad:
            value = msgspec.structs.replace(value, requires_grad=True)
    elif not isinstance(value, ModuleSpec):
        raise InvalidRequest(
            f"a {rec.kind} cannot be moved between nodes directly; tensors and models can"
        )
    desc = f"moved from node {node.name!r}"
    parts = codec.encode_parts(Call(SendObject(value, desc)))
    name = where if isinstance(where, str) else where.name
    node.write_audit(session, "move.out", f"object {rec.id} to {name[:200]}", [rec.id], rec.sources)
    return _Snapshot(parts, where, rec.kind, sum(len(memoryview(p).cast("B")) for p in parts))


def _audit_moved(node: Node, session: Session, oid: int, snap: _Snapshot, where: str,
                 info: ObjectInfo) -> Any:  # fmt: skip
    node.write_audit(session, "move.done",
                     f"object {oid} ({snap.kind}, {snap.nbytes} bytes) is object {info.id} "
                     f"on {where[:200]}")  # fmt: skip
    return info


def receive(node: Node, ticket: str, frame: Any) -> ObjectInfo:
    """The destination's side: store the delivered object as the ticket's user's (as that
    user's ``SendObject``: same checks and limits). ``frame``: the encoded call, as bytes
    or as the parts :func:`veil.serde.codec.encode_parts` made.

    Raises:
        PermissionDenied: an unknown, used or expired ticket (nothing is stored).
        InvalidRequest: a frame that is not one plain ``SendObject``.
    """
    session = state_of(node).redeem(ticket)
    data = frame if not isinstance(frame, list) else b"".join(bytes(p) for p in frame)
    try:
        call = codec.decode_call(data, max_bytes=node.max_message_bytes)
    except VeilError as exc:
        raise InvalidRequest(f"the delivered object could not be decoded: {exc}") from None
    msg = call.msg
    if type(msg) is not SendObject or call.before or call.release or msg.private:
        raise InvalidRequest("a delivery carries one object, sent as plain data")
    reply = node.handle(session, Call(msg))
    if isinstance(reply, ErrorReply):
        raise error_from_code(reply.code, reply.message)
    if not isinstance(reply, ObjectInfo):
        raise InvalidRequest(f"unexpected reply {type(reply).__name__} to a delivery")
    return reply


def _deliver_http(url: str, ticket: str, parts: list[Any]) -> ObjectInfo:
    body = b"".join(bytes(p) for p in parts)
    try:
        resp = httpx.post(
            f"{url}/api/v1/transfer/receive", content=body,
            headers={"X-Veil-Ticket": ticket, "Content-Type": "application/octet-stream"},
            timeout=DELIVERY_TIMEOUT,
        )  # fmt: skip
    except httpx.HTTPError as exc:
        raise TransportError(
            f"could not deliver to {url} ({type(exc).__name__}: {exc}); nothing was moved"
        ) from None
    try:
        payload = resp.json()
    except ValueError:
        payload = None
    if resp.status_code >= 400:
        err = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(err, dict) and isinstance(err.get("code"), str):
            raise error_from_code(err["code"], f"{url}: {str(err.get('message', ''))[:500]}")
        raise TransportError(f"{url} refused the delivery: HTTP {resp.status_code}")
    try:
        return msgspec.convert(payload, ObjectInfo)
    except msgspec.ValidationError:
        raise TransportError(f"{url} answered the delivery with something else") from None


CAPABILITY = Capability(
    "transfer",
    state=Transfers,
    methods={
        "ticket": Method(IssueTicket, Transfers.issue),
        "peers.add": Method(AddPeer, Transfers.add_peer),
        "peers.remove": Method(RemovePeer, Transfers.remove_peer),
        "peers.list": Method(ListPeers, Transfers.list_peers),
    },
)
install(CAPABILITY)
