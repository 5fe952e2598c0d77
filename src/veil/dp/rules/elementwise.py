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

Example:
    >>> import numpy as np, torch
    >>> from veil.dp.bounds import Aggregate, Call, Tracked
    >>> from veil.dp.intervals import Interval
    >>> s = Tracked(Aggregate(1, 1.0, 1.0, Interval.of(0, 100)), (), torch.int64)
    >>> out = add(Call((s, torch.zeros(1000, dtype=torch.int64)), {}, (1000,), torch.int64))
    >>> out.l1, round(out.l2, 6)       # the count copied 1000 times
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
    register_rule,
    sqrt_up,
    sum_up,
    up,
)
from veil.dp.intervals import INF, Interval

__all__ = ["elementwise"]

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


def _mag(a: Interval) -> float:
    return float(np.max(a.magnitude())) if a.lo.size else 0.0


def _min_abs(a: Interval) -> float:
    f = a.floats()
    if f.lo.size == 0:
        return INF
    low = np.where(f.contains_zero(), 0.0, np.minimum(np.abs(f.lo), np.abs(f.hi)))
    return float(np.min(low))


def _public_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# ================================================================ arithmetic
def _alpha_term(b: Interval, alpha: Any, ct: torch.dtype) -> Interval:
    if alpha == 1:
        return b
    a = public_interval(alpha, ct)
    prod = iv.mul(b, a)
    return iv.round_out(prod, ct) if ct.is_floating_point else prod


def _alpha(args: dict[str, Any], ct: torch.dtype) -> Any:
    alpha = args.get("alpha", 1)
    if not _public_number(alpha) or not math.isfinite(alpha):
        return None
    if not ct.is_floating_point and not isinstance(alpha, int):
        return None
    return alpha


def _additive(call: Call, sign: int, reverse: bool) -> Bound | None:
    """``input + sign·alpha·other`` (or ``other - alpha·input`` when ``reverse``)."""
    a = call.bind(("input", "other"), ("alpha",))
    if a is None or "other" not in a:
        return None
    ct = call.dtype
    alpha = _alpha(a, ct)
    if alpha is None:
        return None
    x, y = a["input"], a["other"]

    def compute(ivs: list[Interval]) -> Interval:
        p, q = ivs
        if reverse:  # other - alpha·input
            return iv.sub(q, _alpha_term(p, alpha, ct))
        t = _alpha_term(q, alpha, ct)
        return iv.add(p, t) if sign > 0 else iv.sub(p, t)

    def lip(ivs: list[Interval]) -> tuple[list[float], float]:
        jump = 0.0
        if alpha != 1 and ct.is_floating_point:  # the rounding of alpha·(the scaled operand)
            scaled = ivs[0] if reverse else ivs[1]
            jump = mul_up(2, up(mul_up(iv.eps(ct), abs(alpha), _mag(scaled)) + iv.tiny(ct)))
        return ([abs(alpha), 1.0] if reverse else [1.0, abs(alpha)]), jump

    return elementwise(call, [x, y], compute, lip, ct=ct, ulps=2)


@register_rule("add")
def add(call: Call) -> Bound | None:
    """``input + alpha·other`` (``add``, ``+``, ``__radd__``)."""
    return _additive(call, 1, False)


@register_rule("sub")
def sub(call: Call) -> Bound | None:
    """``input - alpha·other``."""
    return _additive(call, -1, False)


@register_rule("rsub")
def rsub(call: Call) -> Bound | None:
    """``other - alpha·input`` (``torch.rsub``, ``c - x``)."""
    return _additive(call, -1, True)


@register_rule("mul")
def mul(call: Call) -> Bound | None:
    """``input * other``; with two private operands, each one's change is scaled by the
    other's largest magnitude."""
    a = call.bind(("input", "other"))
    if a is None or "other" not in a:
        return None

    def lip(ivs: list[Interval]) -> tuple[list[float], float]:
        return [_mag(ivs[1]), _mag(ivs[0])], 0.0

    return elementwise(call, [a["input"], a["other"]], lambda v: iv.mul(v[0], v[1]), lip,
                       ct=call.dtype, ulps=2)  # fmt: skip


