"""Dealer randomness of ``security="malicious"``: SPDZ2k-authenticated inputs, triples, truncation, bits.

The MAC arithmetic these steps use, and why Z_2^128, is in :mod:`veil.mpc.ring.mac`.
"""

from __future__ import annotations

from typing import Any

import torch

from veil.errors import InvalidRequest
from veil.mpc.providers.kinds import (
    _MAX63,
    KINDS,
    Inputs,
    Kind,
    Params,
    ShareDomain,
    Slot,
    _int,
    _shape,
    register_kind,
)
from veil.mpc.ring import r128
from veil.mpc.ring.mac import (
    _BITS,
    _key,
    _pairs,
    _unpairs,
    add,
    const,
    const64,
    join,
    mac,
    scale,
    sub,
    val,
)


def _beaver64(e: torch.Tensor, d: torch.Tensor, m: dict[str, Any], party: int) -> torch.Tensor:
    """``x * y`` from an ``auth64`` triple (a, b, c) and the openings e = x - a, d = y - b:
    value c + e (b + [party 0] d) + a d, MAC c_m + e (b_m + alpha_i d) + a_m d."""
    a, b, c = m["a"], m["b"], m["c"]
    bv = b[0] + d if party == 0 else b[0]
    bm = b[1] + m["__alpha64"] * d
    return torch.stack([c[0] + e * bv + a[0] * d, c[1] + e * bm + a[1] * d])


