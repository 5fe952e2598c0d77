"""AuthenticatedTensor: a shared tensor with SPDZ2k MACs (``security="malicious"``).

Each party holds, per element, a share of the value and a share of its MAC
``alpha * value`` in Z_2^128 (see :mod:`veil.mpc.spdz`); every opening is followed by a
MAC check, so a party that alters its share makes the computation raise
:class:`~veil.errors.MACCheckFailed` instead of returning a wrong answer.

Supported: the surface of :class:`~veil.mpc.SharedTensor`: + - * / @ (shared or public
operands), conv2d (shared or public weight, bias), square, sum/mean, shape ops
(reshape/view/flatten/t/transpose/permute/unsqueeze/squeeze/expand/indexing/cat/stack),
comparisons (< > <= >= eq), relu, where, max/argmax, max_pool2d/avg_pool2d, the
approximations of :mod:`veil.mpc.approx`, input from a local tensor or from data a node
holds (:meth:`AuthenticatedTensor.from_pointer`), and reconstruction (``get``,
``reconstruct``) with a final MAC check.

Example:
    >>> import torch, veil
    >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
    >>> x = torch.tensor([1.5, -2.0]).share(a, b, crypto_provider=c, security="malicious")
    >>> y = torch.tensor([2.0, 3.0]).share(a, b, crypto_provider=c, security="malicious")
    >>> (x * y).relu().reconstruct()
    tensor([3., 0.])
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch

from veil.errors import InvalidRequest, MACCheckFailed, WorkerMismatch
from veil.mpc.protocols.session import MPCSession, Request, checked, node_call
from veil.mpc.providers import kinds
from veil.mpc.providers.remote import pointer
from veil.mpc.ring import FixedPoint, broadcast_shapes, prg, r128
from veil.mpc.tensors.auth_shapes import AuthenticatedShapes
from veil.mpc.tensors.fixed import FixedPrecisionTensor, register_tensor_type
from veil.mpc.tensors.surface import defers

Shares = list[Any]


def _run(sess: MPCSession, op: str, *shares: Shares, args: tuple[Any, ...] = ()) -> Shares:
    return sess.fanout(
        lambda i: sess.parties[i].run_op(op, *(s[i] for s in shares), *args), range(sess.n)
    )


class AuthenticatedTensor(AuthenticatedShapes):
    """A fixed-point tensor shared with SPDZ2k MACs; each share is a private (4, *shape)
    int64 object (value and MAC, 128 bits each) on its party's node. Its methods mirror
    :class:`~veil.mpc.SharedTensor`'s, so code written for one runs on the other.

    Example:
        >>> import torch, veil
        >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
        >>> img = torch.arange(16.0).reshape(1, 1, 4, 4) / 8
        >>> x = img.share(a, b, crypto_provider=c, security="malicious")
        >>> x.max_pool2d(2).reconstruct().flatten()
        tensor([0.6250, 0.8750, 1.6250, 1.8750])
        >>> round(float(x.mean().reconstruct()), 2), x.exp().shape
        (0.94, torch.Size([1, 1, 4, 4]))
    """

    __slots__ = ()
    shares: Shares
    session: MPCSession
    encoding: FixedPoint

    @classmethod
    def from_encoded(
        cls, sess: MPCSession, enc: torch.Tensor, encoding: FixedPoint
    ) -> AuthenticatedTensor:
        """Input protocol: the parties open -R for a fresh authenticated mask R to the
        driver, which answers d = x - R; each party's share is r_i + d (MAC r_mac_i + alpha_i d)."""
        shape = list(enc.shape)
        x128 = r128.from64(enc.to(torch.int64))

        def extra(opened: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
            return [[r128.add(x128, opened[0][0])]]  # x + (-R)

        (res,) = sess.round([Request("m_input", {"x": shape}, [[] for _ in range(sess.n)])], extra)
        return cls(res[0], sess, encoding)

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.shares[0].shape[1:])

    def __repr__(self) -> str:
        shape = "x".join(str(d) for d in self.shape) or "scalar"
        return (
            f"AuthenticatedTensor(shape={shape}, parties={[p.name for p in self.session.parties]}, "
            f"provider={self.session.provider.name!r}, frac_bits={self.encoding.frac_bits})"
        )

    # ------------------------------------------------------------- reconstruction
    # ------------------------------------------------------------- linear ops
    def _check(self, other: AuthenticatedTensor) -> None:
        if other.session is not self.session:
            raise WorkerMismatch("both tensors must belong to the same MPC session")

    def _rescaled(self, bits: int) -> Shares:
        d = bits - self.encoding.frac_bits
        if d == 0:
            return self.shares
        return _run(self.session, "mpc.a128.scale", self.shares, args=(1 << d,))

    def _public(self, x: Any) -> torch.Tensor:
        t = x if isinstance(x, torch.Tensor) else torch.tensor(x)
        enc = self.encoding.encode(t)
        return r128.from64(enc.expand(self.shape).contiguous() if enc.dim() <= self.dim() else enc)

    @defers
    def __add__(self, other: Any) -> AuthenticatedTensor:
        shape = self._broadcast_shape(other)
        if shape != self.shape:  # expand explicitly: shares carry a leading (4,) dimension
            return self.expand(*shape) + other
        if isinstance(other, AuthenticatedTensor):
            if other.shape != shape:
                other = other.expand(*shape)
            self._check(other)
            bits = max(self.encoding.frac_bits, other.encoding.frac_bits)
            out = _run(self.session, "mpc.a128.add", self._rescaled(bits), other._rescaled(bits))
            return self._new(out, FixedPoint(bits))
        c = self._public(other)
        sess = self.session
        out = sess.fanout(
            lambda i: pointer(
                sess.parties[i],
                node_call(sess.parties[i], "mpc.a128.add_public", sess.sid, self.shares[i], c),
            ),
            range(sess.n),
        )
        return self._new(out)

    __radd__ = __add__

    def __neg__(self) -> AuthenticatedTensor:
        return self._new(_run(self.session, "mpc.a128.neg", self.shares))

    @defers
    def __sub__(self, other: Any) -> AuthenticatedTensor:
        return self + (-other)

    @defers
    def __rsub__(self, other: Any) -> AuthenticatedTensor:
        return (-self) + other

    # ------------------------------------------------------------- products
    def _trunc(self, shares: Shares, f: int) -> Shares:
        if f == 0:
            return shares
        params = {"x": list(self.shape), "f": f}
        (res,) = self.session.round([Request("m_trunc", params, [[s] for s in shares])])
        return res[0]

    def _product(self, other: AuthenticatedTensor, op: str, **kw: Any) -> AuthenticatedTensor:
        self._check(other)
        params: dict[str, Any] = {"x": list(self.shape), "y": list(other.shape), "op": op, **kw}
        (res,) = self.session.round(
            [
                Request(
                    "m_beaver",
                    params,
                    [[a, b] for a, b in zip(self.shares, other.shares, strict=True)],
                )
            ]
        )
        f = min(self.encoding.frac_bits, other.encoding.frac_bits)
        enc = FixedPoint(max(self.encoding.frac_bits, other.encoding.frac_bits))
        out = self._new(res[0], enc)
        return out._new(out._trunc(res[0], f), enc)

    @defers
    def __mul__(self, other: Any) -> AuthenticatedTensor:
        if isinstance(other, AuthenticatedTensor):
            return self._product(other, "mul")
        t = other if isinstance(other, torch.Tensor) else torch.tensor(other)
        shape = self._broadcast_shape(t)
        if shape != self.shape:
            return self.expand(*shape) * t
        if not t.is_floating_point() and t.dtype != torch.bool:
            return self._new(
                _run(self.session, "mpc.a128.scale", self.shares, args=(t.to(torch.int64),))
            )
        k = self.encoding.encode(t)
        scaled = _run(self.session, "mpc.a128.scale", self.shares, args=(k,))
        return self._new(self._trunc(scaled, self.encoding.frac_bits))

    __rmul__ = __mul__

    @defers
    def __matmul__(self, other: Any) -> AuthenticatedTensor:
        if not isinstance(other, AuthenticatedTensor):
            return self._product_public(other, "matmul", left=False)
        return self._product(other, "matmul")

    def conv2d(
        self, weight: Any, bias: Any = None, stride: int = 1, padding: int = 0
    ) -> AuthenticatedTensor:
        """2-d convolution with a shared or public weight (and optional bias), as
        :meth:`SharedTensor.conv2d <veil.mpc.SharedTensor.conv2d>`."""
        if isinstance(weight, AuthenticatedTensor):
            res = self._product(weight, "conv2d", stride=stride, padding=padding)
        else:
            res = self._product_public(weight, "conv2d", left=False, stride=stride, padding=padding)
        if bias is None:
            return res
        b = bias if isinstance(bias, AuthenticatedTensor) else torch.as_tensor(bias)
        return res + b.reshape(1, -1, 1, 1)

    def sum(self, dim: Any = None, keepdim: bool = False) -> AuthenticatedTensor:
        """Sum over ``dim`` (an int, a tuple of ints, or all elements)."""
        if dim is None:
            return self.reshape(-1).sum(0)
        if isinstance(dim, list | tuple):
            out = self
            for d in sorted((d % self.dim() for d in dim), reverse=True):
                out = out.sum(d, keepdim)
            return out
        return self._new(
            _run(self.session, "mpc.a128.sum", self.shares, args=(dim % self.dim(), keepdim))
        )

    # ------------------------------------------------------------- comparisons
    def _sign(self) -> AuthenticatedTensor:
        """1 where negative, else 0: a carry tree over 64 bit positions on bits
        authenticated in Z_2^64 (``auth64``), converted back to Z_2^128 at the end
        (1 + 6 + 1 rounds; every opening MAC-checked)."""
        sess = self.session
        shape = list(self.shape)
        (res,) = sess.round([Request("m_bits", {"x": shape}, [[s] for s in self.shares])])
        g, p, p63 = res
        width = 64
        while width > 1:
            (out,) = sess.round(
                [
                    Request(
                        "m_carry",
                        {"x": shape, "width": width},
                        [list(t) for t in zip(g, p, strict=True)],
                    )
                ]
            )
            g, p = out[0], (out[1] if len(out) > 1 else p)
            width //= 2
        (res,) = sess.round(
            [Request("m_bit2a", {"x": shape}, [list(t) for t in zip(g, p63, strict=True)])]
        )
        return self._new(res[0], FixedPoint(0))

    # ------------------------------------------------------------- the rest of SharedTensor's surface
    # Everything below composes the authenticated protocols above (products, truncation,
    # sign bits), so every opening stays MAC-checked; the generic algorithms (approximations,
    # max and pooling) live in approx.py and reduce.py and run on both tensor types.

    def get(self) -> FixedPrecisionTensor:
        """Fetch every share (permission rules apply), check the MACs of the result, and
        return it encoded, like :meth:`SharedTensor.get <veil.mpc.SharedTensor.get>`.

        Raises:
            MACCheckFailed: a share or its MAC was altered.

        Example:
            >>> import torch, veil
            >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
            >>> x = torch.tensor([0.5, -1.0]).share(a, b, crypto_provider=c, security="malicious")
            >>> (x * 4).get()
            FixedPrecisionTensor(tensor([ 131072, -262144]), frac_bits=16)
        """
        sess = self.session
        shape = (4, *self.shape)
        parts = [checked(p, shape, f"party {i}'s share", True)
                 for i, p in enumerate(sess.fanout(lambda p: p.get(), self.shares))]  # fmt: skip
        y = kinds.combine("auth", parts)[0:2]
        rho = prg(os.urandom(32), 0, 0, self.numel()).reshape(self.shape)
        zs = sess.fanout(
            lambda i: node_call(
                sess.parties[i], "mpc.a128.check", sess.sid, self.shares[i], y, rho
            ),
            range(sess.n),
        )
        z = kinds.combine("r128", [
            checked(pointer(sess.parties[i], zs[i]).get(), (2,), f"party {i}'s MAC check share", True)
            for i in range(sess.n)
        ])  # fmt: skip
        if bool((z != 0).any()):
            raise MACCheckFailed(
                "the MAC check of the reconstructed value failed: a share was altered"
            )
        return FixedPrecisionTensor(y[0], self.encoding, self.source_dtype)

    # shape ops: a share is (4, *shape), so data dimension d is share dimension d + 1
    def _broadcast_shape(self, other: Any) -> torch.Size:
        if isinstance(other, AuthenticatedTensor | torch.Tensor):
            return broadcast_shapes(self.shape, other.shape)
        return self.shape

    # public operands and batched products
    def _product_public(self, other: Any, op: str, *, left: bool, stride: int = 1,
                        padding: int = 0) -> AuthenticatedTensor:  # fmt: skip
        """``op(self, c)`` (``op(c, self)`` when ``left``) for a public ``c``: local on each
        share and its MAC, then one authenticated truncation."""
        c = self.encoding.encode(other if isinstance(other, torch.Tensor) else torch.tensor(other))
        out = _run(self.session, "mpc.a128.product_public", self.shares,
                   args=(c, op, left, stride, padding))  # fmt: skip
        res = self._new(out)
        return res._new(res._trunc(out, self.encoding.frac_bits))

    @defers
    def __rmatmul__(self, other: Any) -> AuthenticatedTensor:
        return self._product_public(other, "matmul", left=True)

    def matmul(self, other: Any) -> AuthenticatedTensor:
        return self @ other

    mm = matmul

    def _from_public(self, t: torch.Tensor, encoding: FixedPoint) -> AuthenticatedTensor:
        """Authenticated shares of the public ``t`` (party 0 holds it; MACs for all)."""
        c = r128.from64(encoding.encode(t) if t.is_floating_point() else t.to(torch.int64))
        sess = self.session
        shares = sess.fanout(
            lambda i: pointer(
                sess.parties[i], node_call(sess.parties[i], "mpc.a128.public", sess.sid, c)
            ),
            range(sess.n),
        )
        return self._new(shares, encoding)

    def _mul_many(
        self, pairs: Sequence[tuple[AuthenticatedTensor, AuthenticatedTensor]]
    ) -> list[AuthenticatedTensor]:
        """Several elementwise products in one round of openings (then one round of
        truncations where needed)."""
        sess = self.session
        reqs = []
        for a, b in pairs:
            a._check(b)
            reqs.append(
                Request(
                    "m_beaver",
                    {"x": list(a.shape), "y": list(b.shape), "op": "mul"},
                    [[x, y] for x, y in zip(a.shares, b.shares, strict=True)],
                )
            )
        outs = [r[0] for r in sess.round(reqs)]
        fs = [min(a.encoding.frac_bits, b.encoding.frac_bits) for a, b in pairs]
        todo = [k for k, f in enumerate(fs) if f > 0]
        if todo:
            treq = [
                Request(
                    "m_trunc", {"x": list(outs[k][0].shape[1:]), "f": fs[k]}, [[s] for s in outs[k]]
                )  # fmt: skip
                for k in todo
            ]
            for k, r in zip(todo, sess.round(treq), strict=True):
                outs[k] = r[0]
        return [
            self._new(o, FixedPoint(max(a.encoding.frac_bits, b.encoding.frac_bits)))
            for o, (a, b) in zip(outs, pairs, strict=True)
        ]

    # arithmetic built on the protocols
    def square(self) -> AuthenticatedTensor:
        """``x * x`` (an authenticated Beaver product of x with itself)."""
        return self._product(self, "mul")

    @defers
    def __truediv__(self, other: Any) -> AuthenticatedTensor:
        """Division by a public value (a product with its fixed-point reciprocal) or,
        through :func:`veil.mpc.approx.reciprocal`, by a shared one."""
        if isinstance(other, AuthenticatedTensor):
            from veil.mpc.protocols import approx

            return self * approx.reciprocal(other)
        d = torch.as_tensor(other).to(torch.float64)
        if bool((d == 0).any()):
            raise ZeroDivisionError("division of a shared tensor by zero")
        return self * (1.0 / d)

    def div(self, other: Any) -> AuthenticatedTensor:
        return self / other

    def mean(self, dim: Any = None, keepdim: bool = False) -> AuthenticatedTensor:
        """Mean over ``dim`` (or all elements): the sum times the public 1/n."""
        dims = range(self.dim()) if dim is None else dim if isinstance(dim, list | tuple) else [dim]
        n = math.prod(self.shape[d] for d in dims)
        return self.sum(dim, keepdim) * (1.0 / n)

    # comparisons, relu, where, max/argmax, pooling, approximations: DerivedOps (surface.py)

    # ------------------------------------------------------------- input of a node's data
    @classmethod
    def from_pointer(cls, sess: MPCSession, ptr: Any, index: int,
                     encoding: FixedPoint) -> AuthenticatedTensor:  # fmt: skip
        """Share, with MACs, an int64 tensor that lives on party ``index``'s node without
        it passing through the driver: the dealer seals an authenticated mask R for that
        node alone (a key derived from its dealer seed), the node answers d = x - R, and
        each party sets its share to r_i + d (MAC r_mac_i + alpha_i d). The driver sees
        d (a one-time pad of x) and sealed bytes only.

        Example:
            >>> import torch, veil
            >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
            >>> ptr = torch.tensor([1.5, -2.0]).send(a)
            >>> x = ptr.fix_precision().share(a, b, crypto_provider=c, security="malicious")
            >>> (x * 2).reconstruct()
            tensor([ 3., -4.])
        """
        import numpy as np

        from veil.mpc.protocols.session import _u8
        from veil.mpc.stats import record
        from veil.pointers import PointerTensor
        from veil.serde.messages import Results

        if ptr.dtype != torch.int64:
            raise InvalidRequest("share a fixed-point pointer: ptr.fix_precision().share(...)")
        shape = list(ptr.shape)
        raw = _reply_bytes(
            node_call(sess.provider, "mpc.a128.deal_owner_input", sess.sid, shape, index)
        )
        gid, n_delta = (int(v) for v in np.frombuffer(raw[:16], dtype=np.int64))
        delta = torch.from_numpy(np.frombuffer(raw[16 : 16 + 8 * n_delta], dtype=np.int64).copy())
        box = _u8(raw[16 + 8 * n_delta :])
        record(sess.labels[-1], len(raw), rounds=0)
        last = sess.n - 1
        holder = sess.parties[index]
        reply = node_call(holder, "mpc.a128.owner_input", sess.sid, ptr, gid, box,
                          delta if index == last else None)  # fmt: skip
        if not isinstance(reply, Results):
            raise InvalidRequest("unexpected reply to owner_input")
        shares: list[Any] = [None] * sess.n
        shares[index] = PointerTensor(holder, reply.items[0])  # type: ignore[arg-type]
        d = PointerTensor(holder, reply.items[1]).get()  # type: ignore[arg-type]
        record(sess.labels[index], d.numel() * 8)

        def put(i: int) -> None:
            w = sess.parties[i]
            r = node_call(w, "mpc.a128.input_share", sess.sid, gid, d, delta if i == last else None)
            shares[i] = PointerTensor(w, r)  # type: ignore[arg-type]

        sess.fanout(put, [i for i in range(sess.n) if i != index])
        return cls(shares, sess, encoding)


def _reply_bytes(reply: Any) -> bytes:
    """The raw bytes of a node's uint8 value reply."""
    from veil.mpc.protocols.session import reply_tensor

    return bytes(reply_tensor(reply).numpy().tobytes())


register_tensor_type("malicious", AuthenticatedTensor)
