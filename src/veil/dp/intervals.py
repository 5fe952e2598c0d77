"""Certified interval arithmetic for sensitivity tracking: exact integers, outward-rounded floats.

An :class:`Interval` encloses every value a tensor can hold, position by position: ``lo <= v
<= hi``, or ``v`` is NaN when ``nan`` is set. Bounds of integer tensors are integers, computed
exactly (Python integers; stored as int64, since a tensor's own range is never wider); bounds
of float tensors are float64 values rounded *outward* after every operation (``nextafter``
toward -inf for a lower bound, +inf for an upper one), so each bound holds whatever the
float64 rounding did. :func:`round_out` then widens a float64 enclosure to the values of the
tensor's own dtype (float32, float16, bfloat16), which is where torch's result lies when the
operation is correctly rounded; operations that are not (``exp``, ``pow``...) are widened by
a stated number of ulps first (:func:`widen`).

Example:
    >>> import numpy as np, torch
    >>> a = Interval.of(np.array([0.1]), np.array([0.2]))
    >>> s = round_out(add(a, a), torch.float32)
    >>> bool(s.lo[0] <= np.float32(0.1) + np.float32(0.1) <= s.hi[0])
    True
    >>> big = Interval.of(np.array([2**62], dtype=np.int64), np.array([2**62 + 1], dtype=np.int64))
    >>> fit(sub(big, Interval.point(2**62)), torch.int64)[0].hi.tolist()
    [1]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

__all__ = [
    "Interval",
    "add",
    "cast",
    "fit",
    "int_range",
    "mul",
    "neg",
    "pyints",
    "round_out",
    "sub",
    "widen",
]

Array = npt.NDArray[Any]
INF = math.inf
_EXACT_F64 = 2**53


def int_range(dtype: torch.dtype) -> tuple[int, int]:
    """The smallest and largest value of an integer (or bool) dtype."""
    if dtype == torch.bool:
        return 0, 1
    info = torch.iinfo(dtype)
    if info.max > 2**63 - 1:
        raise TypeError(f"no interval rules for {dtype} (beyond int64)")
    return int(info.min), int(info.max)


def eps(dtype: torch.dtype) -> float:
    """Spacing of ``dtype``'s floats at 1 (so one rounding moves ``v`` by at most ``eps·|v|/2``)."""
    return float(torch.finfo(dtype).eps)


def tiny(dtype: torch.dtype) -> float:
    """The smallest normal float of ``dtype``: a bound on any absolute rounding error near 0."""
    return float(torch.finfo(dtype).tiny)


def down(a: Array) -> Array:
    return np.nextafter(a, -INF)


def up(a: Array) -> Array:
    return np.nextafter(a, INF)


def _f64(a: Any) -> Array:
    return np.asarray(a, dtype=np.float64)


