"""Arithmetic in Z_2^128 on int64 tensors, for SPDZ2k MACs (malicious security).

An element is a pair of int64 words stacked on a leading dimension of size 2:
``t[0]`` the low 64 bits, ``t[1]`` the high 64 bits (two's complement). Matrix and
convolution products run on torch's native int64 kernels (exact mod 2^64, see
:mod:`~veil.mpc.ring.z64`): ``a b = lo(a) lo(b) + 2^64 (lo(a) hi(b) + hi(a) lo(b))``, where
the two cross products only matter mod 2^64 (they wrap freely) and only ``lo(a) lo(b)`` is
needed to all 128 bits. For it ``lo(a)`` is cut into unsigned limbs of 22, 22 and 20 bits and
``lo(b)`` into two 32-bit halves; a limb product is below 2^54, so a sum of up to 1024 of
them is exact as an unsigned 64-bit word (longer inner dimensions are split). Five of the six
limb products have weight below 2^64 and are summed with carries; the sixth (weight 2^76)
wraps with the cross products. Eight int64 products in all, where 22-bit float64 limbs
needed 21. Elementwise products work on the int64 words directly (:func:`mul`, :func:`mul64`).

Example:
    >>> import torch
    >>> a = from64(torch.tensor([-3, 2**62])); b = from64(torch.tensor([5, 8]))
    >>> to_int(product(a, b, "mul"))
    [-15, 36893488147419103232]
"""

from __future__ import annotations

from typing import Any

import torch

from veil.mpc.ring.z64 import broadcast_shapes

_MIN = -(2**63)
_M22 = (1 << 22) - 1
#: (2^22 - 1) (2^32 - 1) 1024 < 2^64: the longest inner dimension one limb product sums exactly.
_MAX_K = 1024


def from64(x: torch.Tensor) -> torch.Tensor:
    """Sign-extend int64 values to Z_2^128."""
    return torch.stack([x, x >> 63])


def zeros(shape: Any) -> torch.Tensor:
    return torch.zeros((2, *shape), dtype=torch.int64)


