"""The capability seam: the one way a capability plugs into every node.

DP, MPC and HE are capabilities; federated learning and plans will be. A capability is a
:class:`Capability` value that says everything it adds, and :func:`install` is the only
call that adds it. The node imports no capability: the top of the package declares which
ones every node has (:func:`declare`, by module name, loaded when the first node starts).

What a capability may add:

* **message handlers**: ``handlers`` for request types of :mod:`veil.serde.messages`
  (DP answers ``Publish``); ``methods`` for typed calls of its own (a msgspec Struct in, a
  Struct out), carried by :class:`~veil.serde.messages.CapabilityCall` and validated on
  decode against the type the capability registered (:func:`call` on the client side);
* **node ops**: ``ops``, :class:`~veil.ops.OpSpec` entries of the allowlist (effect
  ``"node"`` ops get an :class:`~veil.node.extension.OpContext`);
* **object kinds** and **pointer kinds**: how a node stores and a client wraps values that
  are not tensors or modules (``veil.he``'s encrypted tensors);
* **release policies**: when a private object may leave the node besides an approved
  request (:class:`ReleasePolicy`); a policy lets nothing out until the node's owner
  enables it (:meth:`~veil.node.Node.set_release_policy`);
* **request kinds**: what a scientist may ask the owner to review besides an object
  (:class:`RequestKind`: a plan, an enrolment in a federation);
* **node state and hooks**: ``state`` makes the capability's per-node state, a
  :class:`CapabilityState` whose hooks the node calls at start-up, before and after ops on
  private data, when data is written or dropped, when a dataset is added and after a
  rollback;
* **public facts** for ``GET /api/v1/info`` (``info``).

Example:
    >>> import msgspec, veil
    >>> from veil.node import capability
    >>> class Echo(msgspec.Struct):
    ...     text: str
    >>> def echo(state, session, msg):
    ...     return Echo(f"{session.email} said {msg.text}")
    >>> capability.install(capability.Capability(
    ...     "doc.echo", methods={"echo": capability.Method(Echo, echo)}))
    >>> w = veil.VirtualWorker("n")
    >>> capability.call(w, "doc.echo", "echo", Echo("hi"), Echo).text
    'owner@n.local said hi'
    >>> capability.uninstall("doc.echo")
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from veil.errors import InvalidRequest, VeilError
from veil.node.objects import _EXTENSIONS, ObjectRecord, ValueKind, register_kind
from veil.ops import OpSpec, default_registry
from veil.pointers.remote import register_pointer_kind, unregister_pointer_kind
from veil.serde.messages import (
    CapabilityCall,
    CapabilityReply,
    ErrorReply,
    RequestAccess,
    RequestInfo,
)

if TYPE_CHECKING:
    from veil.node.node import Node
    from veil.node.store import RequestRow
    from veil.node.users import Session
    from veil.pointers.remote import Remote

__all__ = [
    "Capability",
    "CapabilityState",
    "Method",
    "ReleasePolicy",
    "RequestKind",
    "call",
    "declare",
    "install",
    "installed",
    "request",
    "uninstall",
]

S = TypeVar("S", bound=msgspec.Struct)


class CapabilityState:
    """A capability's state on one node, and the node's hooks into it (all optional).

    The node makes one per installed capability when it starts (``Capability.state``)
    and calls its hooks inside the message being handled: what they change commits or
    rolls back with it. Durable state goes in the node's keyed rows
    (:meth:`~veil.node.Node.put_row`).

    Example:
        >>> from veil.node import Node, capability
        >>> class Count(capability.CapabilityState):
        ...     ops = 0
        ...     def after_op(self, op, args, kwargs, inputs, reply):
        ...         self.ops += 1
        >>> capability.install(capability.Capability("doc.count", state=Count))
        >>> node = Node("n", owner_password="pw-long-enough")
        >>> node.capability_state("doc.count").ops
        0
        >>> capability.uninstall("doc.count")
    """

    def __init__(self, node: Node) -> None:
        self.node = node

    def start(self) -> None:
        """The node has loaded its store (a start-up hook)."""

    def check_assets(self, assets: list[Any]) -> list[str]:
        """Problems with a dataset's assets (``AssetSpec``) before it is created."""
        return []

    def on_asset(self, rec: ObjectRecord, spec: Any) -> None:
        """A dataset asset was stored as ``rec``."""

    def after_op(self, op: str, args: list[Any], kwargs: dict[str, Any],
                 inputs: list[ObjectRecord], reply: Any) -> None:  # fmt: skip
        """An op with a private input ran (``reply`` is what the caller gets)."""

    def before_private_op(self, session: Session, op: str) -> None:
        """A scientist is about to run ``op`` on private data (it has passed every other
        check); raise to refuse it (``veil.plans``: a node that runs code on private data
        only as reviewed plans)."""

    def on_write(self, keys: set[int]) -> None:
        """The tensors with these storage keys were written in place."""

    def on_drop(self, oid: int) -> Any:
        """Object ``oid`` was deleted; return what :meth:`on_restore` needs if the deletion
        is rolled back (None: nothing)."""
        return None

    def on_forget(self, oid: int) -> None:
        """Object ``oid`` left memory for good (a rollback found no row for it)."""

    def on_rollback(self, rows_changed: bool, written: set[int],
                    restored: dict[int, Any]) -> None:  # fmt: skip
        """A message's changes were refused by the store and rolled back: the node's rows
        are as stored again (``rows_changed``: the message had written some), the objects
        in ``written`` were written by it, and ``restored`` maps deleted objects that came
        back to what :meth:`on_drop` returned."""


