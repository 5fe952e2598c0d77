"""Non-linear functions on shared tensors by iterative approximations, with error bounds.

The bounds below hold with the default 16 fractional bits and are checked by
``tests/mpc/test_approx.py`` on dense grids of each range (``err`` is the absolute error,
``rel`` the relative error |approx - f| / |f|):

==============  ==========================================  ====================================
function        method                                      bound (tested)
==============  ==========================================  ====================================
``exp``         (1 + x/2^8)^(2^8), 8 squarings              rel <= 4% on [-4, 4]; err <= 5e-3
                                                            on [-16, 0]; valid for |x| < 256
``reciprocal``  Newton, y0 = 3 exp(1/2 - x) + 0.003, 10 it  rel <= 1% on [0.1, 100] (either sign)
``sqrt``        Newton on 1/sqrt, 6 iterations              rel <= 1% on [0.1, 100]
``log``         Householder (order 8) on exp, 2 iterations  err <= 2e-2 on [0.1, 10], 5e-2 on
                                                            [10, 100] (exp's error dominates)
``sigmoid``     1/(1 + exp(-|x|)), mirrored by sign         err <= 2e-3 on [-30, 30]
``tanh``        2 sigmoid(2x) - 1                           err <= 4e-3 on [-15, 15]
``softmax``     exp(x - max) / sum, reciprocal on [1, k]     err <= 1e-2 for inputs of range < 8
==============  ==========================================  ====================================

They are compositions of products, truncations and comparisons, so they run unchanged on
:class:`~veil.mpc.SharedTensor` and, with ``security="malicious"``, on
:class:`~veil.mpc.authenticated.AuthenticatedTensor` (every opening MAC-checked; the same
bounds hold, truncation there is the dealer's, exact to one unit).

Example:
    >>> import torch, veil
    >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
    >>> x = torch.tensor([0.5, 2.0, 10.0]).share(a, b, crypto_provider=c)
    >>> torch.allclose(reciprocal(x).reconstruct(), torch.tensor([2.0, 0.5, 0.1]), rtol=0.01)
    True
    >>> y = torch.tensor([-1.0, 0.0, 1.0]).share(a, b, crypto_provider=c, security="malicious")
    >>> torch.allclose(sigmoid(y).reconstruct(), torch.sigmoid(torch.tensor([-1.0, 0.0, 1.0])), atol=2e-3)
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from veil.mpc.tensors.authenticated import AuthenticatedTensor
    from veil.mpc.tensors.shared import SharedTensor

#: The functions run on semi-honest and on authenticated (malicious-mode) tensors alike.
T = TypeVar("T", "SharedTensor", "AuthenticatedTensor")

EXP_ITERATIONS = 8


def exp(x: T, iterations: int = EXP_ITERATIONS) -> T:
    """e^x by the limit (1 + x / 2^n)^(2^n): ``iterations`` squarings (one round each with
    two parties). Valid for x < 2^n (beyond, 1 + x/2^n turns negative)."""
    y = x * (1.0 / 2**iterations) + 1.0
    for _ in range(iterations):
        y = y.square()
    return y


def _sign_factor(x: T) -> T:
    """1 - 2 [x < 0]: +1 or -1 (integer shares)."""
    return 1 - x._sign() * 2


def reciprocal(x: T, *, positive: bool = False, iterations: int = 10,
               initial: float | None = None) -> T:  # fmt: skip
    """1 / x by Newton-Raphson, y <- y (2 - x y), from y0 = 3 exp(1/2 - x) + 0.003
    (or the public ``initial``). ``positive=True`` skips the sign handling (one comparison
    and two products) when x > 0 is known."""
    if not positive:
        s = _sign_factor(x)
        return reciprocal(x * s, positive=True, iterations=iterations, initial=initial) * s
    if initial is None:
        y = exp(0.5 - x) * 3 + 0.003
    else:
        y = x * 0 + initial
    for _ in range(iterations):
        y = y * (2 - x * y)
    return y


def inv_sqrt(x: T, iterations: int = 6) -> T:
    """1 / sqrt(x) for x > 0 by Newton, y <- y (3 - x y^2) / 2, from
    y0 = 2.2 exp(-(x/2 + 0.2)) + 0.2 - x/1024."""
    y = exp(-(x * 0.5 + 0.2)) * 2.2 + 0.2 - x * (1.0 / 1024)
    for _ in range(iterations):
        y = y * (3 - x * y.square()) * 0.5
    return y


def sqrt(x: T) -> T:
    """sqrt(x) = x / sqrt(x) for x > 0."""
    return x * inv_sqrt(x)


def log(x: T, iterations: int = 2, order: int = 8) -> T:
    """ln(x) for x > 0: Householder iterations y <- y - sum_k h^k / k with
    h = 1 - x exp(-y), from y0 = x/120 - 20 exp(-2x - 1) + 3."""
    y = x * (1.0 / 120) - exp(-2 * x - 1) * 20 + 3.0
    for _ in range(iterations):
        h = 1 - x * exp(-y)
        acc = h
        p = h
        for k in range(2, order + 1):
            p = p * h
            acc = acc + p * (1.0 / k)
        y = y - acc
    return y


def sigmoid(x: T) -> T:
    """1 / (1 + e^-x), computed on |x| (so the reciprocal's input is in [1, 2]) and
    mirrored for negative x: one comparison, one exp, five Newton steps."""
    neg = x._sign()  # 1 where x < 0
    ax = x * (1 - neg * 2)
    r = reciprocal(exp(-ax) + 1.0, positive=True, iterations=5, initial=0.75)
    return r + neg * (1 - r * 2)


def tanh(x: T) -> T:
    """tanh(x) = 2 sigmoid(2x) - 1."""
    return sigmoid(x * 2) * 2 - 1.0


def softmax(x: T, dim: int = -1) -> T:
    """exp(x - max) / sum: the max (a comparison tree) keeps exp's input <= 0 and the
    sum in [1, k], where the reciprocal converges from 1/k... 1 in a few steps."""
    m, _ = x.max(dim, keepdim=True)
    e = exp(x - m)
    s = e.sum(dim, keepdim=True)
    k = x.shape[dim]
    r = reciprocal(s, positive=True, iterations=8, initial=1.0 / k)
    return e * r
