"""DP mechanisms: Laplace, Gaussian (on a fine grid), discrete Laplace/Gaussian, exponential, randomized response.

Every mechanism draws its randomness from the exact samplers in :mod:`veil.dp.samplers`
(CSPRNG bits, integer arithmetic). The real-valued Laplace and Gaussian mechanisms round
their input to a grid of width ``g`` (a power of two) and add ``g`` times discrete noise, so
every output is an exact multiple of ``g`` whatever the input was: Mironov's (2012) attack on
textbook floating-point samplers, which reads the input off the set of floats the noise can
reach, has nothing to read. The rounding can move each coordinate by ``g/2``, so the noise is
calibrated for the sensitivity *plus* that movement: the guarantee is exact, not approximate.

Example:
    >>> import torch
    >>> mech = LaplaceMechanism(epsilon=1.0, sensitivity=1.0)
    >>> y = mech(torch.zeros(1000))
    >>> y.shape, bool((y / mech.granularity(1000) % 1 == 0).all())
    (torch.Size([1000]), True)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch

from veil.dp.calibration import gaussian_epsilon, gaussian_sigma
from veil.dp.samplers import (
    RandomSource,
    _bernoulli,
    check_gaussian_sigma,
    check_laplace_scale,
    discrete_gaussian,
    discrete_laplace,
    uniform_below,
)

__all__ = [
    "MECHANISMS",
    "DiscreteGaussianMechanism",
    "DiscreteLaplaceMechanism",
    "ExponentialMechanism",
    "GaussianMechanism",
    "LaplaceMechanism",
    "Mechanism",
    "RandomizedResponse",
    "register_mechanism",
]

#: Grid width relative to the sensitivity share of one coordinate: rounding costs < 2**-10.
_GRID_BITS = 10
_EXACT = 2**52


class Mechanism(ABC):
    """A randomized map with a DP guarantee. Call it on a float, a numpy array or a tensor."""

    name: ClassVar[str]

    @abstractmethod
    def __call__(self, value: Any) -> Any:
        """Return a privatized copy of ``value`` (same type and shape)."""

    @property
    @abstractmethod
    def guarantee(self) -> tuple[float, float]:
        """``(epsilon, delta)`` of one call."""


MECHANISMS: dict[str, type[Mechanism]] = {}


def register_mechanism(cls: type[Mechanism]) -> type[Mechanism]:
    """Class decorator adding a mechanism to :data:`MECHANISMS` (refuses duplicate names)."""
    if cls.name in MECHANISMS:
        raise ValueError(f"a mechanism named {cls.name!r} is already registered")
    MECHANISMS[cls.name] = cls
    return cls


def _positive(name: str, x: float, hint: str = "") -> float:
    if not (isinstance(x, int | float) and math.isfinite(x) and x > 0):
        raise ValueError(f"{name} must be a positive number, got {x!r}{hint}")
    return float(x)


def _to_numpy(value: Any) -> tuple[npt.NDArray[Any], Any]:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy(), value
    if isinstance(value, np.ndarray):
        return value, value
    if isinstance(value, int | float | np.number):
        return np.asarray(value), value
    if isinstance(value, list | tuple):
        arr = np.asarray(value)
        return arr, arr
    raise TypeError(
        f"a mechanism takes a number, numpy array or tensor, got {type(value).__name__}"
    )


def _like(out: npt.NDArray[Any], template: Any, *, integer: bool = False) -> Any:
    if isinstance(template, torch.Tensor):
        dtype = template.dtype if (template.is_floating_point() or integer) else torch.float64
        return torch.from_numpy(np.array(out, copy=True)).reshape(out.shape).to(dtype)
    if isinstance(template, np.ndarray):
        return out
    return int(out) if integer else float(out)


def _snap(x: npt.NDArray[Any], g: float) -> npt.NDArray[np.int64]:
    """``x / g`` rounded half to even, exactly (integers never pass through a float)."""
    x = np.asarray(x)
    m, e = math.frexp(g)
    if x.dtype.kind in "iub" and m == 0.5:
        return _snap_int(x.astype(np.int64), e - 1)
    units = np.rint(np.asarray(x, dtype=np.float64) / g)
    if not np.isfinite(units).all():
        raise ValueError("a mechanism cannot release NaN or infinite values")
    if units.size and np.abs(units).max() >= _EXACT:
        raise ValueError(
            "the value is too large relative to its sensitivity for an exact release on a grid; "
            "clip or rescale it first"
        )
    return units.astype(np.int64)


def _snap_int(x: npt.NDArray[np.int64], p: int) -> npt.NDArray[np.int64]:
    """``x / 2**p`` rounded half to even, in integer arithmetic."""
    if x.size and float(np.max(np.abs(x.astype(np.float64)))) >= 2.0 ** (51 + p):
        raise ValueError(
            "the value is too large relative to its sensitivity for an exact release on a grid; "
            "clip or rescale it first"
        )
    if p <= 0:
        return x << np.int64(-p)
    if p > 62:  # a grid wider than int64's range: Python integers (round: half to even)
        out = [round(Fraction(int(v), 1 << p)) for v in x.ravel().tolist()]
        return np.asarray(out, dtype=np.int64).reshape(x.shape)
    q = x >> np.int64(p)
    r = x & np.int64((1 << p) - 1)
    half = np.int64(1 << (p - 1))
    return q + ((r > half) | ((r == half) & ((q & 1) == 1))).astype(np.int64)


def _pow2_below(x: float) -> float:
    return math.ldexp(1.0, math.frexp(x)[1] - 1)


@register_mechanism
class LaplaceMechanism(Mechanism):
    """ε-DP release of a real value or vector with L1 sensitivity ``sensitivity``.

    Output = ``g · (round(x/g) + K)``, ``K`` discrete Laplace with scale ``(Δ/g + n)/ε``
    (``n`` coordinates, each moved at most ``g/2`` by the rounding). ``g`` is the largest
    power of two below ``Δ / (n·2**10)`` unless given.

    Example:
        >>> m = LaplaceMechanism(epsilon=0.5, sensitivity=2.0)
        >>> m.guarantee, round(m.scale(1), 3)
        ((0.5, 0.0), 4.004)
    """

    name = "laplace"

    def __init__(self, *, epsilon: float, sensitivity: float, granularity: float | None = None,
                 source: RandomSource | None = None) -> None:  # fmt: skip
        self.epsilon = _positive("epsilon", epsilon, "; typical values are 0.1-10")
        self.sensitivity = _positive("sensitivity", sensitivity)
        self._g = granularity
        self.source = source

    def granularity(self, n: int) -> float:
        """The grid width used for a release of ``n`` coordinates."""
        if self._g is not None:
            return self._g
        return _pow2_below(self.sensitivity / (max(n, 1) << _GRID_BITS))

    def scale(self, n: int) -> float:
        """The noise scale (in the value's units) of a release of ``n`` coordinates."""
        g = self.granularity(n)
        return (self.sensitivity / g + max(n, 1)) / self.epsilon * g

    def check(self, n: int) -> None:
        """Raise ``ValueError`` unless a release of ``n`` coordinates can be sampled (it
        depends on ε, the sensitivity and ``n`` only)."""
        g = self.granularity(n)
        if not (math.isfinite(g) and g > 0):
            raise ValueError(f"sensitivity {self.sensitivity} gives no usable grid")
        check_laplace_scale(self.scale(n) / g)

    @property
    def guarantee(self) -> tuple[float, float]:
        return (self.epsilon, 0.0)

    def __call__(self, value: Any) -> Any:
        x, template = _to_numpy(value)
        n = int(x.size)
        g = self.granularity(n)
        k = discrete_laplace(self.scale(n) / g, x.shape, self.source)
        return _like((_snap(x, g) + k).astype(np.float64) * g, template)

    def __repr__(self) -> str:
        return f"LaplaceMechanism(epsilon={self.epsilon}, sensitivity={self.sensitivity})"


@register_mechanism
class GaussianMechanism(Mechanism):
    """(ε, δ)-DP release with L2 sensitivity ``sensitivity``; give ``sigma`` or ``epsilon`` + ``delta``.

    Output = ``g · (round(x/g) + Z)``, ``Z`` discrete Gaussian with σ/g, calibrated for the
    L2 sensitivity ``Δ + g·√n`` of the rounded value (ρ-zCDP with ρ = Δ'²/2σ², converted to
    (ε, δ) by the tight zCDP conversion).

    Example:
        >>> m = GaussianMechanism(epsilon=1.0, delta=1e-5, sensitivity=1.0)
        >>> eps, delta = m.guarantee
        >>> eps <= 1.0, delta
        (True, 1e-05)
    """

    name = "gaussian"

    def __init__(self, *, sensitivity: float, epsilon: float | None = None,
                 delta: float | None = None, sigma: float | None = None,
                 granularity: float | None = None,
                 source: RandomSource | None = None) -> None:  # fmt: skip
        self.sensitivity = _positive("sensitivity", sensitivity)
        if delta is None or not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}; typical values are 1e-5-1e-9")
        self.delta = float(delta)
        if sigma is None:
            if epsilon is None:
                raise ValueError("give sigma, or epsilon and delta")
            self.epsilon = _positive("epsilon", epsilon)
            # Calibrate for the sensitivity with a 2**-10 margin for the grid rounding.
            self.sigma = gaussian_sigma(self.epsilon, self.delta, self.sensitivity * (1 + 2**-9))
        else:
            self.sigma = _positive("sigma", sigma)
            self.epsilon = gaussian_epsilon(self.sigma, self.sensitivity * (1 + 2**-9), self.delta)
        self._g = granularity
        self.source = source

    def granularity(self, n: int) -> float:
        if self._g is not None:
            return self._g
        return _pow2_below(self.sensitivity / (math.sqrt(max(n, 1)) * (1 << _GRID_BITS)))

    @property
    def guarantee(self) -> tuple[float, float]:
        return (self.epsilon, self.delta)

    def check(self, n: int) -> None:
        """Raise ``ValueError`` unless a release of ``n`` coordinates can be sampled."""
        g = self.granularity(n)
        if not (math.isfinite(g) and g > 0):
            raise ValueError(f"sensitivity {self.sensitivity} gives no usable grid")
        check_gaussian_sigma(self.sigma / g)

    def __call__(self, value: Any) -> Any:
        x, template = _to_numpy(value)
        n = int(x.size)
        g = self.granularity(n)
        if self._g is not None and g * math.sqrt(max(n, 1)) > self.sensitivity * 2**-9:
            raise ValueError(f"granularity {g} is too coarse for {n} coordinates; leave it unset")
        z = discrete_gaussian(self.sigma / g, x.shape, self.source)
        return _like((_snap(x, g) + z).astype(np.float64) * g, template)

    def __repr__(self) -> str:
        return (
            f"GaussianMechanism(sigma={self.sigma:.4g}, sensitivity={self.sensitivity}, "
            f"epsilon={self.epsilon:.4g}, delta={self.delta})"
        )


