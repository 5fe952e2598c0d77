"""A node's durable state: loading it, writing each message's changes, and undoing a write the store refused."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from veil.errors import (
    InvalidRequest,
    SerdeError,
    StorageError,
    VeilError,
)
from veil.node.aliasing import (
    Plan,
    build_optimizer,
    build_view,
    load_tier,
    restore_into,
    same_view,
)
from veil.node.base import NodeBase
from veil.node.datasets import dataset_from_row
from veil.node.objects import (
    ObjectRecord,
    extension_for,
    load_order,
)
from veil.node.store import (
    Batch,
    DPRow,
    ObjectRow,
    Snapshot,
)
from veil.node.text import check_row, storable
from veil.serde import codec
from veil.serde.keras_models import is_keras_model, keras_from_wire, keras_to_wire
from veil.serde.messages import (
    KerasModelData,
    ModuleSpec,
    TensorData,
    TensorView,
    Value,
)
from veil.serde.modules import module_to_spec, spec_to_module
from veil.serde.tensors import tensor_from_data, tensor_to_data

log = logging.getLogger("veil.node")


def value_to_wire(value: Any, *, storage: bool = True) -> Any:
    if isinstance(value, torch.Tensor):
        return tensor_to_data(value)
    if is_keras_model(value):  # before nn.Module: a Keras model on torch is one
        return keras_to_wire(value)
    if isinstance(value, nn.Module):
        return module_to_spec(value)
    ext = extension_for(value)  # encrypted tensors and contexts (veil.he)
    if ext is not None:
        return ext.to_wire(value, storage)
    raise InvalidRequest(f"a {type(value).__name__} cannot be sent")


def value_from_wire(value: Any, *, copy: bool, resolve: Callable[[int], Any] | None = None) -> Any:
    if isinstance(value, TensorData):
        return tensor_from_data(value, copy=copy)
    if isinstance(value, ModuleSpec):
        return spec_to_module(value)
    if isinstance(value, KerasModelData):  # Keras is imported here, when the first one arrives
        return keras_from_wire(value)
    ext = extension_for(value)
    if ext is None:
        raise InvalidRequest(
            f"this node cannot hold a {type(value).__name__}; its support is not installed "
            "(for encrypted tensors: pip install 'veil[he]' on the node)"
        )
    try:
        return ext.from_wire(value, resolve)
    except VeilError:
        raise
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"invalid {ext.kind} object: {exc}") from None


def record_from_row(row: ObjectRow, value: Any, old: ObjectRecord | None) -> ObjectRecord:
    """The record a stored row describes; ``old`` (a rollback) is updated in place, so that
    everything holding it keeps holding the node's record."""
    extra = row.extra or {}
    label, error, alias = (
        str(extra.get("label", "")),
        str(extra.get("error", "")),
        int(extra.get("alias", 0)),
    )
    if old is None:
        return ObjectRecord(
            row.id, value, row.kind, row.owner, row.private, set(row.approved),
            frozenset(row.sources), row.asset_of, row.description, row.created, label, error,
            alias,
        )  # fmt: skip
    old.value, old.kind, old.owner, old.private = value, row.kind, row.owner, row.private
    old.approved, old.sources, old.asset_of = (
        set(row.approved),
        frozenset(row.sources),
        row.asset_of,
    )
    old.description, old.created, old.label, old.error, old.alias = (
        row.description, row.created, label, error, alias,
    )  # fmt: skip
    return old


