"""Arithmetic rules: ``+ - * /``, floor division, reciprocals, comparisons, clamps.

Each op names its operands (``input``, ``other``, ``alpha``, ``rounding_mode``...) and refuses
any other; either operand may be private, and broadcasting is counted by
:func:`~veil.dp.rules.elementwise.elementwise`.

Example:
    >>> import torch
    >>> from veil.dp.bounds import Aggregate, Call, Tracked
    >>> from veil.dp.intervals import Interval
    >>> s = Tracked(Aggregate(1, 1.0, 1.0, Interval.of(0, 100)), (), torch.int64)
    >>> add(Call((s, torch.zeros(1000, dtype=torch.int64)), {}, (1000,), torch.int64)).l1
    1000.0
    >>> round(div(Call((s, 7), {"rounding_mode": "floor"}, (), torch.int64)).l1, 6)  # 1/7 + 1
    1.142857
    >>> div(Call((s, 7), {"rounding_mode": "round"}, (), torch.int64)) is None   # unknown mode
    True
"""

from __future__ import annotations

import math
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
    mul_up,
    register_rule,
    up,
)
from veil.dp.intervals import INF, Interval
from veil.dp.rules.elementwise import (
    elementwise,
    magnitude,
    min_abs,
    public_interval,
    public_number,
    unary,
)

__all__ = ["add", "clamp", "compare", "div", "mul", "sub"]


def _alpha_term(b: Interval, alpha: Any, ct: torch.dtype) -> Interval:
    if alpha == 1:
        return b
    a = public_interval(alpha, ct)
    prod = iv.mul(b, a)
    return iv.round_out(prod, ct) if ct.is_floating_point else prod


def _alpha(args: dict[str, Any], ct: torch.dtype) -> Any:
    alpha = args.get("alpha", 1)
    if not public_number(alpha) or not math.isfinite(alpha):
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
            jump = mul_up(2, up(mul_up(iv.eps(ct), abs(alpha), magnitude(scaled)) + iv.tiny(ct)))
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
        return [magnitude(ivs[1]), magnitude(ivs[0])], 0.0

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
        low = min_abs(ivs[1])
        if low == 0:
            return None
        jump = 0.0 if mode is None else (1.0 if ivs[0].exact and ivs[1].exact else 3.0)
        return [up(1 / low), up(magnitude(ivs[0]) / up(low * low))], jump

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
        low = min_abs(v[0])
        return ([up(1 / up(low * low))], 0.0) if low > 0 else None

    return unary(call, compute, lip, ulps=4)


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
