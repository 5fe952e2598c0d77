"""NodeBase: the state and internal interface a node's concerns share (see :mod:`veil.node.node`).

A :class:`~veil.node.Node` is composed of concerns, one module each: records, access,
execution, node ops, requests, datasets, accounts, audit and persistence. They share one
lock and one transaction per message (the ``Batch`` every change of a message goes into),
so they are mixins of one object; this class names exactly what each may use of the others.
"""

from __future__ import annotations

import itertools
import threading
from typing import TYPE_CHECKING, Any

from veil.node.aliasing import Aliasing
from veil.node.objects import ObjectRecord
from veil.node.store import Batch, RequestRow, Store, UserRow
from veil.node.tokens import TokenTable
from veil.node.users import Session
from veil.ops import OpRegistry, OpSpec
from veil.serde.messages import ObjectInfo, Reply, RunOp

if TYPE_CHECKING:
    from veil.node.capability import CapabilityState
    from veil.node.datasets import DatasetEntry
    from veil.node.uploads import StagedUpload  # noqa: F401


class NodeBase:
    """What each concern of a :class:`~veil.node.Node` may use of the others."""

    # -- the node
    name: str
    store: Store
    registry: OpRegistry
    _specs: Any
    max_message_bytes: int
    max_result_bytes: int
    _lock: threading.RLock
    _handling: bool
    # -- records
    _objects: dict[int, ObjectRecord]
    _ids: itertools.count[int]
    _aliases: dict[tuple[int, int], int]
    _retaining: set[int]
    _late_taints: dict[int, int]
    _rng: Any
    # -- accounts, datasets, requests
    _users: dict[int, UserRow]
    _tokens: TokenTable
    _datasets: dict[str, DatasetEntry]
    _requests: dict[int, RequestRow]
    _open_requests: dict[int, set[int]]
    # -- persistence
    _rows: dict[str, dict[str, dict[str, Any]]]
    _batch: Batch
    _dirty: dict[int, str | None]
    _dropped: dict[int, tuple[ObjectRecord, Any]]
    _aliasing: Aliasing
    # -- capabilities (veil.node.capability): their states, by name
    _caps: dict[str, CapabilityState]

    def _approved_for(self, session: Session, rec: ObjectRecord) -> bool:
        raise NotImplementedError  # see requests.py

    def _audit_row(self, session: Session, action: str, detail: str = "",
                   objects: list[int] | None = None, sources: Any = ()) -> None:  # fmt: skip
        raise NotImplementedError  # see audit.py

    def put_row(self, key: str, kind: str, value: dict[str, Any]) -> None:
        raise NotImplementedError  # see persistence.py

    def capability_state(self, name: str) -> Any:
        raise NotImplementedError  # see node.py

    def _check_mutable(self, session: Session, rec: ObjectRecord) -> None:
        raise NotImplementedError  # see access.py

    def _check_readable(self, session: Session, rec: ObjectRecord) -> None:
        raise NotImplementedError  # see access.py

    def _commit(self) -> None:
        raise NotImplementedError  # see persistence.py

    def _email(self, user_id: int) -> str:
        raise NotImplementedError  # see accounts.py

    def _info_of(self, rec: ObjectRecord) -> ObjectInfo:
        raise NotImplementedError  # see records.py

    def _mark(self, rec: ObjectRecord, sources: frozenset[str], error: str = "",
              label: str | None = None) -> None:  # fmt: skip
        raise NotImplementedError  # see records.py

    def _persist(self, rec: ObjectRecord, blob: str | None = None) -> None:
        raise NotImplementedError  # see persistence.py

    def _persist_storages(self, keys: set[int]) -> None:
        raise NotImplementedError  # see records.py

    def _private_behind(self, effect: str, root: Any, user: int) -> list[ObjectRecord]:
        raise NotImplementedError  # see records.py

    def _record(self, session: Session, obj_id: int) -> ObjectRecord:
        raise NotImplementedError  # see records.py

    def _run_node_op(self, session: Session, spec: OpSpec, msg: RunOp) -> Reply:
        raise NotImplementedError  # see nodeops.py

    def _run_op(self, session: Session, msg: RunOp) -> Reply:
        raise NotImplementedError  # see execution.py

    def _check_size(self, spec: OpSpec, args: list[Any], kwargs: dict[str, Any],
                    inputs: list[ObjectRecord], nested: bool) -> None:  # fmt: skip
        raise NotImplementedError  # see execution.py

    def _release(self, session: Session, ids: list[int]) -> None:
        raise NotImplementedError  # see records.py

    def _store(self, session: Session, value: Any, *, private: bool = False,
               sources: frozenset[str] = frozenset(), description: str = "",
               asset_of: str | None = None, oid: int | None = None, error: str = "",
               label: str = "", alias: int = 0, blob: str | None = None) -> ObjectRecord:  # fmt: skip
        raise NotImplementedError  # see records.py

    def _taint(self, keys: set[int], sources: frozenset[str], error: str = "",
               label: str | None = None) -> None:  # fmt: skip
        raise NotImplementedError  # see records.py

    def _void_requests(self, rec: ObjectRecord) -> None:
        raise NotImplementedError  # see requests.py
