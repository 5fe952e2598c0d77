"""The Store ABC: durable state of a node, written through at the end of every message."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class UserRow:
    id: int
    email: str
    role: str
    name: str
    password_hash: str
    created: float


@dataclass(slots=True)
class ObjectRow:
    id: int
    kind: str
    owner: int
    private: bool
    approved: list[int]
    sources: list[str]
    asset_of: str | None
    description: str
    created: float
    payload: bytes | bytearray | memoryview  # an encoded serde frame (Value)
    #: label / error / alias of the record (see ``ObjectRecord``), only those that are set
    extra: dict[str, Any] = field(default_factory=dict)
    #: The payload was written ahead by :meth:`Store.stage`, under this name (``payload``
    #: is then empty).
    blob: str | None = None


@dataclass(slots=True)
class DatasetRow:
    name: str
    description: str
    created: float
    #: asset name -> (object id, encoded mock frame, columns, bounds, description)
    assets: list[tuple[str, int, bytes, list[str], list[tuple[float, float]], str]]


@dataclass(slots=True)
class RequestRow:
    id: int
    object_id: int
    requester: int
    reason: str
    status: str
    created: float
    decided_by: int | None = None
    note: str = ""
    #: SHA-256 of the object's content when it was requested: an approval covers that only
    digest: str = ""
    #: What is asked for: ``"object"`` (``object_id``), or a capability's request kind
    #: (:class:`veil.node.capability.RequestKind`) about ``subject`` (e.g. a plan's hash).
    kind: str = "object"
    subject: str = ""


@dataclass(slots=True)
class AuditRow:
    ts: float
    user: str
    action: str
    detail: str = ""
    objects: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


@dataclass(slots=True)
class DPRow:
    """veil.dp state (budgets, ledger releases, dataset subject counts) as keyed JSON values."""

    key: str
    kind: str
    value: dict[str, Any]


@dataclass(slots=True)
class Batch:
    """Everything one message changed; a store writes it atomically."""

    objects: dict[int, ObjectRow] = field(default_factory=dict)
    deleted: set[int] = field(default_factory=set)
    users: list[UserRow] = field(default_factory=list)
    datasets: list[DatasetRow] = field(default_factory=list)
    requests: list[RequestRow] = field(default_factory=list)
    audit: list[AuditRow] = field(default_factory=list)
    dp: list[DPRow] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.objects
            or self.deleted
            or self.users
            or self.datasets
            or self.requests
            or self.audit
            or self.dp
        )


@dataclass(slots=True)
class Snapshot:
    users: list[UserRow]
    objects: list[ObjectRow]
    datasets: list[DatasetRow]
    requests: list[RequestRow]
    dp: list[DPRow] = field(default_factory=list)


class Store(ABC):
    """Where a node keeps what must survive a restart.

    The node holds live state in memory and hands each message's changes to
    :meth:`write` before it answers, so everything a client saw acknowledged is durable.
    """

    #: False for stores that keep nothing (the node then skips encoding payloads).
    persistent: bool = True

    @abstractmethod
    def load(self) -> Snapshot:
        """Everything persisted, for a node starting up."""

    def load_keys(
        self,
        *,
        objects: Collection[int] = (),
        users: Collection[int] = (),
        datasets: Collection[str] = (),
        requests: Collection[int] = (),
        rows: Collection[str] = (),
    ) -> Snapshot:
        """The stored rows with these keys (those that exist), for a node undoing a write
        the store refused: it restores just what that write named. ``rows`` are keys of
        capability rows (``Snapshot.dp``).

        This default filters :meth:`load`; stores override it to read by key.

        Example:
            >>> from veil.node.store import MemoryStore
            >>> MemoryStore().load_keys(objects=[1], users=[1])
            Snapshot(users=[], objects=[], datasets=[], requests=[], dp=[])
        """
        snap = self.load()
        oids, uids, names, rids, keys = (set(c) for c in (objects, users, datasets, requests, rows))
        return Snapshot(
            [u for u in snap.users if u.id in uids],
            [o for o in snap.objects if o.id in oids],
            [d for d in snap.datasets if d.name in names],
            [r for r in snap.requests if r.id in rids],
            [r for r in snap.dp if r.key in keys],
        )

    @abstractmethod
    def write(self, batch: Batch) -> None:
        """Apply one message's changes atomically."""

    @abstractmethod
    def audit(self, limit: int) -> list[AuditRow]:
        """The newest ``limit`` audit entries, newest first."""

    def stage(self, oid: int, parts: Sequence[bytes | bytearray | memoryview]) -> str | None:
        """Write an object's large payload (given as buffers to concatenate) durably ahead of
        the :meth:`write` whose row names it (``ObjectRow.blob``), so a node can do this
        slow part without holding its lock. Returns that name, or None when this store
        keeps the payload in the row instead (the default).

        A staged payload that no write names is removed by :meth:`discard`, or at the
        next start if the process dies first.
        """
        return None

    def discard(self, staged: str) -> None:  # noqa: B027 - optional hook
        """Remove a staged payload that no write will name."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""