@dataclass(frozen=True, slots=True, eq=False)
class Interval:
    """Per-position bounds ``lo <= v <= hi`` (broadcastable arrays), or NaN when ``nan``.

    ``lo``/``hi`` are int64 arrays for integer values (exact) and float64 arrays for float
    values (infinite bounds allowed: the value may be that infinity).
    """

    lo: Array
    hi: Array
    nan: bool = False

    def __post_init__(self) -> None:  # numpy gives scalars for 0-d results: arrays again
        for name in ("lo", "hi"):
            v = getattr(self, name)
            if not isinstance(v, np.ndarray):
                object.__setattr__(
                    self, name, np.asarray(v, dtype=object if isinstance(v, int) else None)
                )

    @staticmethod
    def of(lo: Any, hi: Any, nan: bool = False) -> Interval:
        lo, hi = np.asarray(lo), np.asarray(hi)
        if lo.dtype.kind in "iubO" and hi.dtype.kind in "iubO" and not nan:
            return Interval(_int64(lo), _int64(hi))
        return Interval(_f64(lo), _f64(hi), nan)

    @staticmethod
    def point(value: Any) -> Interval:
        """A public number or tensor, exactly (bools and integers as integers)."""
        if isinstance(value, torch.Tensor):
            t = value.detach()
            if t.is_floating_point():
                a = t.to(torch.float64).cpu().numpy()
                return Interval(a, a, bool(np.isnan(a).any()))
            if t.is_complex():
                raise TypeError("complex values have no interval")
            a = t.to(torch.int64).cpu().numpy()
            return Interval(a, a)
        if isinstance(value, bool | int):
            a = np.asarray(int(value), dtype=np.int64)  # OverflowError beyond int64: no rule
            return Interval(a, a)
        if isinstance(value, float):
            a = np.asarray(value, dtype=np.float64)
            return Interval(a, a, math.isnan(value))
        raise TypeError(f"no interval for a {type(value).__name__}")

    @staticmethod
    def full(dtype: torch.dtype) -> Interval:
        """Every value ``dtype`` can hold (NaN included for floats)."""
        if dtype.is_floating_point:
            return Interval(_f64(-INF), _f64(INF), True)
        lo, hi = int_range(dtype)
        return Interval(np.asarray(lo, np.int64), np.asarray(hi, np.int64))

    @property
    def exact(self) -> bool:
        """Integer bounds (computed exactly)."""
        return self.lo.dtype.kind in "iuO"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(np.broadcast_shapes(self.lo.shape, self.hi.shape))

    def ints(self) -> tuple[Array, Array]:
        """The bounds as object arrays of Python integers (for exact arithmetic)."""
        return pyints(self.lo), pyints(self.hi)

    def floats(self) -> Interval:
        """The same interval with float64 bounds (rounded outward from integers)."""
        if not self.exact:
            return self
        lo, hi = self.lo.astype(np.float64), self.hi.astype(np.float64)
        big_lo = np.abs(pyints(self.lo)) > _EXACT_F64
        big_hi = np.abs(pyints(self.hi)) > _EXACT_F64
        return Interval(np.where(big_lo, down(lo), lo), np.where(big_hi, up(hi), hi))

    def broadcast(self, shape: tuple[int, ...]) -> Interval:
        return Interval(np.broadcast_to(self.lo, shape), np.broadcast_to(self.hi, shape), self.nan)

    def width(self) -> Array:
        """``hi - lo`` per position, rounded up (float64; exact integers where it fits)."""
        if self.exact:
            lo, hi = self.ints()
            return _float_up(hi - lo)
        with np.errstate(all="ignore"):
            w = up(self.hi - self.lo)
        return np.where(np.isnan(w), INF, w)

    def magnitude(self) -> Array:
        """``max(|lo|, |hi|)`` per position (float64, rounded up)."""
        f = self.floats()
        return np.maximum(np.abs(f.lo), np.abs(f.hi))

    def hull(self) -> Interval:
        """One interval holding every position's."""
        if self.lo.size == 0 or self.hi.size == 0:
            return self
        if self.exact:
            lo, hi = self.ints()
            return Interval(
                np.asarray(min(lo.ravel()), dtype=object), np.asarray(max(hi.ravel()), dtype=object)
            )
        return Interval(np.asarray(np.min(self.lo)), np.asarray(np.max(self.hi)), self.nan)

    def contains_zero(self) -> Array:
        return (self.lo <= 0) & (self.hi >= 0)

    def finite(self) -> bool:
        return self.exact or (
            not self.nan and bool(np.isfinite(self.lo).all() and np.isfinite(self.hi).all())
        )


_TO_INT = np.frompyfunc(int, 1, 1)


def pyints(a: Array) -> Array:
    """Python integers in an object array (numpy's own integers would wrap)."""
    if a.dtype == object:
        return np.asarray(_TO_INT(a), dtype=object)
    return np.array(a.tolist(), dtype=object).reshape(a.shape)


def _int64(a: Array) -> Array:
    return np.asarray(a, dtype=object).astype(np.int64) if a.dtype == object else a.astype(np.int64)


def _float_up(a: Array) -> Array:
    """Python integers (object array) as float64, rounded up."""
    a = pyints(np.asarray(a, dtype=object))
    f = a.astype(np.float64)
    big = np.abs(a) > _EXACT_F64
    return np.where(big, up(f), f)


def _nan_fix(lo: Array, hi: Array) -> tuple[Array, Array]:
    return np.where(np.isnan(lo), -INF, lo), np.where(np.isnan(hi), INF, hi)


