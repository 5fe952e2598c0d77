"""SharedTensor: a fixed-point tensor additively secret-shared over Z_2^64 among parties' nodes.

Example:
    >>> import torch, veil
    >>> alice, bob, carol = (veil.VirtualWorker(n) for n in ("alice", "bob", "carol"))
    >>> x = torch.tensor([1.5, -2.0, 3.25]).fix_precision().share(alice, bob, crypto_provider=carol)
    >>> y = torch.tensor([2.0, 0.5, -1.0]).share(alice, bob, crypto_provider=carol)
    >>> (x * y + 1).get().float_precision()
    tensor([ 4.0000,  0.0000, -2.2500])
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch

from veil.errors import InvalidRequest, WorkerMismatch
from veil.mpc.protocols import arith as P
from veil.mpc.protocols.session import MPCSession, node_call
from veil.mpc.providers.remote import pointer
from veil.mpc.ring import FixedPoint, broadcast_shapes, prg
from veil.mpc.tensors.fixed import FixedPrecisionTensor, register_tensor_type
from veil.mpc.tensors.surface import DerivedOps, defers
from veil.pointers import PointerTensor
from veil.serde.messages import Results

Shares = list[Any]  # PointerTensor per party (its operators are dynamic for mypy)


def _as_tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.tensor(x)


def _is_int(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, int):
        return True
    return isinstance(x, torch.Tensor) and not x.is_floating_point() and x.dtype != torch.bool


class SharedTensor(DerivedOps):
    """A tensor additively shared among parties: ``sum(shares) = round(x * 2**frac_bits)``
    mod 2^64, each share a private int64 object on its party's node.

    Attributes:
        shares: one :class:`~veil.PointerTensor` per party, in party order.
        session: the parties, crypto provider and security mode.
        encoding: the fixed-point encoding (``frac_bits=0`` for integer results such as
            comparison bits).
    """

    __slots__ = ()
    shares: Shares
    session: MPCSession
    encoding: FixedPoint

    # ------------------------------------------------------------- construction
    @classmethod
    def from_encoded(
        cls, sess: MPCSession, enc: torch.Tensor, encoding: FixedPoint
    ) -> SharedTensor:
        """Share a local encoded tensor: n-1 random shares and the difference."""
        enc = enc.to(torch.int64)
        rand = [
            prg(os.urandom(32), 0, 0, enc.numel()).reshape(enc.shape) for _ in range(sess.n - 1)
        ]
        last = enc.clone()
        for r in rand:
            last = last - r
        parts = [*rand, last]

        def put(i: int) -> PointerTensor:
            w = sess.parties[i]
            return pointer(w, node_call(w, "mpc.as_share", sess.sid, parts[i]))

        return cls(sess.fanout(put, range(sess.n)), sess, encoding)

    @classmethod
    def from_pointer(cls, sess: MPCSession, ptr: PointerTensor, index: int,
                     encoding: FixedPoint) -> SharedTensor:  # fmt: skip
        """Share an int64 tensor that lives on party ``index``'s node: that node splits it
        and seals a seed to each other party of the session (``mpc.split``)."""
        if ptr.dtype != torch.int64:
            raise InvalidRequest("share a fixed-point pointer: ptr.fix_precision().share(...)")
        from veil.mpc.protocols.session import _u8, new_tag

        tag = new_tag()
        holder = sess.parties[index]
        reply = node_call(holder, "mpc.split", sess.sid, ptr, tag)
        if not isinstance(reply, Results):
            raise InvalidRequest("unexpected reply to split")
        mine = PointerTensor(holder, reply.items[0])  # type: ignore[arg-type]
        boxes_ptr = PointerTensor(holder, reply.items[1])  # type: ignore[arg-type]
        raw = boxes_ptr.get().numpy().tobytes()
        others = [j for j in range(sess.n) if j != index]
        shares: list[PointerTensor | None] = [None] * sess.n
        shares[index] = mine

        def recv(k: int) -> None:
            j = others[k]
            box = _u8(raw[60 * k : 60 * (k + 1)])
            r = node_call(
                sess.parties[j], "mpc.receive", sess.sid, index, box, list(ptr.shape), tag
            )
            shares[j] = PointerTensor(sess.parties[j], r)  # type: ignore[arg-type]

        sess.fanout(recv, range(len(others)))
        return cls([s for s in shares if s is not None], sess, encoding)

    # ------------------------------------------------------------- introspection
    @property
    def shape(self) -> torch.Size:
        return self.shares[0].shape

    def __repr__(self) -> str:
        shape = "x".join(str(d) for d in self.shape) or "scalar"
        return (
            f"SharedTensor(shape={shape}, parties={[p.name for p in self.parties]}, "
            f"provider={self.session.provider.name!r}, frac_bits={self.encoding.frac_bits}, "
            f"security={self.session.security!r})"
        )

    # ------------------------------------------------------------- reconstruction
    def get(self) -> FixedPrecisionTensor:
        """Fetch every share and reconstruct (each share is a private object: this needs
        the same approval as any private object, see :meth:`request`)."""
        parts = self.session.fanout(lambda p: p.get(), self.shares)
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        return FixedPrecisionTensor(total, self.encoding, self.source_dtype)

    # ------------------------------------------------------------- helpers
    def _check(self, other: SharedTensor) -> None:
        if other.session is not self.session:
            raise WorkerMismatch(
                "both shared tensors must be shared among the same session's parties"
            )

    def _rescaled(self, bits: int) -> Shares:
        """Shares re-encoded with ``bits`` >= own frac bits (exact: multiply by 2^d)."""
        d = bits - self.encoding.frac_bits
        if d == 0:
            return self.shares
        return [s * (1 << d) for s in self.shares]

    def _aligned(self, other: SharedTensor) -> tuple[Shares, Shares, FixedPoint]:
        self._check(other)
        bits = max(self.encoding.frac_bits, other.encoding.frac_bits)
        return self._rescaled(bits), other._rescaled(bits), FixedPoint(bits)

    def _encode_public(self, x: Any) -> torch.Tensor:
        return self.encoding.encode(_as_tensor(x))

    def _map(self, fn: Any) -> SharedTensor:
        return self._new(P.local(self.session, lambda i, s: fn(s), self.shares))

    # ------------------------------------------------------------- linear ops (free)
    @defers
    def __add__(self, other: Any) -> SharedTensor:
        if isinstance(other, SharedTensor):
            a, b, enc = self._aligned(other)
            return self._new([x + y for x, y in zip(a, b, strict=True)], enc)
        pub = self._encode_public(other)
        out_shape = broadcast_shapes(self.shape, pub.shape)
        return self._new([
            s + pub if i == 0 else s if s.shape == out_shape else s.expand(out_shape).contiguous()
            for i, s in enumerate(self.shares)
        ])  # fmt: skip

    __radd__ = __add__

    def __neg__(self) -> SharedTensor:
        return self._new([-s for s in self.shares])

    @defers
    def __sub__(self, other: Any) -> SharedTensor:
        if isinstance(other, SharedTensor):
            return self + (-other)
        return self + (-_as_tensor(other) if isinstance(other, torch.Tensor) else -other)

    @defers
    def __rsub__(self, other: Any) -> SharedTensor:
        return (-self) + other

    # ------------------------------------------------------------- products
    @defers
    def __mul__(self, other: Any) -> SharedTensor:
        sess = self.session
        if isinstance(other, SharedTensor):
            self._check(other)
            f = self._product_trunc(other.encoding)
            out = P.product(sess, self.shares, other.shares, op="mul", f=f)
            return self._new(out, self._product_encoding(other.encoding))
        if _is_int(other):
            k = _as_tensor(other).to(torch.int64)
            return self._new([s * k for s in self.shares])
        pub = self._encode_public(other)
        return self._new(P.trunc(sess, [s * pub for s in self.shares], self.encoding.frac_bits))

    __rmul__ = __mul__

    def _mul_many(self, pairs: Sequence[tuple[SharedTensor, SharedTensor]]) -> list[SharedTensor]:
        """Several elementwise products in one round (then one truncation round if needed)."""
        fs = {a._product_trunc(b.encoding) for a, b in pairs}
        if len(fs) != 1:
            return [a * b for a, b in pairs]
        for a, b in pairs:
            a._check(b)
        outs = P.products(self.session, [(a.shares, b.shares) for a, b in pairs], fs.pop())
        return [self._new(o, a._product_encoding(b.encoding))
                for o, (a, b) in zip(outs, pairs, strict=True)]  # fmt: skip

    def _from_public(self, t: torch.Tensor, encoding: FixedPoint) -> SharedTensor:
        """Shares of the public ``t`` (party 0 holds it encoded, the others zeros)."""
        enc = encoding.encode(t) if t.is_floating_point() else t.to(torch.int64)
        sess = self.session

        def put(i: int) -> PointerTensor:
            w = sess.parties[i]
            part = enc if i == 0 else torch.zeros_like(enc)
            return pointer(w, node_call(w, "mpc.as_share", sess.sid, part))

        return SharedTensor(sess.fanout(put, range(sess.n)), sess, encoding)

    def _product_trunc(self, other: FixedPoint) -> int:
        """Bits to truncate after a product so the result keeps the larger of the two
        encodings (integers times fixed point need none)."""
        fa, fb = self.encoding.frac_bits, other.frac_bits
        return min(fa, fb)

    def _product_encoding(self, other: FixedPoint) -> FixedPoint:
        return FixedPoint(max(self.encoding.frac_bits, other.frac_bits))

    @defers
    def __truediv__(self, other: Any) -> SharedTensor:
        """Division by a public value (multiplication by its fixed-point reciprocal:
        error at most |x| * 2^-(f+1) / |d| + 2^-f)."""
        if isinstance(other, SharedTensor):
            from veil.mpc.protocols import approx

            return self * approx.reciprocal(other)
        d = _as_tensor(other).to(torch.float64)
        if bool((d == 0).any()):
            raise ZeroDivisionError("division of a shared tensor by zero")
        return self * (1.0 / d)

    def div(self, other: Any) -> SharedTensor:
        return self / other

    @defers
    def __matmul__(self, other: Any) -> SharedTensor:
        sess = self.session
        if isinstance(other, SharedTensor):
            self._check(other)
            out = P.product(
                sess, self.shares, other.shares, op="matmul", f=self._product_trunc(other.encoding)
            )
            return self._new(out, self._product_encoding(other.encoding))
        pub = self._encode_public(other)
        loc = [s.location.run_op("mpc.matmul", s, pub) for s in self.shares]
        return self._new(P.trunc(sess, loc, self.encoding.frac_bits))

    @defers
    def __rmatmul__(self, other: Any) -> SharedTensor:
        pub = self._encode_public(other)
        loc = [s.location.run_op("mpc.matmul", pub, s) for s in self.shares]
        return self._new(P.trunc(self.session, loc, self.encoding.frac_bits))

    def matmul(self, other: Any) -> SharedTensor:
        return self @ other

    mm = matmul

    def square(self) -> SharedTensor:
        """``x * x`` with half the communication of a general product."""
        return self._new(P.square(self.session, self.shares, self.encoding.frac_bits))

    def conv2d(
        self, weight: Any, bias: Any = None, stride: int = 1, padding: int = 0
    ) -> SharedTensor:
        """2-d convolution with a shared or public weight (and optional bias)."""
        sess = self.session
        if isinstance(weight, SharedTensor):
            self._check(weight)
            f = self._product_trunc(weight.encoding)
            out = P.product(
                sess, self.shares, weight.shares, op="conv2d", f=f, stride=stride, padding=padding
            )
            res = self._new(out, self._product_encoding(weight.encoding))
        else:
            pub = self._encode_public(weight)
            loc = [s.location.run_op("mpc.conv2d", s, pub, stride, padding) for s in self.shares]
            res = self._new(P.trunc(sess, loc, self.encoding.frac_bits))
        if bias is not None:
            res = res + (
                bias.reshape(1, -1, 1, 1)
                if isinstance(bias, SharedTensor)
                else _as_tensor(bias).reshape(1, -1, 1, 1)
            )
        return res

    # ------------------------------------------------------------- shape ops (free)
    def reshape(self, *shape: Any) -> SharedTensor:
        return self._map(lambda s: s.reshape(*shape))

    view = reshape

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> SharedTensor:
        return self._map(lambda s: s.flatten(start_dim, end_dim))

    def transpose(self, d0: int, d1: int) -> SharedTensor:
        return self._map(lambda s: s.transpose(d0, d1).contiguous())

    def t(self) -> SharedTensor:
        return self._map(lambda s: s.t().contiguous())

    @property
    def T(self) -> SharedTensor:  # noqa: N802
        return self.t()

    def permute(self, *dims: Any) -> SharedTensor:
        return self._map(lambda s: s.permute(*dims).contiguous())

    def unsqueeze(self, dim: int) -> SharedTensor:
        return self._map(lambda s: s.unsqueeze(dim))

    def squeeze(self, dim: int | None = None) -> SharedTensor:
        return self._map(lambda s: s.squeeze() if dim is None else s.squeeze(dim))

    def expand(self, *shape: Any) -> SharedTensor:
        return self._map(lambda s: s.expand(*shape).contiguous())

    def flip(self, *dims: Any) -> SharedTensor:
        """Reverse the order along ``dims`` (free: each party flips its share)."""
        return self._map(lambda s: s.flip(*dims))

    def unfold(self, dim: int, size: int, step: int) -> SharedTensor:
        """Sliding windows along ``dim`` (``torch.Tensor.unfold``), e.g. for pooling."""
        return self._map(lambda s: s.unfold(dim, size, step))

    def __getitem__(self, idx: Any) -> SharedTensor:
        return self._map(lambda s: s[idx].contiguous())

    def sum(self, dim: Any = None, keepdim: bool = False) -> SharedTensor:
        return self._map(lambda s: s.sum() if dim is None else s.sum(dim, keepdim=keepdim))

    def mean(self, dim: Any = None, keepdim: bool = False) -> SharedTensor:
        n = (
            self.numel()
            if dim is None
            else math.prod(self.shape[d] for d in (dim if isinstance(dim, list | tuple) else [dim]))
        )
        return self.sum(dim, keepdim) * (1.0 / n)

    @staticmethod
    def cat(tensors: Sequence[SharedTensor], dim: int = 0) -> SharedTensor:
        first = tensors[0]
        for t in tensors[1:]:
            first._check(t)
        bits = max(t.encoding.frac_bits for t in tensors)
        per = [t._rescaled(bits) for t in tensors]
        shares = first.session.fanout(
            lambda i: torch.cat([p[i] for p in per], dim), range(first.session.n)
        )
        return SharedTensor(shares, first.session, FixedPoint(bits))

    @staticmethod
    def stack(tensors: Sequence[SharedTensor], dim: int = 0) -> SharedTensor:
        return SharedTensor.cat([t.unsqueeze(dim) for t in tensors], dim)

    # ------------------------------------------------------------- comparisons
    def _sign(self) -> SharedTensor:
        """1 where the value is negative, else 0 (integer shares)."""
        return self._new(P.sign_bit(self.session, self.shares), FixedPoint(0))

    def _broadcast_shape(self, other: Any) -> torch.Size:
        oshape = other.shape if isinstance(other, SharedTensor | torch.Tensor) else torch.Size([])
        return broadcast_shapes(self.shape, oshape)

    # comparisons, relu, where, max/argmax, pooling, approximations: DerivedOps (surface.py)


register_tensor_type("semi-honest", SharedTensor)
