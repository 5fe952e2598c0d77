"""A discrete privacy loss distribution (PLD) on a grid: composition by FFT, δ(ε) and ε(δ).

A PLD here is the distribution of the privacy loss ``L = log(P(o)/Q(o))`` of a dominating pair
``(P, Q)``, with ``o`` drawn from ``P``, put on the grid ``{k·h}`` plus an atom at ``+∞``. Its
hockey-stick divergence is ``δ(ε) = inf_mass + Σ_k pmf[k]·(1 - exp(ε - ℓ_k))₊``.

Composition of mechanisms is convolution of their PLDs. This module convolves by FFT and cuts
the result to a window outside which a Chernoff bound (from the moment generating functions of
the inputs) leaves at most ``tail_mass``; for a pessimistic PLD that bound is added to the
``+∞`` atom, so the cut never lowers δ, and so is an estimate of the FFT's round-off (entries
times the largest negative output, about 1e-13). Both directions of the argument only need
``δ₁ ≤ δ₂`` pointwise for all real ε to be preserved by convolution, which it is, since
``δ_{A∘B}(ε) = E_{ℓ∼A}[δ_B(ε - ℓ)]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["PLD"]

#: Chernoff orders λ tried, relative to the one that is best for a Gaussian sum.
_ORDERS = np.geomspace(1 / 30, 30, 13)


@dataclass(frozen=True, slots=True)
class PLD:
    """A privacy loss distribution: ``pmf[i]`` is the mass at loss ``(offset + i)·h``.

    Args:
        h: the grid width.
        offset: the grid index of ``pmf[0]``.
        pmf: the masses on the grid (non-negative).
        inf_mass: the mass at loss ``+∞`` (a δ no ε can remove).
        pessimistic: whether this PLD over-states δ (an upper bound) or under-states it.

    Example:
        >>> pld = PLD(h=0.5, offset=-1, pmf=np.array([0.25, 0.25, 0.5]), inf_mass=0.0)
        >>> pld.delta(0.0) == 0.5 * (1 - math.exp(-0.5))
        True
        >>> two = pld.compose(pld)
        >>> (two.offset, two.pmf.round(4).tolist())
        (-2, [0.0625, 0.125, 0.3125, 0.25, 0.25])
    """

    h: float
    offset: int
    pmf: np.ndarray
    inf_mass: float
    pessimistic: bool = True

    @property
    def losses(self) -> np.ndarray:
        """The loss of each entry of ``pmf``."""
        return (self.offset + np.arange(len(self.pmf))) * self.h

    def compose(self, other: PLD, *, tail_mass: float = 1e-15) -> PLD:
        """The PLD of both mechanisms run one after the other.

        Args:
            other: a PLD on the same grid, with the same ``pessimistic`` flag.
            tail_mass: a bound on the mass cut from the two tails together. A pessimistic PLD
                moves what is cut to the first kept loss or to ``+∞``; an optimistic one moves
                the upper tail down to the last kept loss and drops the lower one.

        Returns:
            The convolution of the two, cut to where its mass is.
        """
        self._check_composable(other)
        a, b = self.pmf, other.pmf
        size = len(a) + len(b) - 1
        raw = _fft_convolve(a, b, size)
        pmf = np.clip(raw, 0.0, None)
        lo, hi = _window([(self, 1), (other, 1)], tail_mass, self.offset + other.offset, size)
        left, right = float(pmf[:lo].sum()), float(pmf[hi + 1 :].sum())
        kept = pmf[lo : hi + 1].copy()
        inf = 1 - (1 - self.inf_mass) * (1 - other.inf_mass)
        if self.pessimistic:  # raising a loss never lowers δ
            kept[0] += left
            inf = min(1.0, inf + right + _rounding(raw, len(kept)))
        else:  # lowering a loss or dropping mass never raises δ
            kept[-1] += right
        return PLD(self.h, self.offset + other.offset + lo, kept, inf, self.pessimistic)

    def self_compose(self, n: int, *, tail_mass: float = 1e-15) -> PLD:
        """The PLD of ``n`` runs of this mechanism.

        One forward FFT, sized to the Chernoff window of the ``n``-fold sum, raised to the
        ``n``-th power by repeated squaring, and one inverse FFT. Mass outside the window (at
        most ``tail_mass``) wraps around into it; a pessimistic PLD adds ``tail_mass`` to its
        ``+∞`` atom to pay for it, and an estimate of the FFT's round-off (an optimistic one may
        over-state δ by that much).

        Args:
            n: the number of runs (>= 1).
            tail_mass: the bound on the mass outside the window.

        Returns:
            The ``n``-fold convolution of this PLD with itself.

        Example:
            >>> pld = PLD(h=0.1, offset=0, pmf=np.array([0.5, 0.5]), inf_mass=0.0)
            >>> three = pld.self_compose(3)
            >>> (three.offset, three.pmf.round(4).tolist())
            (0, [0.125, 0.375, 0.375, 0.125])
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if n == 1:
            return self
        from scipy import fft  # 0.3 s to import: only when composing

        size = (len(self.pmf) - 1) * n + 1
        lo, hi = _window([(self, n)], tail_mass, n * self.offset, size)
        out_len = hi - lo + 1
        length = fft.next_fast_len(max(out_len, len(self.pmf)), real=True)
        spectrum = _power(fft.rfft(self.pmf, length), n)
        full = fft.irfft(spectrum, length)
        pmf = np.clip(np.roll(full, -lo)[:out_len], 0.0, None)
        inf = -math.expm1(n * math.log1p(-self.inf_mass)) if self.inf_mass < 1 else 1.0
        if self.pessimistic:
            inf += _rounding(full, out_len) + (tail_mass if out_len < size else 0.0)
        return PLD(self.h, n * self.offset + lo, pmf, min(inf, 1.0), self.pessimistic)

    def self_compose_points(self, n: int, *, tail_mass: float = 1e-15) -> int:
        """How many grid points :meth:`self_compose` ``(n)`` keeps (its cost, before running it)."""
        size = (len(self.pmf) - 1) * n + 1
        lo, hi = _window([(self, n)], tail_mass, n * self.offset, size)
        return hi - lo + 1

    def delta(self, epsilon: float) -> float:
        """The hockey-stick divergence ``δ(ε)`` of this PLD.

        Example:
            >>> PLD(h=1.0, offset=1, pmf=np.array([1.0]), inf_mass=0.0).delta(0.0)
            0.6321205588285577
        """
        losses = self.losses
        above = losses > epsilon
        tail = (self.pmf[above] * -np.expm1(epsilon - losses[above])).sum()
        return float(tail) + self.inf_mass

    def epsilon(self, delta: float) -> float:
        """The smallest ``ε >= 0`` with ``δ(ε) <= delta`` (``inf`` if none).

        Exact for this discrete PLD: between grid losses ``δ(ε) = U - exp(ε)·W``, so the grid
        cell where δ crosses ``delta`` is found and ε solved in closed form inside it.

        Example:
            >>> pld = PLD(h=1.0, offset=1, pmf=np.array([1.0]), inf_mass=0.0)
            >>> eps = pld.epsilon(0.5)
            >>> round(eps, 6), round(pld.delta(eps), 6)
            (0.306853, 0.5)
        """
        if self.inf_mass > delta:
            return math.inf
        if self.delta(0.0) <= delta:
            return 0.0
        losses = self.losses
        start = int(np.searchsorted(losses, 0.0, side="right"))  # the losses > 0
        ls, p = losses[start:], self.pmf[start:]  # not empty, since δ(0) > inf_mass
        if ls[-1] - ls[0] > 600:  # exp(ls - ls[0]) would overflow: bisect instead
            return self._epsilon_by_bisection(delta, start)
        # U_k = Σ_{j>=k} p_j + inf_mass, W_k = Σ_{j>=k} p_j·exp(ℓ_0 - ℓ_j), summed small first
        upper = np.cumsum(p[::-1])[::-1] + self.inf_mass
        w = np.cumsum((p * np.exp(ls[0] - ls))[::-1])[::-1]
        # δ(ℓ_k) = U_{k+1} - exp(ℓ_k - ℓ_0)·W_{k+1}, non-increasing, = inf_mass at the end
        at_grid = np.append(upper[1:], self.inf_mass) - np.exp(ls - ls[0]) * np.append(w[1:], 0)
        k = int(np.argmax(at_grid <= delta))
        floor = float(ls[k - 1]) if k > 0 else 0.0
        if upper[k] <= delta or w[k] <= 0:
            return floor
        eps = float(ls[0]) + math.log((float(upper[k]) - delta) / float(w[k]))
        return min(max(eps, floor), float(ls[k]))

    def _epsilon_by_bisection(self, delta: float, start: int) -> float:
        losses, pmf = self.losses, self.pmf
        lo, hi = start, len(losses) - 1  # the first k with δ(ℓ_k) <= delta is in [lo, hi]
        while lo < hi:
            mid = (lo + hi) // 2
            if self.delta(float(losses[mid])) <= delta:
                hi = mid
            else:
                lo = mid + 1
        # on (ℓ_{k-1}, ℓ_k]: δ(ε) = U - exp(ε - ℓ_k)·E with the masses at ℓ_j, j >= k
        upper = float(pmf[hi:].sum()) + self.inf_mass
        e = float((pmf[hi:] * np.exp(losses[hi] - losses[hi:])).sum())
        floor = max(0.0, float(losses[hi - 1])) if hi > 0 else 0.0
        if upper <= delta or e <= 0.0:
            return floor
        eps = float(losses[hi]) + math.log((upper - delta) / e)
        return min(max(eps, floor), float(losses[hi]))

    def _check_composable(self, other: PLD) -> None:
        if other.h != self.h or other.pessimistic != self.pessimistic:
            raise ValueError(
                "PLDs compose only on the same grid and in the same direction; got "
                f"h={self.h}, pessimistic={self.pessimistic} and "
                f"h={other.h}, pessimistic={other.pessimistic}"
            )


