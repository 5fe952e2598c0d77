"""AuthenticatedTensor: a shared tensor with SPDZ2k MACs (``security="malicious"``).

Each party holds, per element, a share of the value and a share of its MAC
``alpha * value`` in Z_2^128 (see :mod:`veil.mpc.spdz`); every opening is followed by a
MAC check, so a party that alters its share makes the computation raise
:class:`~veil.errors.MACCheckFailed` instead of returning a wrong answer.

Supported: + - (shared or public), * (shared or public), @ (shared), conv2d (shared),
sum, t/transpose/reshape/indexing, comparisons (< > <= >=), relu, and reconstruction
with a final MAC check.

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
from typing import Any

import torch

from veil.errors import MACCheckFailed, WorkerMismatch
from veil.mpc import kinds, r128
from veil.mpc.ring import FixedPoint, prg
from veil.mpc.session import MPCSession, Request, node_call

Shares = list[Any]


def _run(sess: MPCSession, op: str, *shares: Shares, args: tuple[Any, ...] = ()) -> Shares:
    return sess.fanout(
        lambda i: sess.parties[i].run_op(op, *(s[i] for s in shares), *args), range(sess.n)
    )


class AuthenticatedTensor:
    """A fixed-point tensor shared with SPDZ2k MACs; each share is a private (4, *shape)
    int64 object (value and MAC, 128 bits each) on its party's node."""

    __slots__ = ("shares", "session", "encoding")

    def __init__(self, shares: Shares, session: MPCSession, encoding: FixedPoint) -> None:
        self.shares = shares
        self.session = session
        self.encoding = encoding

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

    def _new(self, shares: Shares, encoding: FixedPoint | None = None) -> AuthenticatedTensor:
        return AuthenticatedTensor(shares, self.session, encoding or self.encoding)

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.shares[0].shape[1:])

    def dim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)

    def __repr__(self) -> str:
        shape = "x".join(str(d) for d in self.shape) or "scalar"
        return (
            f"AuthenticatedTensor(shape={shape}, parties={[p.name for p in self.session.parties]}, "
            f"provider={self.session.provider.name!r}, frac_bits={self.encoding.frac_bits})"
        )

    # ------------------------------------------------------------- reconstruction
    def reconstruct(self) -> torch.Tensor:
        """Fetch the shares (permission rules apply), check the MACs, decode."""
        sess = self.session
        parts = sess.fanout(lambda p: p.get(), self.shares)
        total = kinds.combine("auth", parts)
        y = total[0:2]
        rho = prg(os.urandom(32), 0, 0, self.numel()).reshape(self.shape)
        zs = sess.fanout(
            lambda i: node_call(
                sess.parties[i], "mpc.a128.check", sess.sid, self.shares[i], y, rho
            ),
            range(sess.n),
        )
        z = kinds.combine("r128", [sess.parties[i]._unwrap(zs[i], ()).get() for i in range(sess.n)])
        if bool((z != 0).any()):
            raise MACCheckFailed(
                "the MAC check of the reconstructed value failed: a share was altered"
            )
        return self.encoding.decode(y[0])

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

    def __add__(self, other: Any) -> AuthenticatedTensor:
        if isinstance(other, AuthenticatedTensor):
            self._check(other)
            bits = max(self.encoding.frac_bits, other.encoding.frac_bits)
            out = _run(self.session, "mpc.a128.add", self._rescaled(bits), other._rescaled(bits))
            return self._new(out, FixedPoint(bits))
        c = self._public(other)
        sess = self.session
        out = sess.fanout(
            lambda i: sess.parties[i]._unwrap(
                node_call(sess.parties[i], "mpc.a128.add_public", sess.sid, self.shares[i], c), ()
            ),
            range(sess.n),
        )
        return self._new(out)

    __radd__ = __add__

    def __neg__(self) -> AuthenticatedTensor:
        return self._new(_run(self.session, "mpc.a128.neg", self.shares))

    def __sub__(self, other: Any) -> AuthenticatedTensor:
        return self + (-other)

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

    def __mul__(self, other: Any) -> AuthenticatedTensor:
        if isinstance(other, AuthenticatedTensor):
            return self._product(other, "mul")
        t = other if isinstance(other, torch.Tensor) else torch.tensor(other)
        if not t.is_floating_point() and t.dtype != torch.bool:
            return self._new(
                _run(self.session, "mpc.a128.scale", self.shares, args=(t.to(torch.int64),))
            )
        k = self.encoding.encode(t)
        scaled = _run(self.session, "mpc.a128.scale", self.shares, args=(k,))
        return self._new(self._trunc(scaled, self.encoding.frac_bits))

    __rmul__ = __mul__

    def __matmul__(self, other: AuthenticatedTensor) -> AuthenticatedTensor:
        return self._product(other, "matmul")

    def conv2d(
        self, weight: AuthenticatedTensor, stride: int = 1, padding: int = 0
    ) -> AuthenticatedTensor:
        return self._product(weight, "conv2d", stride=stride, padding=padding)

    # ------------------------------------------------------------- shape ops
    def _map(self, fn: Any) -> AuthenticatedTensor:
        return self._new(self.session.fanout(lambda i: fn(self.shares[i]), range(self.session.n)))

    def t(self) -> AuthenticatedTensor:
        return self._map(lambda s: s.transpose(1, 2).contiguous())

    def transpose(self, d0: int, d1: int) -> AuthenticatedTensor:
        nd = self.dim()
        return self._map(lambda s: s.transpose(d0 % nd + 1, d1 % nd + 1).contiguous())

    def reshape(self, *shape: Any) -> AuthenticatedTensor:
        return self._map(lambda s: s.reshape(4, *shape))

    def __getitem__(self, idx: Any) -> AuthenticatedTensor:
        idx = idx if isinstance(idx, tuple) else (idx,)
        return self._map(lambda s: s[(slice(None), *idx)].contiguous())

    def sum(self, dim: int) -> AuthenticatedTensor:
        return self._new(_run(self.session, "mpc.a128.sum", self.shares, args=(dim % self.dim(),)))

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

    def _pick(self, start: int, half: int) -> AuthenticatedTensor:
        return self._map(lambda s: s[:, start : 2 * half : 2].contiguous())

    def _pick_range(self, a: int, b: int) -> AuthenticatedTensor:
        return self._map(lambda s: s[:, a:b].contiguous())

    def _cat(self, other: AuthenticatedTensor) -> AuthenticatedTensor:
        sess = self.session
        return self._new(
            sess.fanout(lambda i: torch.cat([self.shares[i], other.shares[i]], 1), range(sess.n))
        )

    def __lt__(self, other: Any) -> AuthenticatedTensor:
        return (self - other)._sign()

    def __gt__(self, other: Any) -> AuthenticatedTensor:
        return (-(self - other))._sign()

    def __le__(self, other: Any) -> AuthenticatedTensor:
        return 1 - (self > other)

    def __ge__(self, other: Any) -> AuthenticatedTensor:
        return 1 - (self < other)

    def relu(self) -> AuthenticatedTensor:
        keep = 1 - self._sign()
        return self * keep
