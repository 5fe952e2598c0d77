"""Rules for reductions and products: sums, means, nonzero counts, histograms, matrix products.

A sum over the rows of a row-wise value becomes an aggregate: ``k`` rows change, each
moving every output by at most its rows' interval width. Floating-point sums are off the
exact sum by at most ``m·eps·Σ|x|`` for ``m`` terms, in any summation order (Higham 2002,
§4.2), on each side of a neighbouring pair: that is added to the bound. Integer sums are
exact; one that may leave its dtype's range may wrap, and is bounded by that range only.

Example:
    >>> import torch
    >>> from veil.dp.bounds import Call, Rowwise, Tracked
    >>> x = torch.zeros(60, dtype=torch.int64)
    >>> b = Rowwise.for_asset(1, x, [(0, 127)], k=1)
    >>> t = Tracked(b, (60,), torch.int64)
    >>> total(Call((t,), {"dtype": torch.int8}, (), torch.int8)).l1   # may wrap: int8's range
    255.0
    >>> total(Call((t,), {}, (), torch.int64)).l1
    127.0
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
    add_up,
    mul_up,
    norm2_up,
    register_rule,
    sqrt_up,
    sum_up,
    up,
)
from veil.dp.intervals import INF, Array, Interval
from veil.dp.rules.elementwise import LIMIT, range_norms

__all__ = ["histc", "linear", "matmul", "mean", "total"]


def _dims(dim: Any, ndim: int) -> set[int] | None:
    if dim is None or (isinstance(dim, list | tuple) and len(dim) == 0):
        return set(range(ndim))
    ds = dim if isinstance(dim, list | tuple) else (dim,)
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in ds):
        return None
    if ndim == 0:
        return set() if all(d in (0, -1) for d in ds) else None
    if not all(-ndim <= d < ndim for d in ds):
        return None
    out = {d % ndim for d in ds}
    return out if len(out) == len(ds) else None


def _group_sum(
    value: Interval, shape: tuple[int, ...], axes: tuple[int, ...]
) -> tuple[Interval, Array]:
    """Bounds of the exact sums of ``value`` (broadcast to ``shape``) over ``axes``, and per
    output the sum of the terms' magnitudes (for the rounding error of a float sum)."""
    m = math.prod(shape[a] for a in axes)
    out_shape = tuple(s for i, s in enumerate(shape) if i not in axes)
    if math.prod(shape) > LIMIT:  # one interval for all: m times it
        h = value.hull()
        total = iv.mul(h, Interval.point(m)) if m else Interval.of(0, 0)
        mag = np.full(out_shape, mul_up(m, float(np.max(h.magnitude()))))
        return Interval(*_full_pair(total, out_shape), total.nan), mag
    full = value.broadcast(shape)
    if value.exact:
        lo, hi = full.ints()
        s = Interval(np.sum(lo, axis=axes, dtype=object), np.sum(hi, axis=axes, dtype=object))
        mag = np.asarray(
            np.sum(np.maximum(np.abs(lo), np.abs(hi)), axis=axes, dtype=object), dtype=object
        )
        mag = mag.astype(np.float64)
        return s, iv.up(mag)
    g = m * 2.0**-52
    mags = np.maximum(np.abs(full.lo), np.abs(full.hi))
    mag = np.sum(mags, axis=axes) * (1 + 2 * g) if g < 0.25 else np.full(out_shape, INF)
    slo, shi = np.sum(full.lo, axis=axes), np.sum(full.hi, axis=axes)
    err = iv.up(mag * (2 * g))
    lo = np.where(np.isnan(slo), -INF, iv.down(slo - err))
    hi = np.where(np.isnan(shi), INF, iv.up(shi + err))
    nan = value.nan or bool(np.any(full.hi == INF) and np.any(full.lo == -INF))
    return Interval(lo, hi, nan), iv.up(mag)


