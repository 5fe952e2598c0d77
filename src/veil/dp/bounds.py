"""What a node knows about how much one data subject can change a value: the bound kinds,
the rule registry that derives them op by op, and their JSON form for the node's store.

Neighbouring datasets differ in *one data subject's rows* (at most ``k`` rows of an asset,
replaced by any rows inside the declared bounds; the number of rows is public, as every
pointer's shape is). Every bound carries a certified :class:`~veil.dp.intervals.Interval`
of the values the tensor can hold on *any* such dataset, and one of two sensitivity forms:

* :class:`Rowwise`: at most ``k`` slices along dim 0 ("rows") change when one subject is
  replaced, and every entry of a row lies in the per-row-position interval. So each changed
  row moves by at most the interval's width, position by position.
* :class:`Aggregate`: the L1 / L2 norm of the change is at most ``l1`` / ``l2``.

Anything else is :class:`Unbounded` and cannot be released.

Example:
    >>> import torch
    >>> x = torch.rand(100, 2)
    >>> b = Rowwise.for_asset(7, x, [(0.0, 1.0), (0.0, 10.0)], k=1)
    >>> agg = b.as_aggregate(tuple(x.shape))     # releasing the table itself
    >>> round(agg.l1, 6), agg.source
    (11.0, 7)
    >>> bound_from_json(bound_to_json(agg)).l1 == agg.l1
    True
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from veil.dp.intervals import INF, Array, Interval, int_range, pyints

__all__ = [
    "RULES",
    "UNBOUNDED",
    "Aggregate",
    "Bound",
    "Call",
    "Rowwise",
    "Tracked",
    "Unbounded",
    "add_up",
    "bound_from_json",
    "bound_to_json",
    "register_rule",
]


@dataclass(frozen=True, slots=True)
class Unbounded:
    """A value derived from private data whose sensitivity veil cannot bound."""

    reason: str = "derived through an op without a sensitivity rule"


UNBOUNDED = Unbounded()

#: Which asset rows a Rowwise value's rows come from, for aligning two values row by row:
#: ``("ap", start, step, n)`` (row ``i`` from asset row ``start + i*step``), ``("h", digest)``
#: (an explicit list, by its hash), or ``None`` (unknown: never aligned with anything).
RowKey = tuple[Any, ...] | None

_UNKNOWN = Interval(np.asarray(-INF), np.asarray(INF), True)


# ---------------------------------------------------------------- upward-rounded sensitivity arithmetic
def up(x: float) -> float:
    return math.nextafter(x, INF) if math.isfinite(x) else (INF if x > 0 or math.isnan(x) else x)


def sum_up(a: Array) -> float:
    """An upper bound on the exact sum of a non-negative array (float64 or Python integers)."""
    a = np.asarray(a)
    if a.size == 0:
        return 0.0
    if a.dtype == object:
        return _int_up(sum(a.ravel().tolist()))
    s = float(np.sum(a, dtype=np.float64))
    if not math.isfinite(s):
        return INF
    if s < 2**53 and bool(np.all(a == np.floor(a))):
        return s  # integers below 2**53 add up exactly
    g = a.size * 2.0**-53
    return up(up(s * up(1 + up(2 * g / (1 - g))))) if g < 0.25 else INF


def add_up(a: float, b: float) -> float:
    """An upper bound on ``a + b`` (exact when the float sum is)."""
    s = a + b
    if not math.isfinite(s):
        return INF if not math.isnan(s) else INF
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    return s if err <= 0 else math.nextafter(s, INF)


def mul_up(*xs: float) -> float:
    out = 1.0
    for x in xs:
        if x == 0:
            return 0.0
        p = out * x
        exact = float(out).is_integer() and float(x).is_integer() and abs(p) < 2**53
        out = p if exact else up(p)
    return out


def sqrt_up(x: float) -> float:
    return up(math.sqrt(x)) if math.isfinite(x) else INF


def norm2_up(w: Array) -> float:
    """An upper bound on the L2 norm of a non-negative array."""
    w = np.asarray(w)
    if w.dtype != object and w.size and bool(np.all(np.isfinite(w))) and float(np.max(w)) < 2**26:
        if bool(np.all(w == np.floor(w))):
            w = pyints(w.astype(np.int64))  # small integers: exactly
    if w.dtype == object:
        s = sum(v * v for v in w.ravel().tolist())
        r = math.isqrt(s)
        return _int_up(r if r * r == s else r + 1)
    with np.errstate(over="ignore"):
        return sqrt_up(sum_up(np.nextafter(w * w, INF)))


def _int_up(v: int) -> float:
    f = float(v) if v < 2**1023 else INF
    return f if f >= v else math.nextafter(f, INF)


# ---------------------------------------------------------------- bound kinds
@dataclass(frozen=True, slots=True, eq=False)
class Rowwise:
    """At most ``k`` rows (dim 0) change when one subject of asset ``source`` is replaced;
    every entry lies in ``value`` (one interval per row position, broadcastable to
    ``shape[1:]``). ``rows`` says which asset rows the rows come from (:data:`RowKey`)."""

    source: int
    rows: RowKey
    k: int
    value: Interval

    @staticmethod
    def for_asset(source: int, value: torch.Tensor, bounds: list[tuple[float, float]] | None,
                  k: int) -> Rowwise:  # fmt: skip
        """The bound of a dataset asset: its declared per-column bounds (last dim), or its
        dtype's whole range (with NaN for floats) when none were declared."""
        rest = tuple(value.shape[1:])
        n = int(value.shape[0])
        dtype = value.dtype
        if not bounds:
            iv = Interval.full(dtype)
        else:
            lo = [float(b[0]) for b in bounds]
            hi = [float(b[1]) for b in bounds]
            if dtype.is_floating_point:
                iv = Interval(np.asarray(lo, np.float64), np.asarray(hi, np.float64))
            else:  # integers: the integers inside the declared bounds, inside the dtype
                dlo, dhi = int_range(dtype)
                ilo = [
                    dlo if v == -INF else (dhi if v == INF else max(dlo, min(dhi, math.ceil(v))))
                    for v in lo
                ]
                ihi = [
                    dhi if v == INF else (dlo if v == -INF else min(dhi, max(dlo, math.floor(v))))
                    for v in hi
                ]
                iv = Interval(np.asarray(ilo, np.int64), np.asarray(ihi, np.int64))
            if len(bounds) == 1:
                iv = Interval(iv.lo[0], iv.hi[0], iv.nan)
        iv = iv.broadcast(rest)
        return Rowwise(
            source, ("ap", 0, 1, n), k, Interval(np.array(iv.lo), np.array(iv.hi), iv.nan)
        )

    def aligned(self, other: Rowwise) -> bool:
        """Row ``i`` of both comes from the same asset rows."""
        return self.source == other.source and self.rows is not None and self.rows == other.rows

    def as_aggregate(self, shape: tuple[int, ...]) -> Aggregate:
        """The same value seen as an aggregate: ``min(k, n)`` rows change, each entry by at
        most its interval's width."""
        n = shape[0] if shape else 1
        kk = min(self.k, n)
        w = self.value.broadcast(tuple(shape[1:])).width()
        if self.value.nan:
            l1 = l2 = INF
        else:
            l1 = mul_up(kk, sum_up(w))
            l2 = mul_up(sqrt_up(kk), norm2_up(w))
        lo, hi = np.expand_dims(self.value.lo, 0), np.expand_dims(self.value.hi, 0)
        return Aggregate(self.source, l1, l2, Interval(lo, hi, self.value.nan))

    def release(self, rest: tuple[int, ...]) -> Aggregate:
        """Sensitivity of releasing the row-wise tensor itself (rows of shape ``rest``)."""
        return self.as_aggregate((self.k, *rest))


