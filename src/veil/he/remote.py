"""Encrypted tensors on nodes: the pointer, the node object kinds, and registering the he.* ops.

``enc.send(worker)`` stores an encrypted tensor on a node (its public context travels
once per node and key; the secret key never does) and returns an
:class:`EncryptedPointer`. Operators on the pointer run on the node as allowlisted
``he.*`` ops (:mod:`veil.he.nodeops`: checked arguments, predictions from public facts,
work limits); plaintext operands may be local tensors or pointers to tensors on that
node (a dataset's private data included: the node's privacy rules then make the
encrypted result private, see docs/he.md). ``ptr.get()`` brings the ciphertext back,
linked to the local context, and ``ptr.decrypt(key)`` decrypts it.

Example:
    >>> import torch, veil
    >>> from veil.he import ckks
    >>> ctx = ckks.context()
    >>> alice = veil.VirtualWorker("alice")
    >>> ptr = ckks.encrypt(torch.tensor([1.0, 2.0]), ctx).send(alice)
    >>> ptr
    EncryptedPointer(node='alice', id=..., scheme=ckks, shape=(2,))
    >>> ((ptr * 3 + torch.tensor([1.0, 1.0])).decrypt()).round(decimals=3)
    tensor([4., 7.], dtype=torch.float64)
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import Any

import torch

from veil.errors import InvalidRequest, ObjectNotFound
from veil.he import nodeops, wire
from veil.he.ckks import CKKSContext, CKKSTensor, sigmoid_coefficients
from veil.he.paillier import EncryptedTensor, PrivateKey, PublicKey
from veil.node import capability
from veil.node.capability import Capability
from veil.node.objects import ValueKind
from veil.pointers.handle import ReleasedOnDrop
from veil.pointers.remote import Remote
from veil.serde.messages import (
    DeleteObjects,
    EncryptedData,
    EncryptionContextData,
    GetObject,
    ObjectInfo,
    RequestAccess,
    RequestInfo,
    SendObject,
    Value,
)

# Per connection: the node object holding each public context already sent (by fingerprint).
# Values are object ids, not pointers: a pointer would hold its connection (the weak key)
# alive. The context object stays on the node for the session (``clear()`` removes it).
_SENT: weakref.WeakKeyDictionary[Remote, dict[str, int]] = weakref.WeakKeyDictionary()


class ContextPointer(ReleasedOnDrop):
    """A public encryption context (Paillier public key or TenSEAL public context) on a node."""

    def __init__(self, location: Remote, info: ObjectInfo, *, owned: bool = True) -> None:
        self.location = location
        self.id = info.id
        self.scheme = info.dtype
        self._owned = owned

    def __repr__(self) -> str:
        return f"ContextPointer(node={self.location.name!r}, id={self.id}, scheme={self.scheme})"


class EncryptedPointer(ReleasedOnDrop):
    """A pointer to an encrypted tensor held by a node.

    Arithmetic runs on the node (``+ - * @``, ``sum``, ``dot``, ``square``, ``polyval``,
    ``sigmoid``, shape changes); ``get()`` returns the ciphertext (never plaintext),
    ``decrypt(key)`` gets and decrypts it locally.
    """

    _veil_defer_operators = True  # PointerTensor operators hand `x @ enc` over to us
    __array_priority__ = 1000

    def __init__(self, location: Remote, info: ObjectInfo, local: wire.Context | None, *,
                 owned: bool = True) -> None:  # fmt: skip
        self.location = location
        self.id = info.id
        self.scheme = info.dtype
        self.shape = torch.Size(info.shape)
        self.private = info.private
        self.sources = tuple(info.sources)
        self._local = local
        self._owned = owned

    def __repr__(self) -> str:
        tags = ""
        if self.private:
            src = f" from {', '.join(self.sources)}" if self.sources else ""
            tags = f", private{src}"
        return (
            f"EncryptedPointer(node={self.location.name!r}, id={self.id}, scheme={self.scheme}, "
            f"shape={tuple(self.shape)}{tags})"
        )

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    # -- remote ops ------------------------------------------------------------------
    def _op(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.location.run_op(f"he.{name}", self, *args, **kwargs)

    def __add__(self, other: Any) -> Any:
        return self._op("add", other)

    __radd__ = __add__

    def __sub__(self, other: Any) -> Any:
        return self._op("sub", other)

    def __rsub__(self, other: Any) -> Any:
        return self._op("rsub", other)

    def __mul__(self, other: Any) -> Any:
        return self._op("mul", other)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> Any:
        return self._op("truediv", other)

    def __neg__(self) -> Any:
        return self._op("neg")

    def __matmul__(self, other: Any) -> Any:
        return self._op("matmul", other)

    matmul = mm = __matmul__

    def __rmatmul__(self, other: Any) -> Any:
        return self._op("rmatmul", other)

    def sum(self, dim: int | None = None) -> Any:
        return self._op("sum", dim)

    def dot(self, other: Any) -> Any:
        return self._op("dot", other)

    def square(self) -> Any:
        return self._op("square")

    def polyval(self, coefficients: Sequence[float]) -> Any:
        return self._op("polyval", [float(c) for c in coefficients])

    def sigmoid(self, degree: int = 3, interval: tuple[float, float] = (-8.0, 8.0)) -> Any:
        return self.polyval(sigmoid_coefficients(degree, interval))

    def reshape(self, *shape: Any) -> Any:
        dims = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], Sequence) else shape
        return self._op("reshape", list(dims))

    def transpose(self, dim0: int, dim1: int) -> Any:
        return self._op("transpose", dim0, dim1)

    @property
    def T(self) -> Any:  # noqa: N802
        return self._op("transpose", 0, -1) if self.ndim == 2 else self

    def __getitem__(self, index: Any) -> Any:
        return self._op("getitem", index)

    # -- fetching --------------------------------------------------------------------
    def get(self, context: wire.Context | None = None) -> wire.Encrypted:
        """The ciphertext, linked to a local context: ``context`` (a Paillier public key or
        a CKKS context), default the one it was sent with. The node's privacy rules
        apply: a result derived from private data needs the data owner's approval.
        """
        local = context if context is not None else self._local
        if local is None:
            raise ValueError(
                "this pointer was not created from a local encrypted tensor: pass the public key "
                "or context it is encrypted under, ptr.get(context=...)"
            )
        reply = self.location.call(GetObject(self.id))
        if not (isinstance(reply, Value) and isinstance(reply.value, EncryptedData)):
            raise InvalidRequest(f"object {self.id} is not an encrypted tensor")
        return wire.from_wire(reply.value, local=local)

    def decrypt(self, key: PrivateKey | CKKSContext | None = None) -> torch.Tensor:
        """``get()`` and decrypt locally (Paillier: pass the private key; CKKS: the private
        context, default the one that encrypted the tensor)."""
        if isinstance(key, PrivateKey):
            enc = self.get(self._local or key.public_key)
        else:
            enc = self.get(self._local or key)
        if isinstance(enc, EncryptedTensor):
            if not isinstance(key, PrivateKey):
                raise TypeError("decrypting a Paillier tensor needs its paillier.PrivateKey")
            return enc.decrypt(key)
        if key is not None and not isinstance(key, CKKSContext):
            raise TypeError("decrypting a CKKS tensor needs its private ckks.CKKSContext")
        return enc.decrypt(key)

    def move(self, destination: Remote) -> EncryptedPointer:
        """Copy the ciphertext to another node (through this client: ``get`` then ``send``,
        so the source node's privacy rules apply) and return a pointer there."""
        return send(self.get(), destination)

    def delete(self) -> None:
        """Delete the object on the node now (dropping the last pointer does it too)."""
        self.location.call(DeleteObjects([self.id]))
        self._owned = False

    def request(self, reason: str) -> RequestInfo:
        """Ask the node's owner to approve fetching this object."""
        reply = self.location.call(RequestAccess(self.id, reason))
        assert isinstance(reply, RequestInfo)
        return reply


# --------------------------------------------------------------------------- sending


def _context_id(worker: Remote, ctx: wire.Context, *, fresh: bool = False) -> int:
    """The node object holding this public context, sent first if needed."""
    sent = _SENT.setdefault(worker, {})
    if not fresh and ctx.fingerprint in sent:
        return sent[ctx.fingerprint]
    info = worker.call(SendObject(wire.context_to_wire(ctx), "public encryption context"))
    assert isinstance(info, ObjectInfo)
    sent[ctx.fingerprint] = info.id
    return info.id


def send(value: wire.Encrypted, worker: Remote, *, description: str = "") -> EncryptedPointer:
    """Store an encrypted tensor on a node (its public context goes first, once)."""
    ctx = wire.context_of(value)
    for attempt in (0, 1):
        ctx_id = _context_id(worker, ctx, fresh=attempt == 1)
        try:
            info = worker.call(SendObject(wire.to_wire(value, context=ctx_id), description))
            break
        except ObjectNotFound:  # the node lost our context (cleared): send it again once
            if attempt:
                raise
    assert isinstance(info, ObjectInfo)
    return EncryptedPointer(worker, info, ctx)


# ----------------------------------------------------------------------- registration


def _describe_encrypted(v: Any) -> tuple[list[int], str]:
    return list(v.shape), wire.scheme_of(v)


def _describe_context(v: Any) -> tuple[list[int], str]:
    return [], wire.scheme_of(v)


def _context_from_wire(data: Any, resolve: Any) -> Any:
    if not isinstance(data, EncryptionContextData):
        raise InvalidRequest("expected an encryption context")
    return wire.context_from_wire(data)


def _encrypted_from_wire(data: Any, resolve: Any) -> Any:
    if not isinstance(data, EncryptedData):
        raise InvalidRequest("expected an encrypted tensor")

    def checked(oid: int) -> Any:
        if resolve is None:
            raise ObjectNotFound("no context to resolve")
        value = resolve(oid)
        if not isinstance(value, PublicKey | CKKSContext):
            raise InvalidRequest(f"object {oid} is not an encryption context")
        return value

    return wire.from_wire(data, checked)


def _wrap_encrypted(remote: Remote, info: ObjectInfo, inputs: tuple[Any, ...]) -> EncryptedPointer:
    local = next((a._local for a in inputs if isinstance(a, EncryptedPointer)), None)
    return EncryptedPointer(remote, info, local)


def _wrap_context(remote: Remote, info: ObjectInfo, inputs: tuple[Any, ...]) -> ContextPointer:
    return ContextPointer(remote, info)


def _tensor_encrypt(self: torch.Tensor, key: Any, **kwargs: Any) -> wire.Encrypted:
    """``x.encrypt(key)``: encrypt this tensor under a Paillier public key or a CKKS context
    (same as ``veil.he.encrypt(x, key, **kwargs)``)."""
    from veil.he import encrypt

    return encrypt(self, key, **kwargs)


#: Encrypted tensors as a node capability: two object kinds (encrypted tensors, public
#: contexts), their pointer kinds, and the HE node ops (veil.he.nodeops).
CAPABILITY = Capability(
    "he",
    ops=tuple(nodeops.specs()),
    kinds=(
        ValueKind(
            "encrypted",
            (EncryptedTensor, CKKSTensor),
            (EncryptedData,),
            lambda v, storage: wire.to_wire(v, storage=storage),
            _encrypted_from_wire,
            _describe_encrypted,
            wire.nbytes,
            load_order=1,
        ),
        ValueKind(
            "he_context",
            (PublicKey, CKKSContext),
            (EncryptionContextData,),
            lambda v, storage: wire.context_to_wire(v),
            _context_from_wire,
            _describe_context,
            wire.nbytes,
            load_order=0,
        ),
    ),  # fmt: skip
    pointer_kinds=(
        ("encrypted", EncryptedPointer, _wrap_encrypted),
        ("he_context", ContextPointer, _wrap_context),
    ),
)


def register() -> None:
    """Teach nodes and connections about encrypted tensors (idempotent; on ``import veil.he``)."""
    if not capability.is_installed("he"):
        capability.install(CAPABILITY)
    # The one entry point HE adds to torch, next to Tensor.send (veil.pointers.hook).
    torch.Tensor.encrypt = _tensor_encrypt  # type: ignore[attr-defined]
