"""Exact noise samplers driven by a CSPRNG: uniform integers, Bernoulli(exp(-γ)), discrete Laplace and discrete Gaussian.

The algorithms are those of Canonne, Kamath and Steinke, *The Discrete Gaussian for
Differential Privacy* (NeurIPS 2020), vectorized: every loop runs over the still-undecided
elements of a numpy array, so a million samples take a few dozen array passes, never a
Python loop per element. All arithmetic is on integers (int64, or Python ints for the rare
element whose numbers do not fit), so the samples follow the stated distribution exactly,
given uniform random bits. The bits come from the operating system's CSPRNG
(``os.urandom``) unless a :class:`SeededSource` is passed (for tests only).

Example:
    >>> import numpy as np
    >>> z = discrete_gaussian(sigma=3.0, size=100_000)
    >>> z.dtype, abs(float(z.mean())) < 0.1, abs(float(z.std()) - 3.0) < 0.1
    (dtype('int64'), True, True)
"""

from __future__ import annotations

import math
import os
import secrets
from fractions import Fraction

import numpy as np
import numpy.typing as npt

__all__ = [
    "RandomSource",
    "SeededSource",
    "bernoulli_exp",
    "check_gaussian_sigma",
    "check_laplace_scale",
    "discrete_gaussian",
    "discrete_laplace",
    "uniform_below",
]

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_SAFE = 1 << 62  # every int64 quantity below stays under this
_MAX_DEN = 1 << 55  # so that den * k < 2**62 for the counter k < 128
_MAX_K = 127


class RandomSource:
    """Uniform random 64-bit words from the operating system's CSPRNG (``os.urandom``)."""

    def words(self, n: int) -> npt.NDArray[np.uint64]:
        return np.frombuffer(os.urandom(8 * n), dtype=np.uint64)

    def randbelow(self, m: int) -> int:
        return secrets.randbelow(m)

    def __repr__(self) -> str:
        return "RandomSource(os.urandom)"


