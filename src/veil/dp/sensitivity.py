"""Sensitivity tracking through allowlisted ops, for automatic DP releases by a node.

Neighbouring datasets differ in *one data subject's rows* (at most ``k`` rows, replaced;
the number of rows is public, as every pointer's shape is). Two kinds of values are tracked:

* :class:`Rowwise`: a tensor whose row ``i`` depends only on row ``i`` of one dataset asset,
  with every entry inside per-position bounds ``[lo, hi]``. Replacing a subject changes at
  most ``k`` rows, each entry by at most ``hi - lo``.
* :class:`Aggregate`: a tensor whose L1 / L2 change under that replacement is at most
  ``l1`` / ``l2``.

:func:`propagate` maps an op and its inputs' bounds to the result's bound, for the ops that
have a sound rule: column and row slices, elementwise arithmetic with public values or
row-aligned bounded tensors, clamp/clip, monotone functions, comparisons, linear maps with
public weights, reshapes keeping the rows, sums / means / counts, histograms. Anything else
returns :data:`UNBOUNDED`, and a node refuses to release it.

Example:
    >>> import torch
    >>> x = torch.rand(100, 2)
    >>> b = Rowwise.for_asset(1, x, [(0.0, 1.0), (0.0, 10.0)], k=1)
    >>> s = propagate("Tensor.sum", (x, 0), {}, {id(x): b}.get, x.sum(0))
    >>> (round(s.l1, 3), round(s.l2, 3))   # 1 + 10, plus float32 summation slack
    (11.0, 10.05)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["UNBOUNDED", "Aggregate", "Bound", "Rowwise", "Unbounded", "propagate"]


@dataclass(frozen=True, slots=True)
class Unbounded:
    """A value derived from private data whose sensitivity veil cannot bound."""

    reason: str = "derived through an op without a sensitivity rule"


UNBOUNDED = Unbounded()


@dataclass(frozen=True, slots=True, eq=False)
class Rowwise:
    """Row ``i`` of the value comes from row ``start + i*step`` of asset ``source``; entries
    lie in ``[lo, hi]`` (float64 tensors broadcastable to ``value.shape[1:]``)."""

    source: int
    start: int
    step: int
    n: int
    lo: torch.Tensor
    hi: torch.Tensor
    k: int

    @staticmethod
    def for_asset(
        source: int, value: torch.Tensor, bounds: list[tuple[float, float]], k: int
    ) -> Rowwise:
        rest = tuple(value.shape[1:])
        if bounds:
            lo = torch.tensor([b[0] for b in bounds], dtype=torch.float64)
            hi = torch.tensor([b[1] for b in bounds], dtype=torch.float64)
            if len(bounds) == 1:
                lo, hi = lo[0], hi[0]
        else:
            lo, hi = (
                torch.tensor(-math.inf, dtype=torch.float64),
                torch.tensor(math.inf, dtype=torch.float64),
            )
        return Rowwise(source, 0, 1, int(value.shape[0]) if value.dim() else 1,
                       lo.expand(rest) if lo.dim() == 0 else lo, hi.expand(rest) if hi.dim() == 0 else hi, k)  # fmt: skip

    def same_rows(self, other: Rowwise) -> bool:
        return (self.source, self.start, self.step, self.n) == (
            other.source,
            other.start,
            other.step,
            other.n,
        )

    def width(self, rest: tuple[int, ...]) -> torch.Tensor:
        return (self.hi - self.lo).expand(rest) if rest else (self.hi - self.lo).reshape(())

    def with_bounds(self, lo: torch.Tensor, hi: torch.Tensor) -> Rowwise:
        return Rowwise(self.source, self.start, self.step, self.n, lo, hi, self.k)

    def release(self, rest: tuple[int, ...]) -> Aggregate:
        """Sensitivity of releasing the rowwise tensor itself: k rows change."""
        w = self.width(rest)
        return Aggregate(
            self.source, self.k * float(w.sum()), math.sqrt(self.k * float(w.pow(2).sum()))
        )


@dataclass(frozen=True, slots=True)
class Aggregate:
    """A value whose L1 / L2 change, when one subject's rows are replaced, is at most l1 / l2."""

    source: int
    l1: float
    l2: float

    def scaled(self, c: float) -> Aggregate:
        return Aggregate(self.source, self.l1 * abs(c), self.l2 * abs(c))


Bound = Rowwise | Aggregate | Unbounded


def _finite(b: Bound) -> Bound:
    if isinstance(b, Aggregate) and not (math.isfinite(b.l1) and math.isfinite(b.l2)):
        return Unbounded("the values are not bounded: clamp them first, e.g. x.clamp(lo, hi)")
    return b