def _quotient(call: Call, num: Any, den: Any, mode: Any) -> Bound | None:
    ct = call.dtype
    if mode not in (None, "floor", "trunc"):
        return None
    if mode is None and not ct.is_floating_point:
        return None

    def compute(ivs: list[Interval]) -> Interval:
        p, q = ivs
        if mode is None:
            return iv.div(p, q)
        if p.exact and q.exact:
            return _int_divide(p, q, mode)
        r = iv.div(p, q)
        f = np.floor if mode == "floor" else np.trunc
        pf = p.floats()
        # floor division of an infinity is NaN (torch computes it through fmod)
        nan = r.nan or (mode == "floor" and bool(np.any(np.isinf(pf.lo) | np.isinf(pf.hi))))
        # torch's float floor/trunc division may differ from the exact one by 1
        return Interval(f(r.lo) - 1.0, f(r.hi) + 1.0, nan)

    def lip(ivs: list[Interval]) -> tuple[list[float], float] | None:
        low = _min_abs(ivs[1])
        if low == 0:
            return None
        jump = 0.0 if mode is None else (1.0 if ivs[0].exact and ivs[1].exact else 3.0)
        return [up(1 / low), up(_mag(ivs[0]) / up(low * low))], jump

    return elementwise(call, [num, den], compute, lip, ct=ct, ulps=4 if mode is None else 0)