@dataclass(frozen=True, slots=True)
class Method:
    """A typed call of a capability: ``fn(state, session, request) -> reply Struct``.

    ``request`` is the msgspec Struct type the node decodes the call's body into (a body
    that does not fit is refused before ``fn`` runs).
    """

    request: type[msgspec.Struct]
    fn: Callable[[Any, Session, Any], msgspec.Struct]


@dataclass(frozen=True, slots=True)
class ReleasePolicy:
    """When a private object may leave the node other than through an approved request.

    ``allows(state, session, rec)`` decides on the object's record (its label, sources,
    what the capability knows of it). A policy has no effect until the node's owner
    enables it. Example: an update may leave once securely aggregated with k others.
    """

    name: str
    allows: Callable[[Any, Session, ObjectRecord], bool]
    description: str = ""


@dataclass(frozen=True, slots=True)
class RequestKind:
    """Something other than an object that a scientist asks the owner to review.

    ``open(state, session, subject) -> digest`` checks the subject (e.g. a plan's content
    hash) and returns what the approval binds to; ``describe(state, row)`` tells the owner
    what is asked; ``decided(state, row)`` runs when the owner decides.
    """

    name: str
    open: Callable[[Any, Session, str], str]
    describe: Callable[[Any, RequestRow], str] = lambda state, row: row.subject
    decided: Callable[[Any, RequestRow], None] | None = None


@dataclass(frozen=True)
class Capability:
    """Everything one capability adds to nodes and clients (see the module's docstring)."""

    name: str
    state: Callable[[Node], CapabilityState] = CapabilityState
    handlers: Mapping[type, Callable[[Any, Session, Any], Any]] = field(default_factory=dict)
    methods: Mapping[str, Method] = field(default_factory=dict)
    ops: Sequence[OpSpec] = ()
    kinds: Sequence[ValueKind] = ()
    pointer_kinds: Sequence[tuple[str, type, Callable[..., Any]]] = ()
    release_policies: Sequence[ReleasePolicy] = ()
    request_kinds: Sequence[RequestKind] = ()
    info: Callable[[Node], dict[str, Any]] | None = None


_lock = threading.RLock()
_installed: dict[str, Capability] = {}
_declared: dict[str, str] = {}
#: Capabilities imported when a node is first called one of their methods (``declare``).
_on_demand: dict[str, str] = {}
#: Bumped by every install/uninstall: a node re-reads the table when it changed.
generation = 0


def install(cap: Capability) -> None:
    """Add a capability to every node of this process (and its kinds to every client).

    Refuses a second capability of the same name, and anything that would take a name
    another capability or the node uses (an op, a kind, a message type, a policy).
    """
    global generation
    with _lock:
        if cap.name in _installed:
            raise ValueError(f"capability {cap.name!r} is already installed")
        taken = _taken()
        for what, names in (
            ("handler for", [t.__name__ for t in cap.handlers]),
            ("release policy", [p.name for p in cap.release_policies]),
            ("request kind", [k.name for k in cap.request_kinds]),
        ):
            for n in names:
                if (what, n) in taken:
                    raise ValueError(f"{what} {n!r} is already installed")
        reg = default_registry()
        done: list[str] = []
        try:
            for spec in cap.ops:
                reg.register(spec)
                done.append(spec.name)
            for kind in cap.kinds:
                register_kind(kind)
            for kind_name, cls, factory in cap.pointer_kinds:
                register_pointer_kind(kind_name, cls, factory)
        except ValueError:
            for name in done:
                reg.unregister(name)
            for kind in cap.kinds:
                _EXTENSIONS.pop(kind.kind, None)
            for kind_name, _, _ in cap.pointer_kinds:
                unregister_pointer_kind(kind_name)
            raise
        _installed[cap.name] = cap
        generation += 1


def uninstall(name: str) -> None:
    """Remove a capability (for tests and embedding; nodes drop its state at their next
    message)."""
    global generation
    with _lock:
        cap = _installed.pop(name)
        reg = default_registry()
        for spec in cap.ops:
            reg.unregister(spec.name)
        for kind in cap.kinds:
            _EXTENSIONS.pop(kind.kind, None)
        for kind_name, _, _ in cap.pointer_kinds:
            unregister_pointer_kind(kind_name)
        generation += 1


