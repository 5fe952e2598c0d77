"""Rules for unary functions: sign, magnitude, powers, roots, exponentials, rounding.

Each computes its result's interval from the operand's (monotone pieces, evaluated at the
bounds, widened by the implementation's error in ulps) and, for aggregates, a Lipschitz
constant on that interval plus a jump per position (1 for ``floor``, ``10**-d`` for
``round(decimals=d)``).

Example:
    >>> import torch
    >>> from veil.dp.bounds import Call, Rowwise, Tracked
    >>> x = torch.zeros(10)
    >>> t = Tracked(Rowwise.for_asset(1, x, [(0.0, 0.4)], 1), (10,), torch.float32)
    >>> round_(Call((t,), {}, (10,), torch.float32)).value.hi.item()          # always 0
    0.0
    >>> round_(Call((t,), {"decimals": 2}, (10,), torch.float32)).value.hi.item() > 0.4
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from veil.dp import intervals as iv
from veil.dp.bounds import (
    Bound,
    Call,
    Tracked,
    mul_up,
    register_rule,
    up,
)
from veil.dp.intervals import INF, Interval
from veil.dp.rules.elementwise import (
    Compute,
    elementwise,
    magnitude,
    min_abs,
    one,
    public_interval,
    public_number,
    unary,
)

__all__ = ["pow_", "round_"]


@register_rule("neg")
def neg(call: Call) -> Bound | None:
    """``-input``."""
    return unary(call, lambda v: iv.neg(v[0]), one)


@register_rule("abs")
def abs_(call: Call) -> Bound | None:
    """``|input|``."""
    return unary(call, lambda v: iv.abs_(v[0]), one)


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

    return elementwise(call, [a["input"]], compute, one, ct=call.dtype)


@register_rule("square")
def square(call: Call) -> Bound | None:
    """``input²``."""

    def compute(v: list[Interval]) -> Interval:
        m = iv.abs_(v[0])
        return iv.mul(m, m)

    return unary(call, compute, lambda v: ([mul_up(2, magnitude(v[0]))], 0.0), ulps=2)


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

    return unary(call, compute, lip, ulps=4)


@register_rule("exp")
def exp(call: Call) -> Bound | None:
    """``e^input`` (16 ulps; overflow gives an infinite bound)."""

    def lip(v: list[Interval]) -> tuple[list[float], float]:
        hi = float(np.max(v[0].floats().hi)) if v[0].lo.size else 0.0
        return [up(math.exp(hi)) if hi < 709 else INF], 0.0

    return unary(call, _float_fn(np.exp), lip, ulps=16)


@register_rule("sigmoid")
def sigmoid(call: Call) -> Bound | None:
    """``1 / (1 + e^-input)`` (16 ulps; 1/4-Lipschitz)."""
    return unary(
        call, _float_fn(lambda x: 1.0 / (1.0 + np.exp(-x))), lambda v: ([0.25], 0.0), ulps=16
    )


@register_rule("tanh")
def tanh(call: Call) -> Bound | None:
    """``tanh(input)`` (16 ulps; 1-Lipschitz)."""
    return unary(call, _float_fn(np.tanh), one, ulps=16)


def _step(f: Callable[[Any], Any]) -> Callable[[Call], Bound | None]:
    def rule(call: Call) -> Bound | None:
        def compute(v: list[Interval]) -> Interval:
            x = v[0]
            return x if x.exact else Interval(f(x.lo), f(x.hi), x.nan)

        def lip(v: list[Interval]) -> tuple[list[float], float]:
            return [1.0], (0.0 if v[0].exact else 1.0)

        return unary(call, compute, lip)

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
        if magnitude(x) * (10.0**d) > float(torch.finfo(ct).max) / 4:  # x·10**d may overflow
            return Interval(np.full(x.lo.shape, -INF), np.full(x.hi.shape, INF), x.nan)
        slack = 8 * iv.eps(ct)
        lo = x.lo - h / 2 - slack * (np.abs(x.lo) + h)
        hi = x.hi + h / 2 + slack * (np.abs(x.hi) + h)
        return Interval(iv.down(lo), iv.up(hi), x.nan)

    def lip(v: list[Interval]) -> tuple[list[float], float]:
        return [1.0], up(h + mul_up(16, iv.eps(ct), up(magnitude(v[0]) + h)))

    return elementwise(call, [a["input"]], compute, lip, ct=ct, ulps=1)


@register_rule("pow")
def pow_(call: Call) -> Bound | None:
    """``input ** p`` for a public number ``p`` (16 ulps for floats; integers exactly)."""
    a = call.bind(("input", "exponent"))
    if a is None or "exponent" not in a or not isinstance(a["input"], Tracked):
        return None
    p = a["exponent"]
    if not public_number(p) or not math.isfinite(p):
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
                return [mul_up(abs(p), up(float(np.power(magnitude(x), p - 1))))], 0.0
            low = min_abs(x)
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
        return unary(Call((a["input"],), {}, call.shape, ct), lambda v: v[0], one)
    big = float(torch.finfo(ct).max)
    repl = {"nan": a.get("nan", 0.0), "posinf": a.get("posinf"), "neginf": a.get("neginf")}
    repl["posinf"] = big if repl["posinf"] is None else repl["posinf"]
    repl["neginf"] = -big if repl["neginf"] is None else repl["neginf"]
    if not all(public_number(v) for v in repl.values()):
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