class PersistenceMixin(NodeBase):
    """How a node loads, writes and rolls back its durable state (one transaction per message)."""

    def _load(self) -> None:
        snap = self.store.load()
        for u in snap.users:
            self._users[u.id] = u
        self._load_objects(snap.objects, {})
        for d in snap.datasets:
            self._datasets[d.name] = dataset_from_row(d)
        for r in snap.requests:
            self._requests[r.id] = r
            if r.status in ("pending", "approved") and r.digest:
                self._open_requests.setdefault(r.object_id, set()).add(r.id)
        for state in snap.dp:
            self._rows.setdefault(state.kind, {})[state.key] = state.value
        for cap in self._caps.values():  # start-up hooks (e.g. veil.dp reads its rows)
            cap.start()

    def _load_objects(self, rows: list[ObjectRow], live: dict[int, ObjectRecord]) -> None:
        """Rebuild objects from their rows: values, then views of them, then optimizers
        (:mod:`veil.node.aliasing`). An object in ``live`` (a rollback) keeps its record and,
        where it can, its tensors: the stored data is copied into them."""
        decoded = []
        for row in rows:
            try:
                decoded.append((row, codec.decode_stored(row.payload)))
            except SerdeError as exc:
                raise SerdeError(f"stored object {row.id} is corrupt ({exc})") from None
        decoded.sort(key=lambda rf: (load_tier(rf[1]), load_order(rf[0].kind)))
        forms, loaded = {}, []
        for row, form in decoded:
            old = live.get(row.id)
            value: Any
            if isinstance(form, TensorView):
                base = self._objects.get(form.base)
                if base is None:
                    raise SerdeError(
                        f"stored object {row.id} is a view of object {form.base}, which the "
                        "store does not hold"
                    )
                value = build_view(form, base.value)
                if old is not None and same_view(old.value, value):
                    value = old.value
            elif isinstance(form, Value):
                value = value_from_wire(form.value, copy=False)
                if old is not None and self._aliasing.restorable(old, self._objects):
                    value = old.value if restore_into(old.value, value) else value
            else:
                value = build_optimizer(
                    form, lambda i: getattr(self._objects.get(i), "value", None)
                )
            rec = record_from_row(row, value, old)
            self._objects[row.id] = rec
            if rec.alias:
                self._aliases[(rec.owner, rec.alias)] = rec.id
            forms[row.id] = form
            loaded.append(rec)
        if self.store.persistent:
            for rec in loaded:
                self._aliasing.track(rec)
            self._aliasing.settle(loaded, forms, self._objects)

    def _persist(self, rec: ObjectRecord, blob: str | None = None) -> None:
        """Write ``rec`` at the end of this message (its row is built at the commit)."""
        if self.store.persistent:
            self._dirty[rec.id] = blob or self._dirty.get(rec.id)
            self._aliasing.track(rec)

    def _object_rows(self, batch: Batch, dirty: dict[int, str | None]) -> Plan:
        """Put the rows of the objects this message changed into ``batch``: each stored as
        its value, a view of another's tensor, or an optimizer (see :mod:`.aliasing`)."""
        plan = self._aliasing.plan(dirty, self._objects)
        for oid, form in plan.forms.items():
            rec = self._objects[oid]
            blob = dirty.get(oid)
            if blob:
                payload: Any = b""  # written ahead by the store (Node.handle)
            elif form is None:
                payload = codec.encode(Value(value_to_wire(rec.value)))
            else:
                payload = codec.encode(form)
            extra: dict[str, Any] = {}
            if rec.label or rec.error or rec.alias:  # error text may quote any argument
                extra = {"label": storable(rec.label), "error": storable(rec.error),
                         "alias": rec.alias}  # fmt: skip
                extra = {k: v for k, v in extra.items() if v}
            batch.objects[oid] = ObjectRow(
                rec.id, rec.kind, rec.owner, rec.private, sorted(rec.approved),
                sorted(rec.sources), rec.asset_of, rec.description, rec.created, payload,
                extra, blob,
            )  # fmt: skip
        return plan

    def _commit(self) -> None:
        batch, dirty, dropped = self._batch, self._dirty, self._dropped
        if not (batch or dirty):
            dropped.clear()
            return
        self._batch, self._dirty, self._dropped = Batch(), {}, {}
        try:
            plan = self._object_rows(batch, dirty) if dirty else None
            self.store.write(batch)
        except Exception as exc:
            # Memory holds changes the store refused: undo them, and only them.
            log.exception("store write failed on node %s; undoing this message", self.name)
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""]
            what = f"{type(exc).__name__}: {reason[0][:300]}"
            if not self._rollback(batch, dirty, dropped):
                raise StorageError(
                    f"node {self.name!r} could not persist this change ({what}), nor re-read "
                    "its store to undo it: what this message touched is unavailable until the "
                    "node restarts. Tell the node's owner to restart it"
                ) from exc
            raise StorageError(
                f"node {self.name!r} could not persist this change ({what}); it rolled back "
                "what this message changed (nothing else). Retry, or tell the node's owner"
            ) from exc
        if plan is not None or batch.deleted:
            self._aliasing.commit(plan or Plan(), batch.deleted)
        for w in batch.dp:  # rows written by veil.dp directly: _rows mirrors the store
            self._rows.setdefault(w.kind, {})[w.key] = w.value

    def _rollback(self, batch: Batch, dirty: dict[int, str | None],
                  dropped: dict[int, tuple[ObjectRecord, Any]]) -> bool:  # fmt: skip
        """Undo a batch the store refused: what it names comes back as the store holds it
        (read again by key); what the store does not hold (made by this message) goes.
        Everything else in memory (other objects and their tensors, sessions, extension
        state) is left alone. Returns False if the store could not be read either: then
        what the batch named is dropped from memory (a restart brings it back)."""
        oids = set(batch.objects) | set(dirty) | batch.deleted
        try:
            snap: Snapshot | None = self.store.load_keys(
                objects=oids, users={u.id for u in batch.users},
                datasets={d.name for d in batch.datasets},
                requests={q.id for q in batch.requests}, rows={w.key for w in batch.dp},
            )  # fmt: skip
        except Exception:
            log.exception("node %s could not re-read its store after a failed write", self.name)
            snap = None
        got = snap or Snapshot([], [], [], [])
        written = self._restore_objects(oids, got.objects, dropped)
        if written is None:
            snap, written = None, set()
        self._restore_rows(batch, got)
        self._restore_caps(batch, written, dropped)
        return snap is not None

    def _restore_objects(self, oids: set[int], rows: list[ObjectRow],
                         dropped: dict[int, tuple[ObjectRecord, Any]]) -> set[int] | None:  # fmt: skip
        """Objects as their rows say, restored into the records (and tensors) that are
        still there; those without a row are dropped. Returns the ids of restored objects
        whose tensors the refused message had written, or None if the rows did not load."""
        live = {}
        for oid in oids:
            rec = self._objects.get(oid) or (dropped[oid][0] if oid in dropped else None)
            if rec is not None:
                live[oid] = rec
                self._aliasing.track(rec)  # a deleted one was dropped from the index
        written = {oid for oid, rec in live.items() if self._aliasing.written(rec)}
        durable = {row.id: row for row in rows}
        for oid in oids - durable.keys():
            self._forget(oid, live.get(oid))
        try:
            self._load_objects(list(durable.values()), live)
        except VeilError:  # a row that no longer loads: as if the store could not be read
            log.exception("node %s could not restore objects after a failed write", self.name)
            for oid in durable:
                self._forget(oid, live.get(oid))
            return None
        for oid in dropped.keys() & durable.keys():  # deleted, now back: still retaining?
            value = self._objects[oid].value
            if isinstance(value, torch.Tensor) and value.retains_grad:
                self._retaining.add(oid)
        return written

    def _restore_rows(self, batch: Batch, got: Snapshot) -> None:
        """Users, datasets, requests and capability rows a refused batch named: as stored,
        or gone."""
        users = {u.id: u for u in got.users}
        for u in batch.users:
            if u.id in users:
                self._users[u.id] = users[u.id]
            else:
                self._users.pop(u.id, None)
        datasets = {d.name: d for d in got.datasets}
        for d in batch.datasets:
            if d.name in datasets:
                self._datasets[d.name] = dataset_from_row(datasets[d.name])
            else:
                self._datasets.pop(d.name, None)
        requests = {q.id: q for q in got.requests}
        for q in batch.requests:
            if q.id in requests:
                self._requests[q.id] = requests[q.id]
            else:
                self._requests.pop(q.id, None)
        if batch.requests:  # which requests a write would void, as stored
            self._open_requests.clear()
            for r in self._requests.values():
                if r.status in ("pending", "approved") and r.digest:
                    self._open_requests.setdefault(r.object_id, set()).add(r.id)
        stored = {w.key: w for w in got.dp}
        for w in batch.dp:
            self._rows.get(w.kind, {}).pop(w.key, None)
            if w.key in stored:
                self._rows.setdefault(stored[w.key].kind, {})[w.key] = stored[w.key].value
        for kind in [k for k, table in self._rows.items() if not table]:
            del self._rows[kind]

    def _restore_caps(self, batch: Batch, written: set[int],
                      dropped: dict[int, tuple[ObjectRecord, Any]]) -> None:  # fmt: skip
        """Capabilities after a rollback (:meth:`CapabilityState.on_rollback`): deleted
        objects that came back and the message did not write get back what they had."""
        for name, cap in self._caps.items():
            restored = {
                oid: saved.get(name) for oid, (_, saved) in dropped.items()
                if oid in self._objects and oid not in written
            }  # fmt: skip
            cap.on_rollback(bool(batch.dp), written, restored)

    def _forget(self, oid: int, rec: ObjectRecord | None) -> None:
        """Drop an object from memory (no row holds it, or none could be read)."""
        self._objects.pop(oid, None)
        if rec is not None:
            if rec.alias and self._aliases.get((rec.owner, rec.alias)) == oid:
                del self._aliases[(rec.owner, rec.alias)]
            self._aliasing.untrack(rec)
        self._aliasing.forget(oid)
        self._retaining.discard(oid)
        for cap in self._caps.values():
            cap.on_forget(oid)

    def rows(self, kind: str) -> dict[str, dict[str, Any]]:
        """A capability's durable rows of ``kind`` (key -> JSON value), as persisted.

        Example:
            >>> from veil.node import Node
            >>> node = Node("n", owner_password="pw-long-enough")
            >>> node.put_row("mpc.dealer:carol", "mpc.dealer", {"key": "ab12"})
            >>> node.rows("mpc.dealer")
            {'mpc.dealer:carol': {'key': 'ab12'}}
        """
        return dict(self._rows.get(kind, {}))

    def row(self, key: str, kind: str) -> dict[str, Any] | None:
        """One durable row of a capability's (None if there is none).

        Example:
            >>> from veil.node import Node
            >>> node = Node("n", owner_password="pw-long-enough")
            >>> node.row("k", "doc.kind") is None
            True
        """
        return self._rows.get(kind, {}).get(key)

    def put_row(self, key: str, kind: str, value: dict[str, Any]) -> None:
        """Write a capability's durable row (JSON-able ``value``; replaces ``key``). It is
        committed with the message being handled (or at once when called outside one)."""
        check_row(key, kind, value)  # before anything changes: a clear error, not a failed write
        with self._lock:
            self._rows.setdefault(kind, {})[key] = value
            self._batch.dp.append(DPRow(key, kind, value))
            if not self._handling:
                self._commit()