class SeededSource(RandomSource):
    """A reproducible source for tests. Never use it for a real release: its seed is its key.

    Example:
        >>> a = discrete_laplace(2.0, size=5, source=SeededSource(1))
        >>> b = discrete_laplace(2.0, size=5, source=SeededSource(1))
        >>> bool((a == b).all())
        True
    """

    def __init__(self, seed: int) -> None:
        self._rng = np.random.Generator(np.random.PCG64(seed))

    def words(self, n: int) -> npt.NDArray[np.uint64]:
        return self._rng.integers(0, 2**64 - 1, size=n, dtype=np.uint64, endpoint=True)

    def randbelow(self, m: int) -> int:
        bits = m.bit_length() + 64
        nw = (bits + 63) // 64
        while True:
            r = 0
            for w in self.words(nw):
                r = (r << 64) | int(w)
            lim = ((1 << (64 * nw)) // m) * m
            if r < lim:
                return r % m

    def __repr__(self) -> str:
        return "SeededSource(for tests only)"


_DEFAULT = RandomSource()


def _src(source: RandomSource | None) -> RandomSource:
    return _DEFAULT if source is None else source


def uniform_below(m: IntArray, source: RandomSource | None = None) -> IntArray:
    """One uniform integer in ``[0, m[i])`` for each ``m[i]`` (``1 <= m < 2**62``), by rejection.

    Example:
        >>> u = uniform_below(np.full(10_000, 3, dtype=np.int64))
        >>> sorted(set(u.tolist()))
        [0, 1, 2]
    """
    src = _src(source)
    m = np.asarray(m, dtype=np.int64)
    if m.size and (m.min() < 1 or m.max() >= _SAFE):
        raise ValueError("uniform_below needs 1 <= m < 2**62")
    out = np.empty(m.shape, dtype=np.int64)
    todo = np.arange(m.size)
    flat_m = m.reshape(-1)
    flat = out.reshape(-1)
    while todo.size:
        mm = flat_m[todo]
        r = (src.words(todo.size) >> np.uint64(2)).astype(np.int64)  # 62 uniform bits
        lim = (_SAFE // mm) * mm
        ok = r < lim
        flat[todo[ok]] = r[ok] % mm[ok]
        todo = todo[~ok]
    return out


def _bernoulli(num: IntArray, den: IntArray, src: RandomSource) -> BoolArray:
    """Bernoulli(num/den) for integer arrays with ``0 <= num <= den < 2**62``."""
    if num.size == 0:
        return np.zeros(0, dtype=bool)
    return uniform_below(den, src) < num


def bernoulli_exp(num: IntArray, den: IntArray, source: RandomSource | None = None) -> BoolArray:
    """Bernoulli(exp(-num/den)) for each element, exactly (CKS 2020, Algorithm 1).

    ``num >= 0`` and ``1 <= den < 2**55`` (so the inner Bernoulli(γ/k) draws fit in 62 bits).

    Example:
        >>> one = np.ones(100_000, dtype=np.int64)
        >>> p = float(bernoulli_exp(one, one).mean())   # exp(-1) = 0.3679
        >>> 0.36 < p < 0.376
        True
    """
    src = _src(source)
    num = np.asarray(num, dtype=np.int64).reshape(-1)
    den = np.asarray(den, dtype=np.int64).reshape(-1)
    if num.size and (num.min() < 0 or den.min() < 1 or den.max() >= _MAX_DEN):
        raise ValueError("bernoulli_exp needs num >= 0 and 1 <= den < 2**55")
    result = np.ones(num.size, dtype=bool)
    q = num // den
    r = num - q * den
    # exp(-γ) = exp(-1)^floor(γ) * exp(-frac(γ)): floor(γ) independent Bernoulli(exp(-1)) must all succeed.
    alive = np.flatnonzero(q > 0)
    while alive.size:
        ok = _bernoulli_exp_frac(np.ones(alive.size, np.int64), np.ones(alive.size, np.int64), src)
        result[alive[~ok]] = False
        alive = alive[ok]
        q[alive] -= 1
        alive = alive[q[alive] > 0]
    idx = np.flatnonzero(result)
    result[idx] = _bernoulli_exp_frac(r[idx], den[idx], src)
    return result


def _bernoulli_exp_frac(num: IntArray, den: IntArray, src: RandomSource) -> BoolArray:
    """Bernoulli(exp(-γ)) for γ = num/den in [0, 1]: count k while Bernoulli(γ/k) succeeds;
    the answer is whether that count is odd."""
    n = num.size
    k = np.ones(n, dtype=np.int64)
    out = np.zeros(n, dtype=bool)
    active = np.arange(n)
    while active.size:
        a = _bernoulli(num[active], den[active] * k[active], src)
        done = active[~a]
        out[done] = (k[done] % 2) == 1
        active = active[a]
        k[active] += 1
        if active.size and k[active[0]] > _MAX_K:  # P < 1/127!: finish in Python ints
            for i in active:
                kk = int(k[i])
                while src.randbelow(int(den[i]) * kk) < int(num[i]):
                    kk += 1
                out[i] = kk % 2 == 1
            break
    return out


def _scale_fraction(scale: float, bits: int = 20) -> tuple[int, int]:
    """``t/s >= scale`` with relative error below ``2**-bits`` (rounded up: more noise, never less)."""
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale}")
    exp = max(0, bits - math.frexp(scale)[1])
    if exp >= 62:
        raise ValueError(f"scale {scale} is too small for the exact sampler (min about 1e-12)")
    s = 1 << exp
    t = math.ceil(Fraction(scale) * s)
    if t >= _MAX_DEN:
        raise ValueError(f"scale {scale} is too large for the exact sampler (max about 1e16)")
    return t, s


def check_laplace_scale(scale: float) -> None:
    """Raise ``ValueError`` unless :func:`discrete_laplace` can sample with ``scale``
    (decided by ``scale`` alone, so a caller can check before it commits to a release).

    Example:
        >>> check_laplace_scale(3.0)
        >>> check_laplace_scale(1e300)
        Traceback (most recent call last):
        ...
        ValueError: scale 1e+300 is too large for the exact sampler (max about 1e16)
    """
    _scale_fraction(scale)


def check_gaussian_sigma(sigma: float) -> None:
    """Raise ``ValueError`` unless :func:`discrete_gaussian` can sample with ``sigma``.

    Example:
        >>> check_gaussian_sigma(1e9)
        Traceback (most recent call last):
        ...
        ValueError: sigma 1000000000.0 is too large for the exact sampler (max about 1e8)
    """
    t, m, d = _gaussian_params(sigma)
    if 2 * t * m * d >= _MAX_DEN:
        raise ValueError(f"sigma {sigma} is too large for the exact sampler (max about 1e8)")
    if t >= _MAX_DEN:  # pragma: no cover - implied by the line above
        raise ValueError(f"sigma {sigma} is too large for the exact sampler")


def discrete_laplace(
    scale: float, size: int | tuple[int, ...] = (), source: RandomSource | None = None
) -> IntArray:
    """Integers with P(k) ∝ exp(-|k| / scale) (CKS 2020, Algorithm 2), exactly.

    ``scale`` is rounded up to a rational with 20 significant bits.

    Example:
        >>> z = discrete_laplace(10.0, size=50_000)
        >>> abs(float(z.mean())) < 0.5, 13.0 < float(z.std()) < 15.3   # std ≈ scale·√2
        (True, True)
    """
    src = _src(source)
    t, s = _scale_fraction(scale)
    shape = (size,) if isinstance(size, int) else tuple(size)
    n = math.prod(shape)
    out = np.empty(n, dtype=np.int64)
    todo = np.arange(n)
    while todo.size:
        m = todo.size
        u = uniform_below(np.full(m, t, dtype=np.int64), src)
        d = bernoulli_exp(u, np.full(m, t, dtype=np.int64), src)
        keep = np.flatnonzero(d)
        u = u[keep]
        # V ~ Geometric(1 - exp(-1)): count Bernoulli(exp(-1)) successes until the first failure.
        v = np.zeros(keep.size, dtype=np.int64)
        active = np.arange(keep.size)
        while active.size:
            ones = np.ones(active.size, dtype=np.int64)
            a = _bernoulli_exp_frac(ones, ones, src)
            active = active[a]
            v[active] += 1
        x = u + t * v
        y = x // s
        b = (src.words(keep.size) & np.uint64(1)).astype(bool)
        ok = ~(b & (y == 0))
        vals = np.where(b, -y, y)
        accepted = todo[keep[ok]]
        out[accepted] = vals[ok]
        done = np.zeros(m, dtype=bool)
        done[keep[ok]] = True
        todo = todo[~done]
    return out.reshape(shape)


def _gaussian_params(sigma: float) -> tuple[int, int, int]:
    """``(t, m, d)`` with ``t = floor(σ)+1`` and ``σ'² = t·m/d >= σ²`` (relative error < 2**-17),
    chosen so the acceptance test's numbers stay small integers."""
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive finite number, got {sigma}")
    t = math.floor(sigma) + 1
    d = 1 << max(0, 18 - math.frexp(sigma)[1])
    m = math.ceil(Fraction(sigma) ** 2 * d / t)
    return t, m, d


def discrete_gaussian(
    sigma: float, size: int | tuple[int, ...] = (), source: RandomSource | None = None
) -> IntArray:
    """Integers with P(k) ∝ exp(-k² / 2σ²) (CKS 2020, Algorithm 3), exactly.

    σ² is rounded up by a relative ``2**-17`` at most (more noise, never less); σ < 1e8.

    Example:
        >>> z = discrete_gaussian(0.5, size=50_000)
        >>> set(z.tolist()) <= set(range(-6, 7)), 0.3 < float((z == 0).mean()) < 0.9
        (True, True)
    """
    src = _src(source)
    check_gaussian_sigma(sigma)
    t, m, d = _gaussian_params(sigma)
    shape = (size,) if isinstance(size, int) else tuple(size)
    n = math.prod(shape)
    out = np.empty(n, dtype=np.int64)
    todo = np.arange(n)
    den = 2 * t * m * d
    while todo.size:
        y = discrete_laplace(float(t), todo.size, src)
        a = d * np.abs(y) - m  # γ = (|y| - σ'²/t)² / 2σ'² = a² / (2·t·m·d)
        small = np.abs(a) < 3_000_000_000
        accept = np.zeros(todo.size, dtype=bool)
        idx = np.flatnonzero(small)
        accept[idx] = bernoulli_exp(a[idx] * a[idx], np.full(idx.size, den, np.int64), src)
        for i in np.flatnonzero(
            ~small
        ):  # |y| beyond ~1e9: astronomically rare, exact in Python ints
            accept[i] = _bernoulli_exp_exact(Fraction(int(a[i]) ** 2, den), src)
        out[todo[accept]] = y[accept]
        todo = todo[~accept]
    return out.reshape(shape)


def _bernoulli_exp_exact(gamma: Fraction, src: RandomSource) -> bool:
    """Scalar Bernoulli(exp(-γ)) with Python integers (no size limit)."""
    while gamma > 1:
        if not _bernoulli_exp_exact(Fraction(1), src):
            return False
        gamma -= 1
    k = 1
    while src.randbelow(gamma.denominator * k) < gamma.numerator:
        k += 1
    return k % 2 == 1
