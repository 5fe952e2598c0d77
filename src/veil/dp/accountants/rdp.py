"""Rényi DP accountant for the Poisson-subsampled Gaussian (Mironov, Talwar, Zhang 2019).

Integer orders use the exact binomial expansion; fractional orders the two-sided series of
Mironov et al. (section 3.3), as in TensorFlow Privacy and Opacus. RDP converts to (ε, δ)
with the bound of Balle et al. 2020 (Theorem 21), the one Opacus uses.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from veil.dp.accountants.base import Accountant, register_accountant

__all__ = ["DEFAULT_ORDERS", "RDPAccountant", "compute_rdp", "rdp_to_epsilon"]

#: Opacus's default orders.
DEFAULT_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
)


def _log_add(a: float, b: float) -> float:
    lo, hi = min(a, b), max(a, b)
    if lo == -np.inf:
        return hi
    return math.log1p(math.exp(lo - hi)) + hi


def _log_sub(a: float, b: float) -> float:
    if a < b:
        raise ValueError("log_sub needs a >= b")
    if b == -np.inf:
        return a
    if a == b:
        return -np.inf
    try:
        return math.log(math.expm1(a - b)) + b
    except OverflowError:
        return a


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
    log_a = -np.inf
    for i in range(alpha + 1):
        log_coef = (
            math.log(special.binom(alpha, i)) + i * math.log(q) + (alpha - i) * math.log(1 - q)
        )
        log_a = _log_add(log_a, log_coef + (i * i - i) / (2 * sigma**2))
    return float(log_a)


def _log_erfc(x: float) -> float:
    return math.log(2) + float(special.log_ndtr(-x * 2**0.5))


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
    log_a0, log_a1 = -np.inf, -np.inf
    z0 = sigma**2 * math.log(1 / q - 1) + 0.5
    i = 0
    while True:
        coef = special.binom(alpha, i)
        log_coef = math.log(abs(coef))
        j = alpha - i
        log_t0 = log_coef + i * math.log(q) + j * math.log(1 - q)
        log_t1 = log_coef + j * math.log(q) + i * math.log(1 - q)
        log_e0 = math.log(0.5) + _log_erfc((i - z0) / (math.sqrt(2) * sigma))
        log_e1 = math.log(0.5) + _log_erfc((z0 - j) / (math.sqrt(2) * sigma))
        log_s0 = log_t0 + (i * i - i) / (2 * sigma**2) + log_e0
        log_s1 = log_t1 + (j * j - j) / (2 * sigma**2) + log_e1
        if coef > 0:
            log_a0, log_a1 = _log_add(log_a0, log_s0), _log_add(log_a1, log_s1)
        else:
            log_a0, log_a1 = _log_sub(log_a0, log_s0), _log_sub(log_a1, log_s1)
        i += 1
        if max(log_s0, log_s1) < -30:
            break
    return _log_add(log_a0, log_a1)


def _rdp_one(q: float, sigma: float, alpha: float) -> float:
    if q == 0:
        return 0.0
    if sigma == 0:
        return np.inf
    if q == 1.0:
        return alpha / (2 * sigma**2)
    if np.isinf(alpha):
        return np.inf
    if float(alpha).is_integer():
        return _log_a_int(q, sigma, int(alpha)) / (alpha - 1)
    return _log_a_frac(q, sigma, alpha) / (alpha - 1)


def compute_rdp(
    *,
    sample_rate: float,
    noise_multiplier: float,
    steps: int,
    orders: tuple[float, ...] = DEFAULT_ORDERS,
) -> np.ndarray:
    """RDP of ``steps`` Poisson-subsampled Gaussian steps at each order.

    Example:
        >>> round(float(compute_rdp(sample_rate=1.0, noise_multiplier=1.0, steps=1, orders=(2.0,))[0]), 6)
        1.0
    """
    return np.array([_rdp_one(sample_rate, noise_multiplier, a) for a in orders]) * steps


def rdp_to_epsilon(orders: tuple[float, ...], rdp: np.ndarray, delta: float) -> tuple[float, float]:
    """``(ε, best order)`` from RDP values (Balle et al. 2020, Theorem 21)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}; typical values are 1e-5 to 1e-9")
    a = np.asarray(orders, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        eps = rdp - (math.log(delta) + np.log(a)) / (a - 1) + np.log((a - 1) / a)
    if np.isnan(eps).all():
        return np.inf, float("nan")
    i = int(np.nanargmin(eps))
    return float(max(eps[i], 0.0)), float(a[i])


@register_accountant
class RDPAccountant(Accountant):
    """Rényi DP accountant (the same orders, formulas and conversion as Opacus).

    Example:
        >>> acc = RDPAccountant()
        >>> acc.step(noise_multiplier=1.1, sample_rate=256 / 60_000, steps=60 * 235)
        >>> round(acc.get_epsilon(1e-5), 2)
        2.6
    """

    name = "rdp"

    def __init__(self, orders: tuple[float, ...] = DEFAULT_ORDERS) -> None:
        super().__init__()
        self.orders = tuple(orders)
        self._per_step: dict[tuple[float, float], np.ndarray] = {}

    def get_rdp(self) -> np.ndarray:
        """Total RDP at each order (per-step values are cached: RDP composes additively)."""
        total = np.zeros(len(self.orders))
        for sigma, q, n in self.history:
            one = self._per_step.get((sigma, q))
            if one is None:
                one = compute_rdp(
                    sample_rate=q, noise_multiplier=sigma, steps=1, orders=self.orders
                )
                self._per_step[(sigma, q)] = one
            total += one * n
        return total

    def get_epsilon(self, delta: float) -> float:
        if not self.history:
            return 0.0
        return rdp_to_epsilon(self.orders, self.get_rdp(), delta)[0]