def _full_pair(total: Interval, shape: tuple[int, ...]) -> tuple[Array, Array]:
    return np.broadcast_to(total.lo, shape), np.broadcast_to(total.hi, shape)


def _acc_dtype(ct: torch.dtype) -> torch.dtype:
    return torch.float32 if ct in (torch.float16, torch.bfloat16) else ct


def _reduce(call: Call, mode: str) -> Bound | None:
    if mode == "count_nonzero":
        a = call.bind(("input", "dim"))
    else:
        a = call.bind(("input", "dim", "keepdim"), ("dtype",))
    if a is None or not isinstance(a["input"], Tracked):
        return None
    x: Tracked = a["input"]
    keepdim, dtype = a.get("keepdim", False), a.get("dtype")
    if not isinstance(keepdim, bool) or not (dtype is None or isinstance(dtype, torch.dtype)):
        return None
    shape = x.shape
    dims = _dims(a.get("dim"), len(shape))
    if dims is None:
        return None
    expect = tuple((1 if i in dims else s) for i, s in enumerate(shape) if keepdim or i not in dims)
    if expect != call.shape:
        return None
    ct = call.dtype
    b = x.bound
    elem_iv = b.value
    if mode == "count_nonzero":  # NaN counts as nonzero; not Lipschitz: rows or range only
        kind = "range"
        elem_iv = iv.cast(elem_iv, x.dtype, torch.bool)[0]
        if ct != torch.int64:
            return None
    else:
        if mode == "mean" and not ct.is_floating_point:
            return None
        elem_iv, kind = iv.cast(elem_iv, x.dtype, dtype if dtype is not None else ct)
        if mode == "nansum" and elem_iv.nan:
            elem_iv = iv.hull(Interval(elem_iv.lo, elem_iv.hi), Interval.point(0.0))
    with np.errstate(all="ignore"):
        if isinstance(b, Rowwise) and shape:
            return _reduce_rows(b, x, elem_iv, kind, dims, mode, call)
        return _reduce_aggregate(b, x, elem_iv, kind, dims, mode, call)


def _finish_sum(
    s: Interval, mag: Array, count: int, mode: str, ct: torch.dtype
) -> tuple[Interval, Array, bool]:
    """The exact sums ``s`` of ``count`` terms as the op's results (float: with the
    summation's rounding error, returned per output; mean: divided), and whether they may wrap."""
    if count == 0:  # a sum of nothing is exactly 0 (a mean of nothing is NaN)
        zero = np.zeros(np.shape(mag))
        if mode == "mean":
            return Interval(zero - INF, zero + INF, True), zero, False
        return (Interval(zero.astype(np.int64), zero.astype(np.int64)) if not ct.is_floating_point
                else Interval(zero, zero)), zero, False  # fmt: skip
    if not ct.is_floating_point:
        out, wrapped = iv.fit(s, ct)
        return out, np.zeros(np.shape(mag)), wrapped
    acc = _acc_dtype(ct)
    err = (
        iv.up(mag * up(count * iv.eps(acc)))
        if count * iv.eps(acc) < 0.5
        else np.full(np.shape(mag), INF)
    )
    if acc != ct:  # accumulated in float32, then rounded once more into ct
        err = iv.up(err + iv.up(mag * iv.eps(ct)) + iv.tiny(ct))
    f = s.floats()
    # a partial sum (in any order) is at most the sum of magnitudes: past the accumulator's
    # range it may overflow, and infinities of both signs make NaN
    over = np.asarray(mag) >= float(torch.finfo(acc).max) / 2
    if bool(np.any(over)):
        f = Interval(np.where(over, -INF, f.lo), np.where(over, INF, f.hi), True)
    if mode == "mean":
        c = Interval.point(float(count)) if count else Interval.point(1.0)
        f = iv.div(f, c)
        if not count:  # the mean of nothing is NaN
            f = Interval(f.lo, f.hi, True)
        err = iv.up(
            err / max(count, 1) + iv.up(mag / max(count, 1)) * (2 * iv.eps(ct)) + iv.tiny(ct)
        )
    out = Interval(iv.down(f.lo - err), iv.up(f.hi + err), f.nan)
    return iv.round_out(out, ct), err, False