def _int_divide(p: Interval, q: Interval, mode: str) -> Interval:
    plo, phi = p.ints()
    qlo, qhi = q.ints()
    if bool(np.any((qlo <= 0) & (qhi >= 0))):
        raise ZeroDivisionError("the divisor may be 0")
    f = (
        (lambda a, b: a // b)
        if mode == "floor"
        else (lambda a, b: -((-a) // b) if (a < 0) != (b < 0) else a // b)
    )
    g = np.frompyfunc(f, 2, 1)
    cs = np.stack(np.broadcast_arrays(g(plo, qlo), g(plo, qhi), g(phi, qlo), g(phi, qhi)))
    return Interval(cs.min(0), cs.max(0))


@register_rule("div")
def div(call: Call) -> Bound | None:
    """``input / other`` with ``rounding_mode`` None (true division), ``"floor"`` or
    ``"trunc"`` (a jump of 1 per position; the divisor's interval must exclude 0)."""
    a = call.bind(("input", "other"), ("rounding_mode",))
    if a is None or "other" not in a:
        return None
    return _quotient(call, a["input"], a["other"], a.get("rounding_mode"))


@register_rule("floor_divide")
def floor_divide(call: Call) -> Bound | None:
    """``input // other``."""
    a = call.bind(("input", "other"))
    if a is None or "other" not in a:
        return None
    return _quotient(call, a["input"], a["other"], "floor")


@register_rule("reciprocal")
def reciprocal(call: Call) -> Bound | None:
    """``1 / input`` (integers become floats)."""

    def compute(v: list[Interval]) -> Interval:
        return iv.div(Interval.point(1.0), v[0])

    def lip(v: list[Interval]) -> tuple[list[float], float] | None:
        low = _min_abs(v[0])
        return ([up(1 / up(low * low))], 0.0) if low > 0 else None

    return _unary(call, compute, lip, ulps=4)


@register_rule("rdiv")
def rdiv(call: Call) -> Bound | None:
    """``other / input`` (``c / x``), which torch computes as ``x.reciprocal() * c``."""
    a = call.bind(("input", "other"))
    if a is None or "other" not in a or not isinstance(a["input"], Tracked):
        return None
    x: Tracked = a["input"]
    rdt = x.dtype if x.dtype.is_floating_point else torch.get_default_dtype()
    r = reciprocal(Call((x,), {}, x.shape, rdt))
    if not isinstance(r, Rowwise | Aggregate):
        return None
    return mul(Call((Tracked(r, x.shape, rdt), a["other"]), {}, call.shape, call.dtype))


@register_rule("rfloor_divide")
def rfloor_divide(call: Call) -> Bound | None:
    """``other // input`` (``c // x``)."""
    a = call.bind(("input", "other"))
    if a is None or "other" not in a:
        return None
    return _quotient(call, a["other"], a["input"], "floor")


@register_rule("compare")
def compare(call: Call) -> Bound | None:
    """``gt``, ``lt``, ``eq``... of any operands: booleans, so in [0, 1]."""
    a = call.bind(("input", "other"))
    if a is None or "other" not in a or call.dtype != torch.bool:
        return None
    x, y = a["input"], a["other"]

    def compute(ivs: list[Interval]) -> Interval:
        s = np.broadcast_shapes(ivs[0].shape, ivs[1].shape)
        return Interval(np.zeros(s, np.int64), np.ones(s, np.int64))

    return elementwise(call, [x, y], compute, None, ct=_result_type(x, y))


def _result_type(*vs: Any) -> torch.dtype:
    metas = [
        torch.empty(v.shape, dtype=v.dtype, device="meta") if isinstance(v, Tracked) else v
        for v in vs
    ]
    return torch.result_type(*metas)  # type: ignore[arg-type]


def _clamp(call: Call, lo_v: Any, hi_v: Any, x: Any) -> Bound | None:
    if lo_v is None and hi_v is None:
        return None
    ops = [x] + [v for v in (lo_v, hi_v) if v is not None]
    has_lo, has_hi = lo_v is not None, hi_v is not None

    def compute(ivs: list[Interval]) -> Interval:
        v, rest = ivs[0], ivs[1:]
        a = rest.pop(0) if has_lo else None
        b = rest.pop(0) if has_hi else None
        nan = v.nan or (a is not None and a.nan) or (b is not None and b.nan)
        exact = all(i.exact for i in ivs)
        get = (lambda i: i.ints()) if exact else (lambda i: (i.floats().lo, i.floats().hi))
        lo, hi = get(v)
        if a is not None:
            alo, ahi = get(a)
            lo, hi = np.maximum(lo, alo), np.maximum(hi, ahi)
        if b is not None:
            blo, bhi = get(b)
            lo, hi = np.minimum(lo, blo), np.minimum(hi, bhi)
        if exact:
            return Interval(np.asarray(lo, dtype=object), np.asarray(hi, dtype=object))
        return Interval(np.where(np.isnan(lo), -INF, lo), np.where(np.isnan(hi), INF, hi), nan)

    return elementwise(call, ops, compute, lambda ivs: ([1.0] * len(ivs), 0.0), ct=call.dtype)


@register_rule("clamp")
def clamp(call: Call) -> Bound | None:
    """``clamp(input, min, max)`` (also ``clip``): public or private bounds, scalars or
    tensors; 1-Lipschitz in each."""
    a = call.bind(("input", "min", "max"))
    if a is None:
        return None
    return _clamp(call, a.get("min"), a.get("max"), a["input"])


@register_rule("clamp_min")
def clamp_min(call: Call) -> Bound | None:
    """``clamp_min(input, min)``."""
    a = call.bind(("input", "min"))
    return None if a is None or "min" not in a else _clamp(call, a["min"], None, a["input"])


@register_rule("clamp_max")
def clamp_max(call: Call) -> Bound | None:
    """``clamp_max(input, max)``."""
    a = call.bind(("input", "max"))
    return None if a is None or "max" not in a else _clamp(call, None, a["max"], a["input"])


# ================================================================ unary functions
def _unary(call: Call, compute: Compute, lip: Lipschitz | None, *, ulps: float = 0.0,
           keyword: tuple[str, ...] = ()) -> Bound | None:  # fmt: skip
    a = call.bind(("input",), keyword)
    if a is None or not isinstance(a["input"], Tracked):
        return None
    return elementwise(call, [a["input"]], compute, lip, ct=call.dtype, ulps=ulps)


def _one(ivs: list[Interval]) -> tuple[list[float], float]:
    return [1.0], 0.0


@register_rule("neg")
def neg(call: Call) -> Bound | None:
    """``-input``."""
    return _unary(call, lambda v: iv.neg(v[0]), _one)


@register_rule("abs")
def abs_(call: Call) -> Bound | None:
    """``|input|``."""
    return _unary(call, lambda v: iv.abs_(v[0]), _one)


@register_rule("relu")
def relu(call: Call) -> Bound | None:
    """``max(input, 0)`` (``F.relu`` with ``inplace=False`` only)."""
    a = call.bind(("input", "inplace"))
    if a is None or a.get("inplace", False) is not False:
        return None

    def compute(v: list[Interval]) -> Interval:
        x = v[0]
        if x.exact:
            lo, hi = x.ints()
            return Interval(np.maximum(lo, 0), np.maximum(hi, 0))
        return Interval(np.maximum(x.lo, 0.0), np.maximum(x.hi, 0.0), x.nan)

    return elementwise(call, [a["input"]], compute, _one, ct=call.dtype)


@register_rule("square")
def square(call: Call) -> Bound | None:
    """``input²``."""

    def compute(v: list[Interval]) -> Interval:
        m = iv.abs_(v[0])
        return iv.mul(m, m)

    return _unary(call, compute, lambda v: ([mul_up(2, _mag(v[0]))], 0.0), ulps=2)


def _float_fn(f: Callable[[Any], Any]) -> Compute:
    return lambda v: iv.monotone(v[0], f)


@register_rule("sqrt")
def sqrt(call: Call) -> Bound | None:
    """``√input`` (NaN below 0)."""

    def compute(v: list[Interval]) -> Interval:
        x = v[0].floats()
        nan = x.nan or bool(np.any(x.lo < 0))
        return iv.monotone(Interval(np.maximum(x.lo, 0.0), np.maximum(x.hi, 0.0), nan), np.sqrt)

    def lip(v: list[Interval]) -> tuple[list[float], float] | None:
        low = float(np.min(v[0].floats().lo)) if v[0].lo.size else INF
        return ([up(1 / (2 * math.sqrt(low)))], 0.0) if low > 0 else None

    return _unary(call, compute, lip, ulps=4)


@register_rule("exp")
def exp(call: Call) -> Bound | None:
    """``e^input`` (16 ulps; overflow gives an infinite bound)."""

    def lip(v: list[Interval]) -> tuple[list[float], float]:
        hi = float(np.max(v[0].floats().hi)) if v[0].lo.size else 0.0
        return [up(math.exp(hi)) if hi < 709 else INF], 0.0

    return _unary(call, _float_fn(np.exp), lip, ulps=16)


@register_rule("sigmoid")
def sigmoid(call: Call) -> Bound | None:
    """``1 / (1 + e^-input)`` (16 ulps; 1/4-Lipschitz)."""
    return _unary(
        call, _float_fn(lambda x: 1.0 / (1.0 + np.exp(-x))), lambda v: ([0.25], 0.0), ulps=16
    )


@register_rule("tanh")
def tanh(call: Call) -> Bound | None:
    """``tanh(input)`` (16 ulps; 1-Lipschitz)."""
    return _unary(call, _float_fn(np.tanh), _one, ulps=16)


def _step(f: Callable[[Any], Any]) -> Callable[[Call], Bound | None]:
    def rule(call: Call) -> Bound | None:
        def compute(v: list[Interval]) -> Interval:
            x = v[0]
            return x if x.exact else Interval(f(x.lo), f(x.hi), x.nan)

        def lip(v: list[Interval]) -> tuple[list[float], float]:
            return [1.0], (0.0 if v[0].exact else 1.0)

        return _unary(call, compute, lip)

    return rule


register_rule("floor")(_step(np.floor))
register_rule("ceil")(_step(np.ceil))
register_rule("trunc")(_step(np.trunc))


@register_rule("round")
def round_(call: Call) -> Bound | None:
    """``round(input, decimals=d)``: half to even at ``10**-d``; a jump of ``10**-d`` per
    position (d = 0: exact and monotone)."""
    a = call.bind(("input",), ("decimals",))
    if a is None:
        return None
    d = a.get("decimals", 0)
    if not isinstance(d, int) or isinstance(d, bool) or abs(d) > 300:
        return None
    ct = call.dtype
    if d == 0:
        return _step(np.rint)(Call((a["input"],), {}, call.shape, call.dtype))
    if not ct.is_floating_point:
        return None
    h = 10.0 ** (-d)

    def compute(v: list[Interval]) -> Interval:
        x = v[0].floats()
        if _mag(x) * (10.0**d) > float(torch.finfo(ct).max) / 4:  # x·10**d may overflow
            return Interval(np.full(x.lo.shape, -INF), np.full(x.hi.shape, INF), x.nan)
        slack = 8 * iv.eps(ct)
        lo = x.lo - h / 2 - slack * (np.abs(x.lo) + h)
        hi = x.hi + h / 2 + slack * (np.abs(x.hi) + h)
        return Interval(iv.down(lo), iv.up(hi), x.nan)

    def lip(v: list[Interval]) -> tuple[list[float], float]:
        return [1.0], up(h + mul_up(16, iv.eps(ct), up(_mag(v[0]) + h)))

    return elementwise(call, [a["input"]], compute, lip, ct=ct, ulps=1)


@register_rule("pow")
def pow_(call: Call) -> Bound | None:
    """``input ** p`` for a public number ``p`` (16 ulps for floats; integers exactly)."""
    a = call.bind(("input", "exponent"))
    if a is None or "exponent" not in a or not isinstance(a["input"], Tracked):
        return None
    p = a["exponent"]
    if not _public_number(p) or not math.isfinite(p):
        return None
    ct = call.dtype
    integral = float(p).is_integer()
    if not ct.is_floating_point and (not integral or p < 0 or p > 64):
        return None

    def compute(v: list[Interval]) -> Interval:
        x = v[0]
        if x.exact:
            e = int(p)
            lo, hi = x.ints()
            if e % 2 == 0:
                m = iv.abs_(x)
                lo, hi = m.ints()
            return Interval(np.asarray(lo, dtype=object) ** e, np.asarray(hi, dtype=object) ** e)
        return _float_pow(x.floats(), float(p), integral)

    def lip(v: list[Interval]) -> tuple[list[float], float] | None:
        x = v[0].floats()
        if p == 0:
            return [0.0], 0.0
        with np.errstate(all="ignore"):
            if p >= 1 and (integral or float(np.min(x.lo)) >= 0):
                return [mul_up(abs(p), up(float(np.power(_mag(x), p - 1))))], 0.0
            low = _min_abs(x)
            if p < 0 and low > 0:
                return [mul_up(abs(p), up(float(np.power(low, p - 1))))], 0.0
        return None

    return elementwise(call, [a["input"]], compute, lip, ct=ct, ulps=16)


@register_rule("nan_to_num")
def nan_to_num(call: Call) -> Bound | None:
    """``nan_to_num(input, nan=0, posinf=None, neginf=None)``: NaN and infinities replaced by
    public numbers (the dtype's extremes by default)."""
    a = call.bind(("input", "nan", "posinf", "neginf"))
    if a is None or not isinstance(a["input"], Tracked):
        return None
    ct = call.dtype
    if not ct.is_floating_point:
        return _unary(Call((a["input"],), {}, call.shape, ct), lambda v: v[0], _one)
    big = float(torch.finfo(ct).max)
    repl = {"nan": a.get("nan", 0.0), "posinf": a.get("posinf"), "neginf": a.get("neginf")}
    repl["posinf"] = big if repl["posinf"] is None else repl["posinf"]
    repl["neginf"] = -big if repl["neginf"] is None else repl["neginf"]
    if not all(_public_number(v) for v in repl.values()):
        return None

    def compute(v: list[Interval]) -> Interval:
        x = v[0].floats()
        parts = [Interval(np.clip(x.lo, -big, big), np.clip(x.hi, -big, big))]
        for key, when in (("nan", x.nan), ("posinf", bool(np.any(x.hi == INF))),
                          ("neginf", bool(np.any(x.lo == -INF)))):  # fmt: skip
            if when:
                parts.append(public_interval(repl[key], ct))
        return iv.hull(*parts)

    return elementwise(call, [a["input"]], compute, None, ct=ct)


def _float_pow(x: Interval, p: float, integral: bool) -> Interval:
    if p == 0:
        return Interval(np.ones(x.lo.shape), np.ones(x.hi.shape))  # NaN ** 0 == 1 too
    if not integral:  # negative bases give NaN
        nan = x.nan or bool(np.any(x.lo < 0))
        base = Interval(np.maximum(x.lo, 0.0), np.maximum(x.hi, 0.0), nan)
        return iv.monotone(base, lambda t: np.power(t, p), increasing=p > 0)
    if p > 0 and int(p) % 2 == 0:
        return iv.monotone(iv.abs_(x), lambda t: np.power(t, p))
    if p > 0:
        return iv.monotone(x, lambda t: np.power(t, p))
    if bool(np.any(x.contains_zero())):  # 1 / 0
        return Interval(np.full(x.lo.shape, -INF), np.full(x.hi.shape, INF), x.nan)
    with np.errstate(all="ignore"):
        c = np.stack([np.power(x.lo, p), np.power(x.hi, p)])
    return Interval(c.min(0), c.max(0), x.nan)  # monotone on a sign-constant interval