def _taken() -> set[tuple[str, str]]:
    out = set()
    for cap in _installed.values():
        out |= {("handler for", t.__name__) for t in cap.handlers}
        out |= {("release policy", p.name) for p in cap.release_policies}
        out |= {("request kind", k.name) for k in cap.request_kinds}
    return out | {("request kind", "object")}


def declare(name: str, module: str, *, on_demand: bool = False) -> None:
    """Say that capability ``name`` is installed by importing ``module`` (a module of
    veil's own, named by the package, never by a peer); it is imported when a node
    starts or :func:`installed` is first asked. Keeps ``import veil`` light.

    ``on_demand``: imported only when a node is first called a method of ``name`` (for a
    capability whose module loads a heavy optional package: ``keras``)."""
    with _lock:
        if on_demand:
            _on_demand[name] = module
        else:
            _declared[name] = module


def _load_on_demand(name: str) -> Capability | None:
    module = _on_demand.get(name)
    if module is None or name in _installed:
        return _installed.get(name)
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise InvalidRequest(f"this node cannot run capability {name!r}: {exc}"[:1000]) from None
    if name not in _installed and callable(getattr(mod, "install", None)):
        mod.install()  # imported before, and uninstalled since
    return _installed.get(name)


def load_declared() -> None:
    """Import every declared capability that is not installed yet."""
    if not _declared:
        return
    with _lock:
        pending = dict(_declared)
        _declared.clear()
    for name, module in pending.items():
        if name not in _installed:
            importlib.import_module(module)


def is_installed(name: str) -> bool:
    """Is capability ``name`` installed (without loading declared ones)?"""
    return name in _installed


def installed() -> dict[str, Capability]:
    """The installed capabilities by name (declared ones are loaded first).

    Example:
        >>> from veil.node import capability
        >>> "dp" in capability.installed()
        True
    """
    load_declared()
    return dict(_installed)


def call(worker: Remote, capability: str, method: str, request: msgspec.Struct,
         reply: type[S]) -> S:  # fmt: skip
    """Call a capability's typed method on the node behind ``worker``; the reply is
    decoded (and validated) as ``reply``. See the module's docstring for an example."""
    body = msgspec.msgpack.encode(request)
    got = worker.call(CapabilityCall(capability, method, body))
    if not isinstance(got, CapabilityReply):
        raise VeilError(f"{capability}.{method}: unexpected reply {type(got).__name__}")
    try:
        return msgspec.msgpack.decode(got.body, type=reply)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(
            f"{capability}.{method}: the node's reply does not fit: {exc}"
        ) from None


def request(worker: Remote, kind: str, subject: str, reason: str) -> RequestInfo:
    """Ask the owner of ``worker``'s node to review ``subject`` under a capability's
    request ``kind`` (a plan's runs, an enrolment); see :class:`RequestKind`."""
    got = worker.call(RequestAccess(0, reason, kind, subject))
    if not isinstance(got, RequestInfo):
        raise VeilError(f"request of kind {kind!r}: unexpected reply {type(got).__name__}")
    return got


def run_method(node: Node, session: Session, msg: CapabilityCall) -> CapabilityReply | ErrorReply:
    """The node side of :func:`call`: decode the body as the method's type and run it."""
    cap = _installed.get(msg.capability) or _load_on_demand(msg.capability)
    m = cap.methods.get(msg.method) if cap is not None else None
    if cap is None or m is None:
        raise InvalidRequest(
            f"node {node.name!r} has no method {msg.method!r} of capability {msg.capability!r}"
            f"; installed: {sorted(_installed)}"
        )
    try:
        request = msgspec.msgpack.decode(msg.body, type=m.request)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise InvalidRequest(f"{msg.capability}.{msg.method}: {exc}") from None
    out = m.fn(node.capability_state(cap.name), session, request)
    return CapabilityReply(msgspec.msgpack.encode(out))


def public_info(node: Node) -> dict[str, Any]:
    """Every capability's public facts about ``node`` (``Capability.info``)."""
    return {name: cap.info(node) for name, cap in installed().items() if cap.info is not None}


def release_policy(name: str) -> tuple[Capability, ReleasePolicy] | None:
    """The installed release policy ``name`` and its capability, if any."""
    for cap in installed().values():
        for p in cap.release_policies:
            if p.name == name:
                return cap, p
    return None


def request_kind(name: str) -> tuple[Capability, RequestKind] | None:
    """The installed request kind ``name`` and its capability, if any."""
    for cap in installed().values():
        for k in cap.request_kinds:
            if k.name == name:
                return cap, k
    return None