def _reduce_rows(b: Rowwise, x: Tracked, elem: Interval, kind: str, dims: set[int], mode: str,
                 call: Call) -> Bound | None:  # fmt: skip
    rest = tuple(x.shape[1:])
    n = x.shape[0]
    other = tuple(d - 1 for d in sorted(dims) if d != 0)
    per_row, mag = _group_sum(elem, rest, other)
    m = math.prod(rest[d] for d in other)
    if 0 not in dims:
        out, _, _ = _finish_sum(per_row, mag, m, mode, call.dtype)
        return Rowwise(b.source, b.rows, b.k, _shaped(out, call.shape[1:]))
    count = n * m
    total = iv.mul(per_row, Interval.point(n))
    out, err, wrapped = _finish_sum(total, iv.up(mag * n), count, mode, call.dtype)
    out = _shaped(out, call.shape)
    l1, l2 = range_norms(out, call.shape)
    if not wrapped and not out.nan:  # the rows' intervals hold the cast values: any kind
        kk = min(b.k, n)
        w = per_row.width()
        scale = 1.0 / count if mode == "mean" and count else 1.0
        e = np.asarray(err, np.float64)
        a1 = add_up(mul_up(kk, sum_up(w), scale), mul_up(2, sum_up(np.broadcast_to(e, call.shape))))
        a2 = add_up(
            mul_up(kk, norm2_up(w), scale), mul_up(2, norm2_up(np.broadcast_to(e, call.shape)))
        )
        l1, l2 = min(l1, a1), min(l2, a2)
    return Aggregate(b.source, l1, l2, out)


def _shaped(value: Interval, shape: tuple[int, ...]) -> Interval:
    if value.lo.size == 1 and value.hi.size == 1 and math.prod(shape) != 1:
        return value  # a hull: broadcasts
    return Interval(np.reshape(value.lo, shape), np.reshape(value.hi, shape), value.nan)


def _reduce_aggregate(b: Rowwise | Aggregate, x: Tracked, elem: Interval, kind: str, dims: set[int],
                      mode: str, call: Call) -> Bound | None:  # fmt: skip
    agg = b.as_aggregate(x.shape) if isinstance(b, Rowwise) else b
    if isinstance(b, Rowwise):
        elem = Interval(np.expand_dims(elem.lo, 0), np.expand_dims(elem.hi, 0), elem.nan)
    axes = tuple(sorted(dims))
    s, mag = _group_sum(elem, x.shape, axes)
    g = math.prod(x.shape[d] for d in axes)
    out, err, wrapped = _finish_sum(s, mag, g, mode, call.dtype)
    out = _shaped(out, call.shape)
    l1, l2 = range_norms(out, call.shape)
    if not wrapped and not out.nan and kind == "exact" and math.isfinite(agg.l1):
        scale = 1.0 / g if mode == "mean" and g else 1.0
        e = np.asarray(err, np.float64)
        a1 = add_up(mul_up(agg.l1, scale), mul_up(2, sum_up(e)))
        a2 = add_up(mul_up(min(agg.l1, mul_up(sqrt_up(g), agg.l2)), scale), mul_up(2, norm2_up(e)))
        l1, l2 = min(l1, a1), min(l2, a2)
    return Aggregate(agg.source, l1, l2, out)


@register_rule("sum")
def total(call: Call) -> Bound | None:
    """``sum(input, dim=None, keepdim=False, *, dtype=None)``."""
    return _reduce(call, "sum")


@register_rule("nansum")
def nansum(call: Call) -> Bound | None:
    """``nansum``: NaN counts as 0."""
    return _reduce(call, "nansum")


