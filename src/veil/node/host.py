"""What a capability may use of the node it runs on (see :mod:`veil.node.capability`).

Capabilities (``veil.dp``, ``veil.mpc``, ``veil.he``; next ``veil.fl`` and ``veil.plans``)
call these public methods of :class:`~veil.node.Node`, never its private members, so that
the node's concerns can change behind them. Everything here runs inside the message being
handled (under the node's lock) and commits or rolls back with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from veil.errors import ObjectNotFound
from veil.node.base import NodeBase
from veil.node.objects import ObjectRecord, storage_keys, tensors_of
from veil.node.store import RequestRow
from veil.node.users import Session
from veil.ops import OpSpec
from veil.serde.messages import ObjectInfo, Reply, RunOp
from veil.serde.tensors import tensor_from_data


class HostMixin(NodeBase):
    """The node's interface to its capabilities."""

    def record(self, session: Session, obj_id: int) -> ObjectRecord:
        """The record of object ``obj_id`` as ``session`` names it (its own or an alias);
        raises ObjectNotFound if the caller may not see it.

        Example:
            >>> import torch
            >>> from veil.node import Node
            >>> from veil.serde.messages import SendObject
            >>> node = Node("n", owner_password="pw-long-enough")
            >>> s = node.login("owner@n.local", "pw-long-enough")
            >>> rec = node.store_value(s, torch.ones(2))
            >>> node.record(s, rec.id).value
            tensor([1., 1.])
        """
        return self._record(session, obj_id)

    def record_by_id(self, obj_id: int) -> ObjectRecord | None:
        """The record of object ``obj_id`` (its true id), whoever owns it; None if gone."""
        return self._objects.get(obj_id)

    def check_readable(self, session: Session, rec: ObjectRecord) -> None:
        """Raise PermissionDenied unless ``session`` may read ``rec``'s value."""
        self._check_readable(session, rec)

    def store_value(self, session: Session, value: Any, *, private: bool = False,
                    sources: frozenset[str] = frozenset(), label: str = "") -> ObjectRecord:  # fmt: skip
        """Store ``value`` for ``session`` (private ones taint what is computed from them)."""
        return self._store(session, value, private=private, sources=sources, label=label)

    def info_of(self, rec: ObjectRecord) -> ObjectInfo:
        """What the caller is told about a stored object."""
        return self._info_of(rec)

    def write_audit(self, session: Session, action: str, detail: str = "",
                    objects: list[int] | None = None, sources: Any = ()) -> None:  # fmt: skip
        """Add an entry to the audit log as ``session`` (committed with the message)."""
        self._audit_row(session, action, detail, objects, sources)

    def email_of(self, user_id: int) -> str:
        """A user's email ('' if there is no such user)."""
        return self._email(user_id)

    def sessions_ended_since(self, user_id: int, t: float) -> bool:
        """Were the user's sessions ended (``revoke_sessions``) at or after ``time.time()``
        value ``t``? A grant made to one of their sessions before then, such as a move
        ticket, is void."""
        return self._tokens.revoked_since(user_id, t)

    def user_id_of(self, email: str) -> int | None:
        """The id of the user with this email, if any."""
        return next((u.id for u in self._users.values() if u.email == email), None)

    def has_dataset(self, name: str) -> bool:
        """Is there a dataset called ``name``?"""
        return name in self._datasets

    def assets(self) -> Iterator[tuple[str, str, int, list[tuple[float, float]]]]:
        """Every dataset asset: (dataset, asset name, object id, declared bounds)."""
        for ds in self._datasets.values():
            for name, oid, _mock, _cols, bounds, _desc in ds.assets:
                yield ds.name, name, oid, list(bounds)

    def run_op(self, session: Session, msg: RunOp) -> Reply:
        """Run one op for ``session`` exactly as a ``RunOp`` message from it would run
        (allowlist, privacy rules, size limits, audit, capability hooks); raises what the
        message would answer with. For capabilities that run several ops in one message
        (``veil.plans``).

        Example:
            >>> import torch
            >>> from veil.node import Node
            >>> from veil.serde.messages import Ref, RunOp
            >>> node = Node("n", owner_password="pw-long-enough")
            >>> s = node.login("owner@n.local", "pw-long-enough")
            >>> rec = node.store_value(s, torch.ones(2))
            >>> node.run_op(s, RunOp("torch.neg", [Ref(rec.id)])).shape
            [2]
        """
        return self._run_op(session, msg)

    def release(self, session: Session, ids: list[int]) -> None:
        """Drop objects of ``session`` (as when its client drops their pointers)."""
        self._release(session, ids)

    def requests_of(self, kind: str) -> list[RequestRow]:
        """Every request of a capability's ``kind``, oldest first (the caller filters by
        requester; the rows are the node's own: change them only through its methods)."""
        return [r for r in self._requests.values() if r.kind == kind]

    def dataset_mocks(self, name: str) -> dict[str, torch.Tensor]:
        """The mock data of each asset of dataset ``name`` (public: what scientists see).

        Example:
            >>> import torch, veil
            >>> owner = veil.VirtualWorker("n")
            >>> _ = owner.datasets.create("d", private=torch.ones(2), mock=torch.zeros(2))
            >>> owner.node.dataset_mocks("d")
            {'data': tensor([0., 0.])}
        """
        ds = self._datasets.get(name)
        if ds is None:
            raise ObjectNotFound(f"node {self.name!r} has no dataset {name[:100]!r}")
        return {aname: tensor_from_data(mock, copy=True) for aname, _, mock, *_ in ds.assets}

    def check_size(self, spec: OpSpec, args: list[Any], kwargs: dict[str, Any]) -> None:
        """Refuse an op on public values whose result would pass the node's size limit
        (what a ``RunOp`` on public data checks first)."""
        self._check_size(spec, args, kwargs, [], bool(kwargs))

    def tainted_late(self, user_id: int) -> bool:
        """Has any object of this user been written with private data after it was made
        (so that a backward or an optimizer step on public-looking objects may read it)?"""
        return bool(self._late_taints.get(user_id))

    def wrote(self, recs: list[ObjectRecord]) -> None:
        """These public objects may have been written (a plan ran on them): store them and
        what shares their memory (an optimizer's parameters) again at the commit."""
        if self.store.persistent:
            for rec in recs:
                self._persist(rec)
                self._persist_storages(storage_keys(tensors_of(rec.value)))

    def set_label(self, rec: ObjectRecord, label: str) -> None:
        """Mark what a capability made an object as (its release policy or its ops can then
        recognise it); ops keep a label on results whose private inputs all carry it."""
        rec.label = label
        self._persist(rec)

    def content_digest(self, rec: ObjectRecord) -> str:
        """SHA-256 of an object's content (and of the error it holds): what an approval of it
        covers (a write changes it)."""
        return self._digest(rec)

    def next_request_id(self) -> int:
        """The id the next request made on this node will get (a request kind's ``open``
        runs just before the request is made, in the same message)."""
        return max(self._requests, default=0) + 1

    def asset_id(self, dataset: str, asset: str) -> int | None:
        """The object id of a dataset's asset (None if there is no such asset)."""
        ds = self._datasets.get(dataset)
        if ds is None:
            return None
        return next((oid for name, oid, *_ in ds.assets if name == asset), None)
