"""The ``fl`` capability's state on a node: its identity key, enrolments, rounds in flight."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veil.errors import ObjectNotFound, PermissionDenied
from veil.fl.secagg.client import SecAggClient
from veil.node.capability import CapabilityState
from veil.node.store import RequestRow
from veil.node.users import Session

__all__ = ["FLState", "Round", "fingerprint"]

#: Durable rows: the identity key, enrolments being prepared (by user and digest), the
#: terms each enrolment request froze (by request id), rounds done (by request id).
IDENTITY, PENDING, ENROLMENTS, ROUNDS = "fl.identity", "fl.pending", "fl.enrolment", "fl.rounds"
#: The request kind of an enrolment.
KIND = "fl"
#: Domain separators of what a node signs.
ADVERTISE_TAG, UNMASK_TAG = b"veil.fl.advertise|", b"veil.fl.unmask|"


def fingerprint(key: bytes) -> str:
    """A short, readable digest of an identity key (owners compare them out of band).

    Example:
        >>> fingerprint(bytes(32))
        '66687aad:f862bd77:6c8fc18b'
    """
    h = hashlib.sha256(key).hexdigest()
    return f"{h[:8]}:{h[8:16]}:{h[16:24]}"


@dataclass
class Round:
    """A round in flight on this node under secure aggregation (memory only: a node that
    restarts mid-round drops out of it, and the protocol recovers the others' sum)."""

    client: SecAggClient
    vector: np.ndarray | None  # type: ignore[type-arg]
    confirmed: bytes = b""
    members: dict[int, bytes] = field(default_factory=dict)


class FLState(CapabilityState):
    """What the ``fl`` capability keeps on one node."""

    def __init__(self, node: Any) -> None:
        super().__init__(node)
        self._key: Ed25519PrivateKey | None = None
        self.rounds: dict[tuple[int, int], Round] = {}

    def on_rollback(self, rows_changed: bool, written: set[int], restored: dict[int, Any]) -> None:
        if rows_changed:
            self._key = None  # re-read: a key made by a message that rolled back is gone

    @property
    def key(self) -> Ed25519PrivateKey:
        """The node's Ed25519 identity key (made, and persisted, on first use)."""
        if self._key is None:
            row = self.node.row("identity", IDENTITY)
            if row is None:
                key = Ed25519PrivateKey.generate()
                raw = key.private_bytes_raw()
                self.node.put_row("identity", IDENTITY, {"key": base64.b64encode(raw).decode()})
            else:
                key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(row["key"]))
            self._key = key
        return self._key

    @property
    def fingerprint(self) -> str:
        """The identity key's fingerprint ('' until the node has made its key)."""
        if self._key is None and self.node.row("identity", IDENTITY) is None:
            return ""
        return fingerprint(self.public_key)

    @property
    def public_key(self) -> bytes:
        """The identity key's public half (32 bytes)."""
        return self.key.public_key().public_bytes_raw()

    def enrolment(self, session: Session, request_id: int) -> tuple[RequestRow, dict[str, Any]]:
        """The approved enrolment ``request_id`` of the caller's, and its frozen terms."""
        row = next((r for r in self.node.requests_of(KIND) if r.id == request_id), None)
        if row is None or row.requester != session.user_id:
            raise ObjectNotFound(
                f"node {self.node.name!r} has no enrolment {request_id} of yours; enrol with "
                "Federation(...).request()"
            )
        if row.status != "approved":
            raise PermissionDenied(
                f"enrolment {request_id} on node {self.node.name!r} is {row.status}, not "
                "approved: the node's owner decides it (veil requests approve ID)"
            )
        terms = self.node.row(str(row.id), ENROLMENTS)
        if terms is None:
            raise ObjectNotFound(f"enrolment {request_id} has no terms on this node")
        return row, terms

    def rounds_done(self, request_id: int) -> int:
        """Rounds this enrolment has trained."""
        row = self.node.row(str(request_id), ROUNDS)
        return int(row["done"]) if row else 0