@register_rule("mean")
def mean(call: Call) -> Bound | None:
    """``mean(input, dim=None, keepdim=False, *, dtype=None)``."""
    return _reduce(call, "mean")


@register_rule("count_nonzero")
def count_nonzero(call: Call) -> Bound | None:
    """``count_nonzero(input, dim=None)`` (NaN is nonzero)."""
    return _reduce(call, "count_nonzero")


@register_rule("histc")
def histc(call: Call) -> Bound | None:
    """``histc(input, bins, min, max)`` with a public range ``min < max``: each changed
    entry moves one count out of a bin and one into another. The default range (0, 0)
    is taken from the data itself, which no bound covers."""
    a = call.bind(("input", "bins", "min", "max"))
    if a is None or not isinstance(a["input"], Tracked):
        return None
    x: Tracked = a["input"]
    bins, lo, hi = a.get("bins", 100), a.get("min", 0), a.get("max", 0)
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lo, hi))
    if not (isinstance(bins, int) and not isinstance(bins, bool) and bins >= 1 and numbers):
        return None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi) or call.shape != (bins,):
        return None
    if not call.dtype.is_floating_point or call.dtype != x.dtype:
        return None
    n = x.numel
    if n > 2 ** _mant(call.dtype):
        return None  # counts past the float's exact integers could round
    b = x.bound
    rows = x.shape[0] if x.shape else 0
    changed = min(b.k, rows) * (n // rows) if isinstance(b, Rowwise) and rows else n
    value = Interval(np.zeros(()), np.full((), float(n)))
    return Aggregate(b.source, float(2 * changed), mul_up(math.sqrt(2), changed), value)


def _mant(dtype: torch.dtype) -> int:
    return {torch.float16: 11, torch.bfloat16: 8, torch.float32: 24, torch.float64: 53}[dtype]


# ================================================================ matrix products
def _interval_matmul(
    x: Interval, w: torch.Tensor, ct: torch.dtype, terms: int
) -> tuple[Interval, Array]:
    """Bounds of ``x @ w`` for ``x`` in the interval (rows of length d) and a public ``w``,
    and per output the error bound of computing it in ``ct`` (any summation order)."""
    if x.exact and not w.is_floating_point():
        wo = iv.pyints(w.to(torch.int64).numpy())
        pos, neg = np.maximum(wo, 0), np.minimum(wo, 0)
        lo, hi = x.ints()
        return Interval(lo @ pos + hi @ neg, hi @ pos + lo @ neg), np.zeros(())
    f = x.floats()
    if not f.finite():
        shape = (*np.broadcast_shapes(f.lo.shape, f.hi.shape)[:-1], *w.shape[1:])
        return Interval(np.full(shape, -INF), np.full(shape, INF), True), np.full((), INF)
    wd = w.to(torch.float64).numpy()
    pos, neg = np.maximum(wd, 0.0), np.minimum(wd, 0.0)
    lo = f.lo @ pos + f.hi @ neg
    hi = f.hi @ pos + f.lo @ neg
    mag = np.maximum(np.abs(f.lo), np.abs(f.hi)) @ np.abs(wd)
    mag = iv.up(mag * (1 + 2.0**-40))
    if bool(np.any(mag >= float(torch.finfo(ct).max) / 2)):  # a partial sum may overflow
        return Interval(np.full(mag.shape, -INF), np.full(mag.shape, INF), True), np.full((), INF)
    err = iv.up(mag * ((terms + 2) * (2.0**-52 + iv.eps(ct))) + terms * iv.tiny(ct))
    err_ct = iv.up(mag * ((terms + 2) * iv.eps(ct)) + terms * iv.tiny(ct))
    return Interval(iv.down(lo - err), iv.up(hi + err)), err_ct


def _product(call: Call, x: Any, w: Any, bias: Any, transpose: bool) -> Bound | None:
    if not isinstance(x, Tracked) or not isinstance(w, torch.Tensor):
        return None
    if bias is not None and not isinstance(bias, torch.Tensor):
        return None
    if w.dtype != x.dtype or call.dtype != x.dtype or w.is_complex():
        return None
    wt = w.detach().t() if transpose else w.detach()
    if wt.dim() not in (1, 2) or len(x.shape) not in (1, 2) or not bool(torch.isfinite(wt).all()):
        return None
    if bias is not None and (bias.dtype != x.dtype or not bool(torch.isfinite(bias).all())):
        return None
    ct, b = call.dtype, x.bound
    w2 = wt if wt.dim() == 2 else wt.unsqueeze(1)
    d = w2.shape[0]
    with np.errstate(all="ignore"):
        if isinstance(b, Rowwise) and len(x.shape) == 2:
            out, _ = _interval_matmul(
                b.value.broadcast(x.shape[1:]), w2, ct, d + (bias is not None)
            )
            out = _add_bias(out, bias, ct, wt.dim())
            res, _ = _finish(out, ct, call.shape[1:])
            return Rowwise(b.source, b.rows, b.k, res)
        agg = b.as_aggregate(x.shape) if isinstance(b, Rowwise) else b
        full = agg.value.broadcast(x.shape)
        if len(x.shape) == 1:
            full = Interval(full.lo[None, :], full.hi[None, :], full.nan)
        out, err = _interval_matmul(full, w2, ct, d + (bias is not None))
        out = _add_bias(out, bias, ct, wt.dim())
        res, wrapped = _finish(out, ct, call.shape)
        l1, l2 = range_norms(res, call.shape)
        if not wrapped and not res.nan and math.isfinite(agg.l1):
            wa = w2.to(torch.float64).abs()
            rows = float(wa.sum(1).max()) if wa.numel() else 0.0
            frob = float(wa.pow(2).sum().sqrt()) if wa.numel() else 0.0
            n = math.prod(call.shape)
            # each side is off the exact product by up to err (and the result's rounding)
            jump = mul_up(2, float(np.max(err)) if np.size(err) else 0.0)
            if ct.is_floating_point:
                jump = up(
                    jump
                    + mul_up(
                        2, up(mul_up(iv.eps(ct), float(np.max(res.magnitude()))) + iv.tiny(ct))
                    )
                )
            l1 = min(l1, add_up(mul_up(up(rows * (1 + 2.0**-40)), agg.l1), mul_up(jump, n)))
            l2 = min(
                l2, add_up(mul_up(up(frob * (1 + 2.0**-40)), agg.l2), mul_up(jump, sqrt_up(n)))
            )
        return Aggregate(b.source, l1, l2, res)


def _add_bias(out: Interval, bias: torch.Tensor | None, ct: torch.dtype, wdim: int) -> Interval:
    if wdim == 1:
        out = Interval(out.lo[..., 0], out.hi[..., 0], out.nan)
    if bias is None:
        return out
    return iv.add(out, Interval.point(bias))


def _finish(out: Interval, ct: torch.dtype, shape: tuple[int, ...]) -> tuple[Interval, bool]:
    if ct.is_floating_point:
        res, wrapped = iv.round_out(out, ct), False
    else:
        res, wrapped = iv.fit(out, ct)
    return _shaped(res, shape), wrapped


@register_rule("matmul")
def matmul(call: Call) -> Bound | None:
    """``input @ other`` for a private ``input`` (rows, or an aggregate) and a public
    matrix or vector ``other``."""
    a = call.bind(("input", "other"))
    if a is None or "other" not in a:
        return None
    return _product(call, a["input"], a["other"], None, False)


@register_rule("linear")
def linear(call: Call) -> Bound | None:
    """``F.linear(input, weight, bias)`` with public ``weight`` and ``bias``."""
    a = call.bind(("input", "weight", "bias"))
    if a is None or "weight" not in a:
        return None
    return _product(call, a["input"], a["weight"], a.get("bias"), True)
