"""Privacy ledger arithmetic: what one release costs, and what a list of releases has spent.

Each release is stored with its (ε, δ) *and* its zero-concentrated DP parameter ρ
(Laplace: ε-DP implies ε²/2-zCDP; Gaussian: ρ = Δ²/2σ²). The spend of a list of releases at
the budget's δ is the smaller of two valid bounds: basic composition (Σε, valid when
Σδ <= δ) and zCDP composition (Σρ converted at δ; Bun & Steinke 2016, CKS 2020), which is
far tighter for many Gaussian releases.

Example:
    >>> rs = [Release(epsilon=0.5, delta=1e-6, rho=gaussian_rho(0.5, 1e-6)) for _ in range(20)]
    >>> basic = sum(r.epsilon for r in rs)
    >>> spent_epsilon(rs, delta=1e-5) < basic
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from veil.dp.calibration import gaussian_sigma, zcdp_to_epsilon

__all__ = ["Release", "gaussian_rho", "laplace_rho", "spent_epsilon"]


@dataclass(frozen=True, slots=True)
class Release:
    """One DP release: its guarantee as (ε, δ) and as ρ-zCDP."""

    epsilon: float
    delta: float
    rho: float
    mechanism: str = "gaussian"


def laplace_rho(epsilon: float) -> float:
    """ρ of an ε-DP mechanism (ε-DP implies ε²/2-zCDP)."""
    return epsilon**2 / 2


def gaussian_rho(epsilon: float, delta: float) -> float:
    """ρ of the Gaussian mechanism calibrated (by :func:`gaussian_sigma`) to (ε, δ)."""
    sigma = gaussian_sigma(epsilon, delta, 1.0)
    return 1.0 / (2 * sigma**2)


def spent_epsilon(releases: list[Release], *, delta: float) -> float:
    """ε spent at ``delta`` by ``releases``: the better of basic and zCDP composition."""
    if not releases:
        return 0.0
    basic = math.fsum(r.epsilon for r in releases)
    if math.fsum(r.delta for r in releases) > delta:
        basic = math.inf
    if delta <= 0:
        return basic
    zcdp = zcdp_to_epsilon(math.fsum(r.rho for r in releases), delta)
    return min(basic, zcdp)
