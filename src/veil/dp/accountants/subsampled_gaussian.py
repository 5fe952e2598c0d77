"""The privacy loss of one Poisson-subsampled Gaussian step, exactly and on a grid.

For sensitivity 1, noise ``N(0, σ²)`` and sampling rate ``q`` the dominating pairs are (as in
Google's dp-accounting, Zhu, Dong & Wang 2022):

* remove one example: ``P = (1-q)·N(0, σ²) + q·N(-1, σ²)``, ``Q = N(0, σ²)``;
* add one example: ``P = N(0, σ²)``, ``Q = (1-q)·N(0, σ²) + q·N(1, σ²)``.

In both the loss ``L(x) = log(P(x)/Q(x))`` decreases in ``x``, so ``{L > ε}`` is a half-line and
``δ(ε) = P(L > ε) - e^ε·Q(L > ε)`` is exact. :meth:`SubsampledGaussianLoss.connect_the_dots`
discretizes the PLD pessimistically, by Doroshenko et al. 2022 ("Connect the Dots: Tighter
Discrete Approximations of Privacy Loss Distributions", Algorithm 1): the grid PLD whose δ
equals the true δ at every grid ε and interpolates it in between, which over-states δ
everywhere and is the tightest pessimistic PLD on that grid.
:meth:`SubsampledGaussianLoss.tangents` gives an optimistic one (a lower bound), see there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from veil.dp.accountants.loss_distribution import PLD

__all__ = ["SubsampledGaussianLoss"]

#: log of the noise mass left out (half on each side) when choosing the loss range, as dp-accounting.
_LOG_TAIL = -50.0


@dataclass(frozen=True, slots=True)
class SubsampledGaussianLoss:
    """One step of the Poisson-subsampled Gaussian mechanism, for one neighbouring relation.

    Args:
        sigma: the noise multiplier (noise std over sensitivity), > 0.
        q: the sampling rate, in (0, 1].
        remove: True for "remove one example", False for "add one example".

    Example:
        >>> loss = SubsampledGaussianLoss(sigma=1.0, q=1.0, remove=True)
        >>> d = loss.delta(np.array([0.0, 1.0]))
        >>> bool(abs(d[0] - (2 * special.ndtr(0.5) - 1)) < 1e-12), bool(d[1] < d[0])
        (True, True)
    """

    sigma: float
    q: float
    remove: bool

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if not 0 < self.q <= 1:
            raise ValueError(f"q must be in (0, 1], got {self.q}")

    @property
    def _log1mq(self) -> float:
        return math.log1p(-self.q) if self.q < 1 else -math.inf

    def loss(self, x: np.ndarray) -> np.ndarray:
        """The privacy loss ``log(P(x)/Q(x))`` at the output ``x``."""
        s2, lq = self.sigma**2, math.log(self.q)
        if self.remove:
            return np.logaddexp(self._log1mq, lq - (2 * x + 1) / (2 * s2))
        return -np.logaddexp(self._log1mq, lq + (2 * x - 1) / (2 * s2))

    def _x_at(self, eps: np.ndarray) -> np.ndarray:
        """The output x with ``loss(x) = eps`` (eps strictly inside the range of the loss)."""
        s2, q = self.sigma**2, self.q
        e = eps if self.remove else -eps
        # log(1 + (e^e - 1)/q): the loss without subsampling, for either sign of e
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            small = np.log1p(np.expm1(np.minimum(e, 0.0)) / q)
            big = e + np.log1p(-(1 - q) * np.exp(-np.maximum(e, 0.0))) - math.log(q)
        unsampled = np.where(e <= 0, small, big)
        return -s2 * unsampled - 0.5 if self.remove else s2 * unsampled + 0.5

    def _inside(self, eps: np.ndarray) -> np.ndarray:
        """Where ``{L > eps}`` is neither everything nor empty."""
        return eps > self._log1mq if self.remove else eps < -self._log1mq

    def tails(self, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(P(L > eps), Q(L > eps))``, each accurate to a relative 1e-15 where small."""
        eps = np.asarray(eps, dtype=float)
        inside = self._inside(eps)
        outside = 1.0 if self.remove else 0.0  # L > log(1-q) always; L < -log(1-q) always
        p = np.full(eps.shape, outside)
        q = np.full(eps.shape, outside)
        log_p, log_q = self._log_cdfs(self._x_at(eps[inside]))
        p[inside], q[inside] = np.exp(log_p), np.exp(log_q)
        return p, q

    def delta(self, eps: np.ndarray) -> np.ndarray:
        """The exact hockey-stick divergence ``δ(ε)`` of this pair."""
        eps = np.asarray(eps, dtype=float)
        inside = self._inside(eps)
        out = np.zeros(eps.shape)
        if self.remove:
            out[~inside] = -np.expm1(eps[~inside])
        log_p, log_q = self._log_cdfs(self._x_at(eps[inside]))
        out[inside] = np.exp(log_p) - np.exp(eps[inside] + log_q)
        return np.clip(out, 0.0, 1.0)

    def _log_cdfs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(log P(X <= x), log Q(X <= x))``: ``L > ε`` exactly when ``x`` is below ``x(ε)``."""
        s, lq = self.sigma, math.log(self.q)
        base = special.log_ndtr(x / s)
        if self.remove:
            return np.logaddexp(self._log1mq + base, lq + special.log_ndtr((x + 1) / s)), base
        return base, np.logaddexp(self._log1mq + base, lq + special.log_ndtr((x - 1) / s))

    def loss_range(self) -> tuple[float, float]:
        """The losses at the outputs beyond which the noise has mass ``e^-50`` on each side."""
        z = float(special.ndtri(0.5 * math.exp(_LOG_TAIL))) * self.sigma  # < 0
        x_lo, x_hi = (z - 1, -z) if self.remove else (z, -z + 1)
        return float(self.loss(np.array(x_hi))), float(self.loss(np.array(x_lo)))

    def _grid(self, h: float) -> np.ndarray:
        lo, hi = self.loss_range()
        return np.arange(math.floor(lo / h), math.ceil(hi / h) + 1)

    def connect_the_dots(self, h: float) -> PLD:
        """The pessimistic connect-the-dots PLD on the grid ``h·ℤ``.

        With ``δ_i`` the exact δ at the grid losses ``ε_1 < ... < ε_n`` covering
        :meth:`loss_range`, the mass at ``ε_i`` is the one that makes the PLD's δ pass through
        every ``(ε_i, δ_i)`` and be linear in ``e^ε`` between them, and ``δ_n`` goes to ``+∞``.
        δ is convex in ``e^ε``, so the chords lie above it: the PLD dominates the mechanism.

        Example:
            >>> loss = SubsampledGaussianLoss(sigma=1.0, q=0.1, remove=True)
            >>> pld = loss.connect_the_dots(1e-3)
            >>> eps = np.array([0.0, 0.0105, 0.5])
            >>> bool(np.all([pld.delta(e) >= d - 1e-15 for e, d in zip(eps, loss.delta(eps))]))
            True
        """
        ks = self._grid(h)
        d = np.minimum.accumulate(self.delta(ks * h))  # δ is non-increasing; remove rounding
        if len(d) == 1:
            return PLD(h, int(ks[0]), np.array([1.0 - d[0]]), float(d[0]))
        dd = np.diff(d)
        em1 = math.expm1(h)
        pmf = np.empty_like(d)
        pmf[0] = 1 - d[0] + dd[0] / em1
        pmf[1:-1] = (dd[1:] - dd[:-1] * math.exp(h)) / em1
        pmf[-1] = dd[-1] / math.expm1(-h)
        return PLD(h, int(ks[0]), np.maximum(pmf, 0.0), float(d[-1]))

    def tangents(self, h: float) -> PLD:
        """An optimistic PLD on the grid ``h·ℤ``: its δ is at most the true δ for every ε.

        ``P(L > τ) - u·Q(L > τ)`` is the tangent at ``u = e^τ`` of the convex function
        ``u ↦ δ(log u)`` and lies below it everywhere. Each grid cell ``[ε_i, ε_{i+1}]`` takes
        the tangent at its midpoint (at its right end where the midpoint's tangent would turn
        negative, and in the last cell); the PLD's δ is the largest function, linear in ``e^ε``
        between grid points and convex, under the lower of the two tangents at every grid
        point. It is zero above the grid, so it has no ``+∞`` mass.

        Example:
            >>> loss = SubsampledGaussianLoss(sigma=1.0, q=0.1, remove=True)
            >>> pld = loss.tangents(1e-3)
            >>> eps = np.array([-0.5, 0.0, 0.0105, 0.5])
            >>> bool(np.all([pld.delta(e) <= d for e, d in zip(eps, loss.delta(eps))]))
            True
        """
        ks = self._grid(h)
        n = len(ks)
        if n == 1:
            return PLD(h, int(ks[0]), np.zeros(1), 0.0, pessimistic=False)
        eps = ks * h
        u = np.exp(eps)
        # the tangent for cell i: value (a - u·b) at u_i and at u_{i+1}
        a, b = self.tails(eps[:-1] + h / 2)
        left, right = a - u[:-1] * b, a - u[1:] * b
        end = right < 0
        end[-1] = True
        a_end, b_end = self.tails(eps[1:][end])
        left[end], right[end] = a_end - u[:-1][end] * b_end, a_end - u[1:][end] * b_end
        # below the grid: the tangent at ε_1, whose value at u = 0 is P(L > ε_1)
        a0, b0 = self.tails(eps[:1])
        xs = np.concatenate([[0.0], u])
        ys = np.empty(n + 1)
        ys[0] = a0[0]
        ys[1] = min(left[0], a0[0] - u[0] * b0[0])
        ys[2:-1] = np.minimum(right[:-1], left[1:])
        ys[-1] = 0.0
        keep = _lower_convex(xs, np.maximum(ys, 0.0))
        x, y = xs[keep], np.maximum(ys, 0.0)[keep]
        slopes = np.append(np.diff(y) / np.diff(x), 0.0)  # 0 past the last grid point
        pmf = np.zeros(n)
        pmf[keep[1:] - 1] = x[1:] * np.diff(slopes)  # the kink at u_i holds mass u_i·Δslope
        return PLD(h, int(ks[0]), np.maximum(pmf, 0.0), 0.0, pessimistic=False)


def _lower_convex(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the lower convex hull of the points (``x`` increasing), ends included.

    The piecewise-linear function through them is convex and never above the one through all
    the points (Andrew's monotone chain; a point is dropped when it lies on or above the line
    through its neighbours).
    """
    xs, ys = x.tolist(), y.tolist()
    hull: list[int] = []
    for i in range(len(xs)):
        xi, yi = xs[i], ys[i]
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b is not below the chord from a to i: drop it
            if (ys[b] - ys[a]) * (xi - xs[b]) >= (yi - ys[b]) * (xs[b] - xs[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    return np.array(hull)