# ---------------------------------------------------------------- float64 error-free steps
def _two_sum_err(a: Array, b: Array, s: Array) -> Array:
    bb = s - a
    return (a - (s - bb)) + (b - bb)


_SPLIT = 134217729.0  # 2**27 + 1


def _split(a: Array) -> tuple[Array, Array]:
    c = _SPLIT * a
    hi = c - (c - a)
    return hi, a - hi


def _two_prod_err(a: Array, b: Array, p: Array) -> Array:
    """``a*b - p`` exactly, when nothing over- or underflows (checked by the caller)."""
    ah, al = _split(a)
    bh, bl = _split(b)
    return ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _safe_for_prod(a: Array, b: Array, p: Array) -> Array:
    """Where ``a*b`` neither overflows nor underflows (a zero product counts only when a
    factor is zero: a product that underflowed to 0 is not exact)."""
    m = np.maximum(np.abs(a), np.abs(b))
    return np.isfinite(p) & (m < 2.0**995) & ((np.abs(p) > 2.0**-900) | (a == 0) | (b == 0))


def _round_sum(s: Array, err: Array, ok: Array) -> tuple[Array, Array]:
    """Lower and upper bounds of an exact sum computed as ``s`` with error ``err``."""
    lo = np.where(ok & (err >= 0), s, down(s))
    hi = np.where(ok & (err <= 0), s, up(s))
    return lo, hi


# ---------------------------------------------------------------- arithmetic
def neg(a: Interval) -> Interval:
    if a.exact:
        lo, hi = a.ints()
        return Interval(-hi, -lo)  # object arrays: fitted by the caller
    return Interval(-a.hi, -a.lo, a.nan)


def add(a: Interval, b: Interval) -> Interval:
    """``a + b``; NaN when ``inf + -inf`` is possible."""
    if a.exact and b.exact:
        (alo, ahi), (blo, bhi) = a.ints(), b.ints()
        return Interval(alo + blo, ahi + bhi)
    a, b = a.floats(), b.floats()
    with np.errstate(all="ignore"):
        s_lo, s_hi = a.lo + b.lo, a.hi + b.hi
        e_lo, e_hi = _two_sum_err(a.lo, b.lo, s_lo), _two_sum_err(a.hi, b.hi, s_hi)
        lo = _round_sum(s_lo, e_lo, np.isfinite(e_lo))[0]
        hi = _round_sum(s_hi, e_hi, np.isfinite(e_hi))[1]
    nan = (
        a.nan or b.nan or bool(np.any(((a.hi == INF) & (b.lo == -INF)) | ((a.lo == -INF) & (b.hi == INF))))
    )  # fmt: skip
    return Interval(*_nan_fix(lo, hi), nan)


def sub(a: Interval, b: Interval) -> Interval:
    return add(a, neg(b))


def mul(a: Interval, b: Interval) -> Interval:
    """``a * b``; NaN when ``0 * inf`` is possible."""
    if a.exact and b.exact:
        (alo, ahi), (blo, bhi) = a.ints(), b.ints()
        ps = np.stack(np.broadcast_arrays(alo * blo, alo * bhi, ahi * blo, ahi * bhi))
        return Interval(ps.min(0), ps.max(0))
    a, b = a.floats(), b.floats()
    los, his = [], []
    with np.errstate(all="ignore"):
        for x in (a.lo, a.hi):
            for y in (b.lo, b.hi):
                p = x * y
                p = np.where(np.isnan(p), 0.0, p)  # 0 * inf: the limit; NaN is flagged below
                err = _two_prod_err(x, y, p)
                ok = _safe_for_prod(x, y, p) & np.isfinite(err)
                lo, hi = _round_sum(p, err, ok)
                los.append(lo)
                his.append(hi)
    lo = np.min(np.stack(np.broadcast_arrays(*los)), 0)
    hi = np.max(np.stack(np.broadcast_arrays(*his)), 0)
    inf_a = np.isinf(a.lo) | np.isinf(a.hi)
    inf_b = np.isinf(b.lo) | np.isinf(b.hi)
    nan = a.nan or b.nan or bool(np.any((a.contains_zero() & inf_b) | (b.contains_zero() & inf_a)))
    return Interval(lo, hi, nan)


def scale(a: Interval, c: Any) -> Interval:
    """``a * c`` for a public number ``c``."""
    return mul(a, Interval.point(c))


