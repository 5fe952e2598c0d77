"""The client side of a node connection: turns calls into wire messages and replies into pointers."""

from __future__ import annotations

import secrets
import threading
import weakref
from typing import Any

import torch

from veil.errors import InvalidRequest, RemoteError, VeilError, WorkerMismatch, error_from_code
from veil.ops import default_registry
from veil.pointers import classes, pipeline
from veil.pointers.queue import OpQueue
from veil.pointers.transport import Buffer, Transport
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
    """(PointerTensor, PointerModule, RemoteOptimizer, extension pointers)."""
    global _POINTER_TYPES
    if not _POINTER_TYPES:
        extra = tuple(cls for cls, _ in _EXTRA_KINDS.values())
        _POINTER_TYPES = (classes.tensor, classes.module, classes.optimizer, *extra)
    return _POINTER_TYPES


#: PointerTensor, set by veil.pointers.tensor when it is defined (it imports this module).
_TENSOR_POINTER: Any = None


def _tensor_pointer_type() -> Any:
    return _TENSOR_POINTER or _pointer_types()[0]


class Remote:
    """A connection to one node, as one user, over a :class:`Transport` it owns.

    Every call goes through the wire format (:mod:`veil.serde`), for in-process and
    network nodes alike. Pointers dropped by the program are released in batches
    piggybacked on the next call, so garbage collection costs no extra round trips;
    so are the ops of its :class:`OpQueue` (pipelining, see :mod:`veil.pointers.pipeline`).

    Args:
        name: the node's name, used in reprs and error messages.
        transport: how frames reach the node.

    Example:
        >>> import torch, veil
        >>> from veil.pointers.transport import RecordingTransport
        >>> alice = veil.VirtualWorker("alice")
        >>> spy = alice.transport = RecordingTransport(alice.transport)
        >>> (torch.ones(2).send(alice) + 1).get()
        tensor([2., 2.])
        >>> [type(c.msg).__name__ for c in spy.calls]
        ['SendObject', 'RunOp', 'GetObject']
    """

    #: The node's name, used in reprs and error messages.
    name: str

    #: Queue ops whose result can be predicted and send them with the next call
    #: (:mod:`veil.pointers.pipeline`); network clients turn this on.
    pipeline = False

    def __init__(self, name: str, transport: Transport) -> None:
        self.name = name
        self._released: list[int] = []
        self._lock = threading.RLock()
        me = weakref.ref(self)  # no cycle: a dropped worker is freed at once, as before

        def send() -> None:
            remote = me()
            if remote is not None:
                remote.flush()

        #: Ops queued to ride on the next call (see :mod:`veil.pointers.pipeline`).
        self.queue = OpQueue(
            send, lock=self._lock, first_id=CLIENT_IDS.start + secrets.randbits(60)
        )
        self.transport = transport

    # -- transport ---------------------------------------------------------------
    @property
    def transport(self) -> Transport:
        """How frames reach the node; assigning another one takes effect on the next call."""
        return self._transport

    @transport.setter
    def transport(self, transport: Transport) -> None:
        self._transport = transport
        # Bound once, so a call costs no lookups of the transport (instance attributes
        # shadow the methods below, which stay as the fallback).
        self._scatter = transport.scatter
        self._roundtrip = transport.roundtrip  # type: ignore[method-assign]
        self._roundtrip_parts = transport.roundtrip_parts  # type: ignore[method-assign]

    def _roundtrip(self, frame: Buffer, expect_bytes: int = 0) -> Buffer:
        return self._transport.roundtrip(frame, expect_bytes)

    def _roundtrip_parts(self, parts: list[Buffer], expect_bytes: int = 0) -> Buffer:
        return self._transport.roundtrip_parts(parts, expect_bytes)

    def call(self, msg: Request, *, expect_bytes: int = 0) -> Reply:
        """Send one request and return its reply; a node-side error is raised here.

        ``expect_bytes`` tells the transport a large reply is coming (a ``get`` of a big
        tensor), so a network client can take its bulk lane.

        Raises:
            VeilError: the subclass the node raised (same ``code``), or a transport error.

        Example:
            >>> import veil
            >>> from veil.serde.messages import GetInfo
            >>> veil.VirtualWorker("alice").call(GetInfo()).name
            'alice'
        """
        with self._lock:
            released, self._released = self._released, []
            batch = self.queue.take()
            call = Call(msg, released) if batch is None else Call(msg, released, batch.ops)
            try:
                if self._scatter:
                    raw = self._roundtrip_parts(codec.encode_parts(call), expect_bytes)
                else:
                    raw = self._roundtrip(codec.encode(call), expect_bytes)
                reply = codec.decode_reply(raw)
            except VeilError as exc:  # the queued ops' fate is unknown: their results too
                if batch is not None:
                    batch.break_from(0, exc)
                raise
        if isinstance(reply, ErrorReply):
            if batch is not None and 0 <= reply.deferred < len(batch):
                raise batch.refused(reply.deferred, reply.code, reply.message)
            raise error_from_code(reply.code, reply.message)
        return reply

    def flush(self) -> None:
        """Send pipelined ops and deletions of dropped pointers now (they also ride on the
        next call); raises the error of a pipelined op that failed.

        Example:
            >>> import torch, veil
            >>> alice = veil.VirtualWorker("alice")
            >>> x = torch.ones(2).send(alice)
            >>> del x
            >>> alice.flush()
            >>> alice.node.object_count()
            0
        """
        if self.queue.pending or self._released:
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
        if isinstance(obj, torch.Tensor):
            return self._local_tensor_ref(obj)
        return None

    def _local_tensor_ref(self, t: torch.Tensor) -> Ref | None:
        """A local tensor as an op argument: the parameter of a model sent in place stands
        for its pointer; a tensor that requires grad is refused (its gradient could never
        come back: the model it belongs to has to be sent first)."""
        sent = getattr(t, "_veil_pointer", None)
        if sent is not None and sent.location is self and sent._owned:
            return self._ref(sent)
        if t.requires_grad:
            raise InvalidRequest(
                f"an op on {self.name!r} got a local tensor that requires grad (a parameter of "
                "a local model?): its gradient would be lost. Send the model first: "
                f"model.send({self.name}), then call it on pointers"
            )
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

    def call_op(self, op: str, *args: Any, expect_bytes: int = 0, **kwargs: Any) -> Reply:
        """Run op ``op`` on the node and return its raw reply (a :class:`Value`, the
        :class:`ObjectInfo` of a new object, :class:`Results`...): the public entry point for
        capabilities whose node ops answer with values (``veil.mpc`` protocol steps).
        ``expect_bytes`` (not passed to the op) tells the transport how large the reply
        will be, when the caller knows (a large one takes a node server's bulk lane).

        Example:
            >>> import torch, veil
            >>> alice = veil.VirtualWorker("alice")
            >>> x = torch.tensor([1.0, 2.0]).send(alice)
            >>> type(alice.call_op("torch.add", x, 1)).__name__
            'ObjectInfo'
        """
        default_registry().get(op)  # refuse unknown ops before a round trip
        enc_args, enc_kwargs = self._encode_args(args, kwargs)
        if expect_bytes:
            return self.call(RunOp(op, enc_args, enc_kwargs), expect_bytes=expect_bytes)
        return self.call(RunOp(op, enc_args, enc_kwargs))

    def _run(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """:meth:`run_op` for callers that took ``op`` from the registry already."""
        if self.pipeline:
            prepared = pipeline.prepare(op, args, kwargs)
            if prepared is not None:
                return self._enqueue(op, *prepared)
        enc_args, enc_kwargs = self._encode_args(args, kwargs)
        reply = self.call(RunOp(op, enc_args, enc_kwargs))
        if type(reply) is ObjectInfo:
            return self._wrap(reply, args)
        return self._unwrap(reply, args)

    def _enqueue(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 meta: Any) -> Any:  # fmt: skip
        """Queue ``op`` (:func:`pipeline.prepare` allowed it) and return its predicted result."""
        enc_args, enc_kwargs = self._encode_args(args, kwargs)
        queue = self.queue
        with self._lock:  # the id, the pointer and the queued op: one step
            ptr = out = None
            if meta is not None:
                out = queue.new_id()
                ptr = self._wrap(pipeline.result_info(out, meta, args, kwargs))
            queue.enqueue(RunOp(op, enc_args, enc_kwargs, out or 0), ptr, site=pipeline.site())
        return ptr

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
