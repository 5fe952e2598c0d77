"""The client side of a node connection: turns calls into wire messages and replies into pointers."""

from __future__ import annotations

import secrets
import threading
from abc import ABC, abstractmethod
from typing import Any

import torch

from veil.errors import InvalidRequest, RemoteError, VeilError, WorkerMismatch, error_from_code
from veil.ops import default_registry
from veil.pointers import pipeline
from veil.serde import codec
from veil.serde.messages import (
    CLIENT_IDS,
    Call,
    DeleteObjects,
    Done,
    ErrorReply,
    ObjectInfo,
    Ref,
    Reply,
    Request,
    Results,
    RunOp,
)
from veil.serde.values import SCALAR_TYPES, to_arg

_POINTER_TYPES: tuple[type, ...] = ()

# Pointer classes for extension object kinds (encrypted tensors, contexts: veil.he),
# registered by the package that defines them: kind -> (class, factory(remote, info, inputs)).
_EXTRA_KINDS: dict[str, tuple[type, Any]] = {}


def register_pointer_kind(kind: str, cls: type, factory: Any) -> None:
    """Make ``Remote`` wrap objects of ``kind`` with ``factory(remote, info, inputs)`` and
    pass ``cls`` instances to the node as references (refuses a second registration)."""
    global _POINTER_TYPES
    if kind in _EXTRA_KINDS or kind in ("tensor", "module", "optimizer"):
        raise ValueError(f"pointer kind {kind!r} is already registered")
    _EXTRA_KINDS[kind] = (cls, factory)
    _POINTER_TYPES = ()


def unregister_pointer_kind(kind: str) -> None:
    """Forget a pointer kind (a capability being uninstalled); unknown kinds are ignored."""
    global _POINTER_TYPES
    _EXTRA_KINDS.pop(kind, None)
    _POINTER_TYPES = ()


def _pointer_types() -> tuple[type, ...]:
    """(PointerTensor, PointerModule, RemoteOptimizer, extension pointers), imported once."""
    global _POINTER_TYPES
    if not _POINTER_TYPES:
        from veil.pointers.module import PointerModule, RemoteOptimizer
        from veil.pointers.tensor import PointerTensor

        extra = tuple(cls for cls, _ in _EXTRA_KINDS.values())
        _POINTER_TYPES = (PointerTensor, PointerModule, RemoteOptimizer, *extra)
    return _POINTER_TYPES


#: PointerTensor, set by veil.pointers.tensor when it is defined (it imports this module).
_TENSOR_POINTER: Any = None


def _tensor_pointer_type() -> Any:
    return _TENSOR_POINTER or _pointer_types()[0]


