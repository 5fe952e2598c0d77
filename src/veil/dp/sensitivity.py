"""Sensitivity tracking through allowlisted ops, for automatic DP releases by a node.

:func:`propagate` maps one op call and its inputs' bounds (:mod:`veil.dp.bounds`) to the
result's bound, by the op's *rule name* — the one fact ``veil.ops`` declares for it
(``OpFacts.dp``; no other table maps ops to rules). Each rule computes a certified
over-approximation from public facts only: the declared bounds, shapes, dtypes and public
operand values; never the private values (rules see private operands as
:class:`~veil.dp.bounds.Tracked`: a bound, a shape, a dtype), so an op that failed on
private values gets the same bound as one that succeeded. An op without a rule, a keyword
a rule does not know, a private value nested inside an argument, or operands of two
datasets give :data:`UNBOUNDED`, and a node refuses to release the result.

Example:
    >>> import torch
    >>> x = torch.rand(100, 2, dtype=torch.float64)
    >>> b = Rowwise.for_asset(1, x, [(0.0, 1.0), (0.0, 10.0)], k=1)
    >>> s = propagate("sum", (x, 0), {}, {id(x): b}.get, x.sum(0))
    >>> [round(v, 6) for v in (s.l1, s.l2)]   # 1 + 10, plus float64 summation error
    [11.0, 10.049876]
    >>> f = x.float()   # float32 sums of 100 terms may be off by 100·2**-23·Σ|x| per side
    >>> s32 = propagate("sum", (f, 0), {}, {id(f): b}.get, f.sum(0))
    >>> round(s32.l1, 3)
    11.026
    >>> propagate("round", (x,), {"decimals": 1}, {id(x): b}.get, x.round(decimals=1)).k
    1
    >>> propagate("", (x,), {}, {id(x): b}.get, x.cumsum(0)).reason
    'derived through an op without a sensitivity rule'
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from veil.dp import rules as _rules  # noqa: F401 - registers the rules
from veil.dp.bounds import (
    RULES,
    UNBOUNDED,
    Aggregate,
    Bound,
    Call,
    Rowwise,
    Tracked,
    Unbounded,
    bound_from_json,
    bound_to_json,
)
from veil.dp.intervals import Interval

__all__ = [
    "RULES",
    "UNBOUNDED",
    "Aggregate",
    "Bound",
    "Rowwise",
    "Unbounded",
    "bound_from_json",
    "bound_to_json",
    "propagate",
]

_NESTED = Unbounded("a private value inside an argument (a list, tuple or slice): no rule reads it")
_MIXED = Unbounded("combines data of two dataset assets; release each separately")
_FAILED = Unbounded("its op's sensitivity rule does not apply to these arguments")


class _Nested(Exception):
    pass


def _wrap(v: Any, bound_of: Callable[[int], Bound | None], top: bool, seen: list[Bound]) -> Any:
    if isinstance(v, torch.Tensor):
        b = bound_of(id(v))
        if b is None:
            return v
        if not top:
            raise _Nested
        seen.append(b)
        if isinstance(b, Unbounded):
            return v
        return Tracked(b, tuple(v.shape), v.dtype)
    if isinstance(v, list | tuple):
        out = [_wrap(e, bound_of, False, seen) for e in v]
        return tuple(out) if isinstance(v, tuple) else out
    if isinstance(v, slice):
        return slice(*(_wrap(e, bound_of, False, seen) for e in (v.start, v.stop, v.step)))
    if isinstance(v, dict):
        return {k: _wrap(e, bound_of, False, seen) for k, e in v.items()}
    return v


def propagate(rule: str, args: tuple[Any, ...], kwargs: dict[str, Any],
              bound_of: Callable[[int], Bound | None], result: Any) -> Bound | None:  # fmt: skip
    """The bound of ``result = op(*args, **kwargs)`` for an op whose rule is ``rule``, or
    ``None`` if no input is tracked.

    Args:
        rule: the op's rule name (``OpFacts.dp``; empty: no rule).
        args, kwargs: the call's arguments as the op received them.
        bound_of: ``bound_of(id(tensor))`` gives an input's bound (``None``: public).
        result: the result; only its shape and dtype are read (a meta tensor will do).
    """
    seen: list[Bound] = []
    try:
        wargs = tuple(_wrap(a, bound_of, True, seen) for a in args)
        wkwargs = {k: _wrap(v, bound_of, True, seen) for k, v in kwargs.items()}
    except _Nested:
        return _NESTED
    if not seen:
        # a private tensor only inside a container never reaches seen: look for it
        return None
    bad = next((b for b in seen if isinstance(b, Unbounded)), None)
    if bad is not None:
        return bad
    if not isinstance(result, torch.Tensor) or result.is_complex():
        return UNBOUNDED
    fn = RULES.get(rule) if rule else None
    if fn is None:
        return UNBOUNDED
    if len({b.source for b in seen if not isinstance(b, Unbounded)}) > 1:
        return _MIXED
    call = Call(wargs, wkwargs, tuple(result.shape), result.dtype)
    try:
        with np.errstate(all="ignore"):
            out = fn(call)
    except (TypeError, ValueError, IndexError, RuntimeError, OverflowError, ZeroDivisionError,
            KeyError, AttributeError):  # fmt: skip
        return _FAILED
    if out is None:
        return _FAILED
    return _checked(out, call.shape)


def _checked(b: Bound, shape: tuple[int, ...]) -> Bound:
    """A rule's answer, checked against the result's shape (and a NaN bound made infinite)."""
    if isinstance(b, Unbounded):
        return b
    v = b.value
    if not v.exact and (bool(np.isnan(v.lo).any()) or bool(np.isnan(v.hi).any())):
        v = Interval(
            np.where(np.isnan(v.lo), -math.inf, v.lo),
            np.where(np.isnan(v.hi), math.inf, v.hi),
            True,
        )
        b = (Rowwise(b.source, b.rows, b.k, v) if isinstance(b, Rowwise)
             else Aggregate(b.source, math.inf, math.inf, v))  # fmt: skip
    try:
        if isinstance(b, Rowwise):
            if not shape or b.k < 0:
                return _FAILED
            if np.broadcast_shapes(b.value.shape, shape[1:]) != tuple(shape[1:]):
                return _FAILED
            if b.rows is not None and b.rows[0] == "ap" and b.rows[3] != shape[0]:
                return Rowwise(b.source, None, b.k, b.value)
            return b
        if np.broadcast_shapes(b.value.shape, shape) != tuple(shape):
            return _FAILED
        if math.isnan(b.l1) or math.isnan(b.l2) or b.l1 < 0 or b.l2 < 0:
            return _FAILED
        if not b.value.finite() and (b.l1 < math.inf or b.l2 < math.inf):
            return Aggregate(b.source, math.inf, math.inf, b.value)  # inf or NaN: no norm holds
    except ValueError:
        return _FAILED
    return b