def _integer_input(x: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    if x.dtype.kind in "iub":
        return x.astype(np.int64)
    if x.dtype.kind == "f" and np.all(np.equal(np.mod(x, 1), 0)):
        return x.astype(np.int64)
    raise TypeError("discrete mechanisms release integers; use LaplaceMechanism for real values")


@register_mechanism
class DiscreteLaplaceMechanism(Mechanism):
    """ε-DP release of integers with integer L1 sensitivity: ``x + K``, K discrete Laplace(Δ/ε).

    Example:
        >>> out = DiscreteLaplaceMechanism(epsilon=1.0, sensitivity=1)(np.full(10_000, 5))
        >>> out.dtype, 4.5 < float(out.mean()) < 5.5
        (dtype('int64'), True)
    """

    name = "discrete_laplace"

    def __init__(self, *, epsilon: float, sensitivity: int = 1,
                 source: RandomSource | None = None) -> None:  # fmt: skip
        self.epsilon = _positive("epsilon", epsilon)
        if not (isinstance(sensitivity, int) and sensitivity >= 1):
            raise ValueError(f"sensitivity must be a positive integer, got {sensitivity!r}")
        self.sensitivity = sensitivity
        self.source = source

    @property
    def guarantee(self) -> tuple[float, float]:
        return (self.epsilon, 0.0)

    def __call__(self, value: Any) -> Any:
        x, template = _to_numpy(value)
        k = discrete_laplace(self.sensitivity / self.epsilon, x.shape, self.source)
        return _like(_integer_input(x) + k, template, integer=True)

    def __repr__(self) -> str:
        return f"DiscreteLaplaceMechanism(epsilon={self.epsilon}, sensitivity={self.sensitivity})"


@register_mechanism
class DiscreteGaussianMechanism(Mechanism):
    """(ε, δ)-DP release of integers: ``x + Z``, Z discrete Gaussian; give ``sigma`` or ``epsilon``.

    Example:
        >>> m = DiscreteGaussianMechanism(sigma=4.0, sensitivity=1, delta=1e-5)
        >>> round(m.guarantee[0], 2)
        1.01
    """

    name = "discrete_gaussian"

    def __init__(self, *, delta: float, sensitivity: float = 1, epsilon: float | None = None,
                 sigma: float | None = None, source: RandomSource | None = None) -> None:  # fmt: skip
        self.sensitivity = _positive("sensitivity", sensitivity)
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.delta = float(delta)
        if sigma is None:
            if epsilon is None:
                raise ValueError("give sigma, or epsilon and delta")
            self.sigma = gaussian_sigma(_positive("epsilon", epsilon), delta, self.sensitivity)
        else:
            self.sigma = _positive("sigma", sigma)
        self.epsilon = gaussian_epsilon(self.sigma, self.sensitivity, self.delta)
        self.source = source

    @property
    def guarantee(self) -> tuple[float, float]:
        return (self.epsilon, self.delta)

    def __call__(self, value: Any) -> Any:
        x, template = _to_numpy(value)
        z = discrete_gaussian(self.sigma, x.shape, self.source)
        return _like(_integer_input(x) + z, template, integer=True)

    def __repr__(self) -> str:
        return f"DiscreteGaussianMechanism(sigma={self.sigma:.4g}, sensitivity={self.sensitivity})"


@register_mechanism
class ExponentialMechanism(Mechanism):
    """ε-DP choice of an index: P(i) ∝ exp(ε·u_i / 2Δ) (``exp(ε·u_i/Δ)`` if ``monotonic``).

    The output is an index, so no float output can leak. The probabilities are computed in
    float64 (relative error about 2**-52) and sampled by inversion with 62 CSPRNG bits.

    Example:
        >>> m = ExponentialMechanism(epsilon=50.0, sensitivity=1.0)
        >>> m.select([0.0, 10.0, 1.0])
        1
    """

    name = "exponential"

    def __init__(self, *, epsilon: float, sensitivity: float, monotonic: bool = False,
                 source: RandomSource | None = None) -> None:  # fmt: skip
        self.epsilon = _positive("epsilon", epsilon)
        self.sensitivity = _positive("sensitivity", sensitivity)
        self.monotonic = monotonic
        self.source = source

    @property
    def guarantee(self) -> tuple[float, float]:
        return (self.epsilon, 0.0)

    def probabilities(self, utilities: Any) -> npt.NDArray[np.float64]:
        u, _ = _to_numpy(utilities)
        u = np.asarray(u, dtype=np.float64).reshape(-1)
        if u.size == 0 or not np.isfinite(u).all():
            raise ValueError("utilities must be a non-empty list of finite numbers")
        factor = self.epsilon / (self.sensitivity * (1 if self.monotonic else 2))
        logits = factor * (u - u.max())
        p = np.exp(logits)
        return p / p.sum()  # type: ignore[no-any-return]

    def select(self, utilities: Any) -> int:
        """Index of the chosen candidate."""
        cdf = np.cumsum(self.probabilities(utilities))
        r = int(uniform_below(np.array([1 << 62], dtype=np.int64) - 1, self.source)[0])
        idx = int(np.searchsorted(cdf, r / float((1 << 62) - 1), side="right"))
        return min(idx, cdf.size - 1)

    def __call__(self, value: Any) -> Any:
        return self.select(value)

    def __repr__(self) -> str:
        return f"ExponentialMechanism(epsilon={self.epsilon}, sensitivity={self.sensitivity})"


@register_mechanism
class RandomizedResponse(Mechanism):
    """ε-DP local release of categories ``0..k-1``: keep the true one with probability
    ``e^ε/(e^ε+k-1)``, else report one of the others uniformly.

    ``e^-ε`` is rounded *up* to a rational, so the keep probability is never above the stated
    one and the guarantee is exact. :meth:`estimate_counts` debiases aggregated reports.

    Example:
        >>> import torch
        >>> rr = RandomizedResponse(epsilon=2.0, k=2)
        >>> out = rr(torch.ones(20_000, dtype=torch.long))
        >>> 0.84 < float(out.float().mean()) < 0.91   # e^2/(e^2+1) = 0.881
        True
    """

    name = "randomized_response"

    def __init__(self, *, epsilon: float, k: int = 2, source: RandomSource | None = None) -> None:
        self.epsilon = _positive("epsilon", epsilon)
        if not (isinstance(k, int) and k >= 2):
            raise ValueError(f"k (the number of categories) must be an integer >= 2, got {k!r}")
        self.k = k
        self.source = source
        r = Fraction(math.exp(-self.epsilon)).limit_denominator(1 << 30)
        if r < Fraction(math.exp(-self.epsilon)):
            r += Fraction(1, r.denominator * (1 << 30))
        self._r = r  # >= e^-ε

    @property
    def keep_probability(self) -> float:
        return float(1 / (1 + (self.k - 1) * self._r))

    @property
    def guarantee(self) -> tuple[float, float]:
        return (self.epsilon, 0.0)

    def __call__(self, value: Any) -> Any:
        x, template = _to_numpy(value)
        xi = _integer_input(x).reshape(-1)
        if xi.size and (xi.min() < 0 or xi.max() >= self.k):
            raise ValueError(f"randomized response takes categories 0..{self.k - 1}")
        num, den = self._r.denominator, self._r.denominator + (self.k - 1) * self._r.numerator
        keep = _bernoulli(np.full(xi.size, num, np.int64), np.full(xi.size, den, np.int64),
                          self.source or RandomSource())  # fmt: skip
        other = uniform_below(np.full(xi.size, self.k - 1, dtype=np.int64), self.source)
        other = other + (other >= xi)  # uniform over the k-1 other categories
        out = np.where(keep, xi, other).reshape(x.shape)
        return _like(out, template, integer=True)

    def estimate_counts(self, reports: Any) -> npt.NDArray[np.float64]:
        """Unbiased estimate of the true category counts from randomized reports."""
        r, _ = _to_numpy(reports)
        counts = np.bincount(_integer_input(r).reshape(-1), minlength=self.k).astype(np.float64)
        n, p = counts.sum(), self.keep_probability
        q = (1 - p) / (self.k - 1)
        return (counts - n * q) / (p - q)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"RandomizedResponse(epsilon={self.epsilon}, k={self.k})"
