"""Noise calibration: zCDP of the (discrete) Gaussian, its (ε, δ) conversion, and σ for a target (ε, δ).

The discrete Gaussian with scale σ and L2 sensitivity Δ is ρ-zCDP with ρ = Δ²/2σ², exactly
as the continuous one (Canonne, Kamath, Steinke 2020, Theorem 14), so the conversions below
hold for both. ``zcdp_to_delta`` is their tight conversion (Proposition 12/Corollary 13).
"""

from __future__ import annotations

import math

__all__ = ["gaussian_sigma", "gaussian_epsilon", "zcdp_to_delta", "zcdp_to_epsilon"]


def zcdp_to_delta(rho: float, epsilon: float) -> float:
    """The δ of a ρ-zCDP mechanism at ``epsilon`` (CKS 2020, Corollary 13).

    Example:
        >>> round(zcdp_to_delta(0.5, 3.0), 6)
        0.005143
    """
    if rho <= 0:
        return 0.0
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    # δ = min over α > 1 of exp((α-1)(αρ-ε)) / (α-1) · (1 - 1/α)^α; its log is convex in α.
    lo, hi = 1.0 + 1e-12, max(4.0, 4 * (epsilon + rho) / rho)
    for _ in range(200):
        m1, m2 = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if _zcdp_log_delta(rho, epsilon, m1) < _zcdp_log_delta(rho, epsilon, m2):
            hi = m2
        else:
            lo = m1
    return math.exp(min(_zcdp_log_delta(rho, epsilon, (lo + hi) / 2), 0.0))


def _zcdp_log_delta(rho: float, eps: float, a: float) -> float:
    return (a - 1) * (a * rho - eps) - math.log(a - 1) + a * math.log1p(-1 / a)


def zcdp_to_epsilon(rho: float, delta: float) -> float:
    """The smallest ε with ``zcdp_to_delta(rho, ε) <= delta`` (bisection).

    Example:
        >>> round(zcdp_to_epsilon(0.5, 1e-5), 3)
        4.728
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if rho <= 0:
        return 0.0
    lo, hi = 0.0, rho + 2 * math.sqrt(rho * math.log(1 / delta)) + 1
    for _ in range(100):
        mid = (lo + hi) / 2
        if zcdp_to_delta(rho, mid) <= delta:
            hi = mid
        else:
            lo = mid
    return hi


def gaussian_epsilon(sigma: float, sensitivity: float, delta: float) -> float:
    """ε of one Gaussian (or discrete Gaussian) release with noise σ and L2 sensitivity Δ."""
    return zcdp_to_epsilon(sensitivity**2 / (2 * sigma**2), delta)


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """The smallest σ for which the (discrete) Gaussian mechanism is (ε, δ)-DP.

    Example:
        >>> s = gaussian_sigma(1.0, 1e-5)
        >>> 3.5 < s < 4.5 and gaussian_epsilon(s, 1.0, 1e-5) <= 1.0
        True
    """
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}; typical values are 1e-5 to 1e-9")
    if not sensitivity > 0:
        raise ValueError(f"sensitivity must be > 0, got {sensitivity}")
    lo, hi = 1e-6, 1.0
    while zcdp_to_delta(1 / (2 * hi**2), epsilon) > delta:
        hi *= 2
    for _ in range(80):
        mid = (lo + hi) / 2
        if zcdp_to_delta(1 / (2 * mid**2), epsilon) <= delta:
            hi = mid
        else:
            lo = mid
    return hi * sensitivity
