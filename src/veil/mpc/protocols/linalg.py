"""Linear algebra on shared matrices: range-checked reciprocals and the sweep operator.

:func:`reciprocal_in_range` computes 1/x for a shared x > 0 whose scale is unknown: one batch
of comparisons with the public powers of two 2^lo .. 2^(hi+1) places x within a factor of
two, which gives Newton's iteration a start with |1 - x y0| <= 1/2, so five steps reach the
fixed-point precision. The same comparisons say, as two shared bits, whether x fell below
2^lo or above 2^(hi+1) (where the result is meaningless): callers reveal those bits with
their result and refuse it, instead of returning garbage.

:func:`sweep` is Goodnight's sweep operator (1979), the step of Gaussian elimination that
regression programs are built on: sweeping the first p pivots of the symmetric matrix
``[[A, b], [b^T, c]]`` leaves ``[[A^-1, A^-1 b], [-b^T A^-1, c - b^T A^-1 b]]``. Each pivot
costs one reciprocal, one elementwise product and one outer product; everything else is
local (public 0/1 masks), so nothing is opened but the masked values of those products.

Example:
    >>> import torch, veil
    >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
    >>> m = torch.tensor([[4.0, 2.0, 6.0], [2.0, 3.0, 5.0], [6.0, 5.0, 20.0]])
    >>> s = m.fix_precision(20).share(a, b, crypto_provider=c)
    >>> r, flags = sweep(s, 0)
    >>> r, more = sweep(r, 1)
    >>> torch.allclose(r.reconstruct()[:2, 2], torch.linalg.solve(m[:2, :2], m[:2, 2]), atol=1e-4)
    True
    >>> (flags + more).reconstruct().tolist()  # no pivot out of range
    [0.0, 0.0]
"""

from __future__ import annotations

from typing import Any

import torch

from veil.mpc.ring import FixedPoint

__all__ = ["NEWTON_STEPS", "at_least", "pivot_range", "reciprocal_in_range", "sweep"]

#: Newton steps after the power-of-two start (|error| 1/2 -> 2^-32 in five).
NEWTON_STEPS = 5