class Remote(ABC):
    """A connection to one node, as one user. Subclasses supply the byte transport.

    Every call goes through the wire format (:mod:`veil.serde`), for in-process and
    network nodes alike. Pointers dropped by the program are released in batches
    piggybacked on the next call, so garbage collection costs no extra round trips.
    """

    #: The node's name, used in reprs and error messages.
    name: str

    #: Queue ops whose result can be predicted and send them with the next call
    #: (:mod:`veil.pointers.pipeline`); network clients turn this on.
    pipeline = False

    def __init__(self, name: str) -> None:
        self.name = name
        self._released: list[int] = []
        self._lock = threading.RLock()
        self._deferred: list[RunOp] = []
        #: (weak pointer to the result or None, op name, call site) per deferred op.
        self._pending: list[tuple[Any, str, str]] = []
        self._next_id = CLIENT_IDS.start + secrets.randbits(60)

    # -- transport ---------------------------------------------------------------
    @abstractmethod
    def _roundtrip(self, frame: bytearray, expect_bytes: int = 0) -> bytes | bytearray | memoryview:
        """Send one encoded frame and return the encoded reply frame (``expect_bytes``: the
        size of the reply, when the caller knows it is large)."""

    #: Transports that send a list of buffers as one frame set this and implement
    #: :meth:`_roundtrip_parts`, so large tensors go out without being copied.
    _scatter = False

    def _roundtrip_parts(
        self, parts: list[bytes | bytearray | memoryview], expect_bytes: int = 0
    ) -> bytes | bytearray | memoryview:
        raise NotImplementedError

    def call(self, msg: Request, *, expect_bytes: int = 0) -> Reply:
        """Send one request and return its reply; a node-side error is raised here.

        ``expect_bytes`` tells the transport a large reply is coming (a ``get`` of a big
        tensor), so a network client can take its bulk lane.

        Raises:
            VeilError: the subclass the node raised (same ``code``), or a transport error.
        """
        with self._lock:
            released, self._released = self._released, []
            if self._deferred:
                before, self._deferred = self._deferred, []
                pending, self._pending = self._pending, []
                call = Call(msg, released, before)
            else:
                pending = []
                call = Call(msg, released)
            try:
                if self._scatter:
                    raw = self._roundtrip_parts(codec.encode_parts(call), expect_bytes)
                else:
                    raw = self._roundtrip(codec.encode(call), expect_bytes)
                reply = codec.decode_reply(raw)
            except VeilError as exc:  # the deferred ops' fate is unknown: their results too
                _break(pending, 0, exc)
                raise
        if isinstance(reply, ErrorReply):
            if 0 <= reply.deferred < len(pending):
                _, op, site = pending[reply.deferred]
                failed = error_from_code(
                    reply.code,
                    f"{reply.message} [raised by {op}, called at {site} and run pipelined; "
                    "the ops after it did not run]",
                )
                _break(pending, reply.deferred, failed)
                raise failed
            raise error_from_code(reply.code, reply.message)
        return reply

    def _flush(self) -> None:
        """Send deferred ops and pending deletions now (both also ride on the next call)."""
        if self._deferred or self._released:
            self.call(DeleteObjects([]))

    def _release(self, obj_id: int) -> None:
        """Queue a remote object for deletion (called when its last pointer is dropped)."""
        self._released.append(obj_id)

    # -- pointers ----------------------------------------------------------------
    def _ref(self, obj: Any) -> Ref | None:
        if isinstance(obj, _pointer_types()):
            ptr: Any = obj
            if ptr.location is not self:
                raise WorkerMismatch(
                    f"an operation on {self.name!r} got a pointer to {ptr.location.name!r}; "
                    f"bring both to one node first, e.g. ptr.move({self.name}_worker)"
                )
            if ptr.id is None:
                raise InvalidRequest(f"{ptr!r} has no single remote object to pass")
            error = getattr(ptr, "_error", None)
            if error is not None:  # its pipelined op failed
                raise error
            return Ref(ptr.id)
        return None

    def _encode_args(self, args: Any, kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        ref = self._ref
        tensor_pointer = _TENSOR_POINTER
        out = []
        for a in args:  # the common cases inline: a number, or a healthy pointer of ours
            t = type(a)
            if t in SCALAR_TYPES:
                out.append(a)
            elif t is tensor_pointer and a.location is self and a._error is None:
                out.append(Ref(a.id))
            else:
                out.append(to_arg(a, ref))
        return out, {k: to_arg(v, ref) for k, v in kwargs.items()} if kwargs else {}

    def _wrap(self, info: ObjectInfo, inputs: tuple[Any, ...] = ()) -> Any:
        pointer_tensor: Any = _TENSOR_POINTER or _tensor_pointer_type()
        obj: Any
        oid = info.id
        for obj in inputs:  # an in-place op answers with its input's own object
            if type(obj) is pointer_tensor and obj.id == oid:
                obj._update(info)
                return obj
        if info.kind == "tensor":
            return pointer_tensor(self, info)
        pointer_module: Any
        remote_optimizer: Any
        _, pointer_module, remote_optimizer = _pointer_types()[:3]
        if info.kind == "module":
            return pointer_module._from_info(self, info)
        if info.kind == "optimizer":
            return remote_optimizer._from_info(self, info)
        if info.kind in _EXTRA_KINDS:
            return _EXTRA_KINDS[info.kind][1](self, info, inputs)
        raise RemoteError(f"node returned an object of unknown kind {info.kind!r}")

    def run_op(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """Run an allowlisted op on the node and return pointers to its results.

        Example:
            >>> import torch, veil
            >>> alice = veil.VirtualWorker("alice")
            >>> x = torch.tensor([1.0, 2.0]).send(alice)
            >>> alice.run_op("torch.add", x, 1).get()
            tensor([2., 3.])
        """
        default_registry().get(op)  # refuse unknown ops before a round trip
        return self._run(op, args, kwargs)

    def call_op(self, op: str, *args: Any, **kwargs: Any) -> Reply:
        """Run op ``op`` on the node and return its raw reply (a :class:`Value`, the
        :class:`ObjectInfo` of a new object, :class:`Results`...): the public entry point for
        capabilities whose node ops answer with values (``veil.mpc`` protocol steps).

        Example:
            >>> import torch, veil
            >>> alice = veil.VirtualWorker("alice")
            >>> x = torch.tensor([1.0, 2.0]).send(alice)
            >>> type(alice.call_op("torch.add", x, 1)).__name__
            'ObjectInfo'
        """
        default_registry().get(op)  # refuse unknown ops before a round trip
        enc_args, enc_kwargs = self._encode_args(args, kwargs)
        return self.call(RunOp(op, enc_args, enc_kwargs))

    def _run(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """:meth:`run_op` for callers that took ``op`` from the registry already."""
        if self.pipeline:
            out = pipeline.try_defer(self, op, args, kwargs)
            if out is not pipeline.NOT_QUEUED:
                return out
        enc_args, enc_kwargs = self._encode_args(args, kwargs)
        reply = self.call(RunOp(op, enc_args, enc_kwargs))
        if type(reply) is ObjectInfo:
            return self._wrap(reply, args)
        return self._unwrap(reply, args)

    def _unwrap(self, reply: Reply, inputs: tuple[Any, ...]) -> Any:
        if isinstance(reply, ObjectInfo):
            return self._wrap(reply, inputs)
        if isinstance(reply, Results):
            items = [None if i is None else self._unwrap(i, inputs) for i in reply.items]
            if reply.tuple_type == "list":
                return items
            rt = getattr(torch.return_types, reply.tuple_type, None) if reply.tuple_type else None
            return rt(items) if rt is not None else tuple(items)
        if isinstance(reply, Done):
            return None
        raise RemoteError(f"unexpected reply {type(reply).__name__} to an op")


def _break(pending: list[tuple[Any, str, str]], start: int, exc: VeilError) -> None:
    """Mark the results of deferred ops from ``start`` on as failed with ``exc``."""
    for ref, _, _ in pending[start:]:
        ptr = ref() if ref is not None else None
        if ptr is not None:
            ptr._error = exc