@dataclass(frozen=True, slots=True, eq=False)
class Aggregate:
    """A value whose L1 / L2 change, when one subject's rows are replaced, is at most l1 / l2,
    with every entry in ``value`` (broadcastable to the value's shape). When ``value.nan``
    is set, the norms do not hold (NaN on one side): only the interval does."""

    source: int
    l1: float
    l2: float
    value: Interval = field(default=_UNKNOWN)

    def scaled(self, c: float) -> Aggregate:
        return Aggregate(self.source, mul_up(self.l1, abs(c)), mul_up(self.l2, abs(c)), self.value)


Bound = Rowwise | Aggregate | Unbounded


# ---------------------------------------------------------------- rules
@dataclass(frozen=True, slots=True)
class Tracked:
    """A private operand as rules see it: its bound, shape and dtype (never its values)."""

    bound: Rowwise | Aggregate
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, slots=True)
class Call:
    """One op call as a rule sees it: private operands replaced by :class:`Tracked`, public
    ones as given, and the result's public shape and dtype."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    shape: tuple[int, ...]
    dtype: torch.dtype

    def bind(
        self, positional: tuple[str, ...], keyword: tuple[str, ...] = ()
    ) -> dict[str, Any] | None:
        """Arguments by parameter name (``None``: an argument the rule does not know, so it
        must not guess: the result is unbounded)."""
        if len(self.args) > len(positional):
            return None
        out = dict(zip(positional, self.args, strict=False))
        for k, v in self.kwargs.items():
            if k in out or (k not in positional and k not in keyword):
                return None
            out[k] = v
        return out


#: A rule maps a call to the result's bound (``None``: no proven bound).
Rule = Callable[[Call], "Bound | None"]

#: Sensitivity rules by the name an op's facts give (``OpFacts.dp``).
RULES: dict[str, Rule] = {}


def register_rule(name: str) -> Callable[[Rule], Rule]:
    """Decorator adding a rule to :data:`RULES` under ``name`` (refuses duplicates)."""

    def add(fn: Rule) -> Rule:
        old = RULES.get(name)
        # the same function again (its module imported twice, as doctests may) replaces itself
        if old is not None and (old.__module__, old.__qualname__) != (
            fn.__module__,
            fn.__qualname__,
        ):
            raise ValueError(f"a sensitivity rule named {name!r} is already registered")
        RULES[name] = fn
        return fn

    return add


def row_key_of(rows: np.ndarray) -> RowKey:  # type: ignore[type-arg]
    """The :data:`RowKey` of an explicit list of asset rows."""
    r = np.asarray(rows, dtype=np.int64).ravel()
    if r.size >= 2:
        steps = np.diff(r)
        if bool((steps == steps[0]).all()):
            return ("ap", int(r[0]), int(steps[0]), int(r.size))
    elif r.size == 1:
        return ("ap", int(r[0]), 1, 1)
    return ("h", hashlib.sha256(r.tobytes()).hexdigest())


# ---------------------------------------------------------------- JSON form (for the node's store)
def _arr_to_json(a: Array) -> dict[str, Any]:
    a = np.asarray(a)
    ints = a.dtype.kind in "iuO"
    flat = a.ravel()
    conv: Callable[[Any], Any] = int if ints else (lambda v: float(v).hex())
    if flat.size and bool((flat == flat[0]).all()):
        return {"shape": list(a.shape), "fill": conv(flat[0]), "int": ints}
    return {"shape": list(a.shape), "data": [conv(v) for v in flat.tolist()], "int": ints}


def _arr_from_json(d: dict[str, Any]) -> Array:
    shape = tuple(int(s) for s in d["shape"])
    conv: Callable[[Any], Any] = int if d["int"] else float.fromhex
    dtype = np.int64 if d["int"] else np.float64
    if "fill" in d:
        return np.full(shape, conv(d["fill"]), dtype=dtype)
    return np.asarray([conv(v) for v in d["data"]], dtype=dtype).reshape(shape)


def _iv_to_json(iv: Interval) -> dict[str, Any]:
    lo, hi = iv.ints() if iv.exact else (iv.lo, iv.hi)
    return {"lo": _arr_to_json(lo), "hi": _arr_to_json(hi), "nan": iv.nan}


def _iv_from_json(d: dict[str, Any]) -> Interval:
    return Interval(_arr_from_json(d["lo"]), _arr_from_json(d["hi"]), bool(d["nan"]))


def bound_to_json(b: Rowwise | Aggregate) -> dict[str, Any]:
    """A JSON-able form of a bound (floats as exact hex strings)."""
    if isinstance(b, Rowwise):
        return {"kind": "rowwise", "source": b.source, "rows": list(b.rows) if b.rows else None,
                "k": b.k, "value": _iv_to_json(b.value)}  # fmt: skip
    return {"kind": "aggregate", "source": b.source, "l1": float(b.l1).hex(),
            "l2": float(b.l2).hex(), "value": _iv_to_json(b.value)}  # fmt: skip


def bound_from_json(d: dict[str, Any]) -> Rowwise | Aggregate:
    """The bound :func:`bound_to_json` wrote (``ValueError``/``KeyError`` if malformed)."""
    if d["kind"] == "rowwise":
        rows = tuple(d["rows"]) if d["rows"] else None
        return Rowwise(int(d["source"]), rows, int(d["k"]), _iv_from_json(d["value"]))
    if d["kind"] == "aggregate":
        return Aggregate(int(d["source"]), float.fromhex(d["l1"]), float.fromhex(d["l2"]),
                         _iv_from_json(d["value"]))  # fmt: skip
    raise ValueError(f"unknown bound kind {d['kind']!r}")