def _fft_convolve(a: np.ndarray, b: np.ndarray, size: int) -> np.ndarray:
    """The full linear convolution of ``a`` and ``b`` (``size`` entries), with round-off."""
    if min(len(a), len(b)) <= 64:
        return np.convolve(a, b)
    from scipy import fft

    length = fft.next_fast_len(size, real=True)
    return fft.irfft(fft.rfft(a, length) * fft.rfft(b, length), length)[:size]


def _rounding(raw: np.ndarray, count: int) -> float:
    """What a pessimistic PLD adds to δ for the FFT's round-off in ``count`` kept entries.

    The round-off is about the same size at every entry of an FFT's output; where the exact
    value is (nearly) 0 it shows as a negative entry. ``count`` times the largest of those is
    the most it can move δ if every error had the same sign. About 1e-13 in practice.
    """
    return count * max(0.0, -float(raw.min()))


def _power(spectrum: np.ndarray, n: int) -> np.ndarray:
    """``spectrum ** n`` by repeated squaring (n >= 1)."""
    result: np.ndarray | None = None
    base = spectrum
    while True:
        if n & 1:
            result = base.copy() if result is None else result * base
        n >>= 1
        if not n:
            assert result is not None
            return result
        base = base * base


def _window(
    parts: list[tuple[PLD, int]], tail_mass: float, offset: int, size: int
) -> tuple[int, int]:
    """Indices ``[lo, hi]`` into the pmf of the sum of ``n`` draws from each ``(pld, n)``
    (``size`` entries from grid index ``offset``) outside which a Chernoff bound,
    ``P(L > b) <= exp(log E[e^{λL}] - λb)``, leaves at most ``tail_mass`` of the mass."""
    if tail_mass <= 0:
        return 0, size - 1
    h = parts[0][0].h
    var = sum(n * _variance(pld) for pld, n in parts)
    log_t = math.log(2 / tail_mass)  # at most tail_mass/2 on each side
    orders = _ORDERS * (math.sqrt(2 * log_t / var) if var > 0 else 1 / h)
    with np.errstate(invalid="ignore", over="ignore"):
        up = sum(n * _log_mgf(pld, orders) for pld, n in parts)
        down = sum(n * _log_mgf(pld, -orders) for pld, n in parts)
        upper = float(np.min((up + log_t) / orders))
        lower = float(np.max(-(down + log_t) / orders))
    hi = size - 1 if not math.isfinite(upper) else min(size - 1, math.ceil(upper / h) - offset)
    lo = 0 if not math.isfinite(lower) else max(0, math.floor(lower / h) - offset)
    hi = max(hi, 0)
    return min(lo, hi), hi


def _log_mgf(pld: PLD, orders: np.ndarray) -> np.ndarray:
    """``log Σ_k pmf[k]·exp(λ·ℓ_k)`` for each ``λ`` in ``orders``."""
    nz = pld.pmf > 0
    if not nz.any():
        return np.full(len(orders), -math.inf)
    losses, logp = pld.losses[nz], np.log(pld.pmf[nz])
    out = np.empty(len(orders))
    for i, lam in enumerate(orders):
        z = lam * losses + logp
        top = float(z.max())
        out[i] = top + math.log(float(np.exp(z - top).sum()))
    return out


def _variance(pld: PLD) -> float:
    mass = float(pld.pmf.sum())
    if mass <= 0:
        return 0.0
    losses = pld.losses
    mean = float((pld.pmf * losses).sum()) / mass
    return float((pld.pmf * (losses - mean) ** 2).sum()) / mass