def div(a: Interval, b: Interval) -> Interval:
    """``a / b`` (true division, float bounds); unbounded with NaN when ``b`` may be 0."""
    a, b = a.floats(), b.floats()
    if a.nan or b.nan or bool(np.any(b.contains_zero())):
        shape = np.broadcast_shapes(a.lo.shape, b.lo.shape)
        return Interval(np.full(shape, -INF), np.full(shape, INF), True)
    los, his = [], []
    with np.errstate(all="ignore"):
        for x in (a.lo, a.hi):
            for y in (b.lo, b.hi):
                q = x / y
                p = q * y
                err = _two_prod_err(q, y, p)
                ok = _safe_for_prod(q, y, p) & np.isfinite(err) & (p == x) & (err == 0)
                q = np.where(np.isnan(q), 0.0, q)
                los.append(np.where(ok, q, down(q)))
                his.append(np.where(ok, q, up(q)))
    lo = np.min(np.stack(np.broadcast_arrays(*los)), 0)
    hi = np.max(np.stack(np.broadcast_arrays(*his)), 0)
    nan = bool(np.any((np.isinf(a.lo) | np.isinf(a.hi)) & (np.isinf(b.lo) | np.isinf(b.hi))))
    return Interval(*_nan_fix(lo, hi), nan)


def abs_(a: Interval) -> Interval:
    if a.exact:
        lo, hi = a.ints()
        m = np.maximum(np.abs(lo), np.abs(hi))
        low = np.where((lo <= 0) & (hi >= 0), 0, np.minimum(np.abs(lo), np.abs(hi)))
        return Interval(np.asarray(low, dtype=object), np.asarray(m, dtype=object))
    m = np.maximum(np.abs(a.lo), np.abs(a.hi))
    low = np.where(a.contains_zero(), 0.0, np.minimum(np.abs(a.lo), np.abs(a.hi)))
    return Interval(low, m, a.nan)


def monotone(a: Interval, f: Any, *, increasing: bool = True) -> Interval:
    """``f`` (monotone on the interval) applied to the bounds, as float64 (widen after)."""
    a = a.floats()
    with np.errstate(all="ignore"):
        lo, hi = f(a.lo), f(a.hi)
    if not increasing:
        lo, hi = hi, lo
    return Interval(*_nan_fix(_f64(lo), _f64(hi)), a.nan)


def hull(*ivs: Interval) -> Interval:
    """The smallest interval holding each of ``ivs`` at each position."""
    if all(i.exact for i in ivs):
        los = np.stack(np.broadcast_arrays(*[i.ints()[0] for i in ivs]))
        his = np.stack(np.broadcast_arrays(*[i.ints()[1] for i in ivs]))
        return Interval(los.min(0), his.max(0))
    fs = [i.floats() for i in ivs]
    los = np.stack(np.broadcast_arrays(*[f.lo for f in fs]))
    his = np.stack(np.broadcast_arrays(*[f.hi for f in fs]))
    return Interval(los.min(0), his.max(0), any(f.nan for f in fs))


# ---------------------------------------------------------------- into a dtype
def widen(a: Interval, ulps: float, dtype: torch.dtype) -> Interval:
    """``a`` widened by ``ulps`` units of ``dtype`` relative to each bound, plus its smallest
    normal (what an implementation within ``ulps`` ulps of the exact result can return)."""
    if ulps <= 0 or a.exact:
        return a
    e, t = ulps * eps(dtype), tiny(dtype)
    with np.errstate(all="ignore"):
        lo = down(down(a.lo - up(np.abs(a.lo) * e)) - t)
        hi = up(up(a.hi + up(np.abs(a.hi) * e)) + t)
    return Interval(*_nan_fix(lo, hi), a.nan)


def round_out(a: Interval, dtype: torch.dtype) -> Interval:
    """Float bounds widened to values of the float ``dtype``: ``lo`` to the largest value
    ``<= lo``, ``hi`` to the smallest ``>= hi`` (beyond its range: the infinity)."""
    a = a.floats()
    if dtype == torch.float64:
        return a
    return Interval(_to_dtype(a.lo, dtype, -INF), _to_dtype(a.hi, dtype, INF), a.nan)


