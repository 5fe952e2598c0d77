"""Elementwise rules: arithmetic, comparisons, clamp and unary functions, under broadcasting.

Every rule here goes through :func:`elementwise`, which decides how the sensitivity travels:

* **row mode** — every private operand is :class:`~veil.dp.bounds.Rowwise`, keeps its row
  dimension at dim 0 of the result and is not broadcast along it. The result is row-wise:
  its rows' intervals come from the operands' (public operands varying by row contribute
  their hull over rows), and the number of changing rows is the operands' ``k`` (their
  sum, unless their rows are aligned).
* **aggregate mode** — otherwise. Each private operand is seen as an aggregate, broadcast:
  a value copied ``m`` times contributes ``m`` times its L1 change and ``√m`` times its L2
  change. The op's Lipschitz constants on the operands' intervals, plus a per-position jump
  (rounding, ``floor``...), bound the change; so does the result's interval width
  (whichever is smaller).

The rules using it live in :mod:`~veil.dp.rules.arithmetic` and
:mod:`~veil.dp.rules.functions`.

Example:
    >>> import torch
    >>> from veil.dp import intervals as iv
    >>> from veil.dp.bounds import Aggregate, Call, Tracked
    >>> s = Tracked(Aggregate(1, 1.0, 1.0, iv.Interval.of(0, 100)), (), torch.int64)
    >>> call = Call((s, torch.zeros(1000, dtype=torch.int64)), {}, (1000,), torch.int64)
    >>> out = elementwise(call, call.args, lambda v: iv.add(v[0], v[1]),
    ...                   lambda v: ([1.0, 1.0], 0.0), ct=torch.int64)
    >>> out.l1, round(out.l2, 6)       # a count copied 1000 times
    (1000.0, 31.622777)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from veil.dp import intervals as iv
from veil.dp.bounds import (
    Aggregate,
    Bound,
    Call,
    Rowwise,
    Tracked,
    add_up,
    mul_up,
    norm2_up,
    sqrt_up,
    sum_up,
    up,
)
from veil.dp.intervals import INF, Interval

__all__ = [
    "LIMIT",
    "elementwise",
    "magnitude",
    "min_abs",
    "one",
    "public_interval",
    "public_number",
    "range_norms",
    "unary",
]

#: Results with more positions than this get one interval for all (their hull): sound, and
#: bounded memory.
LIMIT = 1 << 20

Compute = Callable[[list[Interval]], Interval]
#: ``ivs -> (Lipschitz constant per operand, jump per position)``, or None (no such bound).
Lipschitz = Callable[[list[Interval]], "tuple[list[float], float] | None"]


def dtype_of(v: Any) -> torch.dtype:
    if isinstance(v, Tracked):
        return v.dtype
    if isinstance(v, torch.Tensor):
        return v.dtype
    if isinstance(v, bool):
        return torch.bool
    if isinstance(v, int):
        return torch.int64
    if isinstance(v, float):
        return torch.float64
    raise TypeError(f"no rule for a {type(v).__name__} operand")


def _as_tensor(v: Any) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        if v.is_complex() or v.device.type != "cpu":
            raise TypeError("complex or non-CPU operand")
        return v.detach()
    return torch.tensor(v, dtype=dtype_of(v))


def public_interval(v: Any, ct: torch.dtype) -> Interval:
    """A public operand as the op uses it in dtype ``ct`` (integers wrap as torch's cast does;
    floats: every value a rounding to ``ct`` or its compute type can give)."""
    t = _as_tensor(v)
    if not ct.is_floating_point:
        return Interval.point(t.to(ct))
    return iv.cast(Interval.point(t), t.dtype, ct)[0]


def _finish(res: Interval, dtype: torch.dtype, ulps: float) -> tuple[Interval, bool]:
    """The exact-math enclosure ``res`` as values of the result ``dtype`` (widened by the
    op's implementation error, rounded outward; integers that may leave the range wrap)."""
    if dtype.is_floating_point:
        return iv.round_out(iv.widen(res.floats(), ulps, dtype), dtype), False
    if not res.exact:
        raise TypeError("an integer result needs integer bounds")
    return iv.fit(res, dtype)


def range_norms(value: Interval, shape: tuple[int, ...]) -> tuple[float, float]:
    """L1 / L2 of the widest change a value inside ``value`` allows (any two values)."""
    if value.nan:
        return INF, INF
    n = math.prod(shape)
    if n == 0:
        return 0.0, 0.0
    if value.lo.size == 1 and value.hi.size == 1:
        one = float(np.max(value.width()))
        return mul_up(n, one), mul_up(sqrt_up(n), one)
    w = value.broadcast(shape).width()
    return sum_up(w), norm2_up(w)


def _row_interval(o: Any, shape: tuple[int, ...], ct: torch.dtype) -> tuple[Interval, str]:
    if isinstance(o, Tracked):
        assert isinstance(o.bound, Rowwise)
        return iv.cast(o.bound.value, o.dtype, ct)
    p = public_interval(o, ct)
    if p.lo.ndim == len(shape):  # varies by row: the hull over rows
        lo, hi = p.ints() if p.exact else (p.lo, p.hi)
        if p.lo.shape[0] == 0:
            raise ValueError("empty operand")
        p = Interval(np.min(lo, 0), np.max(hi, 0), p.nan)
    return p, "exact"


def _full_interval(o: Any, ct: torch.dtype, big: bool) -> tuple[Interval, str, Aggregate | None]:
    if isinstance(o, Tracked):
        b = o.bound
        agg = b.as_aggregate(o.shape) if isinstance(b, Rowwise) else b
        val, kind = iv.cast(agg.value, o.dtype, ct)
        return (val.hull() if big else val), kind, agg
    p = public_interval(o, ct)
    return (p.hull() if big else p), "exact", None


def elementwise(call: Call, operands: Sequence[Any], compute: Compute, lip: Lipschitz | None = None,
                *, ct: torch.dtype, ulps: float = 0.0) -> Bound | None:  # fmt: skip
    """The bound of an elementwise op on ``operands`` (see the module docstring).

    Args:
        call: the call (its result shape and dtype).
        operands: the op's operands, private ones as :class:`Tracked`.
        compute: operand intervals (cast to ``ct``) -> an enclosure of the exact results.
        lip: Lipschitz constants and jump, for aggregate mode (``None``: the range only).
        ct: the dtype the op computes in (operands are cast to it first).
        ulps: the op's error relative to the exact result, in ulps of the result dtype.
    """
    shape = call.shape
    tracked = [o for o in operands if isinstance(o, Tracked)]
    if not tracked:
        return None
    source = tracked[0].bound.source
    row = len(shape) >= 1 and all(
        isinstance(t.bound, Rowwise) and len(t.shape) == len(shape) and t.shape[0] == shape[0]
        for t in tracked
    )
    with np.errstate(all="ignore"):
        if row:
            ivs = [_row_interval(o, shape, ct)[0] for o in operands]
            res, _ = _finish(compute(ivs), call.dtype, ulps)
            rws = [t.bound for t in tracked if isinstance(t.bound, Rowwise)]
            first = rws[0]
            if all(first.aligned(r) for r in rws[1:]):
                key, k = first.rows, max(r.k for r in rws)
            else:
                key, k = None, sum(r.k for r in rws)
            return Rowwise(source, key, k, res)
        n = math.prod(shape)
        big = n > LIMIT
        parts = [_full_interval(o, ct, big) for o in operands]
        ivs = [p[0] for p in parts]
        res, wrapped = _finish(compute(ivs), call.dtype, ulps)
        l1, l2 = range_norms(res, shape)
        c1, c2 = _changed_norms(res, tracked, n)
        l1, l2 = min(l1, c1), min(l2, c2)
        if lip is not None and not wrapped and not res.nan:
            if not any(p[1] == "range" or p[0].nan for p in parts):
                got = lip(ivs)
                if got is not None:
                    a1, a2 = _lipschitz_norms(got, parts, operands, res, call.dtype, ct, ulps, n)
                    l1, l2 = min(l1, a1), min(l2, a2)
    return Aggregate(source, l1, l2, res)


def _changed_norms(res: Interval, tracked: list[Tracked], n: int) -> tuple[float, float]:
    """Few positions can change when the private operands are row-wise: each changed entry
    of an operand, copied ``m`` times, changes ``m`` positions, each by its range at most."""
    if res.nan or n == 0:
        return INF, INF
    changed = 0
    for t in tracked:
        copies = n // t.numel if t.numel else 0
        b = t.bound
        if isinstance(b, Rowwise) and t.shape:
            changed += copies * min(b.k, t.shape[0]) * (t.numel // t.shape[0])
        else:
            changed += copies * t.numel
    if changed >= n:
        return INF, INF
    w = float(np.max(res.width())) if res.lo.size else 0.0
    return mul_up(changed, w), mul_up(sqrt_up(changed), w)


def _lipschitz_norms(got: tuple[list[float], float], parts: list[tuple[Interval, str, Aggregate | None]],
                     operands: Sequence[Any], res: Interval, dtype: torch.dtype, ct: torch.dtype,
                     ulps: float, n: int) -> tuple[float, float]:  # fmt: skip
    ls, jump = got
    if dtype.is_floating_point:  # the result's own rounding, on both sides
        m = float(np.max(res.magnitude())) if res.lo.size else 0.0
        jump = up(jump + mul_up(2, up(mul_up(max(ulps, 1.0), iv.eps(dtype), m) + iv.tiny(dtype))))
    l1 = l2 = 0.0
    for o, (val, kind, agg), lc in zip(operands, parts, ls, strict=True):
        if agg is None or lc == 0:
            continue
        assert isinstance(o, Tracked)
        if kind == "round":  # an operand rounded into ct: its difference moves by 2 roundings
            m = float(np.max(val.magnitude())) if val.lo.size else 0.0
            jump = up(jump + mul_up(lc, 2, up(mul_up(iv.eps(ct), m) + iv.tiny(ct))))
        copies = n // o.numel if o.numel else 0
        l1 = add_up(l1, mul_up(lc, copies, agg.l1))
        l2 = add_up(l2, mul_up(lc, sqrt_up(copies), agg.l2))
    return add_up(l1, mul_up(jump, n)), add_up(l2, mul_up(jump, sqrt_up(n)))


def magnitude(a: Interval) -> float:
    return float(np.max(a.magnitude())) if a.lo.size else 0.0


def min_abs(a: Interval) -> float:
    f = a.floats()
    if f.lo.size == 0:
        return INF
    low = np.where(f.contains_zero(), 0.0, np.minimum(np.abs(f.lo), np.abs(f.hi)))
    return float(np.min(low))


def public_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def unary(call: Call, compute: Compute, lip: Lipschitz | None, *, ulps: float = 0.0,
           keyword: tuple[str, ...] = ()) -> Bound | None:  # fmt: skip
    """An op of one private operand (``input``, plus ``keyword`` arguments) computed in
    the result dtype."""
    a = call.bind(("input",), keyword)
    if a is None or not isinstance(a["input"], Tracked):
        return None
    return elementwise(call, [a["input"]], compute, lip, ct=call.dtype, ulps=ulps)


def one(ivs: list[Interval]) -> tuple[list[float], float]:
    """1-Lipschitz, no jump."""
    return [1.0], 0.0
