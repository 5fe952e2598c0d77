"""Node: a data owner's object store, datasets, users, requests and audit log, behind one message API."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from veil.errors import (
    AuthenticationError,
    InvalidRequest,
    ObjectNotFound,
    PermissionDenied,
    RemoteError,
    SerdeError,
    SessionExpired,
    StorageError,
    VeilError,
)
from veil.node import kernel
from veil.node.aliasing import (
    Aliasing,
    Plan,
    build_optimizer,
    build_view,
    load_tier,
    restore_into,
    same_view,
)
from veil.node.dp import NodeDP
from veil.node.objects import (
    ObjectRecord,
    autograd_graph,
    extension_for,
    kind_of,
    load_order,
    storage_keys,
    tensors_of,
)
from veil.node.store import (
    AuditRow,
    Batch,
    DatasetRow,
    DPRow,
    MemoryStore,
    ObjectRow,
    RequestRow,
    Snapshot,
    Store,
    UserRow,
)
from veil.node.text import STORED_TEXT, check_message, check_row, storable
from veil.node.tokens import TOKEN_TTL_S, TokenTable
from veil.node.uploads import StagedUpload, stage_upload
from veil.node.users import STAND_IN_HASH, Session, check_new_user, hash_password, verify_password
from veil.ops import OpFacts, OpRegistry, OpSpec, default_registry
from veil.ops.facts import shape_values_of
from veil.serde import codec
from veil.serde.messages import (
    CLIENT_IDS,
    AssetInfo,
    AuditEntry,
    AuditLog,
    Call,
    ClearObjects,
    CreateDataset,
    CreateUser,
    DatasetInfo,
    DatasetList,
    DecideRequest,
    DeleteObjects,
    DictArg,
    Done,
    ErrorReply,
    GetAudit,
    GetDataset,
    GetInfo,
    GetObject,
    ListArg,
    ListBudgets,
    ListDatasets,
    ListObjects,
    ListRequests,
    ListUsers,
    ModuleSpec,
    NodeInfo,
    ObjectInfo,
    ObjectList,
    Publish,
    Ref,
    Reply,
    RequestAccess,
    RequestInfo,
    RequestList,
    Results,
    RunOp,
    SendObject,
    SetBudget,
    SliceArg,
    TensorData,
    TensorView,
    TupleArg,
    UserInfo,
    UserList,
    Value,
)
from veil.serde.modules import module_to_spec, spec_to_module
from veil.serde.tensors import tensor_from_data, tensor_to_data
from veil.serde.values import SCALAR_TYPES, from_arg
from veil.version import WIRE_VERSION, __version__

log = logging.getLogger("veil.node")

#: ``void``: the object changed after the request, so the request no longer describes it.
REQUEST_STATUSES = ("pending", "approved", "denied", "void")


@dataclass(slots=True)
class _Dataset:
    name: str
    description: str
    created: float
    assets: list[tuple[str, int, TensorData, list[str], list[tuple[float, float]], str]]


class Node:
    """A data owner's node. Transports (in-process or server) call :meth:`handle_frame`.

    Args:
        name: the node's name.
        store: where durable state goes (:class:`MemoryStore` by default).
        owner_email / owner_password: the first user, created if the store has no users
            (a random password is generated when none is given; see ``owner_password``).
        registry: the op allowlist (``veil.ops.default_registry()``).
        max_message_bytes: the largest frame the node accepts.
        max_result_bytes: the largest tensor an op with a size argument may create.

    Example:
        >>> node = Node("clinic", owner_email="me@clinic.org", owner_password="s3cret-pass")
        >>> node.login("me@clinic.org", "s3cret-pass").role
        'owner'
    """

    def __init__(
        self,
        name: str,
        *,
        store: Store | None = None,
        owner_email: str | None = None,
        owner_password: str | None = None,
        registry: OpRegistry | None = None,
        max_message_bytes: int = codec.DEFAULT_MAX_MESSAGE_BYTES,
        max_result_bytes: int = 8 * 1024**3,
    ) -> None:
        self.name = name
        self.store = store if store is not None else MemoryStore()
        self.registry = registry or default_registry()
        self._specs = self.registry.specs  # the live name -> OpSpec table (per-op lookups)
        self.max_message_bytes = max_message_bytes
        self.max_result_bytes = max_result_bytes
        self._lock = threading.RLock()
        self._objects: dict[int, ObjectRecord] = {}
        # Ids count up from a random start: unique without a syscall per object. They need
        # not be secret: every use of an id is checked against the caller's permissions.
        self._ids = itertools.count(secrets.randbits(61))
        self._users: dict[int, UserRow] = {}
        self._tokens = TokenTable(TOKEN_TTL_S)  # in memory: a restart ends every session
        self._datasets: dict[str, _Dataset] = {}
        self._requests: dict[int, RequestRow] = {}
        #: Result ids a client chose (``RunOp.out``), per user: (user id, client id) -> id.
        self._aliases: dict[tuple[int, int], int] = {}
        #: Non-leaf tensors asked to keep their gradient (``retain_grad``): a backward from
        #: private data makes them private.
        self._retaining: set[int] = set()
        #: Per user: how many of their public objects were later written with private data
        #: (a public backward or step may then read private data through them).
        self._late_taints: dict[int, int] = {}
        #: Requests still pending or approved, by object id (a write voids them).
        self._open_requests: dict[int, set[int]] = {}
        #: torch's generator state for ops on private data (see :meth:`_private_rng`).
        self._rng = torch.Generator().manual_seed(secrets.randbits(63)).get_state()
        #: Durable keyed state of capabilities (kind -> key -> JSON value), see :meth:`put_row`.
        self._rows: dict[str, dict[str, dict[str, Any]]] = {}
        self._batch = Batch()
        #: Objects to write at the next commit (their rows are built then) -> staged payload
        self._dirty: dict[int, str | None] = {}
        #: Objects deleted since the last commit, kept until it succeeds (a failed write
        #: brings them back, with the very tensors other objects still hold)
        self._dropped: dict[int, tuple[ObjectRecord, Any]] = {}
        #: How objects that share tensors are stored (persistent stores only)
        self._aliasing = Aliasing()
        #: State of extension ops (effect "node"), by extension name; in memory only.
        self.extensions: dict[str, Any] = {}
        self._handlers: dict[type, Callable[[Session, Any], Reply]] = {
            SendObject: self._send,
            RunOp: self._run_op,
            GetObject: self._get,
            DeleteObjects: self._delete,
            ClearObjects: self._clear,
            ListObjects: self._list_objects,
            RequestAccess: self._request_access,
            ListRequests: self._list_requests,
            DecideRequest: self._decide,
            CreateDataset: self._create_dataset,
            ListDatasets: self._list_datasets,
            GetDataset: self._get_dataset,
            CreateUser: self._create_user,
            ListUsers: self._list_users,
            GetAudit: self._audit,
            GetInfo: self._info,
        }
        # veil.dp: sensitivity tracking, DP releases, budgets and the ledger (node/dp.py)
        self._dp = NodeDP(self)
        self._handlers.update(
            {
                Publish: self._dp.publish,
                SetBudget: self._dp.set_budget,
                ListBudgets: self._dp.list_budgets,
            }  # fmt: skip
        )
        self._load()
        #: The generated owner password, when the node created its owner without one.
        self.owner_password: str | None = None
        if not self._users:
            email = owner_email or f"owner@{name}.local"
            if owner_password is None:
                owner_password = secrets.token_urlsafe(12)
                self.owner_password = owner_password
            self.create_user(email, owner_password, role="owner", name="owner")

    # ------------------------------------------------------------------ persistence
    def _load(self) -> None:
        snap = self.store.load()
        for u in snap.users:
            self._users[u.id] = u
        self._load_objects(snap.objects, {})
        for d in snap.datasets:
            self._datasets[d.name] = _dataset_from_row(d)
        for r in snap.requests:
            self._requests[r.id] = r
            if r.status in ("pending", "approved") and r.digest:
                self._open_requests.setdefault(r.object_id, set()).add(r.id)
        for state in snap.dp:
            self._rows.setdefault(state.kind, {})[state.key] = state.value
        self._dp.load(snap)  # veil.dp

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
                value = _value_from_wire(form.value, copy=False)
                if old is not None and self._aliasing.restorable(old, self._objects):
                    value = old.value if restore_into(old.value, value) else value
            else:
                value = build_optimizer(
                    form, lambda i: getattr(self._objects.get(i), "value", None)
                )
            rec = _record_from_row(row, value, old)
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

    def _audit_row(self, session: Session, action: str, detail: str = "",
                   objects: list[int] | None = None, sources: Any = ()) -> None:  # fmt: skip
        self._batch.audit.append(
            AuditRow(time.time(), session.email, action, detail, objects or [], sorted(sources))
        )

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
                payload = codec.encode(Value(_value_to_wire(rec.value)))
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
        self._restore_dp(batch, written, dropped)
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
                self._datasets[d.name] = _dataset_from_row(datasets[d.name])
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

    def _restore_dp(self, batch: Batch, written: set[int],
                    dropped: dict[int, tuple[ObjectRecord, Any]]) -> None:  # fmt: skip
        """veil.dp after a rollback: budgets and the ledger as their rows say; an object the
        refused message wrote loses its bound (unbounded, refused for release, until
        recomputed); one it deleted gets its bound back."""
        for oid, (_, bound) in dropped.items():
            if bound is not None and oid in self._objects and oid not in written:
                self._dp.bounds[oid] = bound
        if not batch.dp:
            for oid in written:
                self._dp.bounds.pop(oid, None)
            return
        bounds = {k: b for k, b in self._dp.bounds.items() if k not in written}
        self._dp.clear()
        self._dp.load(Snapshot([], [], [], [], [
            DPRow(key, kind, value)
            for kind, table in self._rows.items() for key, value in table.items()
        ]))  # fmt: skip
        for oid, bound in bounds.items():  # the bounds of everything else, as they were
            if oid in self._objects:
                self._dp.bounds[oid] = bound

    def _forget(self, oid: int, rec: ObjectRecord | None) -> None:
        """Drop an object from memory (no row holds it, or none could be read)."""
        self._objects.pop(oid, None)
        if rec is not None:
            if rec.alias and self._aliases.get((rec.owner, rec.alias)) == oid:
                del self._aliases[(rec.owner, rec.alias)]
            self._aliasing.untrack(rec)
        self._aliasing.forget(oid)
        self._retaining.discard(oid)
        self._dp.bounds.pop(oid, None)  # veil.dp

    # ------------------------------------------------------------------ capability state
    def rows(self, kind: str) -> dict[str, dict[str, Any]]:
        """A capability's durable rows of ``kind`` (key -> JSON value), as persisted.

        Example:
            >>> node = Node("n", owner_password="pw-long-enough")
            >>> node.put_row("mpc.dealer:carol", "mpc.dealer", {"key": "ab12"})
            >>> node.rows("mpc.dealer")
            {'mpc.dealer:carol': {'key': 'ab12'}}
        """
        return dict(self._rows.get(kind, {}))

    def put_row(self, key: str, kind: str, value: dict[str, Any]) -> None:
        """Write a capability's durable row (JSON-able ``value``; replaces ``key``). It is
        committed with the message being handled (or at once when called outside one)."""
        check_row(key, kind, value)  # before anything changes: a clear error, not a failed write
        with self._lock:
            self._rows.setdefault(kind, {})[key] = value
            self._batch.dp.append(DPRow(key, kind, value))
            if not self._handling:
                self._commit()

    # ------------------------------------------------------------------ users / sessions
    def create_user(self, email: str, password: str, *, role: str = "data_scientist",
                    name: str = "") -> UserInfo:  # fmt: skip
        """Add a user (the Python API for owners; remote callers use ``CreateUser``)."""
        with self._lock:
            info = self._add_user(email, password, role=role, name=name)
            self._commit()
            return info

    def _add_user(self, email: str, password: str, *, role: str, name: str) -> UserInfo:
        check_new_user(email, password, role, name)
        if any(u.email == email for u in self._users.values()):
            raise InvalidRequest(f"a user with email {email!r} already exists")
        uid = max(self._users, default=0) + 1
        user = UserRow(uid, email, role, name, hash_password(password), time.time())
        self._users[uid] = user
        self._batch.users.append(user)
        return UserInfo(uid, email, role, name)

    def authenticate(self, email: str, password: str) -> Session:
        """Check a password and return the user's :class:`Session`.

        Raises:
            AuthenticationError: unknown email or wrong password (same message for both).
        """
        user = next((u for u in list(self._users.values()) if u.email == email), None)
        # One scrypt either way: an unknown email must cost what a known one costs.
        stored = user.password_hash if user else STAND_IN_HASH
        if not verify_password(password, stored) or user is None:
            raise AuthenticationError(f"wrong email or password for node {self.name!r}")
        return Session(user.id, user.email, user.role)

    def login(self, email: str, password: str) -> Session:
        """Same as :meth:`authenticate`, and writes a ``login`` audit entry."""
        session = self.authenticate(email, password)
        with self._lock:
            self._audit_row(session, "login")
            self._commit()
        return session

    def issue_token(self, session: Session) -> str:
        """A bearer token for network clients (valid for 12 hours, or until revoked)."""
        return self._tokens.issue(session.user_id)

    def session_for_token(self, token: str) -> Session:
        """The session a bearer token stands for, checked on every message a connection
        carries; :class:`SessionExpired` if the token is unknown, expired or revoked."""
        uid = self._tokens.user_of(token)
        user = self._users.get(uid) if uid is not None else None
        if user is None:
            raise SessionExpired(
                f"node {self.name!r} has no live session for this token (it expired, was "
                "revoked, or never existed); log in again (veil.connect does so by itself)"
            )
        return Session(user.id, user.email, user.role)

    def revoke_sessions(self, by: Session, email: str) -> int:
        """End every session (token) of user ``email``: their open connections fail their
        next message. Users may end their own; owners and admins anyone's, but only an
        owner an owner's. Returns how many live sessions ended.

        Example:
            >>> node = Node("n", owner_email="o@n.org", owner_password="password-1")
            >>> owner = node.login("o@n.org", "password-1")
            >>> token = node.issue_token(owner)
            >>> node.revoke_sessions(owner, "o@n.org")
            1
        """
        if email != by.email and not by.is_admin:  # before the lookup: no user enumeration
            raise PermissionDenied("only the node's owner or admins end other users' sessions")
        with self._lock:
            user = next((u for u in self._users.values() if u.email == email), None)
            if user is None:
                raise ObjectNotFound(f"node {self.name!r} has no user {email!r}")
            if user.role == "owner" and by.role != "owner":
                raise PermissionDenied("only an owner can end an owner's sessions")
            revoked = self._tokens.revoke_user(user.id)
            self._audit_row(by, "revoke_sessions", email)
            self._commit()
        return revoked

    # ------------------------------------------------------------------ entry points
    def handle_frame(self, session: Session, frame: bytes | bytearray | memoryview) -> bytearray:
        """Decode one frame, run it, and encode the reply. Never raises: every failure
        becomes an :class:`ErrorReply`, and the node's state is left as it was."""
        try:  # _reply_to, inline: this runs once per op
            call = codec.decode_call(frame, max_bytes=self.max_message_bytes)
        except Exception:
            reply = self._reply_to(session, frame)  # decodes again, to explain the failure
        else:
            reply = self.handle(session, call)
        try:
            return codec.encode(reply)
        except VeilError as exc:
            return codec.encode(
                ErrorReply(exc.code, f"the reply could not be encoded: {exc}"[:2000])
            )

    def handle_frame_parts(
        self, session: Session, frame: bytes | bytearray | memoryview
    ) -> list[bytes | bytearray | memoryview]:
        """:meth:`handle_frame` for transports that send several buffers as one: a large
        tensor in the reply stays where it is (:func:`veil.serde.codec.encode_parts`)."""
        reply = self._reply_to(session, frame)
        try:
            return codec.encode_parts(reply)
        except VeilError as exc:
            return [
                codec.encode(ErrorReply(exc.code, f"the reply could not be encoded: {exc}"[:2000]))
            ]

    def _reply_to(self, session: Session, frame: bytes | bytearray | memoryview) -> Reply:
        try:
            call = codec.decode_call(frame, max_bytes=self.max_message_bytes)
        except VeilError as exc:
            return ErrorReply(exc.code, str(exc))
        except Exception as exc:  # a decoder bug must not take the connection down
            log.exception("undecodable frame on node %s", self.name)
            return ErrorReply("serde_error", f"malformed message: {type(exc).__name__}")
        return self.handle(session, call)

    #: True while a message is being handled (its changes commit when it ends).
    _handling = False

    def try_handle_frame(self, session: Session,
                         frame: bytes | bytearray | memoryview) -> bytearray | None:  # fmt: skip
        """:meth:`handle_frame` if the node is free right now, else None at once: an event
        loop calls this, and must never wait for the node (it would stall every client)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self.handle_frame(session, frame)
        finally:
            self._lock.release()

    def handle(self, session: Session, call: Call) -> Reply:
        """Run one decoded call; errors are returned as :class:`ErrorReply`.

        Order: the deferred ops in ``call.before`` (each committed on its own; the first
        failure stops the call and names its index), then the releases, then the request.
        A large upload is written to the store first, outside the node's lock
        (:mod:`veil.node.uploads`), so that it does not stall other users.
        """
        msg = call.msg
        if type(msg) in STORED_TEXT:  # text a database refuses: a clear error, nothing changes
            try:
                check_message(msg)
            except InvalidRequest as exc:
                return ErrorReply(exc.code, str(exc))
        if (
            type(msg) is SendObject
            and self.store.persistent
            and (session.is_admin or not msg.private)
        ):
            staged = stage_upload(self.store, next(self._ids), msg)  # outside the lock
            if staged is not None:
                reply = self._locked(session, call, functools.partial(self._send, staged=staged))
                if isinstance(reply, ErrorReply):  # no row names the staged payload
                    self.store.discard(staged.blob)
                return reply
        return self._locked(session, call, self._handlers[type(msg)])

    def _locked(self, session: Session, call: Call,
                handler: Callable[[Session, Any], Reply]) -> Reply:  # fmt: skip
        with self._lock:
            self._handling = True
            try:
                return self._handle(session, call, handler)
            finally:
                self._handling = False

    def _handle(self, session: Session, call: Call,
                handler: Callable[[Session, Any], Reply]) -> Reply:  # fmt: skip
        if call.before:
            for i, op in enumerate(call.before):
                error = self._guarded(session, self._run_op, op)
                if isinstance(error, ErrorReply):
                    return ErrorReply(error.code, error.message, deferred=i)
        if call.release:  # committed on their own: a failing request keeps them
            self._release(session, call.release)
            if self.store.persistent:
                try:
                    self._commit()
                except StorageError as exc:
                    return ErrorReply(exc.code, str(exc))
        return self._guarded(session, handler, call.msg)

    def _guarded(self, session: Session, handler: Callable[[Session, Any], Reply],
                 msg: Any) -> Reply:  # fmt: skip
        """Run a handler and commit; on failure, drop its changes and answer the error."""
        try:
            reply = handler(session, msg)
            b = self._batch  # Batch.__bool__, inline: most ops change nothing durable
            if self._dirty or b.deleted or b.audit or b.users or b.datasets or b.requests or b.dp:
                self._commit()
            return reply
        except VeilError as exc:
            self._discard()
            return ErrorReply(exc.code, str(exc))
        except Exception as exc:  # a bug or an unexpected library error: answer, keep serving
            self._discard()
            log.exception("internal error on node %s", self.name)
            return ErrorReply("remote_error", f"internal error: {type(exc).__name__}: {exc}")

    def _discard(self) -> None:
        """Forget the durable changes of a message that failed (its handler refuses before
        changing memory; a failed commit has rolled memory back already)."""
        self._batch, self._dirty, self._dropped = Batch(), {}, {}

    # ------------------------------------------------------------------ permissions
    def _record(self, session: Session, obj_id: int) -> ObjectRecord:
        """A record the session may compute with (its own, a dataset asset, or any for admins).

        Ids in ``CLIENT_IDS`` are names the caller's client chose: they resolve among the
        caller's own objects only."""
        rec = self._objects.get(
            self._aliases.get((session.user_id, obj_id), -1) if obj_id >= _CLIENT_START else obj_id
        )
        if rec is None and session.is_admin and obj_id >= _CLIENT_START:
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
        if obj_id < _CLIENT_START:
            return self._objects.get(obj_id)
        if user_id is not None:
            return self._objects.get(self._aliases.get((user_id, obj_id), -1))
        return next((self._objects[i] for (_, a), i in self._aliases.items() if a == obj_id), None)

    def _check_mutable(self, session: Session, rec: ObjectRecord) -> None:
        if session.is_admin:
            return
        if rec.asset_of is not None or rec.owner != session.user_id:
            raise PermissionDenied(
                f"object {rec.id} is data of dataset {rec.asset_of!r} and is read-only; "
                "work on a copy: ptr.clone()"
            )
        shared = storage_keys(tensors_of(rec.value)) & self._asset_storages()
        if shared:  # a view (x[0], x.T, x.data...) of a dataset's data writes into the data
            by_ds = self._asset_keys_by_dataset()
            names = sorted(n for n, keys in by_ds.items() if keys & shared)
            raise PermissionDenied(
                f"object {rec.id} is a view of dataset {', '.join(names)}'s data and is "
                "read-only; work on a copy: ptr.clone()"
            )

    def _asset_keys_by_dataset(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for ds in self._datasets.values():
            recs = [self._objects.get(a[1]) for a in ds.assets]
            out[ds.name] = storage_keys(t for r in recs if r for t in tensors_of(r.value))
        return out

    def _asset_storages(self) -> set[int]:
        """Storage addresses of every dataset's private data (never freed while the node runs)."""
        return set().union(*self._asset_keys_by_dataset().values())

    def _check_readable(self, session: Session, rec: ObjectRecord) -> None:
        if session.is_admin or not rec.private or self._approved_for(session, rec):
            return
        src = f" (derived from dataset {', '.join(sorted(rec.sources))})" if rec.sources else ""
        raise PermissionDenied(
            f"object {rec.id} on node {self.name!r} is private{src}; ask the data owner "
            "with ptr.request('what it is for'), and .get() it once approved"
        )

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

    def _email(self, user_id: int) -> str:
        user = self._users.get(user_id)
        return user.email if user else f"user#{user_id}"

    def _info_of(self, rec: ObjectRecord) -> ObjectInfo:
        return rec.info(self._email(rec.owner))

    # ------------------------------------------------------------------ objects
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
        value = _value_from_wire(
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
        return Value(_value_to_wire(rec.value, storage=False))

    def _release(self, session: Session, ids: list[int]) -> None:
        uid = session.user_id
        for oid in ids:
            if oid >= _CLIENT_START:
                oid = self._aliases.get((uid, oid), -1)
            rec = self._objects.get(oid)
            if rec is None or rec.asset_of is not None:
                continue
            if rec.owner == uid or session.is_admin:
                del self._objects[oid]
                if rec.alias:
                    self._aliases.pop((rec.owner, rec.alias), None)
                self._retaining.discard(oid)
                bound = self._dp.bounds.get(oid)
                self._dp.forget(oid)  # veil.dp: its tracked bound goes with it (a tombstone)
                if self.store.persistent:
                    self._batch.deleted.add(oid)
                    self._dirty.pop(oid, None)
                    self._dropped[oid] = (rec, bound)  # a failed write brings them back
                    for other in self._aliasing.dependents(rec, self._objects):
                        self._dirty.setdefault(other)  # rows that referred to it
                    self._aliasing.untrack(rec)

    def _delete(self, session: Session, msg: DeleteObjects) -> Reply:
        for oid in msg.ids:  # named explicitly (unlike piggybacked releases): all or nothing
            rec = self._objects.get(
                self._aliases.get((session.user_id, oid), -1) if oid >= _CLIENT_START else oid
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

    # ------------------------------------------------------------------ ops
    def _run_op(self, session: Session, msg: RunOp) -> Reply:
        spec = self._specs.get(msg.op) or self.registry.get(msg.op)  # get() explains a refusal
        if msg.out and (
            msg.out not in CLIENT_IDS or (session.user_id, msg.out) in self._aliases
        ):  # ids a client names are its own: nothing about other users' ids is revealed
            raise InvalidRequest(
                f"{msg.op}: result id {msg.out} is not free; a client names results only with "
                f"ids in [2**62, 2**63) that it has not used (veil's client does this itself)"
            )
        if spec.effect == "node":
            return self._run_node_op(session, spec, msg)
        inputs: list[ObjectRecord] = []

        def resolve(oid: int) -> Any:
            rec = self._record(session, oid)
            inputs.append(rec)
            return rec.value

        objects, uid = self._objects, session.user_id
        args: list[Any] = []
        private = nested = False
        a: Any
        for a in msg.args:
            t = type(a)
            if t is Ref:  # the common case inline; _record explains any refusal
                rec = objects.get(a.id)
                if rec is None or not (rec.owner == uid or rec.asset_of is not None):
                    rec = self._record(session, a.id)
                inputs.append(rec)
                args.append(rec.value)
                private = private or rec.private
            elif t in SCALAR_TYPES:
                args.append(a)
            else:
                args.append(from_arg(a, resolve))
                nested = True
        kwargs: dict[str, Any] = {}
        if msg.kwargs:
            kwargs = {k: from_arg(v, resolve) for k, v in msg.kwargs.items()}
            if kwargs.get("out") is not None:  # would write behind the privacy bookkeeping
                raise InvalidRequest(f"{msg.op}: out= is not supported on a node; use the result")
            nested = True
        if nested:  # records resolved inside lists or keywords count too
            private = any(r.private for r in inputs)
        target = inputs[0] if inputs and args and args[0] is inputs[0].value else None
        if spec.effect != "none" and target is not None and spec.effect in ("inplace", "step"):
            self._check_mutable(session, target)
        declared = (
            [r for w in _written_args(spec, args, kwargs) for r in inputs if r.value is w]
            if _may_write(spec)
            else []
        )
        for rec in declared:
            self._check_mutable(session, rec)
        if (
            not private
            and spec.effect in ("backward", "step")
            and self._late_taints.get(uid)
            and args
        ):  # written with private data after it was made: what backward or step reads
            hidden = self._private_behind(spec.effect, args[0], uid)
            if hidden:
                private = True
                inputs = [*inputs, *hidden]
        guarded = private and not session.is_admin
        prediction: Any = _UNPREDICTED
        if guarded:  # the privacy kernel: the reply depends on public facts only
            with self._private_rng():
                prediction = self._predict(spec, args, kwargs, inputs)
        else:
            self._check_size(spec, args, kwargs, inputs, nested)
        error = next((r.error for r in inputs if r.error), "") if private else ""
        before = [_versions(r.value) for r in inputs] if private else []
        try:
            if guarded:  # randomness it draws comes from a stream no public op sees
                with self._private_rng():
                    result = spec.fn(*args, **kwargs)
            else:
                result = spec.fn(*args, **kwargs)
        except Exception as exc:
            if guarded and prediction is not _UNPREDICTED:  # it failed on private values
                error = error or _failure(msg.op, exc)
                result = self._placeholder(spec, prediction, args, target)
                if spec.effect == "backward" and args and isinstance(args[0], torch.Tensor):
                    self._fill_grads(args[0])
            elif isinstance(exc, VeilError):
                raise
            elif guarded:  # torch's message may quote private values
                raise RemoteError(
                    f"{msg.op} failed on node {self.name!r} ({type(exc).__name__}); the message "
                    "is withheld because it could quote private data: try the same code on the "
                    "dataset's mock to see it"
                ) from None
            else:
                raise RemoteError(
                    f"{msg.op} failed on node {self.name!r}: {type(exc).__name__}: {exc}"
                ) from None
        else:
            if (
                guarded
                and spec.facts is not None
                and spec.facts.index_arg >= 0
                and spec.effect == "none"
                and isinstance(result, torch.Tensor)
                and _private_in(args[spec.facts.index_arg : spec.facts.index_arg + 1], inputs)
                and storage_keys([result]) & storage_keys(_tensor_args(args))
            ):  # a view picked by a private index: a copy, as a failed pick would be
                result = result.clone()
            if (
                guarded
                and prediction is not _UNPREDICTED
                and spec.effect not in ("backward", "step")
                and not kernel.matches(prediction, result)
            ):
                error = error or (
                    f"{msg.op}: the result's shape or dtype depended on private values"
                )
                result = self._placeholder(spec, prediction, args, target)
        if len(inputs) == 1:
            sources = inputs[0].sources
        else:
            sources = frozenset().union(*(r.sources for r in inputs)) if inputs else frozenset()
        label = _label_of(inputs) if private else ""
        if spec.effect != "none":
            self._apply_effects(spec, target, args, private, sources, error, label)
        if private:  # any input the op wrote into (e.g. batch-norm running stats) is tainted
            written = declared + [r for r, v in zip(inputs, before) if _versions(r.value) != v]
            if error and target is not None and spec.effect == "inplace":
                written.append(target)  # a failed in-place op leaves its target unknown
            if (
                spec.effect == "module_call"
                and target is not None
                and isinstance(target.value, nn.Module)
                and _module_may_write(target.value)
            ):  # whether or not this call wrote it (or failed first): the same taint
                written.append(target)
            if written:
                keys = storage_keys(t for r in written for t in tensors_of(r.value))
                self._taint(keys, sources, error, label)
                for r in written:
                    if error and r.asset_of is None:
                        r.error = r.error or error
                self._dp.invalidate(keys)  # veil.dp: written data loses its bounds
        if sources:  # ops on dataset-derived data are audited (uploads, gets and requests always)
            self._audit_row(session, "op", msg.op, [r.id for r in inputs], sources)
        if msg.out:
            reply = self._named_result(session, msg, result, private, sources, error, label)
        elif type(result) is torch.Tensor and target is None and not error and not label:
            reply = self._store(session, result, private=private, sources=sources).info(
                session.email
            )  # _wrap_result's first case, inline
        else:
            reply = self._wrap_result(session, result, target, private, sources, error, label)
        if private:  # veil.dp: sensitivity tracking of what derives from private data
            self._dp.after_op(msg.op, args, kwargs, inputs, reply)
        if spec.name == "Tensor.retain_grad" and target is not None:
            self._retaining.add(target.id)
        return reply

    def _predict(self, spec: OpSpec, args: list[Any], kwargs: dict[str, Any],
                 inputs: list[ObjectRecord]) -> Any:  # fmt: skip
        """What the scientist may learn of an op on private data before it runs (see
        :mod:`veil.node.kernel`): refused if a private value decides the result's shape;
        the failure of its meta run, with torch's message; else its predicted result."""
        ids = {id(r.value) for r in inputs if r.private}
        for v in shape_values_of(spec.facts or _NO_FACTS, args, kwargs):
            if isinstance(v, torch.Tensor) and id(v) in ids:
                raise PermissionDenied(
                    f"{spec.name} on private data is refused: the shape of its result would "
                    "depend on private values (a mask, a count, a slice bound or a size), and "
                    "shapes are public. Keep shapes fixed instead, e.g. torch.where(mask, x, 0) "
                    "or (x * mask).sum() / mask.sum() for a masked mean"
                )
        if spec.effect in ("backward", "step"):
            if spec.effect == "backward" and args and isinstance(args[0], torch.Tensor):
                root = args[0]
                gradient = args[1] if len(args) > 1 else kwargs.get("gradient")
                if not root.requires_grad:
                    raise RemoteError(
                        "Tensor.backward failed: element 0 of tensors does not require grad "
                        "and does not have a grad_fn"
                    )
                if gradient is None and root.numel() != 1:
                    raise RemoteError(
                        "Tensor.backward failed: grad can be implicitly created only for "
                        "scalar outputs; pass a gradient of the tensor's shape"
                    )
            return None
        try:
            prediction = kernel.predict(spec, args, kwargs)
        except kernel.Unpredictable:
            return _UNPREDICTED
        except kernel.NeedsValues:
            raise PermissionDenied(
                f"{spec.name} on private data is refused: it would read private values as "
                "numbers (a size, count, bound or index), and what it returns, or whether it "
                "fails, would reveal them. Keep shapes and sizes public: use fixed-shape "
                "alternatives such as torch.where(mask, x, 0), x * mask, or one_hot(k, n)"
            ) from None
        except RemoteError as exc:
            raise RemoteError(f"{exc} (on node {self.name!r}, from shapes and dtypes)") from None
        size = kernel.result_bytes(prediction)
        if size > self.max_result_bytes:
            raise InvalidRequest(
                f"{spec.name} would create {size} bytes, over this node's limit of "
                f"{self.max_result_bytes}"
            )
        return prediction

    def _private_behind(self, effect: str, root: Any, user: int) -> list[ObjectRecord]:
        """Private records whose storage a public ``backward`` (its graph's leaves and saved
        tensors) or ``step`` (the optimizer's parameters, gradients and state) would read:
        data written into them after the graph or optimizer was made."""
        unreadable = False
        if effect == "backward" and isinstance(root, torch.Tensor):
            tensors, unreadable = _graph_tensors(root)
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

    @contextlib.contextmanager
    def _private_rng(self) -> Iterator[None]:
        """Run with torch's generator switched to a stream of its own: how many random
        numbers an op on private data draws may depend on the data, and the public stream
        (which a scientist can clone from her own random tensors) must not show it."""
        public = torch.get_rng_state()
        torch.set_rng_state(self._rng)
        try:
            yield
        finally:
            self._rng = torch.get_rng_state()
            torch.set_rng_state(public)

    def _fill_grads(self, root: torch.Tensor) -> None:
        """After a backward that failed on private values: give every tensor it would have
        written a gradient (zeros; the taint that follows carries the error), so whether a
        ``.grad`` exists afterwards does not tell the scientist that it failed."""
        leaves, nodes = autograd_graph(root)
        targets = [t for t in leaves if t.requires_grad and t.is_leaf]
        for oid in self._retaining:
            rec = self._objects.get(oid)
            if rec is not None and isinstance(rec.value, torch.Tensor):
                if rec.value.grad_fn is not None and rec.value.grad_fn in nodes:
                    targets.append(rec.value)
        for t in targets:
            if t.grad is None:
                t.grad = torch.zeros_like(t)

    def _placeholder(self, spec: OpSpec, prediction: Any, args: list[Any],
                     target: ObjectRecord | None) -> Any:  # fmt: skip
        """What an op that failed on private values leaves as its result."""
        if target is not None and spec.effect == "inplace":
            return target.value  # in-place ops answer with their target
        if spec.effect in ("backward", "step"):
            return None
        return kernel.placeholder(prediction, args)

    def _check_size(self, spec: OpSpec, args: list[Any], kwargs: dict[str, Any],
                    inputs: list[ObjectRecord], nested: bool) -> None:  # fmt: skip
        """Refuse an op on public data whose result would pass ``max_result_bytes``."""
        rule = spec.facts.size if spec.facts is not None else "meta"
        limit = self.max_result_bytes
        if rule == "input":
            biggest = max((_elements(v) for v in (*args, *kwargs.values())), default=0)
            if 16 * biggest <= limit:
                return
        elif rule == "product" and not self._may_exceed(args, kwargs):
            return
        bound = spec.facts.value_size if spec.facts is not None else None
        try:
            prediction = kernel.predict(spec, args, kwargs, public=True)
        except (kernel.NeedsValues, kernel.Unpredictable, RemoteError) as exc:
            if rule == "product" and bound is None and isinstance(exc, kernel.Unpredictable):
                raise InvalidRequest(  # its inputs' product passed the limit: no proof it fits
                    f"{spec.name} could create more than this node's limit of {limit} bytes "
                    "(the product of its inputs' sizes); split the work into smaller pieces"
                ) from None
            if bound is None and not isinstance(exc, kernel.NeedsValues):
                # the op will fail (torch explains why) or has no meta form: bound sizes
                ints = [v for v in list(args) + list(kwargs.values()) if isinstance(v, int)]
                if any(abs(v) > limit // 8 for v in ints):
                    raise InvalidRequest(
                        f"{spec.name}: size argument over the node's limit"
                    ) from None
                return
            if bound is None:
                raise InvalidRequest(
                    f"{spec.name}: its result's size depends on tensor values this node cannot "
                    "bound before running it; pass sizes as plain numbers"
                ) from None
            try:
                size = 16 * int(bound(args, kwargs))
            except (TypeError, ValueError, RuntimeError, IndexError):
                return  # the op itself will fail and say why
            if size > limit:
                raise InvalidRequest(
                    f"{spec.name} could create {size} bytes, over this node's limit of {limit}"
                ) from None
            return
        size = kernel.result_bytes(prediction)
        if size > limit:
            raise InvalidRequest(
                f"{spec.name} would create {size} bytes, over this node's limit of {limit}"
            )

    def _named_result(self, session: Session, msg: RunOp, result: Any, private: bool,
                      sources: frozenset[str], error: str = "", label: str = "") -> Reply:  # fmt: skip
        """Store a pipelined op's result under the id its client chose (an alias: client
        ids belong to their user, and name nothing of anyone else's)."""
        if result is None:
            return Done()
        if isinstance(result, bool | int | float | torch.Size):
            result = torch.tensor(result)
        if kind_of(result) is None:  # several objects: the client predicted one
            raise InvalidRequest(
                f"{msg.op} returned a {type(result).__name__}, not the single object its "
                "pipelined call expected; run it with the pipeline off (worker.flush() first)"
            )
        rec = self._store(session, result, private=private, sources=sources, error=error,
                          label=label, alias=msg.out)  # fmt: skip
        return rec.info(session.email)

    # ---- extension ops (effect "node", e.g. veil.mpc's protocol steps) ----
    def _run_node_op(self, session: Session, spec: OpSpec, msg: RunOp) -> Reply:
        """Run an extension op: it gets an :class:`OpContext` (the caller's session, the
        records behind its ``Ref`` arguments, helpers to store results with explicit
        privacy) and returns its own reply. It never sees another user's objects.

        The seam applies the same rules as to torch ops: a private object passed where the
        op's facts do not accept one (``OpFacts.private_args``) is refused before the op
        runs, naming only the argument; an unexpected failure with private inputs has its
        message withheld."""
        from veil.node.extension import OpContext

        inputs: list[ObjectRecord] = []
        if not session.is_admin:
            self._check_private_args(session, spec, msg)

        def resolve(oid: int) -> Any:
            rec = self._record(session, oid)
            inputs.append(rec)
            return rec.value

        args = [from_arg(a, resolve) for a in msg.args]
        kwargs = {k: from_arg(v, resolve) for k, v in msg.kwargs.items()}
        ctx = OpContext(self, session, inputs)
        sig = _signature(spec.fn)
        if sig is not None:  # missing or unknown arguments: say which, never a traceback
            try:
                sig.bind(ctx, *args, **kwargs)
            except TypeError as exc:
                raise InvalidRequest(f"{msg.op}: {exc}") from None
        try:
            reply = spec.fn(ctx, *args, **kwargs)
        except VeilError:
            raise
        except Exception as exc:
            if any(r.private for r in inputs) and not session.is_admin:
                raise RemoteError(
                    f"{msg.op} failed on node {self.name!r} ({type(exc).__name__}); the message "
                    "is withheld because it could quote private data"
                ) from None
            raise RemoteError(
                f"{msg.op} failed on node {self.name!r}: {type(exc).__name__}: {exc}"
            ) from None
        if ctx.sources:
            self._audit_row(session, "op", msg.op, [r.id for r in inputs], ctx.sources)
        return reply  # type: ignore[no-any-return]

    def _check_private_args(self, session: Session, spec: OpSpec, msg: RunOp) -> None:
        """Refuse a private object anywhere a node op does not accept one, before it runs."""
        allowed = spec.facts.private_args if spec.facts is not None else ()
        sig = _signature(spec.fn)
        names = list(sig.parameters)[1:] if sig is not None else []  # after ctx
        found: list[str] = []

        def walk(arg: Any, path: tuple[str, ...], depth: int) -> None:
            if depth > 40:
                return
            if type(arg) is Ref:
                rec = self._record(session, arg.id)
                if rec.private and not _path_allowed(path, allowed or ()):
                    found.append(".".join(path))
            elif isinstance(arg, ListArg | TupleArg):
                for i, v in enumerate(arg.items):
                    walk(v, (*path, str(i)), depth + 1)
            elif isinstance(arg, DictArg):
                for k, v in arg.items.items():
                    walk(v, (*path, k), depth + 1)
            elif isinstance(arg, SliceArg):
                for k in ("start", "stop", "step"):
                    walk(getattr(arg, k), (*path, k), depth + 1)

        for i, a in enumerate(msg.args):
            walk(a, (names[i] if i < len(names) else f"arg{i}",), 0)
        for k, v in msg.kwargs.items():
            walk(v, (k,), 0)
        if found:
            raise PermissionDenied(
                f"{msg.op}: argument {', '.join(found[:5])} must be public, and it refers to a "
                "private object; pass a public value (only the op's share/data arguments may "
                "be private)"
            )

    def _may_exceed(self, args: list[Any], kwargs: dict[str, Any]) -> bool:
        """Could an op whose output is at most the product of its inputs' sizes pass the
        limit? Each tensor counts as the product of its dimensions with empty ones taken as 1
        (an ``(n, 0) @ (0, n)`` product is ``n * n``), and at least 2 (concatenations)."""
        bound, limit = 16, self.max_result_bytes  # 16: bytes per element of the widest dtype
        for v in (*args, *kwargs.values()) if kwargs else args:
            if type(v) in SCALAR_TYPES:
                continue
            if isinstance(v, torch.Tensor):
                bound *= _span(v)
            elif isinstance(v, list | tuple):
                for t in v:
                    if isinstance(t, torch.Tensor):
                        bound *= _span(t)
            if bound > limit:
                return True
        return False

    def _apply_effects(self, spec: OpSpec, target: ObjectRecord | None, args: list[Any],
                       private: bool, sources: frozenset[str], error: str = "",
                       label: str = "") -> None:  # fmt: skip
        effect = spec.effect
        if effect == "inplace" and target is not None:
            if private:
                self._taint(storage_keys(tensors_of(target.value)), sources, error, label)
            self._persist(target)
        elif effect == "backward" and args and isinstance(args[0], torch.Tensor):
            if private:  # the graph walk costs ~0.1 ms a step: only when there is taint to spread
                leaves, nodes = autograd_graph(args[0])
                self._taint(storage_keys(leaves), sources, error)
                # non-leaf tensors that retain their gradient got one from private data too
                for oid in list(self._retaining):
                    rec = self._objects.get(oid)
                    if rec is None or not isinstance(rec.value, torch.Tensor):
                        self._retaining.discard(oid)
                    elif rec.value.grad_fn is not None and rec.value.grad_fn in nodes:
                        self._mark(rec, sources, error)
        elif effect == "step" and target is not None:
            if target.private or self.store.persistent:
                keys = storage_keys(tensors_of(target.value))
                if target.private:
                    self._taint(keys, target.sources, error)
                self._persist_storages(keys)
        elif effect == "module_call" and target is not None and private:
            module = target.value
            if (
                isinstance(module, nn.Module)
                and module.training
                and any(True for _ in module.buffers())
            ):
                self._taint(storage_keys(tensors_of(module)), sources, error)
        elif effect == "module_call" and target is not None and self.store.persistent:
            module = target.value  # a forward in training mode moves running statistics
            if (
                isinstance(module, nn.Module)
                and module.training
                and next(module.buffers(), None) is not None
            ):
                self._persist(target)

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

    def _wrap_result(self, session: Session, result: Any, target: ObjectRecord | None,
                     private: bool, sources: frozenset[str], error: str = "",
                     label: str = "") -> Reply:  # fmt: skip
        if type(result) is torch.Tensor and (target is None or result is not target.value):
            rec = self._store(session, result, private=private, sources=sources, error=error,
                              label=label)  # fmt: skip
            return rec.info(session.email)
        if result is None:
            return Done()
        if target is not None and result is target.value:
            return self._info_of(target)
        if isinstance(result, list | tuple) and not isinstance(result, torch.Size):
            return self._results(session, result, private, sources, 0, error, label)
        return self._new_result(session, result, private, sources, error, label)

    def _results(self, session: Session, result: list[Any] | tuple[Any, ...], private: bool,
                 sources: frozenset[str], depth: int, error: str = "",
                 label: str = "") -> Results:  # fmt: skip
        if depth > 8:
            raise RemoteError("op returned results nested too deeply")
        items: list[ObjectInfo | Results | None] = []
        for item in result:
            if item is None:
                items.append(None)
            elif isinstance(item, list | tuple) and not isinstance(item, torch.Size):
                items.append(
                    self._results(session, item, private, sources, depth + 1, error, label)
                )
            else:
                items.append(self._new_result(session, item, private, sources, error, label))
        tname = "list" if isinstance(result, list) else ""
        if type(result).__module__ == "torch.return_types":
            tname = type(result).__name__
        return Results(items, tname)

    def _new_result(self, session: Session, value: Any, private: bool,
                    sources: frozenset[str], error: str = "", label: str = "") -> ObjectInfo:  # fmt: skip
        if isinstance(value, bool | int | float | torch.Size):
            value = torch.tensor(value)
        rec = self._store(session, value, private=private, sources=sources, error=error,
                          label=label)  # fmt: skip
        return rec.info(session.email)  # the caller owns what its op created

    # ------------------------------------------------------------------ requests
    def _request_info(self, r: RequestRow) -> RequestInfo:
        rec = self._objects.get(r.object_id)
        decided = self._email(r.decided_by) if r.decided_by is not None else ""
        shown = rec.alias or r.object_id if rec is not None else r.object_id
        return RequestInfo(
            r.id, shown, self._email(r.requester), r.reason, r.status, r.created,
            decided, r.note, self._info_of(rec) if rec is not None else None,
        )  # fmt: skip

    def _digest(self, rec: ObjectRecord) -> str:
        """SHA-256 of an object's content (and of the error it holds, if any): what an
        access request describes, and all that its approval covers."""
        h = hashlib.sha256(rec.error.encode())
        if rec.kind != "optimizer":
            for part in codec.encode_parts(Value(_value_to_wire(rec.value, storage=False))):
                h.update(part)
        return h.hexdigest()

    def _void_requests(self, rec: ObjectRecord) -> None:
        """A write into an object voids its pending and approved requests: what the owner was
        asked about is not what the object holds any more. Every write the node records
        voids them (not only those that changed the content, which could depend on private
        values)."""
        for rid in sorted(self._open_requests.pop(rec.id, ())):
            row = self._requests.get(rid)
            if row is None or row.status not in ("pending", "approved"):
                continue
            row.status = "void"
            row.note = (
                f"void: object {row.object_id} was written after this request was made, so the "
                "request no longer describes it; ask again to have the new content reviewed"
            ) + (f" (was: {row.note})" if row.note else "")
            self._batch.requests.append(row)
            self._audit_row(_SYSTEM, "void", f"request {row.id}", [row.object_id])

    def _request_access(self, session: Session, msg: RequestAccess) -> Reply:
        rec = self._record(session, msg.id)
        if not msg.reason.strip():
            raise InvalidRequest("say why you need the data: ptr.request('reason')")
        if rec.kind != "optimizer":
            self._persist(rec)  # a requested object must outlive a restart
        rid = max(self._requests, default=0) + 1
        row = RequestRow(rid, rec.id, session.user_id, msg.reason[:2000], "pending", time.time())
        if not rec.private or session.is_admin:
            row.status, row.note = "approved", "not private: no approval needed"
        else:
            row.digest = self._digest(rec)  # the approval will cover this content only
            self._open_requests.setdefault(rec.id, set()).add(rid)
        self._requests[rid] = row
        self._batch.requests.append(row)
        self._audit_row(session, "request", msg.reason[:200], [rec.id], rec.sources)
        return self._request_info(row)

    def _list_requests(self, session: Session, msg: ListRequests) -> Reply:
        if msg.status is not None and msg.status not in REQUEST_STATUSES:
            raise InvalidRequest(f"status must be one of {REQUEST_STATUSES}, got {msg.status!r}")
        rows = [
            r for r in self._requests.values()
            if (session.is_admin or r.requester == session.user_id)
            and (msg.status is None or r.status == msg.status)
        ]  # fmt: skip
        return RequestList([self._request_info(r) for r in rows])

    def _decide(self, session: Session, msg: DecideRequest) -> Reply:
        if not session.is_admin:
            raise PermissionDenied("only the node's owner or admins decide requests")
        row = self._requests.get(msg.id)
        if row is None:
            raise ObjectNotFound(f"no request {msg.id} on node {self.name!r}")
        if row.status == "void":  # written after it was made: the owner sees why
            return self._request_info(row)
        if row.status != "pending":
            raise InvalidRequest(f"request {msg.id} was already {row.status}")
        row.status = "approved" if msg.approve else "denied"
        row.decided_by, row.note = session.user_id, msg.note[:2000]
        if not msg.approve:
            self._open_requests.get(row.object_id, set()).discard(row.id)
        rec = self._objects.get(row.object_id)
        if msg.approve and rec is not None:
            if not row.digest:  # a request from before digests: bind it to what is approved
                row.digest = self._digest(rec)
            rec.approved.add(row.requester)
            self._persist(rec)
        self._batch.requests.append(row)
        self._audit_row(session, row.status, f"request {row.id}", [row.object_id])
        return self._request_info(row)

    def _approved_for(self, session: Session, rec: ObjectRecord) -> bool:
        """Does an approved request of this user cover the object's current content?"""
        if session.user_id not in rec.approved:
            return False
        rows = [
            r for r in self._requests.values()
            if r.object_id == rec.id and r.requester == session.user_id and r.status == "approved"
        ]  # fmt: skip
        if not rows:
            return False
        digest = self._digest(rec)  # a write after the request voids it (listing shows why)
        return any(r.digest == digest for r in rows)

    # ------------------------------------------------------------------ datasets
    def _create_dataset(self, session: Session, msg: CreateDataset) -> Reply:
        if not session.is_admin:
            raise PermissionDenied("only the node's owner or admins create datasets")
        problems = []
        if not msg.name or len(msg.name) > 200:
            problems.append("a dataset needs a name of 1-200 characters")
        if msg.name in self._datasets:
            problems.append(f"dataset {msg.name!r} already exists")
        if not msg.assets:
            problems.append("a dataset needs at least one asset")
        for a in msg.assets:
            if (a.private.shape, a.private.dtype) != (a.mock.shape, a.mock.dtype):
                problems.append(
                    f"asset {a.name!r}: the mock must have the private data's shape and dtype "
                    f"({a.private.shape} {a.private.dtype}), got {a.mock.shape} {a.mock.dtype}"
                )
            ncols = a.private.shape[-1] if a.private.shape else 1
            if a.columns and len(a.columns) != ncols:
                problems.append(
                    f"asset {a.name!r}: {len(a.columns)} column names for {ncols} columns"
                )
            if a.bounds and len(a.bounds) not in (1, ncols):
                problems.append(f"asset {a.name!r}: give one (low, high) bound or one per column")
            if any(lo > hi for lo, hi in a.bounds):
                problems.append(f"asset {a.name!r}: a bound has low > high")
        problems += self._dp.check_assets(msg.assets)  # veil.dp
        if problems:
            raise InvalidRequest("; ".join(problems))
        assets = []
        for a in msg.assets:
            value = tensor_from_data(a.private, copy=True)
            rec = self._store(session, value, private=True, sources=frozenset({msg.name}),
                              description=a.description, asset_of=msg.name)  # fmt: skip
            self._dp.add_asset(rec, a)  # veil.dp: bounds and rows per data subject
            mock = tensor_to_data(tensor_from_data(a.mock, copy=True))
            assets.append((a.name, rec.id, mock, list(a.columns), list(a.bounds), a.description))
        ds = _Dataset(msg.name, msg.description, time.time(), assets)
        self._datasets[msg.name] = ds
        if self.store.persistent:
            self._batch.datasets.append(DatasetRow(ds.name, ds.description, ds.created, [
                (n, oid, bytes(codec.encode(Value(m))), c, b, d) for n, oid, m, c, b, d in assets
            ]))  # fmt: skip
        self._audit_row(session, "create_dataset", msg.name, [a[1] for a in assets])
        return self._dataset_info(ds)

    def _dataset_info(self, ds: _Dataset) -> DatasetInfo:
        assets = [
            AssetInfo(n, self._info_of(self._objects[oid]), mock, cols, bounds, desc)
            for n, oid, mock, cols, bounds, desc in ds.assets
            if oid in self._objects
        ]
        return DatasetInfo(ds.name, ds.description, assets, ds.created)

    def _list_datasets(self, session: Session, msg: ListDatasets) -> Reply:
        return DatasetList([self._dataset_info(d) for d in self._datasets.values()])

    def _get_dataset(self, session: Session, msg: GetDataset) -> Reply:
        ds = self._datasets.get(msg.name)
        if ds is None:
            known = ", ".join(sorted(self._datasets)) or "none"
            raise ObjectNotFound(
                f"node {self.name!r} has no dataset {msg.name!r} (it has: {known})"
            )
        return self._dataset_info(ds)

    # ------------------------------------------------------------------ users, audit, info
    def _create_user(self, session: Session, msg: CreateUser) -> Reply:
        if not session.is_admin:
            raise PermissionDenied("only the node's owner or admins create users")
        if msg.role == "owner" and session.role != "owner":
            raise PermissionDenied("only the owner can create another owner")
        info = self._add_user(msg.email, msg.password, role=msg.role, name=msg.name)
        self._audit_row(session, "create_user", f"{msg.email} ({msg.role})")
        return info

    def _list_users(self, session: Session, msg: ListUsers) -> Reply:
        if not session.is_admin:
            raise PermissionDenied("only the node's owner or admins list users")
        return UserList([UserInfo(u.id, u.email, u.role, u.name) for u in self._users.values()])

    def _audit(self, session: Session, msg: GetAudit) -> Reply:
        if not session.is_admin:
            raise PermissionDenied("only the node's owner or admins read the audit log")
        self._commit()
        rows = self.store.audit(max(0, min(msg.limit, 100_000)))
        return AuditLog(
            [AuditEntry(r.ts, r.user, r.action, r.detail, r.objects, r.sources) for r in rows]
        )

    def _info(self, session: Session, msg: GetInfo) -> Reply:
        recs = [r for r in self._objects.values() if session.is_admin or r.owner == session.user_id]
        return NodeInfo(
            self.name, __version__, WIRE_VERSION, session.email, session.role, len(recs),
            sum(r.nbytes() for r in recs),
        )  # fmt: skip

    def object_count(self) -> int:
        """How many objects the node holds (for monitoring and tests)."""
        return len(self._objects)

    def close(self) -> None:
        """Flush and close the store."""
        with self._lock:
            self._commit()
            self.store.close()


def _span(t: torch.Tensor) -> int:
    """A tensor's size for output bounds: its dimensions' product, empty ones as 1, >= 2."""
    n = 1
    for d in t.shape:
        n *= d or 1
    return max(n, 2)


def _elements(value: Any) -> int:
    """Elements of the tensors in an argument (lists and modules included)."""
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, list | tuple):
        return sum(_elements(v) for v in value)
    return sum(t.numel() for t in tensors_of(value)) if isinstance(value, nn.Module) else 0


def _failure(op: str, exc: BaseException) -> str:
    """The error an op that failed on private values leaves in its result."""
    return f"{op} failed on private values: {type(exc).__name__}: {str(exc)[:2000]}"


def _label_of(inputs: list[ObjectRecord]) -> str:
    """The capability label a result keeps: the one all its private inputs carry, if any."""
    labels = {r.label for r in inputs if r.private}
    return labels.pop() if len(labels) == 1 else ""


#: ``_predict``'s answer when the op has no public prediction (it then runs as before:
#: its failures are reported with their message withheld).
_UNPREDICTED: Any = object()
_CLIENT_START = CLIENT_IDS.start
#: Who the audit log names for what the node does by itself (voiding a stale request).
_SYSTEM = Session(0, "node", "system")
_NO_FACTS = OpFacts()


def _versions(value: Any) -> list[int]:
    """Version counters of an object's tensors (torch bumps them on every in-place write)."""
    return [t._version for t in tensors_of(value)]


@functools.cache
def _signature(fn: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


#: Modules whose output may be their input itself or a view of it.
_PASS_THROUGH = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                 nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)  # fmt: skip


def _writes_its_input(module: Any) -> bool:
    """Does calling ``module`` write into its input (``ReLU(inplace=True)`` first, or after
    layers that pass the input through)?"""
    return _input_effect(module) == "writes"


def _input_effect(module: Any) -> str:
    """Whether a module "writes" into its input, "passes" it (or a view) on, or makes a
    "new" tensor."""
    if isinstance(module, nn.Sequential):
        for m in module:
            effect = _input_effect(m)
            if effect != "passes":
                return effect
        return "passes"
    if getattr(module, "inplace", False) is True:
        return "writes"
    return "passes" if isinstance(module, _PASS_THROUGH) else "new"


def _module_may_write(module: nn.Module) -> bool:
    """Can a forward pass write into the module itself (BatchNorm statistics in training,
    ``Embedding(max_norm=...)`` renormalizing the rows it looks up)?"""
    for m in module.modules():
        if getattr(m, "max_norm", None) is not None:
            return True
        if m.training and any(True for _ in m.buffers(recurse=False)):
            return True
    return False


def _private_in(args: list[Any], inputs: list[ObjectRecord]) -> bool:
    """Does an argument hold (in a tuple or slice too) a tensor of a private input?"""
    ids = {id(r.value) for r in inputs if r.private}
    stack = list(args)
    while stack:
        a = stack.pop()
        if isinstance(a, torch.Tensor):
            if id(a) in ids:
                return True
        elif isinstance(a, list | tuple):
            stack.extend(a)
        elif isinstance(a, slice):
            stack.extend((a.start, a.stop, a.step))
    return False


def _tensor_args(args: list[Any]) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for a in args:
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, list | tuple):
            out.extend(_tensor_args(list(a)))
    return out


def _graph_tensors(root: torch.Tensor) -> tuple[list[torch.Tensor], bool]:
    """Tensors a ``root.backward()`` reads: the root, the graph's leaves (with their
    gradients) and every tensor its nodes saved; and whether a saved tensor could not be
    read because it was written in place since it was saved."""
    leaves, nodes = autograd_graph(root)
    out = [root, *leaves]
    unreadable = False
    for fn in nodes:
        for name in dir(fn):
            if name.startswith("_saved_"):
                try:
                    v = getattr(fn, name)
                except RuntimeError as exc:  # freed, or written in place since it was saved
                    unreadable = unreadable or "modified by an inplace" in str(exc)
                    continue
                if isinstance(v, torch.Tensor):
                    out.append(v)
                elif isinstance(v, list | tuple):
                    out.extend(t for t in v if isinstance(t, torch.Tensor))
    return out, unreadable


def _path_allowed(path: tuple[str, ...], patterns: tuple[str, ...]) -> bool:
    """Does an argument path (``("items", "0", "inputs", "1")``) match a pattern of
    :attr:`~veil.ops.OpFacts.private_args` (``"items.*.inputs.*"``)?"""
    for pattern in patterns:
        parts = pattern.split(".")
        if len(parts) == len(path) and all(p in ("*", q) for p, q in zip(parts, path)):
            return True
    return False


def _may_write(spec: OpSpec) -> bool:
    """Can ``spec`` write into an argument other than through its declared effect?"""
    return spec.facts is not None and bool(spec.facts.writes)


def _written_args(spec: OpSpec, args: list[Any], kwargs: dict[str, Any]) -> list[Any]:
    """Arguments ``spec`` will write into besides its declared effect (``inplace=True``...)."""
    if spec.name.startswith("optim.") and args:  # an optimizer steps its parameters later
        out: list[Any] = []
        for group in args[0] if isinstance(args[0], list | tuple) else [args[0]]:
            params = group.get("params", []) if isinstance(group, dict) else group
            out.extend(params if isinstance(params, list | tuple) else [params])
        return out
    if spec.name == "Module.__call__" and args and _writes_its_input(args[0]):
        return [a for a in [*args[1:], *kwargs.values()] if isinstance(a, torch.Tensor)]
    facts = spec.facts
    if facts is None or not facts.writes or spec.name == "Module.__call__":
        return []
    params, switch = facts.writes, facts.write_switch
    sig = _signature(spec.fn)
    if sig is None or switch not in sig.parameters:
        return []
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError:
        return []  # the call itself will fail with torch's own message
    bound.apply_defaults()
    on = bound.arguments.get(switch)
    if on is None or on is False:
        return []
    return [bound.arguments[p] for p in params if bound.arguments.get(p) is not None]


def _value_to_wire(value: Any, *, storage: bool = True) -> Any:
    if isinstance(value, torch.Tensor):
        return tensor_to_data(value)
    if isinstance(value, nn.Module):
        return module_to_spec(value)
    ext = extension_for(value)  # encrypted tensors and contexts (veil.he)
    if ext is not None:
        return ext.to_wire(value, storage)
    raise InvalidRequest(f"a {type(value).__name__} cannot be sent")


def _value_from_wire(value: Any, *, copy: bool, resolve: Callable[[int], Any] | None = None) -> Any:
    if isinstance(value, TensorData):
        return tensor_from_data(value, copy=copy)
    if isinstance(value, ModuleSpec):
        return spec_to_module(value)
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


def _record_from_row(row: ObjectRow, value: Any, old: ObjectRecord | None) -> ObjectRecord:
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


def _dataset_from_row(d: DatasetRow) -> _Dataset:
    assets = []
    for aname, oid, mock, cols, bounds, desc in d.assets:
        mock_reply = codec.decode_reply(mock)
        if not (isinstance(mock_reply, Value) and isinstance(mock_reply.value, TensorData)):
            raise SerdeError(f"stored mock of dataset {d.name!r} is corrupt")
        assets.append((aname, oid, mock_reply.value, cols, [tuple(b) for b in bounds], desc))
    return _Dataset(d.name, d.description, d.created, assets)  # type: ignore[arg-type]