_ADD = {"add", "__add__", "__radd__"}
_SUB = {"sub", "subtract", "__sub__"}
_RSUB = {"__rsub__", "rsub"}
_MUL = {"mul", "multiply", "__mul__", "__rmul__"}
_DIV = {"div", "divide", "true_divide", "__truediv__"}
_CMP = {"gt", "lt", "ge", "le", "eq", "ne", "greater", "less", "greater_equal", "less_equal",
        "not_equal", "__gt__", "__lt__", "__ge__", "__le__", "__eq__", "__ne__"}  # fmt: skip
_MONOTONE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "exp": torch.exp,
             "floor": torch.floor, "ceil": torch.ceil, "round": torch.round, "trunc": torch.trunc,
             "F.relu": torch.relu, "F.sigmoid": torch.sigmoid, "F.tanh": torch.tanh}  # fmt: skip
_SAME = {"clone", "detach", "contiguous", "cpu", "positive", "__pos__"}
#: float32 / float64 conversions round each value by at most half an ulp of float32: widen the
#: bounds by that much. Other casts (half, integers, ``to``) can wrap or overflow: no rule.
_FLOAT_CASTS = {"float", "double"}


def _name(op: str) -> str:
    return op if op.startswith("F.") else op.rsplit(".", 1)[-1]


def propagate(op: str, args: tuple[Any, ...], kwargs: dict[str, Any],
              bound_of: Callable[[int], Bound | None], result: Any) -> Bound | None:  # fmt: skip
    """The bound of ``result = op(*args, **kwargs)``, or ``None`` if no input is tracked.

    ``bound_of(id(tensor))`` gives an input's bound (``None`` for a public tensor).
    """
    tensors = [a for a in [*args, *kwargs.values()] if isinstance(a, torch.Tensor)]
    bounds = [bound_of(id(t)) for t in tensors]
    if all(b is None for b in bounds):
        return None
    if any(isinstance(b, Unbounded) for b in bounds) or not isinstance(result, torch.Tensor):
        return next((b for b in bounds if isinstance(b, Unbounded)), UNBOUNDED)
    try:
        out = _rule(_name(op), args, kwargs, bound_of, result)
    except (TypeError, ValueError, IndexError, RuntimeError):
        out = None
    if out is None:
        return UNBOUNDED
    if isinstance(out, Rowwise):
        if result.dim() == 0 or result.shape[0] != out.n:
            return UNBOUNDED
        try:
            torch.broadcast_shapes(out.lo.shape, tuple(result.shape[1:]))
        except RuntimeError:
            return UNBOUNDED
    return _finite(out)


def _public(x: Any, bound_of: Callable[[int], Bound | None]) -> bool:
    return not isinstance(x, torch.Tensor) or bound_of(id(x)) is None


