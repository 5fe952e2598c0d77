"""Privacy-loss-distribution accountant for the Poisson-subsampled Gaussian, with a stated error.

The privacy loss of one step, under the worst-case pair of output distributions for both
neighbouring relations (remove one example, add one), is discretized on a grid of width
``h`` twice: once rounding every loss *up* (a pessimistic PLD, whose δ(ε) upper-bounds the
true one) and once rounding *down* (an optimistic one, a lower bound). Tail masses beyond
``1e-13`` go to the "infinite loss" atom in the pessimistic PLD and are dropped in the
optimistic one. Compositions are FFT convolutions (by repeated squaring). The true ε lies
in ``[lower, upper]`` = :meth:`PLDAccountant.get_epsilon_bounds`; :meth:`get_epsilon` returns
the upper bound, and ``upper - lower`` is the stated error (about ``steps·h``).

References: Meiser & Mohammadi 2018; Sommer, Meiser, Mohammadi 2019; Koskela et al. 2020;
Google's dp-accounting (same dominating pairs, same pessimistic rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from veil.dp.accountants.base import Accountant, register_accountant

__all__ = ["PLD", "PLDAccountant"]

_TAIL = 1e-13


@dataclass(slots=True)
class PLD:
    """A discrete privacy loss distribution: ``pmf[i]`` at loss ``(offset + i)·h``, plus ``inf_mass``."""

    h: float
    offset: int
    pmf: np.ndarray
    inf_mass: float
    pessimistic: bool

    def compose(self, other: PLD) -> PLD:
        from scipy import signal  # 1 s to import: only when a PLD is composed

        pmf = np.clip(signal.fftconvolve(self.pmf, other.pmf), 0.0, None)
        inf = 1 - (1 - self.inf_mass) * (1 - other.inf_mass)
        return PLD(self.h, self.offset + other.offset, pmf, inf, self.pessimistic)._truncated()

    def self_compose(self, n: int) -> PLD:
        result: PLD | None = None
        base = self
        while n:
            if n & 1:
                result = base if result is None else result.compose(base)
            n >>= 1
            if n:
                base = base.compose(base)
        assert result is not None
        return result

    def _truncated(self) -> PLD:
        c = np.cumsum(self.pmf)
        total = c[-1]
        lo = int(np.searchsorted(c, _TAIL, side="right"))
        hi = int(np.searchsorted(c, total - _TAIL, side="left")) + 1
        lo, hi = min(lo, len(c) - 1), max(min(hi, len(c)), lo + 1)
        pmf = self.pmf[lo:hi].copy()
        below = float(c[lo - 1]) if lo > 0 else 0.0
        above = float(total - c[hi - 1])
        inf = self.inf_mass
        if self.pessimistic:
            pmf[0] += below  # moving mass to a larger loss only makes the bound looser
            inf += above
        return PLD(self.h, self.offset + lo, pmf, inf, self.pessimistic)

    def delta(self, epsilon: float) -> float:
        losses = (self.offset + np.arange(len(self.pmf))) * self.h
        m = losses > epsilon
        return float(np.sum(self.pmf[m] * -np.expm1(epsilon - losses[m])) + self.inf_mass)

    def epsilon(self, delta: float) -> float:
        if self.delta(0.0) <= delta:
            return 0.0
        if self.inf_mass > delta:
            return math.inf
        lo, hi = 0.0, (self.offset + len(self.pmf)) * self.h
        for _ in range(60):
            mid = (lo + hi) / 2
            if self.delta(mid) > delta:
                lo = mid
            else:
                hi = mid
        return hi


def _gaussian_pld(sigma: float, q: float, h: float, *, remove: bool, pessimistic: bool) -> PLD:
    """The PLD of one Poisson-subsampled Gaussian step (sensitivity 1) on a grid of width h."""
    s2 = sigma**2
    log1mq = math.log1p(-q) if q < 1 else -math.inf

    def survival(l_arr: np.ndarray) -> np.ndarray:
        """P[L > l] under the first distribution of the dominating pair."""
        out = np.empty_like(l_arr)
        if remove:  # L(x) = log(1-q + q·exp((2x-1)/2σ²)), x ~ (1-q)N(0,σ²) + qN(1,σ²); increasing
            ok = l_arr > log1mq
            with np.errstate(divide="ignore"):
                x = s2 * np.log((np.exp(l_arr[ok]) - (1 - q)) / q) + 0.5
            out[ok] = (1 - q) * special.ndtr(-x / sigma) + q * special.ndtr(-(x - 1) / sigma)
            out[~ok] = 1.0
        else:  # L(x) = -log(1-q + q·exp((2x-1)/2σ²)), x ~ N(0,σ²); decreasing, L < -log(1-q)
            ok = l_arr < -log1mq
            with np.errstate(divide="ignore"):
                x = s2 * np.log((np.exp(-l_arr[ok]) - (1 - q)) / q) + 0.5
            out[ok] = special.ndtr(x / sigma)  # P[X < x(l)]
            out[~ok] = 0.0
        return out

    def find(target: float, upper: bool) -> float:
        lo, hi = -1.0, 1.0
        while (
            survival(np.array([hi]))[0] > target
            if upper
            else survival(np.array([lo]))[0] < 1 - target
        ):
            if upper:
                hi *= 2
            else:
                lo *= 2
            if abs(lo) > 1e6 or hi > 1e6:
                break
        a, b = (lo, hi)
        for _ in range(100):
            mid = (a + b) / 2
            s = survival(np.array([mid]))[0]
            if (s > target) if upper else (s >= 1 - target):
                a = mid
            else:
                b = mid
        return b if upper else a

    l_hi = find(_TAIL, True)
    l_lo = find(_TAIL, False)
    if not remove:
        l_hi = min(l_hi, -log1mq) if math.isfinite(-log1mq) else l_hi
    if remove and math.isfinite(log1mq):
        l_lo = max(l_lo, log1mq)
    k_lo, k_hi = math.floor(l_lo / h), math.ceil(l_hi / h)
    edges = np.arange(k_lo, k_hi + 1) * h
    surv = survival(edges)
    mass = surv[:-1] - surv[1:]  # P[edges[i] < L <= edges[i+1]]
    below = 1.0 - surv[0]  # P[L <= edges[0]]
    above = float(surv[-1])
    if pessimistic:  # each bucket's mass at its upper edge
        pmf = np.concatenate([[below], mass])
        return PLD(h, k_lo, np.clip(pmf, 0, None), above, True)
    pmf = np.concatenate([mass, [0.0]])  # at the lower edge; the tails are dropped
    return PLD(h, k_lo, np.clip(pmf, 0, None), 0.0, False)


@register_accountant
class PLDAccountant(Accountant):
    """Numerical accountant with rigorous bounds; see the module docstring.

    Args:
        discretization: the loss grid width ``h``; by default ``min(1e-4, 0.02/steps)`` (at
            least ``2e-6``), so the bounds are about 0.02 apart whatever the number of steps.

    Example:
        >>> acc = PLDAccountant()
        >>> acc.step(noise_multiplier=1.0, sample_rate=0.01, steps=300)
        >>> lo, hi = acc.get_epsilon_bounds(1e-5)
        >>> lo <= hi < lo + 0.05, 0.5 < hi < 1.5
        (True, True)
    """

    name = "pld"

    def __init__(self, discretization: float | None = None) -> None:
        super().__init__()
        self.discretization = discretization

    def _h(self) -> float:
        if self.discretization is not None:
            return self.discretization
        return max(1e-5, min(1e-4, 0.02 / max(self.steps, 1)))

    def _composed(self, *, remove: bool, pessimistic: bool) -> PLD | None:
        h = self._h()
        out: PLD | None = None
        for sigma, q, n in self.history:
            if q == 0 or n == 0:
                continue
            if sigma == 0:
                return PLD(h, 0, np.zeros(1), 1.0, pessimistic)
            one = _gaussian_pld(sigma, q, h, remove=remove, pessimistic=pessimistic)
            part = one.self_compose(n)
            out = part if out is None else out.compose(part)
        return out

    def get_epsilon_bounds(self, delta: float) -> tuple[float, float]:
        """``(lower, upper)``: the true ε of the recorded steps lies between them."""
        if not 0 < delta < 1:
            raise ValueError(
                f"delta must be in (0, 1), got {delta}; typical values are 1e-5 to 1e-9"
            )
        bounds = []
        for pessimistic in (False, True):
            eps = 0.0
            for remove in (True, False):
                pld = self._composed(remove=remove, pessimistic=pessimistic)
                if pld is not None:
                    eps = max(eps, pld.epsilon(delta))
            bounds.append(eps)
        return bounds[0], bounds[1]

    def get_epsilon(self, delta: float) -> float:
        return self.get_epsilon_bounds(delta)[1]

    def get_delta(self, epsilon: float) -> float:
        """The (upper bound on) δ at ``epsilon``."""
        out = 0.0
        for remove in (True, False):
            pld = self._composed(remove=remove, pessimistic=True)
            if pld is not None:
                out = max(out, pld.delta(epsilon))
        return out
