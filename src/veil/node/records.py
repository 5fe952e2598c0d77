"""A node's object records: storing, finding, releasing and tainting the objects users hold."""

from __future__ import annotations

import logging
from typing import Any

import torch

from veil.errors import (
    InvalidRequest,
    ObjectNotFound,
    PermissionDenied,
    RemoteError,
)
from veil.node.base import NodeBase
from veil.node.objects import (
    ObjectRecord,
    kind_of,
    storage_keys,
    tensors_of,
)
from veil.node.persistence import value_from_wire, value_to_wire
from veil.node.uploads import StagedUpload
from veil.node.users import Session
from veil.node.writes import (
    graph_tensors,
)
from veil.serde.messages import (
    CLIENT_IDS,
    ClearObjects,
    DeleteObjects,
    Done,
    GetObject,
    ListObjects,
    ObjectInfo,
    ObjectList,
    Reply,
    SendObject,
    Value,
)

log = logging.getLogger("veil.node")

CLIENT_START = CLIENT_IDS.start


class RecordsMixin(NodeBase):
    """The objects a node holds, who may use them, and how privacy spreads through their storage."""

    def _record(self, session: Session, obj_id: int) -> ObjectRecord:
        """A record the session may compute with (its own, a dataset asset, or any for admins).

        Ids in ``CLIENT_IDS`` are names the caller's client chose: they resolve among the
        caller's own objects only."""
        rec = self._objects.get(
            self._aliases.get((session.user_id, obj_id), -1) if obj_id >= CLIENT_START else obj_id
        )
        if rec is None and session.is_admin and obj_id >= CLIENT_START:
            rec = self.lookup(obj_id)  # owners see every user's objects by the id shown
        if rec is None or not (
            session.is_admin or rec.owner == session.user_id or rec.asset_of is not None
        ):
            raise ObjectNotFound(
                f"node {self.name!r} has no object {obj_id} that you can use; it was deleted, "
                "or it belongs to another user"
            )
        return rec

    def lookup(self, obj_id: int, user_id: int | None = None) -> ObjectRecord | None:
        """The record shown as ``obj_id`` (to ``user_id``, for ids a client chose), for
        monitoring and white-box tests; None if there is none."""
        if obj_id < CLIENT_START:
            return self._objects.get(obj_id)
        if user_id is not None:
            return self._objects.get(self._aliases.get((user_id, obj_id), -1))
        return next((self._objects[i] for (_, a), i in self._aliases.items() if a == obj_id), None)

    def _store(self, session: Session, value: Any, *, private: bool = False,
               sources: frozenset[str] = frozenset(), description: str = "",
               asset_of: str | None = None, oid: int | None = None, error: str = "",
               label: str = "", alias: int = 0, blob: str | None = None) -> ObjectRecord:  # fmt: skip
        kind = "tensor" if type(value) is torch.Tensor else kind_of(value)
        if kind is None:
            raise RemoteError(f"cannot store a {type(value).__name__} on a node")
        if oid is None:
            oid = next(self._ids)
            while oid in self._objects:
                oid = next(self._ids)
        rec = ObjectRecord(oid, value, kind, session.user_id, private, set(), sources, asset_of,
                           description)  # fmt: skip
        if error or label or alias:
            rec.error, rec.label, rec.alias = error, label, alias
            if alias:
                self._aliases[(session.user_id, alias)] = oid
        self._objects[oid] = rec
        if self.store.persistent:
            self._persist(rec, blob)
        return rec

    def _info_of(self, rec: ObjectRecord) -> ObjectInfo:
        return rec.info(self._email(rec.owner))

    def _send(self, session: Session, msg: SendObject, staged: StagedUpload | None = None) -> Reply:
        if msg.private and not session.is_admin:
            raise PermissionDenied(
                "only the node's owner or admins upload private data; create a dataset instead"
            )
        if staged is not None:  # decoded and written to the store already (Node.handle)
            oid = None if staged.oid in self._objects else staged.oid
            rec = self._store(session, staged.value, private=msg.private, oid=oid,
                              description=msg.description[:1000], blob=staged.blob)  # fmt: skip
            self._audit_row(session, "send", rec.kind, [rec.id])
            return self._info_of(rec)
        value = value_from_wire(
            msg.value, copy=False, resolve=lambda oid: self._record(session, oid).value
        )
        rec = self._store(session, value, private=msg.private, description=msg.description[:1000])
        self._audit_row(session, "send", rec.kind, [rec.id])
        return self._info_of(rec)

    def _get(self, session: Session, msg: GetObject) -> Reply:
        rec = self._record(session, msg.id)
        self._check_readable(session, rec)
        if rec.kind == "optimizer":
            raise InvalidRequest("an optimizer cannot be fetched; fetch the model instead")
        self._audit_row(session, "get", rec.kind, [rec.id], rec.sources)
        if rec.error:  # read only by those who may read the object: its owner, or approved
            self._commit()
            raise RemoteError(
                f"object {rec.id} on node {self.name!r} holds an error instead of a value: "
                f"{rec.error}"
            )
        return Value(value_to_wire(rec.value, storage=False))

    def _release(self, session: Session, ids: list[int]) -> None:
        uid = session.user_id
        for oid in ids:
            if oid >= CLIENT_START:
                oid = self._aliases.get((uid, oid), -1)
            rec = self._objects.get(oid)
            if rec is None or rec.asset_of is not None:
                continue
            if rec.owner == uid or session.is_admin:
                del self._objects[oid]
                if rec.alias:
                    self._aliases.pop((rec.owner, rec.alias), None)
                self._retaining.discard(oid)
                # e.g. veil.dp: its tracked bound goes with it (a tombstone)
                saved = {name: cap.on_drop(oid) for name, cap in self._caps.items()}
                if self.store.persistent:
                    self._batch.deleted.add(oid)
                    self._dirty.pop(oid, None)
                    self._dropped[oid] = (rec, saved)  # a failed write brings them back
                    for other in self._aliasing.dependents(rec, self._objects):
                        self._dirty.setdefault(other)  # rows that referred to it
                    self._aliasing.untrack(rec)

    def _delete(self, session: Session, msg: DeleteObjects) -> Reply:
        for oid in msg.ids:  # named explicitly (unlike piggybacked releases): all or nothing
            rec = self._objects.get(
                self._aliases.get((session.user_id, oid), -1) if oid >= CLIENT_START else oid
            )
            if rec is None or not (session.is_admin or rec.owner == session.user_id):
                raise ObjectNotFound(
                    f"node {self.name!r} has no object {oid} that you can delete; it was "
                    "deleted, or it belongs to another user"
                )
            if rec.asset_of is not None:
                raise PermissionDenied(f"object {oid} is data of dataset {rec.asset_of!r}")
        self._release(session, msg.ids)
        return Done()

    def _clear(self, session: Session, msg: ClearObjects) -> Reply:
        mine = [oid for oid, r in self._objects.items() if r.owner == session.user_id]
        self._release(session, mine)
        self._audit_row(session, "clear", f"{len(mine)} objects")
        return Done()

    def _list_objects(self, session: Session, msg: ListObjects) -> Reply:
        recs = [r for r in self._objects.values() if session.is_admin or r.owner == session.user_id]
        return ObjectList([self._info_of(r) for r in recs])

    def _taint(self, keys: set[int], sources: frozenset[str], error: str = "",
               label: str | None = None) -> None:  # fmt: skip
        """Mark private every object sharing storage with ``keys``; approvals lapse. An
        ``error`` (a write that failed on private values) is carried into them too, and a
        capability ``label`` survives only a write whose private inputs all carry it."""
        if not keys:
            return
        for rec in self._objects.values():
            if rec.asset_of is None and storage_keys(tensors_of(rec.value)) & keys:
                self._mark(rec, sources, error, label)

    def _mark(self, rec: ObjectRecord, sources: frozenset[str], error: str = "",
              label: str | None = None) -> None:  # fmt: skip
        if label is not None and rec.label != label:
            rec.label = ""  # written with other private data: no longer what the capability made
        if not rec.private:
            self._late_taints[rec.owner] = self._late_taints.get(rec.owner, 0) + 1
        if rec.id in self._open_requests:
            self._void_requests(rec)
        rec.private = True
        rec.sources = rec.sources | sources
        rec.approved.clear()
        if error and not rec.error:
            rec.error = error
        self._persist(rec)

    def _persist_storages(self, keys: set[int]) -> None:
        if not self.store.persistent:
            return
        for rec in self._aliasing.on_storage(keys, self._objects):  # optimizers included
            self._persist(rec)

    def _private_behind(self, effect: str, root: Any, user: int) -> list[ObjectRecord]:
        """Private records whose storage a public ``backward`` (its graph's leaves and saved
        tensors) or ``step`` (the optimizer's parameters, gradients and state) would read:
        data written into them after the graph or optimizer was made."""
        unreadable = False
        if effect == "backward" and isinstance(root, torch.Tensor):
            tensors, unreadable = graph_tensors(root)
        else:
            tensors = tensors_of(root)
        keys = storage_keys(tensors)
        hidden = [
            r for r in self._objects.values()
            if r.private and storage_keys(tensors_of(r.value)) & keys
        ]  # fmt: skip
        if unreadable and not hidden:  # a saved tensor was written since: assume private data
            hidden = [
                r for r in self._objects.values()
                if r.private and r.asset_of is None and r.owner == user and not r.error
            ][:1]  # fmt: skip
        return hidden
