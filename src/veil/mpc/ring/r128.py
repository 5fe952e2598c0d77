"""Arithmetic in Z_2^128 on int64 tensors, for SPDZ2k MACs (malicious security).

An element is a pair of int64 words stacked on a leading dimension of size 2:
``t[0]`` the low 64 bits, ``t[1]`` the high 64 bits (two's complement). Products (elementwise,
matrix, convolution) split each operand into six unsigned 22-bit limbs and sum the 21
limb products whose weight is below 2^128; each limb product is exact in float64 BLAS
while the inner dimension is at most 512 (512 * (2^22 - 1)^2 < 2^53). The limb products of
one weight are summed in int64 and the six sums recombined with one carry pass.
Elementwise products work on the int64 words directly (:func:`mul`, :func:`mul64`).

Example:
    >>> import torch
    >>> a = from64(torch.tensor([-3, 2**62])); b = from64(torch.tensor([5, 8]))
    >>> to_int(product(a, b, "mul"))
    [-15, 36893488147419103232]
"""

from __future__ import annotations

from typing import Any

import torch

_MIN = -(2**63)
_LIMB = 22
_MASK = (1 << _LIMB) - 1
_N_LIMBS = 6
_MAX_K = 512


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
    """High 64 bits of the unsigned 128-bit product of 64-bit words (via 32-bit halves)."""
    a0, a1 = a & _M32, (a >> 32) & _M32
    b0, b1 = b & _M32, (b >> 32) & _M32
    mid = a1 * b0  # < 2^64 unsigned: split it before adding
    cross = a0 * b1
    t = ((a0 * b0) >> 32) & _M32
    t += mid & _M32
    t += cross & _M32  # < 3 * 2^32: no overflow
    out = a1 * b1
    out += (mid >> 32) & _M32
    out += (cross >> 32) & _M32
    out += t >> 32
    return out


def mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise product in Z_2^128 (with broadcasting), on int64 words directly."""
    a_lo, a_hi, b_lo, b_hi = a[0], a[1], b[0], b[1]
    shape = torch.broadcast_shapes(a_lo.shape, b_lo.shape)
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
    shape = torch.broadcast_shapes(r.shape, b[0].shape)
    out = torch.empty((2, *shape), dtype=torch.int64)
    torch.mul(r, b[0], out=out[0])
    hi = _mulhi(r, b[0])
    hi += r * b[1]
    out[1] = hi
    return out


def limbs(a: torch.Tensor) -> list[torch.Tensor]:
    """Six unsigned base-2^22 digits of ``a`` (float64, each in [0, 2^22)): bits 22j..22j+21."""
    lo, hi = a[0], a[1]
    m = _MASK
    return [
        (lo & m).to(torch.float64),
        ((lo >> 22) & m).to(torch.float64),
        (((lo >> 44) & 0xFFFFF) | ((hi & 3) << 20)).to(torch.float64),
        ((hi >> 2) & m).to(torch.float64),
        ((hi >> 24) & m).to(torch.float64),
        ((hi >> 46) & 0x3FFFF).to(torch.float64),
    ]


def _recombine(s: list[torch.Tensor]) -> torch.Tensor:
    """sum_w s[w] * 2^(22 w) mod 2^128 for six non-negative int64 words s[w] < 2^56."""
    x = (s[1] & ((1 << 42) - 1)) << 22
    y = (s[2] & ((1 << 20) - 1)) << 44
    lo = s[0] + x
    c1 = _ult(lo, x)
    lo += y
    c2 = _ult(lo, y)
    hi = (s[1] >> 42) + (s[2] >> 20)
    hi += s[3] << 2
    hi += s[4] << 24
    hi += s[5] << 46
    hi += c1
    hi += c2
    return torch.stack([lo, hi])


def product(a: torch.Tensor, b: torch.Tensor, op: str, **kw: Any) -> torch.Tensor:
    """``op(a, b)`` in Z_2^128 (op: mul, matmul, conv2d), exact."""
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
    la, lb = limbs(a), limbs(b)
    sums = []
    for w in range(_N_LIMBS):
        acc = _op(op, la[0], lb[w], kw).to(torch.int64)
        for i in range(1, w + 1):
            acc += _op(op, la[i], lb[w - i], kw).to(torch.int64)
        sums.append(acc)
    return _recombine(sums)


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