def _ult(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Unsigned a < b on int64 bit patterns."""
    return (a ^ _MIN) < (b ^ _MIN)


def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lo = a[0] + b[0]
    hi = a[1] + b[1]
    hi += _ult(lo, a[0])
    return torch.stack([lo, hi])


def neg(a: torch.Tensor) -> torch.Tensor:
    lo = -a[0]
    hi = ~a[1]
    hi += a[0] == 0
    return torch.stack([lo, hi])


def sub(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lo = a[0] - b[0]
    hi = a[1] - b[1]
    hi -= _ult(a[0], b[0]).to(torch.int64)  # borrow
    return torch.stack([lo, hi])


def shl(a: torch.Tensor, s: int) -> torch.Tensor:
    """a * 2^s mod 2^128 (0 <= s < 128)."""
    if s == 0:
        return a
    if s >= 64:
        return torch.stack([torch.zeros_like(a[0]), a[0] << (s - 64)])
    carry = (a[0] >> (64 - s)) & ((1 << s) - 1)
    return torch.stack([a[0] << s, (a[1] << s) | carry])


def sar(a: torch.Tensor, s: int) -> torch.Tensor:
    """Arithmetic (signed) shift right by 0 < s < 64."""
    lo = ((a[0] >> s) & ((1 << (64 - s)) - 1)) | (a[1] << (64 - s))
    return torch.stack([lo, a[1] >> s])


def low_bits(a: torch.Tensor, s: int) -> torch.Tensor:
    """a mod 2^s as a 128-bit value (64 <= s <= 127)."""
    hi = a[1] & ((1 << (s - 64)) - 1) if s < 128 else a[1]
    return torch.stack([a[0], hi])


def bit(a: torch.Tensor, i: int) -> torch.Tensor:
    """Bit ``i`` (0..127) as an int64 0/1 tensor."""
    w = a[0] if i < 64 else a[1]
    return (w >> (i % 64)) & 1


def _op(op: str, x: torch.Tensor, y: torch.Tensor, kw: dict[str, Any]) -> torch.Tensor:
    if op == "mul":
        return x * y
    if op == "matmul":
        return torch.matmul(x, y)
    if op == "conv2d":
        return torch.nn.functional.conv2d(
            x, y, stride=kw.get("stride", 1), padding=kw.get("padding", 0)
        )
    raise ValueError(f"unknown product {op!r}")


_M32 = (1 << 32) - 1


def _mulhi(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """High 64 bits of the unsigned 128-bit product of 64-bit words (via 32-bit halves),
    with the temporaries updated in place (half the allocations of the plain expression)."""
    a0, a1 = a & _M32, (a >> 32).bitwise_and_(_M32)
    b0, b1 = b & _M32, (b >> 32).bitwise_and_(_M32)
    mid = a1 * b0  # < 2^64 unsigned: split it before adding
    cross = a0 * b1
    t = (a0 * b0).bitwise_right_shift_(32).bitwise_and_(_M32)
    t += mid & _M32
    t += cross & _M32  # < 3 * 2^32: no overflow
    out = a1 * b1
    out += mid.bitwise_right_shift_(32).bitwise_and_(_M32)
    out += cross.bitwise_right_shift_(32).bitwise_and_(_M32)
    out += t.bitwise_right_shift_(32)
    return out


def mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise product in Z_2^128 (with broadcasting), on int64 words directly."""
    a_lo, a_hi, b_lo, b_hi = a[0], a[1], b[0], b[1]
    shape = broadcast_shapes(a_lo.shape, b_lo.shape)
    out = torch.empty((2, *shape), dtype=torch.int64)
    torch.mul(a_lo, b_lo, out=out[0])
    hi = _mulhi(a_lo, b_lo)
    hi += a_lo * b_hi
    hi += a_hi * b_lo
    out[1] = hi
    return out


def mul64(r: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``r * b`` in Z_2^128 for an *unsigned* 64-bit word ``r`` (an int64 tensor read as
    [0, 2^64)) and a 128-bit ``b``: one word product fewer than :func:`mul`."""
    shape = broadcast_shapes(r.shape, b[0].shape)
    out = torch.empty((2, *shape), dtype=torch.int64)
    torch.mul(r, b[0], out=out[0])
    hi = _mulhi(r, b[0])
    hi += r * b[1]
    out[1] = hi
    return out


def _lo_terms(op: str, a_lo: torch.Tensor, b_lo: torch.Tensor, kw: dict[str, Any]
              ) -> tuple[list[tuple[torch.Tensor, int]], torch.Tensor]:  # fmt: skip
    """``op(lo(a), lo(b))`` as unsigned limb products: the five (sum, weight) terms of weight
    below 64 (each sum an exact unsigned word) and the weight-76 one, reduced mod 2^64."""
    u = [a_lo & _M22, (a_lo >> 22) & _M22, (a_lo >> 44) & 0xFFFFF]
    v = [b_lo & _M32, (b_lo >> 32) & _M32]
    terms = [(_op(op, u[i], v[j], kw), 22 * i + 32 * j)
             for i, j in ((0, 0), (1, 0), (0, 1), (2, 0), (1, 1))]  # fmt: skip
    return terms, _op(op, u[2], v[1], kw)


def _native(op: str, a: torch.Tensor, b: torch.Tensor, kw: dict[str, Any]) -> torch.Tensor:
    """``op(a, b)`` mod 2^128 for an inner dimension of at most ``_MAX_K``: 8 int64 products."""
    terms, top = _lo_terms(op, a[0], b[0], kw)
    lo = terms[0][0]  # weight 0: the low word as it is, high word 0
    hi = _op(op, a[0], b[1], kw)
    hi += _op(op, a[1], b[0], kw)
    hi += top << 12  # weight 76 = 2^64 * 2^12
    for t, s in terms[1:]:  # t * 2^s with 0 < s < 64: low part t << s, high part t >>> (64 - s)
        tl = t << s
        lo = lo + tl
        hi += _ult(lo, tl)  # the carry out of the low word
        hi += (t >> (64 - s)) & ((1 << s) - 1)
    return torch.stack([lo, hi])


def product(a: torch.Tensor, b: torch.Tensor, op: str, **kw: Any) -> torch.Tensor:
    """``op(a, b)`` in Z_2^128 (op: mul, matmul, conv2d), exact.

    Args:
        a: (2, *shape) 128-bit operand.
        b: (2, *shape) 128-bit operand.
        op: ``mul`` (elementwise, broadcasting), ``matmul`` or ``conv2d``.
        **kw: ``stride`` and ``padding`` of ``conv2d``.

    Returns:
        The (2, *out) 128-bit product.

    Example:
        >>> a = from64(torch.tensor([[2**63 - 1, -1]])); b = from64(torch.tensor([[3], [5]]))
        >>> to_int(product(a, b, "matmul")[:, 0])
        [27670116110564327416]
    """
    if op == "mul":
        return mul(a, b)
    inner = 1
    if op == "matmul":
        inner = a.shape[-1]
    elif op == "conv2d":  # a: (2, N, C, H, W), b: (2, O, C, kh, kw); window C * kh * kw
        inner = b.shape[2] * b.shape[3] * b.shape[4]
    if inner > _MAX_K and op == "matmul":
        out = None
        for i in range(0, inner, _MAX_K):
            part = product(a[..., i : i + _MAX_K], b[..., i : i + _MAX_K, :], op)
            out = part if out is None else add(out, part)
        assert out is not None
        return out
    if inner > _MAX_K:  # conv2d: split the input channels (the sum over them is linear)
        per = _MAX_K // (b.shape[3] * b.shape[4])
        if per == 0:
            raise ValueError(f"a convolution kernel of {b.shape[3]}x{b.shape[4]} is over {_MAX_K}")
        out = None
        for i in range(0, b.shape[2], per):
            part = product(a[:, :, i : i + per], b[:, :, i : i + per], op, **kw)
            out = part if out is None else add(out, part)
        assert out is not None
        return out
    return _native(op, a, b, kw)


def sum_(a: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
    """Sum over data dimension ``dim`` (of the element shape), with carries."""
    m32 = (1 << 32) - 1
    lo_lo = (a[0] & m32).sum(dim, keepdim=keepdim)
    lo_hi = ((a[0] >> 32) & m32).sum(dim, keepdim=keepdim)
    hi = a[1].sum(dim, keepdim=keepdim)
    out = add(from64(lo_lo), shl(from64(lo_hi), 32))
    return add(out, torch.stack([torch.zeros_like(hi), hi]))


def to_int(a: torch.Tensor) -> list[int]:
    """Python integers (signed) of a 1-d 128-bit tensor (for tests and examples)."""
    out = []
    for lo, hi in zip(a[0].tolist(), a[1].tolist(), strict=True):
        v = (hi << 64) + (lo & (2**64 - 1))
        out.append(v)
    return out
