"""SPDZ2k: MAC-authenticated shares over Z_2^128 for ``security="malicious"`` (run on the nodes).

Why Z_2^128: a MAC ``m = alpha * x`` over Z_2^64 alone is not sound. A cheater who adds
``2^63`` to its share of ``x`` and ``2^63`` to its MAC share passes the check whenever the
key ``alpha`` is odd (probability 1/2): in a ring with zero divisors the MAC does not bind
the value. SPDZ2k (Cramer et al., CRYPTO 2018) keeps the data in the low k = 64 bits but
computes shares and MACs modulo 2^(k+s) with s = 64 extra bits. We store each authenticated
share as four int64 words per element: value (low, high) and MAC (low, high), see
:mod:`veil.mpc.r128`.

What the check guarantees, exactly. An error ``e 2^j`` (e odd) on an opened value, with
whatever error on its MAC, passes a check only if the cheater guesses ``alpha mod
2^(128-j)``: for j < 64 (the data) that is more than 64 bits, and with the 64-bit check
coefficients a cheater passes with probability about 2^-(s - log2 s) ~ 2^-57. For j >= 64
it is 128 - j bits, down to one bit (alpha odd) at j = 127: no MAC in Z_2^128 binds the top
bits with 64 bits of security. SPDZ2k's answer, and ours: those bits are never read. Every
step that could carry a high bit of a value into a result works on the low 64 bits only:
truncation (:class:`MTrunc` opens c = x + 2^62 + R and uses c mod 2^64), comparisons (the
carry tree takes the low word of c = x + R), and reconstruction (the low word). Products
and sums only move an error up (an error with its lowest bit at j >= 64 keeps it there).
So a result is correct unless a check failed, except with probability ~2^-57 per check;
``tests/mpc/test_malicious.py`` injects errors at every bit 0..127, on the value, the MAC,
or both.

After every opening the parties compute ``z_i = sum_j rho_j (m_ij - alpha_i y_j)`` for the
opened values ``y_j`` and MAC shares ``m_ij``, with random public coefficients ``rho``
drawn by the driver after the openings; the driver checks ``sum_i z_i = 0`` (and that every
party's z_i has its exact shape) and raises :class:`~veil.errors.MACCheckFailed` otherwise.
Comparisons run their carry circuit on authenticated arithmetic bits, so every opening of
every protocol is checked.
"""

from __future__ import annotations

from typing import Any

import torch

from veil.errors import InvalidRequest
from veil.mpc.ring import r128

_BITS = 64


def val(t: torch.Tensor) -> torch.Tensor:
    return t[0:2]


def mac(t: torch.Tensor) -> torch.Tensor:
    return t[2:4]


def join(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.cat([v, m])


def _pairs(x: torch.Tensor) -> torch.Tensor:
    """View a (4, *s) authenticated share as one 128-bit tensor of shape (2, 2, *s):
    [word][value or MAC], so value and MAC go through r128 in one call."""
    return x.view(2, 2, *x.shape[1:]).transpose(0, 1)


def _unpairs(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(0, 1).reshape(4, *t.shape[2:])


def _key(alpha_i: torch.Tensor, nd: int) -> torch.Tensor:
    """The 128-bit scalar key share shaped to broadcast against a (2, *s) tensor of rank nd."""
    return alpha_i.reshape(2, *([1] * nd))


def const(c: torch.Tensor, alpha_i: torch.Tensor, party: int) -> torch.Tensor:
    """This party's authenticated share of the public 128-bit value ``c``."""
    v = c if party == 0 else torch.zeros_like(c)
    return join(v, r128.mul(_key(alpha_i, c.dim() - 1), c))


def add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _unpairs(r128.add(_pairs(x), _pairs(y)))


def sub(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _unpairs(r128.sub(_pairs(x), _pairs(y)))


def neg(x: torch.Tensor) -> torch.Tensor:
    return _unpairs(r128.neg(_pairs(x)))


def scale(x: torch.Tensor, k: Any) -> torch.Tensor:
    """Multiply an authenticated share by a public int64 value (sign-extended)."""
    kt = torch.as_tensor(k, dtype=torch.int64)
    return _unpairs(r128.mul(r128.from64(kt), _pairs(x)))


def sum_(x: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
    return _unpairs(r128.sum_(_pairs(x), dim + 1, keepdim))


def check_share(alpha_i: torch.Tensor, macs: list[torch.Tensor], opened: list[torch.Tensor],
                rho: list[Any]) -> torch.Tensor:  # fmt: skip
    """This party's share of the batched MAC check of ``opened`` (a 128-bit scalar):
    ``sum_j rho_j (m_j - alpha_i y_j) = sum_j rho_j m_j - alpha_i sum_j rho_j y_j``, with
    64-bit coefficients rho (SPDZ2k needs s = 64 bits of them), so each term is a
    64 x 128-bit product and the key multiplies one scalar."""
    m_sum = torch.zeros(2, dtype=torch.int64)
    y_sum = torch.zeros(2, dtype=torch.int64)
    for m, y, r in zip(macs, opened, rho, strict=True):
        if not isinstance(r, torch.Tensor) or r.dtype != torch.int64 or r.shape != y.shape[1:]:
            raise InvalidRequest(
                "MAC check coefficients must be int64 tensors shaped like the opening"
            )
        rf = r.reshape(-1)  # rho in [0, 2^64)
        m_sum = r128.add(m_sum, r128.sum_(r128.mul64(rf, m.reshape(2, -1)), 0))
        y_sum = r128.add(y_sum, r128.sum_(r128.mul64(rf, y.reshape(2, -1)), 0))
    return r128.sub(m_sum, r128.mul(alpha_i, y_sum))


def check_share64(alpha_i: torch.Tensor, macs: list[torch.Tensor], opened: list[torch.Tensor],
                  rho: list[Any]) -> torch.Tensor:  # fmt: skip
    """The same check for bits authenticated in Z_2^64 (``auth64``): a (1,) int64 tensor."""
    m_sum = torch.zeros((), dtype=torch.int64)
    y_sum = torch.zeros((), dtype=torch.int64)
    for m, y, r in zip(macs, opened, rho, strict=True):
        if not isinstance(r, torch.Tensor) or r.dtype != torch.int64 or r.shape != y.shape:
            raise InvalidRequest(
                "MAC check coefficients must be int64 tensors shaped like the opening"
            )
        m_sum = m_sum + (r * m).sum()
        y_sum = y_sum + (r * y).sum()
    return (m_sum - alpha_i * y_sum).reshape(1)


def const64(c: torch.Tensor, alpha_i: torch.Tensor, party: int) -> torch.Tensor:
    """This party's ``auth64`` share of the public int64 value ``c``."""
    return torch.stack([c if party == 0 else torch.zeros_like(c), alpha_i * c])
