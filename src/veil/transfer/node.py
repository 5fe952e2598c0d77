"""The ``transfer`` capability on a node: tickets for incoming objects, the owner's approved
destinations (peers), and the push of an object to another node.

A push runs in steps so that no node lock is held while bytes cross the network:

0. (between node servers) the source asks the destination whether the ticket is one it
   issued, so that a forged ticket costs no copy of the object;
1. under the source node's lock: the caller may read the object (the permission ``get()``
   needs: private data leaves only once its owner approved a request), it is the caller's
   own and not a dataset's data, it is not being moved already, and the destination is
   approved; the object is then *copied* into the message (a write after the lock is
   released, even one that makes the object private, cannot reach the copy), and the move
   is audited;
2. without the lock: the copy is delivered with the caller's ticket;
3. under the lock again: the source is deleted and the move recorded. A failed delivery
   deletes nothing.

The destination stores what it receives exactly as if the ticket's user had sent it with
``SendObject`` (same checks, same limits, never private), so a move gives nobody more than
a ``get()`` followed by a ``send()`` would; it only keeps the bytes off the client. A node
runs at most :data:`MAX_PUSHES` pushes (and each user :data:`MAX_USER_PUSHES`) and
accepts at most :data:`MAX_RECEIVES` deliveries at once; more are refused at once.

Example:
    >>> import torch, veil
    >>> bob, alice = veil.VirtualWorker("bob"), veil.VirtualWorker("alice")
    >>> x = torch.arange(3.0).send(bob)
    >>> t = veil.transfer.ticket(alice)
    >>> info = state_of(bob.node).push(bob.session, x.id, local_address(alice.node), t.ticket,
    ...                                in_process=True)
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
from collections import Counter
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
    CancelTicket,
    CheckMove,
    IssueTicket,
    ListPeers,
    MoveCheck,
    Peer,
    PeerList,
    PushObject,
    RemovePeer,
    Ticket,
)

if TYPE_CHECKING:
    from veil.node.node import Node

__all__ = ["CAPABILITY", "KIND", "Transfers", "local_address", "receive", "state_of"]

#: ``Node.rows`` kind of the approved destinations; each row's key is ``transfer.peer:<name>``.
KIND = "transfer.peer"
#: How long a ticket stays valid, and how many one user may hold unused on a node.
TICKET_SECONDS, MAX_TICKETS = 300.0, 32
#: Seconds the source waits for the destination to store a delivery (and to connect).
DELIVERY_TIMEOUT, CONNECT_TIMEOUT = 120.0, 5.0
#: Pushes a node runs at once (in all, and per user), and deliveries it accepts at once.
MAX_PUSHES, MAX_USER_PUSHES, MAX_RECEIVES = 4, 2, 4
#: Error codes of a destination passed on to the caller as they are (others: TransportError).
_RELAYED = {"permission_denied", "invalid_request", "message_too_large", "serde_error"}
#: Destinations in this process (VirtualWorkers): ``local:<token>`` names one.
LOCAL = "local:"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_URL = re.compile(r"^https?://[^\s/?#@]+(/[^\s?#@]*)?$")  # no user:password@
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


@dataclass(frozen=True, slots=True)
class _Snapshot:
    oid: int  #: the object's id on the node (not a client-chosen one)
    frame: bytearray  #: the SendObject, encoded: a copy made under the node's lock
    where: Peer | Node
    kind: str


def _norm(url: str) -> str:
    return url.strip().rstrip("/").lower()


def _hash(ticket: str) -> bytes:
    return hashlib.sha256(ticket.encode()).digest()


class Transfers(CapabilityState):
    """The ``transfer`` capability on one node: unused tickets (in memory: a restart voids
    them), the owner's approved destinations (durable rows), and the moves under way."""

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        self._tickets: dict[bytes, _Issued] = {}
        self._lock = threading.Lock()  # tickets and moves: used outside the node's lock
        self._moving: set[int] = set()
        self._pushes: Counter[int] = Counter()
        self._receives = threading.BoundedSemaphore(MAX_RECEIVES)
        self.token = secrets.token_urlsafe(16)
        with _local_lock:
            _local[self.token] = node

    # -- tickets (the destination's side) ----------------------------------------------
    def issue(self, session: Session, msg: IssueTicket) -> Ticket:
        now = time.time()
        with self._lock:
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

    def cancel(self, session: Session, msg: CancelTicket) -> MoveCheck:
        with self._lock:
            issued = self._tickets.get(_hash(msg.ticket))
            if issued is not None and issued.session.user_id == session.user_id:
                del self._tickets[_hash(msg.ticket)]
        return MoveCheck()

    def knows(self, ticket: str) -> bool:
        """Is ``ticket`` one this node issued and nobody used yet?"""
        with self._lock:
            issued = self._tickets.get(_hash(ticket))
        return issued is not None and issued.expires >= time.time()

    def claim(self, ticket: str) -> Session:
        """The session a ticket was issued to; the ticket is used up (valid or not, a
        ticket is tried once). A server claims it before it reads the delivery's body."""
        with self._lock:
            issued = self._tickets.pop(_hash(ticket), None)
        if issued is None or issued.expires < time.time():
            raise PermissionDenied(
                f"node {self.node.name!r} has no valid move ticket like this one (tickets are "
                f"used once and expire after {TICKET_SECONDS:g} s); ask for a new one"
            )
        if self.node.email_of(issued.session.user_id) != issued.session.email:
            raise PermissionDenied(f"the user of this ticket left node {self.node.name!r}")
        if self.node.sessions_ended_since(issued.session.user_id, issued.expires - TICKET_SECONDS):
            raise PermissionDenied(
                f"the sessions of this ticket's user on node {self.node.name!r} were ended "
                "after it was issued; log in again and ask for a new one"
            )
        return issued.session

    def receiving(self) -> threading.BoundedSemaphore:
        """The slots of deliveries accepted at once (``acquire(blocking=False)``)."""
        return self._receives

    def accept(self, session: Session, frame: Any) -> ObjectInfo:
        """Store a delivered object as ``session``'s (a claimed ticket's user), as that
        user's ``SendObject``: same checks and limits, never private.

        Raises:
            InvalidRequest: a frame that is not one plain ``SendObject``.
        """
        try:
            call = codec.decode_call(frame, max_bytes=self.node.max_message_bytes)
        except VeilError as exc:
            raise InvalidRequest(f"the delivered object could not be decoded: {exc}") from None
        msg = call.msg
        if type(msg) is not SendObject or call.before or call.release or msg.private:
            raise InvalidRequest("a delivery carries one object, sent as plain data")
        reply = self.node.handle(session, Call(msg))
        if isinstance(reply, ErrorReply):
            raise error_from_code(reply.code, reply.message)
        if not isinstance(reply, ObjectInfo):
            raise InvalidRequest(f"unexpected reply {type(reply).__name__} to a delivery")
        return reply

    # -- approved destinations (the source's side) -------------------------------------
    def peers(self) -> dict[str, Peer]:
        out = {}
        for key, row in sorted(self.node.rows(KIND).items()):
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
                "a peer is a veil node's base URL (http://HOST:PORT or https://..., without "
                f"user:password@), got {msg.url[:200]!r}"
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

    def destination(self, name_or_url: str, *, in_process: bool) -> Peer | Node:
        """The approved peer, or the in-process node, that ``name_or_url`` names."""
        if name_or_url.startswith(LOCAL) and in_process:
            with _local_lock:
                node = _local.get(name_or_url[len(LOCAL) :])
            if node is not None and node is not self.node:
                return node  # nodes in one process trust each other's process anyway
        else:
            peers, want = self.peers(), _norm(name_or_url)
            for p in peers.values():
                if _norm(p.url) == want or p.name == name_or_url:
                    return p
        raise DestinationNotApproved(
            f"node {self.node.name!r} moves objects only to destinations its owner approved, "
            f"and this is not one; {HOW}"
        )

    def _admin(self, session: Session, what: str) -> None:
        if not session.is_admin:
            raise PermissionDenied(
                f"only the owner or an admin of node {self.node.name!r} may {what} the "
                "destinations objects may be moved to"
            )

    # -- moves (the source's side) -----------------------------------------------------
    def check(self, session: Session, msg: CheckMove) -> MoveCheck:
        """Would this node move object ``msg.id`` to ``msg.destination`` now? (No data.)"""
        self._movable(session, msg.id, msg.destination, in_process=False)
        return MoveCheck()

    def push(self, session: Session, oid: int, destination: str, ticket: str, *,
             requires_grad: bool = False, in_process: bool = False) -> ObjectInfo:  # fmt: skip
        """Move object ``oid`` of ``session`` to ``destination`` (an approved peer's URL or
        name, or with ``in_process`` a :func:`local_address`), delivering it with the
        destination's ``ticket``; returns the new object's info there (see the module's
        docstring for the steps).

        Raises:
            PermissionDenied: the caller may not read the object (as for ``get()``), or the
                destination does not know the ticket.
            DestinationNotApproved: the node's owner did not approve ``destination``.
            InvalidRequest: the object is being moved already, or too many moves run.
            TransportError: the destination could not be reached (nothing was deleted).
        """
        with self._lock:
            if sum(self._pushes.values()) >= MAX_PUSHES or (
                self._pushes[session.user_id] >= MAX_USER_PUSHES
            ):
                raise InvalidRequest(
                    f"node {self.node.name!r} is moving as many objects as it runs at once "
                    f"({MAX_PUSHES}, {MAX_USER_PUSHES} per user); retry when one has finished"
                )
            self._pushes[session.user_id] += 1
        try:
            return self._push(session, oid, destination, ticket, requires_grad, in_process)
        finally:
            with self._lock:
                self._pushes[session.user_id] -= 1

    def _push(self, session: Session, oid: int, destination: str, ticket: str,
              requires_grad: bool, in_process: bool) -> ObjectInfo:  # fmt: skip
        msg = PushObject(oid, destination, ticket, requires_grad)
        where = self._locked(session, msg, lambda s, m: self._movable(
            s, oid, destination, in_process=in_process))  # fmt: skip
        if isinstance(where, Peer):
            _ask_http(where, "check", ticket, b"")  # a forged ticket costs no copy
        snap = self._locked(session, msg, lambda s, m: self._snapshot(s, m, in_process))
        try:
            if isinstance(snap.where, Peer):
                info = msgspec.convert(_ask_http(snap.where, "receive", ticket, snap.frame),
                                       ObjectInfo)  # fmt: skip
            else:
                info = receive(snap.where, ticket, snap.frame)
        except msgspec.ValidationError:
            raise TransportError(
                f"peer {snap.where.name!r} answered the delivery with something else"
            ) from None
        finally:
            with self._lock:
                self._moving.discard(snap.oid)
        gone = self.node.handle(session, Call(DeleteObjects([snap.oid])))
        note = "" if not isinstance(gone, ErrorReply) else " (the source was already deleted)"
        self._locked(session, msg, lambda s, m: self._audit_moved(s, snap, info, note))
        return info

    def _movable(self, session: Session, oid: int, destination: str, *,
                 in_process: bool) -> Peer | Node:  # fmt: skip
        node = self.node
        rec = node._record(session, oid)
        node._check_readable(session, rec)
        if rec.asset_of is not None or not (session.is_admin or rec.owner == session.user_id):
            raise PermissionDenied(
                f"object {oid} is data of dataset {rec.asset_of!r} on node {node.name!r}: a "
                "move deletes its source, and a dataset's data stays; move a copy: "
                "ptr.clone().move(...)"
            )
        return self.destination(destination, in_process=in_process)

    def _locked(self, session: Session, msg: PushObject, fn: Any) -> Any:
        reply = self.node._locked(session, Call(cast(Any, msg)), fn)
        if isinstance(reply, ErrorReply):
            raise error_from_code(reply.code, reply.message)
        return reply

    def _snapshot(self, session: Session, msg: PushObject, in_process: bool) -> _Snapshot:
        node = self.node
        where = self._movable(session, msg.id, msg.destination, in_process=in_process)
        rec = node._record(session, msg.id)
        if rec.error:
            raise InvalidRequest(
                f"object {msg.id} on node {node.name!r} holds an error, not a value"
            )
        value = value_to_wire(rec.value, storage=False)
        if isinstance(value, TensorData):
            if msg.requires_grad and not value.requires_grad:
                value = msgspec.structs.replace(value, requires_grad=True)
        elif not isinstance(value, ModuleSpec):
            raise InvalidRequest(
                f"a {rec.kind} cannot be moved between nodes directly; tensors and models can"
            )
        with self._lock:
            if rec.id in self._moving:
                raise InvalidRequest(f"object {msg.id} is being moved already")
            self._moving.add(rec.id)
        try:  # codec.encode copies the tensor's bytes into the frame, here, under the lock
            frame = codec.encode(Call(SendObject(value, f"moved from node {node.name!r}")))
            node.write_audit(session, "move.out", f"object {rec.id} to {where.name[:200]}",
                             [rec.id], rec.sources)  # fmt: skip
        except BaseException:
            with self._lock:
                self._moving.discard(rec.id)
            raise
        return _Snapshot(rec.id, frame, where, rec.kind)

    def _audit_moved(self, session: Session, snap: _Snapshot, info: ObjectInfo,
                     note: str) -> ObjectInfo:  # fmt: skip
        self.node.write_audit(
            session, "move.done",
            f"object {snap.oid} ({snap.kind}, {len(snap.frame)} bytes) is object {info.id} on "
            f"{snap.where.name[:200]}{note}",
            [snap.oid],
        )  # fmt: skip
        return info


