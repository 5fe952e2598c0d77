"""Node: a data owner's node, composed of its concerns (records, access, execution, requests, datasets, accounts, audit, persistence), behind one message API."""

from __future__ import annotations

import functools
import itertools
import logging
import secrets
import threading
from collections.abc import Callable
from typing import Any

import torch

from veil.errors import (
    InvalidRequest,
    StorageError,
    VeilError,
)
from veil.node import capability
from veil.node.access import AccessMixin
from veil.node.accounts import AccountsMixin
from veil.node.aliasing import (
    Aliasing,
)
from veil.node.audit import AuditMixin
from veil.node.datasets import DatasetEntry, DatasetsMixin
from veil.node.execution import ExecutionMixin
from veil.node.host import HostMixin
from veil.node.nodeops import NodeOpsMixin
from veil.node.objects import (
    ObjectRecord,
)
from veil.node.persistence import PersistenceMixin
from veil.node.records import RecordsMixin
from veil.node.requests import RequestsMixin
from veil.node.store import (
    Batch,
    MemoryStore,
    RequestRow,
    Store,
    UserRow,
)
from veil.node.text import STORED_TEXT, check_message
from veil.node.tokens import TOKEN_TTL_S, TokenTable
from veil.node.uploads import stage_upload
from veil.node.users import Session
from veil.ops import OpRegistry, default_registry
from veil.serde import codec
from veil.serde.messages import (
    Call,
    CapabilityCall,
    ClearObjects,
    CreateDataset,
    CreateUser,
    DecideRequest,
    DeleteObjects,
    ErrorReply,
    GetAudit,
    GetDataset,
    GetInfo,
    GetObject,
    ListDatasets,
    ListObjects,
    ListRequests,
    ListUsers,
    NodeInfo,
    Reply,
    RequestAccess,
    RunOp,
    SendObject,
)
from veil.version import WIRE_VERSION, __version__

log = logging.getLogger("veil.node")


class Node(
    HostMixin,
    AccountsMixin,
    AuditMixin,
    RecordsMixin,
    AccessMixin,
    ExecutionMixin,
    NodeOpsMixin,
    RequestsMixin,
    DatasetsMixin,
    PersistenceMixin,
):
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
        self._datasets: dict[str, DatasetEntry] = {}
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
        self._builtin_handlers = dict(self._handlers)
        #: Capabilities (veil.node.capability: DP, MPC, HE, ...): their states, by name.
        self._caps = {}
        self._cap_gen = -1
        self._attach_capabilities()
        self._load()
        #: The generated owner password, when the node created its owner without one.
        self.owner_password: str | None = None
        if not self._users:
            email = owner_email or f"owner@{name}.local"
            if owner_password is None:
                owner_password = secrets.token_urlsafe(12)
                self.owner_password = owner_password
            self.create_user(email, owner_password, role="owner", name="owner")

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
        if self._cap_gen != capability.generation:
            self._attach_capabilities()
        handler = self._handlers.get(type(msg))
        if handler is None:
            return ErrorReply(
                "invalid_request",
                f"node {self.name!r} has no capability that handles {type(msg).__name__} "
                f"messages; installed: {sorted(self._caps)}",
            )
        return self._locked(session, call, handler)

    def _attach_capabilities(self) -> None:
        """Make the states and handlers of the installed capabilities (at start, and again
        when one was installed or removed since)."""
        with self._lock:
            caps = capability.installed()
            self._cap_gen = capability.generation
            states = {
                name: self._caps.get(name) or cap.state(self) for name, cap in caps.items()
            }  # fmt: skip
            handlers = dict(self._builtin_handlers)
            handlers[CapabilityCall] = functools.partial(capability.run_method, self)
            for name, cap in caps.items():
                for msg_type, fn in cap.handlers.items():
                    handlers[msg_type] = functools.partial(fn, states[name])
            new = [s for name, s in states.items() if name not in self._caps]
            self._caps, self._handlers = states, handlers
            if self._users:  # a capability installed after the node started
                for state in new:
                    state.start()

    def capability_state(self, name: str) -> Any:
        """The state of capability ``name`` on this node (see :mod:`veil.node.capability`).

        Example:
            >>> from veil.node import Node
            >>> node = Node("n", owner_password="pw-long-enough")
            >>> type(node.capability_state("dp")).__name__
            'NodeDP'
        """
        if self._cap_gen != capability.generation:
            self._attach_capabilities()
        try:
            return self._caps[name]
        except KeyError:
            raise InvalidRequest(
                f"capability {name!r} is not installed on node {self.name!r}; "
                f"installed: {sorted(self._caps)}"
            ) from None

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