_NUMPY_FLOATS = {torch.float32: np.float32, torch.float16: np.float16}


def _to_dtype(x: Array, dtype: torch.dtype, toward: float) -> Array:
    np_dtype = _NUMPY_FLOATS.get(dtype)
    if np_dtype is not None:  # numpy rounds float64 to these correctly (to nearest, even)
        xf = np.asarray(x, dtype=np.float64)
        with np.errstate(over="ignore"):
            nt: Array = xf.astype(np_dtype)
            nback = nt.astype(np.float64)
            nbad = nback > xf if toward < 0 else nback < xf
            nt = np.where(nbad, np.nextafter(nt, np.full_like(nt, toward)), nt)
        out_np: Array = np.asarray(nt.astype(np.float64)).reshape(np.shape(x))
        return out_np
    src = torch.from_numpy(np.array(x, dtype=np.float64).reshape(np.shape(x)))
    t = src.to(dtype)
    for _ in range(3):  # one step suffices for a correctly rounded cast; torch may round twice
        back = t.to(torch.float64)
        bad = back > src if toward < 0 else back < src
        if not bool(bad.any()):
            break
        t = torch.where(bad, torch.nextafter(t, torch.full_like(t, toward)), t)
    else:  # pragma: no cover - never seen; stay sound
        return np.full(x.shape, toward)
    out: Array = t.to(torch.float64).numpy().reshape(np.shape(x))
    return out


def fit(a: Interval, dtype: torch.dtype) -> tuple[Interval, bool]:
    """Exact integer bounds as ``dtype``'s values: a position that may leave the dtype's range
    may wrap, and gets its full range. Returns the interval and whether any position may wrap."""
    lo_d, hi_d = int_range(dtype)
    lo, hi = a.ints()
    out = (lo < lo_d) | (hi > hi_d)
    wrapped = bool(np.any(out))
    lo = np.where(out, lo_d, lo)
    hi = np.where(out, hi_d, hi)
    return Interval(
        _int64(np.asarray(lo, dtype=object)), _int64(np.asarray(hi, dtype=object))
    ), wrapped


def cast(a: Interval, src: torch.dtype, dst: torch.dtype) -> tuple[Interval, str]:
    """The interval of ``x.to(dst)`` for ``x`` of dtype ``src`` inside ``a``, and how the cast
    moves a difference between two values: ``"exact"``, ``"round"`` (a float rounding),
    ``"trunc"`` (float to integer: at most 1 more) or ``"range"`` (may wrap: only the range holds).
    """
    if dst == src:
        return a, "exact"
    if dst == torch.bool:
        return _to_bool(a), "range"
    if dst.is_floating_point:
        if a.exact:
            return round_out(a.floats(), dst), "round"
        narrowing = (
            torch.finfo(dst).bits < torch.finfo(src).bits
            or dst == torch.bfloat16
            or src == torch.bfloat16
        )
        return round_out(a, dst), ("round" if narrowing else "exact")
    if a.exact:
        out, wrapped = fit(a, dst)
        return out, ("range" if wrapped else "exact")
    # float -> integer truncates toward zero; outside the range (or NaN, inf) it is undefined
    lo_d, hi_d = int_range(dst)
    ok = ~a.nan & np.isfinite(a.lo) & np.isfinite(a.hi) & (a.lo > lo_d - 1) & (a.hi < hi_d + 1)
    if not bool(np.all(ok)):
        return Interval.full(dst).broadcast(a.shape), "range"
    lo = np.trunc(np.asarray(a.lo, dtype=np.float64)).astype(np.int64)  # exact: inside int64
    hi = np.trunc(np.asarray(a.hi, dtype=np.float64)).astype(np.int64)
    return Interval(np.asarray(lo), np.asarray(hi)), "trunc"


def _to_bool(a: Interval) -> Interval:
    f = a.floats()
    never_zero = (f.lo > 0) | (f.hi < 0)  # NaN is nonzero too
    always_zero = (f.lo == 0) & (f.hi == 0) & (not a.nan)
    lo = np.where(never_zero, 1, 0)
    hi = np.where(always_zero, 0, 1)
    return Interval(lo.astype(np.int64), hi.astype(np.int64))