def state_of(node: Node) -> Transfers:
    """The ``transfer`` capability's state on ``node``."""
    return cast(Transfers, node.capability_state("transfer"))


def local_address(node: Node) -> str:
    """The name of an in-process node as a move destination (``local:<token>``)."""
    return LOCAL + state_of(node).token


def receive(node: Node, ticket: str, frame: Any) -> ObjectInfo:
    """The destination's side, in one call: claim ``ticket`` and store the delivered
    ``frame`` (see :meth:`Transfers.accept`).

    Raises:
        PermissionDenied: an unknown, used or expired ticket (nothing is stored).
        InvalidRequest: a frame that is not one plain ``SendObject``.
    """
    st = state_of(node)
    return st.accept(st.claim(ticket), frame)


def _ask_http(peer: Peer, what: str, ticket: str, body: bytes | bytearray) -> Any:
    """POST to the peer's ``/api/v1/transfer/<what>`` with the ticket; its JSON answer.
    Errors name the peer, never its URL, and carry only a few codes as they are."""
    try:
        resp = httpx.post(
            f"{peer.url}/api/v1/transfer/{what}", content=bytes(body) if body else b"",
            headers={"X-Veil-Ticket": ticket, "Content-Type": "application/octet-stream"},
            timeout=httpx.Timeout(DELIVERY_TIMEOUT, connect=CONNECT_TIMEOUT),
        )  # fmt: skip
    except httpx.HTTPError as exc:
        raise TransportError(
            f"could not deliver to peer {peer.name!r} ({type(exc).__name__}); nothing was moved"
        ) from None
    try:
        payload = resp.json()
    except ValueError:
        payload = None
    if resp.status_code >= 400:
        err = payload.get("error") if isinstance(payload, dict) else None
        code = err.get("code") if isinstance(err, dict) else None
        if code in _RELAYED:
            raise error_from_code(
                str(code),
                f"peer {peer.name!r}: {str(err.get('message', ''))[:500]}",  # type: ignore[union-attr]
            )
        raise TransportError(
            f"peer {peer.name!r} refused the delivery (HTTP {resp.status_code}); nothing was moved"
        )
    return payload


CAPABILITY = Capability(
    "transfer",
    state=Transfers,
    methods={
        "ticket": Method(IssueTicket, Transfers.issue),
        "cancel": Method(CancelTicket, Transfers.cancel),
        "check": Method(CheckMove, Transfers.check),
        "peers.add": Method(AddPeer, Transfers.add_peer),
        "peers.remove": Method(RemovePeer, Transfers.remove_peer),
        "peers.list": Method(ListPeers, Transfers.list_peers),
    },
)
install(CAPABILITY)