class MInput(Kind):
    """Input: open -r (the driver learns the mask R of this input), then the driver sends
    d = x - R and each party sets its share to r_i + d (MAC: r_mac_i + alpha_i d)."""

    name = "m_input"

    def inputs(self, p: Params) -> Inputs:
        return []

    def outputs(self, p: Params) -> list[ShareDomain]:
        return ["auth"]

    def slots(self, p: Params) -> list[Slot]:
        return [Slot("r", _shape(p, "x"), "auth", opened=True)]

    def relation(self, p: Params, v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {}

    def reveal(self, p: Params, x: list[torch.Tensor], party: int) -> list[torch.Tensor]:
        return [torch.zeros((4, *_shape(p, "x")), dtype=torch.int64)]

    def finish(self, p: Params, opened: list[torch.Tensor], m: dict[str, Any],
               x: list[torch.Tensor], party: int, n: int) -> list[torch.Tensor]:  # fmt: skip
        extra = m.get("__extra") or []
        shape = _shape(p, "x")
        if len(extra) != 1 or tuple(extra[0].shape) != (2, *shape):
            raise InvalidRequest("m_input needs d = x - R as one (2, *shape) int64 tensor")
        return [add(m["r"], const(extra[0], m["__alpha"], party))]


def _op_kw(p: Params) -> dict[str, Any]:
    return (
        {"stride": p.get("stride", 1), "padding": p.get("padding", 0)}
        if p["op"] == "conv2d"
        else {}
    )


class MBeaver(Kind):
    """Authenticated Beaver triple for mul / matmul / conv2d (no truncation)."""

    name = "m_beaver"

    def inputs(self, p: Params) -> Inputs:
        return [("auth", (4, *_shape(p, "x"))), ("auth", (4, *_shape(p, "y")))]

    def outputs(self, p: Params) -> list[ShareDomain]:
        return ["auth"]

    def slots(self, p: Params) -> list[Slot]:
        beaver = KINDS["beaver"]
        plain = beaver.slots({**p, "trunc": 0})
        return [Slot(s.name, s.shape, "auth", s.opened, s.corrected) for s in plain]

    def relation(self, p: Params, v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"c": r128.product(v["a"], v["b"], p["op"], **_op_kw(p))}

    def reveal(self, p: Params, x: list[torch.Tensor], party: int) -> list[torch.Tensor]:
        return [x[0], x[1]]

    def finish(self, p: Params, opened: list[torch.Tensor], m: dict[str, Any],
               x: list[torch.Tensor], party: int, n: int) -> list[torch.Tensor]:  # fmt: skip
        e, d = opened
        op, kw = p["op"], _op_kw(p)
        a, b, c = m["a"], m["b"], m["c"]
        # value: c + e op (b + [party 0] d) + a op d; MAC: c_m + e op (b_m + alpha_i d) + a_m op d
        # (e op d is public: party 0 adds it to the value, each party alpha_i times it to
        # its MAC share; both fold into b's side, so 4 products instead of 5 and no e op d)
        bv = r128.add(val(b), d) if party == 0 else val(b)
        bm = r128.add(mac(b), r128.mul(_key(m["__alpha"], d.dim() - 1), d))
        ev, em = _pair_right(op, kw, e, bv, bm)
        av, am = _pair_left(op, kw, val(a), mac(a), d)
        return [join(r128.add(r128.add(val(c), ev), av), r128.add(r128.add(mac(c), em), am))]


def _same_rank(*ts: torch.Tensor) -> list[torch.Tensor]:
    nd = max(t.dim() for t in ts)
    return [t.reshape(2, *([1] * (nd - t.dim())), *t.shape[1:]) for t in ts]


def _pair_right(op: str, kw: dict[str, Any], x: torch.Tensor, y1: torch.Tensor,
                y2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``op(x, y1), op(x, y2)`` in Z_2^128 as one product on [y1 | y2] (one set of limbs
    of x, half the BLAS calls)."""
    if op == "mul":
        x, y1, y2 = _same_rank(x, y1, y2)
        out = r128.mul(x.unsqueeze(1), torch.stack([y1, y2], 1))
        return out[:, 0], out[:, 1]
    if op == "matmul" and y1.dim() >= 3:
        n = y1.shape[-1]
        out = r128.product(x, torch.cat([y1, y2], -1), op)
        return out[..., :n], out[..., n:]
    if op == "conv2d":
        o = y1.shape[1]
        out = r128.product(x, torch.cat([y1, y2], 1), op, **kw)
        return out[:, :, :o], out[:, :, o:]
    return r128.product(x, y1, op, **kw), r128.product(x, y2, op, **kw)


def _pair_left(op: str, kw: dict[str, Any], x1: torch.Tensor, x2: torch.Tensor,
               y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``op(x1, y), op(x2, y)`` as one product on [x1; x2]."""
    if op == "mul":
        return _pair_right(op, kw, y, x1, x2)
    if op == "matmul" and x1.dim() >= 3 and y.dim() >= 3:
        m_ = x1.shape[-2]
        out = r128.product(torch.cat([x1, x2], -2), y, op)
        return out[..., :m_, :], out[..., m_:, :]
    if op == "conv2d":
        n = x1.shape[1]
        out = r128.product(torch.cat([x1, x2], 1), y, op, **kw)
        return out[:, :n], out[:, n:]
    return r128.product(x1, y, op, **kw), r128.product(x2, y, op, **kw)


class MTrunc(Kind):
    """Authenticated probabilistic truncation (Escudero et al. 2020) of the k = 64-bit value.

    Opens c = x + 2^62 + R (R uniform in Z_2^128, MAC-checked) and reads only its low 64
    bits: with x' = (x + 2^62) mod 2^64 in [0, 2^63) (|x| < 2^62, the semi-honest bound),
    R' = R mod 2^64 = rmsb 2^63 + rlow', and c' = c mod 2^64, the integer identity
    x' = (c' mod 2^63) + 2^63 (msb(c') XOR rmsb) - rlow' holds exactly, so the result
    (x' >> f) - 2^(62-f) is exact to one unit *as a 128-bit integer*. Nothing above bit 63
    of x reaches it: that is where a cheater can hide an error the MAC check cannot bind
    with 64 bits of security (an error 2^j passes with probability 2^-(128-j)), and this is
    the only step that could move high bits down (see the module docstring).

    Slots: r (opened mask; R = -sum of the masks), rmsb = bit 63 of R, rlow = (R mod 2^63) >> f.
    """

    name = "m_trunc"

    def inputs(self, p: Params) -> Inputs:
        return [("auth", (4, *_shape(p, "x")))]

    def outputs(self, p: Params) -> list[ShareDomain]:
        return ["auth"]

    def slots(self, p: Params) -> list[Slot]:
        s = _shape(p, "x")
        _int(p, "f", 1, 62)
        return [Slot("r", s, "auth", opened=True), Slot("rmsb", s, "auth", corrected=True),
                Slot("rlow", s, "auth", corrected=True)]  # fmt: skip

    def relation(self, p: Params, v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        low = r128.neg(v["r"])[0]  # R mod 2^64
        return {"rmsb": r128.from64((low >> 63) & 1), "rlow": r128.from64((low & _MAX63) >> p["f"])}

    def reveal(self, p: Params, x: list[torch.Tensor], party: int) -> list[torch.Tensor]:
        offset = r128.from64(torch.full(x[0].shape[1:], 1 << 62, dtype=torch.int64))
        return [add(x[0], const(offset, p["__alpha"], party))]

    def finish(self, p: Params, opened: list[torch.Tensor], m: dict[str, Any],
               x: list[torch.Tensor], party: int, n: int) -> list[torch.Tensor]:  # fmt: skip
        (c,) = opened
        f = p["f"]
        low = c[0]  # the low 64 bits only: nothing above bit 63 reaches the result
        c_msb = (low >> 63) & 1
        # public part: (c' mod 2^63) >> f + c_msb 2^(63-f) - 2^(62-f), in [0, 2^(64-f))
        pub = ((low & _MAX63) >> f) + c_msb * (1 << (63 - f)) - (1 << (62 - f))
        # secret part: rmsb (1 - 2 c_msb) 2^(63-f) - rlow, for the value and the MAC alike
        t = r128.shl(_pairs(m["rmsb"]), 63 - f)
        t = torch.where(c_msb.bool(), r128.neg(t), t)
        z = sub(_unpairs(t), m["rlow"])
        return [add(z, const(r128.from64(pub), m["__alpha"], party))]


class MBits(Kind):
    """Start of an authenticated comparison: open c = x + R (R uniform in Z_2^128, the 64
    bits of its low word dealt as bits authenticated in Z_2^64, ``auth64``); outputs the
    carry-tree inputs G, P over 64 positions (carry-in, bits 0..62 of c + ~R + 1) and the
    propagate bit of position 63, all ``auth64``.

    ``auth64`` is SPDZ2k with k = 1 and s = 63: a bit lives in the low bit of a Z_2^64 value
    with a MAC in Z_2^64 under its own key, so XOR is + and AND is a Beaver product on
    native int64 words (a quarter of the work of a Z_2^128 bit, half the words); a cheater
    passes a check with probability about 2^-(63 - log2 63) ~ 2^-57, as for values."""

    name = "m_bits"

    def slots(self, p: Params) -> list[Slot]:
        s = _shape(p, "x")
        return [
            Slot("r", s, "auth", opened=True),
            Slot("bits", (_BITS, *s), "auth64", corrected=True),
        ]

    def inputs(self, p: Params) -> Inputs:
        return [("auth", (4, *_shape(p, "x")))]

    def outputs(self, p: Params) -> list[ShareDomain]:
        return ["auth64"] * 3

    def relation(self, p: Params, v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        big_r = r128.neg(v["r"])
        return {"bits": torch.stack([(big_r[0] >> j) & 1 for j in range(_BITS)])}

    def reveal(self, p: Params, x: list[torch.Tensor], party: int) -> list[torch.Tensor]:
        return [x[0]]

    def finish(self, p: Params, opened: list[torch.Tensor], m: dict[str, Any],
               x: list[torch.Tensor], party: int, n: int) -> list[torch.Tensor]:  # fmt: skip
        (c,) = opened
        shape = _shape(p, "x")
        alpha = m["__alpha64"]
        shifts = torch.arange(_BITS, dtype=torch.int64).reshape(_BITS, *([1] * len(shape)))
        cb = (c[0].unsqueeze(0) >> shifts) & 1  # (64, *s) public bits of c
        nb = const64(torch.ones_like(cb), alpha, party) - m["bits"]  # bits of ~R_low
        g = nb * cb  # c_j AND nb_j: cb is public 0/1
        p_ = nb + const64(cb, alpha, party)  # c_j XOR nb_j (mod 2)
        carry_in = const64(torch.ones((1, *shape), dtype=torch.int64), alpha, party)
        zero = torch.zeros((2, 1, *shape), dtype=torch.int64)
        big_g = torch.cat([carry_in, g[:, : _BITS - 1]], 1)
        big_p = torch.cat([zero, p_[:, : _BITS - 1]], 1)
        return [big_g, big_p, p_[:, _BITS - 1]]


class MCarry(Kind):
    """One level of the comparison's carry tree on ``auth64`` bits (G, P of ``width``
    positions -> width / 2): G' = G_hi + P_hi G_lo, P' = P_hi P_lo (mod 2), both products in
    one authenticated Beaver group; on the last level (width 2) only G'."""

    name = "m_carry"

    def inputs(self, p: Params) -> Inputs:
        shape = (2, _int(p, "width", 2, _BITS), *_shape(p, "x"))
        return [("auth64", shape), ("auth64", shape)]  # G, P

    def _k(self, p: Params) -> int:
        w = _int(p, "width", 2, _BITS)
        if w & (w - 1):
            raise InvalidRequest("m_carry width must be a power of two")
        return w if w > 2 else 1

    def slots(self, p: Params) -> list[Slot]:
        s = (self._k(p), *_shape(p, "x"))
        return [Slot("a", s, "auth64", opened=True), Slot("b", s, "auth64", opened=True),
                Slot("c", s, "auth64", corrected=True)]  # fmt: skip

    def outputs(self, p: Params) -> list[ShareDomain]:
        return ["auth64"] * (2 if self._k(p) > 1 else 1)

    def relation(self, p: Params, v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"c": v["a"] * v["b"]}

    def reveal(self, p: Params, x: list[torch.Tensor], party: int) -> list[torch.Tensor]:
        g, pp = x
        w = p["width"]
        if tuple(g.shape) != (2, w, *_shape(p, "x")) or g.shape != pp.shape:
            raise InvalidRequest("m_carry takes G and P shaped (2, width, *x)")
        up_p, lo_g, lo_p = pp[:, 1::2], g[:, 0::2], pp[:, 0::2]
        if self._k(p) == 1:
            return [up_p, lo_g]
        return [torch.cat([up_p, up_p], 1), torch.cat([lo_g, lo_p], 1)]

    def finish(self, p: Params, opened: list[torch.Tensor], m: dict[str, Any],
               x: list[torch.Tensor], party: int, n: int) -> list[torch.Tensor]:  # fmt: skip
        e, d = opened
        z = _beaver64(e, d, m, party)
        half = p["width"] // 2
        g = x[0][:, 1::2] + z[:, :half]
        return [g] if half == 1 else [g, z[:, half:]]


class MBitToAuth(Kind):
    """The comparison's last step: the sign bit c = P63 + carry (``auth64``, inputs: the
    carry G (2, 1, *x) and P63 (2, *x)) to a Z_2^128 authenticated 0/1. Opens t = c - M for
    a uniform ``auth64`` mask M (t is uniform: the upper bits of c are never seen); the
    dealer gives M mod 2 as an ``auth`` value mb, and c = t0 XOR mb = t0 + mb - 2 t0 mb."""

    name = "m_bit2a"

    def inputs(self, p: Params) -> Inputs:
        s = _shape(p, "x")
        return [("auth64", (2, 1, *s)), ("auth64", (2, *s))]  # the carry, P63

    def outputs(self, p: Params) -> list[ShareDomain]:
        return ["auth"]

    def slots(self, p: Params) -> list[Slot]:
        s = _shape(p, "x")
        return [Slot("m", s, "auth64", opened=True), Slot("mb", s, "auth", corrected=True)]

    def relation(self, p: Params, v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"mb": r128.from64(v["m"] & 1)}

    def reveal(self, p: Params, x: list[torch.Tensor], party: int) -> list[torch.Tensor]:
        carry, p63 = x
        if tuple(p63.shape) != (2, *_shape(p, "x")) or tuple(carry.shape) != (2, 1, *p63.shape[1:]):
            raise InvalidRequest("m_bit2a takes the carry (2, 1, *x) and P63 (2, *x)")
        return [carry[:, 0] + p63]

    def finish(self, p: Params, opened: list[torch.Tensor], m: dict[str, Any],
               x: list[torch.Tensor], party: int, n: int) -> list[torch.Tensor]:  # fmt: skip
        (t,) = opened
        t0 = t & 1
        return [add(scale(m["mb"], 1 - 2 * t0), const(r128.from64(t0), m["__alpha"], party))]


for _k in (MInput(), MBeaver(), MTrunc(), MBits(), MCarry(), MBitToAuth()):
    register_kind(_k)