def pivot_range(frac_bits: int) -> tuple[int, int]:
    """The exponents (lo, hi) of the powers of two a reciprocal's input is placed between:
    x in [2^lo, 2^(hi+1)) is in range. They leave 1/x at least ``frac_bits / 2`` bits of
    precision at both ends.

    Example:
        >>> pivot_range(20)
        (-10, 10)
    """
    if not 8 <= frac_bits <= 30:
        raise ValueError(f"frac_bits must be in 8..30 for a reciprocal, got {frac_bits}")
    return -(frac_bits // 2), frac_bits // 2


def _relabel(x: Any, frac_bits: int) -> Any:
    """The same shares read with ``frac_bits`` fractional bits (no arithmetic)."""
    return type(x)(x.shares, x.session, FixedPoint(frac_bits))


def at_least(x: Any, exponent: int) -> Any:
    """Shared bits ``[x >= 2^exponent]`` elementwise, in ``x``'s fixed point (1.0 or 0.0).

    Example:
        >>> import torch, veil
        >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
        >>> x = torch.tensor([0.5, 3000.0]).fix_precision(20).share(a, b, crypto_provider=c)
        >>> at_least(x, 11).reconstruct().tolist()
        [0.0, 1.0]
    """
    return _relabel((1 - (x < 2.0**exponent)) * (1 << x.encoding.frac_bits), x.encoding.frac_bits)


def reciprocal_in_range(x: Any, *, steps: int = NEWTON_STEPS) -> tuple[Any, Any]:
    """1/x for a shared scalar x > 0, and two shared bits ``[x < 2^lo, x >= 2^(hi+1)]``
    (fixed point, 1.0 where x is out of :func:`pivot_range`; both 0.0 when the result holds).

    Works on :class:`~veil.mpc.SharedTensor` and, in malicious mode, on authenticated
    tensors (it uses comparisons, products with public integers and shared products only).

    Example:
        >>> import torch, veil
        >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
        >>> x = torch.tensor(0.004).fix_precision(20).share(a, b, crypto_provider=c)
        >>> inv, flags = reciprocal_in_range(x)
        >>> round(float(inv.reconstruct()), 1), flags.reconstruct().tolist()
        (250.0, [0.0, 0.0])
    """
    f = x.encoding.frac_bits
    lo, hi = pivot_range(f)
    exps = list(range(lo, hi + 2))
    thresholds = torch.tensor([2.0**j for j in exps], dtype=torch.float64)
    below = x.reshape(1).expand(len(exps)) < thresholds  # integer bits [x < 2^j]
    # y0 = 0.75 * 2^-m for x in [2^m, 2^(m+1)), as a telescoping sum over the bits, encoded
    # directly with f fractional bits: every weight 0.75 * 2^(f-j) is an exact integer.
    weights = torch.tensor([3 << (f - j - 2) for j in exps[:-1]], dtype=torch.int64)
    base = (3 << (f + 1 - lo - 2)) - int(weights.sum())
    y = _relabel((below[:-1] * weights).sum() + base, f)
    for _ in range(steps):
        y = y * (2 - x * y)
    flags = type(below).cat([below[:1], 1 - below[-1:]], 0)
    return y, _relabel(flags * (1 << f), f)


def _masks(m: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Public 0/1 integer masks of an m x m matrix: all but row and column k; row k but
    (k, k); column k but (k, k); (k, k) alone."""
    row = torch.zeros(m, m, dtype=torch.int64)
    row[k, :] = 1
    col = row.t().clone()
    kk = row * col
    keep = 1 - row - col + kk
    return keep, row - kk, col - kk, kk


def sweep(s: Any, k: int, *, pivot: float | None = None) -> tuple[Any, Any]:
    """Sweep a shared symmetric m x m matrix on pivot ``k``; return the swept matrix and the
    pivot's range bits (see :func:`reciprocal_in_range`).

    ``pivot``: the pivot's value when it is public (e.g. 1.0 for the intercept column of a
    Gram matrix divided by the number of rows); then its reciprocal is exact and free, and
    the range bits are zeros.

    Example:
        >>> import torch, veil
        >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
        >>> s = torch.tensor([[2.0, 1.0], [1.0, 3.0]]).fix_precision(20).share(a, b, crypto_provider=c)
        >>> r, _ = sweep(s, 0)
        >>> r.reconstruct()
        tensor([[ 0.5000,  0.5000],
                [-0.5000,  2.5000]])
    """
    m = s.shape[0]
    if s.dim() != 2 or s.shape[1] != m or not 0 <= k < m:
        raise ValueError(f"sweep needs a square matrix and a pivot in 0..{m - 1}, got {k}")
    keep, only_row, only_col, kk = _masks(m, k)
    row, col = s[k], s[:, k]
    if pivot is None:
        inv, flags = reciprocal_in_range(s[k, k])
        scaled = type(s).cat([row, col], 0) * inv.reshape(1).expand(2 * m)
        r, c_inv = scaled[:m], scaled[m:]
        corner: Any = inv.reshape(1, 1).expand(m, m) * kk
    else:
        if not pivot > 0:
            raise ValueError(f"a public pivot must be > 0, got {pivot}")
        r, c_inv = row * (1.0 / pivot), col * (1.0 / pivot)
        flags = _relabel(s[k, k].reshape(1).expand(2) * 0, s.encoding.frac_bits)
        corner = kk.to(torch.float64) * (1.0 / pivot)  # public
    out = (s - col.reshape(m, 1) @ r.reshape(1, m)) * keep
    out = (
        out + r.reshape(1, m).expand(m, m) * only_row - c_inv.reshape(m, 1).expand(m, m) * only_col
    )
    return out + corner, flags