def _interval(
    c: Any, like: Rowwise, rest: tuple[int, ...], n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A public operand as an interval per row position (min/max over rows if it varies by row)."""
    if not isinstance(c, torch.Tensor):
        t = torch.tensor(float(c), dtype=torch.float64)
        return t, t
    t = c.detach().to(torch.float64)
    full = torch.broadcast_to(t, (n, *rest)) if t.dim() > len(rest) else torch.broadcast_to(t, rest)
    if full.dim() > len(rest):
        return full.amin(0), full.amax(0)
    return full, full


def _mul_iv(
    a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    ps = [a[0] * b[0], a[0] * b[1], a[1] * b[0], a[1] * b[1]]
    ps = [torch.nan_to_num(p, nan=0.0) for p in ps]  # 0 * inf
    stacked = torch.stack(torch.broadcast_tensors(*ps))
    return stacked.amin(0), stacked.amax(0)


def _rule(name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
          bound_of: Callable[[int], Bound | None], result: torch.Tensor) -> Bound | None:  # fmt: skip
    x = args[0] if args else None
    bx = bound_of(id(x)) if isinstance(x, torch.Tensor) else None
    if isinstance(bx, Aggregate):
        return _aggregate_rule(name, args, kwargs, bound_of, bx)
    if name in ("__radd__", "__rmul__", "__rsub__") and bx is None and len(args) > 1:
        pass
    if not isinstance(bx, Rowwise):
        # the tracked tensor may be the second operand: c + x, c * x
        if len(args) > 1 and isinstance(args[1], torch.Tensor) and name in (_ADD | _MUL):
            return _rule(name, (args[1], args[0], *args[2:]), kwargs, bound_of, result)
        if name in ("matmul", "mm", "__matmul__"):
            return None
        return None
    assert isinstance(x, torch.Tensor)
    rest = tuple(x.shape[1:])
    lo, hi = bx.lo.expand(rest) if rest else bx.lo, bx.hi.expand(rest) if rest else bx.hi
    n = bx.n
    if name in _SAME or (name == "__getattr__" and args[1] == "data"):
        return bx
    if name in _FLOAT_CASTS:
        slack = torch.maximum(lo.abs(), hi.abs()) * 2.0**-23 + 2.0**-126
        return bx.with_bounds(lo - slack, hi + slack)
    if name in ("neg", "negative", "__neg__"):
        return bx.with_bounds(-hi, -lo)
    if name in ("abs", "absolute", "__abs__"):
        m = torch.maximum(lo.abs(), hi.abs())
        low = torch.where(
            (lo <= 0) & (hi >= 0), torch.zeros_like(lo), torch.minimum(lo.abs(), hi.abs())
        )
        return bx.with_bounds(low, m)
    if name in ("square",) or (name in ("pow", "__pow__") and len(args) > 1 and args[1] == 2):
        m = torch.maximum(lo.abs(), hi.abs())
        low = torch.where(
            (lo <= 0) & (hi >= 0), torch.zeros_like(lo), torch.minimum(lo.abs(), hi.abs())
        )
        return bx.with_bounds(low.pow(2), m.pow(2))
    if name in ("sqrt",) and bool((lo >= 0).all()):
        return bx.with_bounds(lo.sqrt(), hi.sqrt())
    if name in _MONOTONE:
        f = _MONOTONE[name]
        return bx.with_bounds(f(lo), f(hi))
    if name in ("clamp", "clip", "clamp_min", "clamp_max"):
        cmin = args[1] if len(args) > 1 else kwargs.get("min")
        cmax = args[2] if len(args) > 2 else kwargs.get("max")
        if name == "clamp_max":
            cmin, cmax = None, cmin
        if not (_public(cmin, bound_of) and _public(cmax, bound_of)):
            return None
        nlo, nhi = lo, hi
        if cmin is not None:
            a, b = _interval(cmin, bx, rest, n)
            nlo, nhi = torch.maximum(nlo, a), torch.maximum(nhi, b)
        if cmax is not None:
            a, b = _interval(cmax, bx, rest, n)
            nlo, nhi = torch.minimum(nlo, a), torch.minimum(nhi, b)
        return bx.with_bounds(nlo, nhi)
    if name in _CMP:
        if len(args) > 1 and not _public(args[1], bound_of):
            return None
        return bx.with_bounds(torch.zeros_like(lo), torch.ones_like(hi))
    if name in _ADD | _SUB | _RSUB | _MUL | _DIV and len(args) > 1:
        other = args[1]
        if "alpha" in kwargs and kwargs["alpha"] != 1:
            return None
        bo = bound_of(id(other)) if isinstance(other, torch.Tensor) else None
        if isinstance(bo, Rowwise):
            if not bo.same_rows(bx):
                return None
            olo, ohi = (
                (bo.lo.expand(rest) if rest else bo.lo),
                (bo.hi.expand(rest) if rest else bo.hi),
            )
        elif bo is None:
            olo, ohi = _interval(other, bx, rest, n)
        else:
            return None
        if name in _ADD:
            return bx.with_bounds(lo + olo, hi + ohi)
        if name in _SUB:
            return bx.with_bounds(lo - ohi, hi - olo)
        if name in _RSUB:
            return bx.with_bounds(olo - hi, ohi - lo)
        if name in _MUL:
            return bx.with_bounds(*_mul_iv((lo, hi), (olo, ohi)))
        if name in _DIV and bool(((olo > 0) | (ohi < 0)).all()):
            return bx.with_bounds(*_mul_iv((lo, hi), (1 / ohi, 1 / olo)))
        return None
    if name in ("matmul", "mm", "__matmul__", "F.linear"):
        w = args[1] if len(args) > 1 else kwargs.get("weight")
        if not (isinstance(w, torch.Tensor) and _public(w, bound_of)) or x.dim() != 2:
            return None
        w = w.detach().double()
        if name == "F.linear":
            w = w.t()
        if w.dim() != 2:
            return None
        pos, neg = w.clamp(min=0), w.clamp(max=0)
        nlo = lo @ pos + hi @ neg
        nhi = hi @ pos + lo @ neg
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        if bias is not None:
            if not (isinstance(bias, torch.Tensor) and _public(bias, bound_of)):
                return None
            nlo, nhi = nlo + bias.detach().double(), nhi + bias.detach().double()
        return bx.with_bounds(nlo, nhi)
    if name in ("sum", "mean", "count_nonzero", "nansum"):
        return _reduce(name, args, kwargs, bx, lo, hi, rest, result.dtype)
    if name == "histc":
        return Aggregate(
            bx.source,
            2.0 * bx.k * max(1, math.prod(rest)),
            math.sqrt(2) * bx.k * max(1, math.prod(rest)),
        )
    if name == "__getitem__":
        return _index(args[1], bx, lo, hi, rest)
    if name in ("flatten",) and (len(args) < 2 or args[1] in (1, -len(rest))) and x.dim() >= 2:
        return bx.with_bounds(lo.reshape(-1), hi.reshape(-1))
    if name in ("reshape", "view") and result.dim() >= 1 and result.shape[0] == n:
        return bx.with_bounds(lo.reshape(result.shape[1:]), hi.reshape(result.shape[1:]))
    return None


def _reduce(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], bx: Rowwise,
            lo: torch.Tensor, hi: torch.Tensor, rest: tuple[int, ...],
            dtype: torch.dtype) -> Bound | None:  # fmt: skip
    dim = args[1] if len(args) > 1 else kwargs.get("dim")
    if isinstance(dim, torch.dtype):
        dim = None
    ndim = len(rest) + 1
    dims = (
        set(range(ndim))
        if dim is None
        else {d % ndim for d in ((dim,) if isinstance(dim, int) else dim)}
    )
    if name == "count_nonzero":
        lo, hi = torch.zeros_like(lo), torch.ones_like(hi)
        name = "sum"
    other = sorted(d - 1 for d in dims if d != 0)
    count = 1
    if other:
        count = math.prod(rest[d] for d in other)
        lo, hi = lo.sum(other), hi.sum(other)
        rest = tuple(s for i, s in enumerate(rest) if i not in other)
    if name == "mean":
        lo, hi = lo / count, hi / count
    if 0 not in dims:
        return bx.with_bounds(lo, hi)
    w = (hi - lo).expand(rest) if rest else (hi - lo)
    # floating-point summation: each output may be off the exact sum by up to n·ε·max|x| and a
    # neighbour's by as much again (Casacuberta et al. 2022): add that to the sensitivity
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    big = (
        torch.maximum(lo.abs(), hi.abs()).expand(rest)
        if rest
        else torch.maximum(lo.abs(), hi.abs())
    )
    slack = 2 * bx.n * count * eps * big
    l1 = bx.k * float(w.sum()) + float(slack.sum())
    l2 = bx.k * math.sqrt(float(w.pow(2).sum())) + math.sqrt(float(slack.pow(2).sum()))
    agg = Aggregate(bx.source, l1, l2)
    return agg.scaled(1 / bx.n) if name == "mean" else agg


def _index(
    index: Any, bx: Rowwise, lo: torch.Tensor, hi: torch.Tensor, rest: tuple[int, ...]
) -> Bound | None:
    idx = index if isinstance(index, tuple) else (index,)
    if not idx:
        return bx
    first, cols = idx[0], idx[1:]
    if not isinstance(first, slice):
        return None
    start, stop, step = first.indices(bx.n)
    if step <= 0:
        return None
    n = len(range(start, stop, step))
    out = Rowwise(bx.source, bx.start + start * bx.step, bx.step * step, n, lo, hi, bx.k)
    if not cols:
        return out
    if any(not isinstance(c, int | slice) for c in cols) or len(cols) > len(rest):
        return None
    full_lo = lo.expand(rest) if rest else lo
    full_hi = hi.expand(rest) if rest else hi
    return out.with_bounds(full_lo[cols], full_hi[cols])


def _aggregate_rule(name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                    bound_of: Callable[[int], Bound | None], bx: Aggregate) -> Bound | None:  # fmt: skip
    if name in _SAME or name in ("neg", "negative", "__neg__", "clamp", "clip"):
        if name in ("clamp", "clip") and not all(_public(a, bound_of) for a in args[1:]):
            return None
        return bx  # 1-Lipschitz post-processing keeps the bound
    if name == "__getitem__":
        return (
            bx
            if all(
                not isinstance(i, torch.Tensor)
                for i in (args[1] if isinstance(args[1], tuple) else (args[1],))
            )
            else None
        )
    if len(args) < 2:
        return None
    other = args[1]
    bo = bound_of(id(other)) if isinstance(other, torch.Tensor) else None
    if name in _ADD | _SUB | _RSUB:
        if bo is None:
            return bx
        if isinstance(bo, Aggregate) and bo.source == bx.source:
            return Aggregate(bx.source, bx.l1 + bo.l1, bx.l2 + bo.l2)
        return None
    if bo is not None:
        return None
    c = float(other.detach().abs().max()) if isinstance(other, torch.Tensor) else abs(float(other))
    if name in _MUL:
        return bx.scaled(c)
    if name in _DIV and c != 0:
        cm = float(other.detach().abs().min()) if isinstance(other, torch.Tensor) else c
        return bx.scaled(1 / cm) if cm > 0 else None
    return None
