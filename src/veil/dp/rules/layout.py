"""Rules for ops that copy, convert or move values: identities, casts, indexing, reshapes.

Indexing and reshaping keep a row-wise value row-wise when every result row comes from
one row: a row selected ``c`` times counts ``c`` times in ``k``. Otherwise the value
becomes an aggregate whose change counts every copy: an entry copied ``c`` times moves the
L1 norm ``c`` times and the L2 norm ``√c`` times. Copies are counted on the index itself
(public), by running it on positions instead of values.

Example:
    >>> import torch
    >>> from veil.dp.bounds import Aggregate, Call, Tracked
    >>> from veil.dp.intervals import Interval
    >>> s = Tracked(Aggregate(1, 1.0, 1.0, Interval.of([0, 0], [9, 9])), (2,), torch.int64)
    >>> index(Call((s, [0] * 1000), {}, (1000,), torch.int64)).l1   # one entry, 1000 times
    1000.0
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
    register_rule,
    row_key_of,
    sqrt_up,
    up,
)
from veil.dp.intervals import Interval
from veil.dp.rules.elementwise import LIMIT, range_norms

__all__ = ["cast", "index", "reshape", "same"]


def _with_value(b: Rowwise | Aggregate, value: Interval) -> Rowwise | Aggregate:
    if isinstance(b, Rowwise):
        return Rowwise(b.source, b.rows, b.k, value)
    return Aggregate(b.source, b.l1, b.l2, value)


@register_rule("same")
def same(call: Call) -> Bound | None:
    """Copies and views of the same values (``clone``, ``detach``, ``contiguous``...)."""
    a = call.bind(("input", "memory_format"))
    if a is None or not isinstance(a["input"], Tracked):
        return None
    fmt = a.get("memory_format")
    if fmt is not None and not isinstance(fmt, torch.memory_format):
        return None
    x = a["input"]
    if call.shape != x.shape or call.dtype != x.dtype:
        return None
    return x.bound


@register_rule("attribute")
def attribute(call: Call) -> Bound | None:
    """``x.data`` (the same values); other attributes have no rule."""
    a = call.bind(("input", "name"))
    if a is None or a.get("name") != "data" or not isinstance(a["input"], Tracked):
        return None
    return a["input"].bound


_CAST_KEYWORDS = ("dtype", "device", "non_blocking", "copy", "memory_format")


def _cast_args_ok(call: Call) -> bool:
    for v in (*call.args[1:], *call.kwargs.values()):
        if isinstance(v, torch.device | str):
            if torch.device(v).type != "cpu":
                return False
        elif not isinstance(v, torch.dtype | bool | torch.memory_format | torch.Tensor | Tracked):
            return False
    return all(k in _CAST_KEYWORDS for k in call.kwargs)


@register_rule("cast")
def cast(call: Call) -> Bound | None:
    """Conversions to the result's dtype (``float``, ``int``, ``to``, ``type_as``...): float
    rounding, truncation to integers, and wrap-around (an integer that may leave the
    target's range gets the target's whole range)."""
    if not call.args or not isinstance(call.args[0], Tracked) or not _cast_args_ok(call):
        return None
    x: Tracked = call.args[0]
    if call.shape != x.shape or call.dtype.is_complex:
        return None
    b = x.bound
    with np.errstate(all="ignore"):
        value, kind = iv.cast(b.value, x.dtype, call.dtype)
    if isinstance(b, Rowwise):
        return _with_value(b, value)
    l1, l2 = range_norms(value, call.shape)
    if kind != "range" and not b.value.nan:
        n = math.prod(call.shape)
        if kind == "exact":
            jump = 0.0
        elif kind == "trunc":
            jump = 1.0
        else:
            m = float(np.max(value.magnitude())) if value.lo.size else 0.0
            jump = mul_up(2, up(mul_up(iv.eps(call.dtype), m) + iv.tiny(call.dtype)))
        l1 = min(l1, add_up(b.l1, mul_up(jump, n)))
        l2 = min(l2, add_up(b.l2, mul_up(jump, sqrt_up(n))))
    return Aggregate(b.source, l1, l2, value)


# ================================================================ indexing
def _is_basic(item: Any) -> bool:
    if isinstance(item, slice):
        return all(v is None or (isinstance(v, int) and not isinstance(v, bool))
                   for v in (item.start, item.stop, item.step))  # fmt: skip
    return (
        item is None or item is Ellipsis or (isinstance(item, int) and not isinstance(item, bool))
    )


def _per_row(b: Rowwise, rest: tuple[int, ...]) -> Interval:
    return b.value.broadcast(rest)


def _compact(value: Interval) -> Interval:
    return value.hull() if value.lo.size > LIMIT or value.hi.size > LIMIT else value


def _index_interval(value: Interval, items: tuple[Any, ...]) -> Interval:
    return Interval(value.lo[items], value.hi[items], value.nan)


@register_rule("index")
def index(call: Call) -> Bound | None:
    """``x[index]`` with a public index: ints, slices, ``None``, ``...``, lists, int or
    bool tensors."""
    a = call.bind(("input", "index"))
    if a is None or "index" not in a or not isinstance(a["input"], Tracked):
        return None
    x: Tracked = a["input"]
    idx = a["index"]
    items = idx if isinstance(idx, tuple) else (idx,)
    if any(isinstance(i, Tracked) for i in items):
        return None
    if all(_is_basic(i) for i in items):
        out = _basic(x, items, call)
        if out is not None:
            return out
    return _advanced(x, idx, call)


def _basic(x: Tracked, items: tuple[Any, ...], call: Call) -> Bound | None:
    b = x.bound
    if isinstance(b, Aggregate):
        value = _index_interval(b.value.broadcast(x.shape), items)
        return (
            Aggregate(b.source, b.l1, b.l2, _compact(value)) if value.shape == call.shape else None
        )
    if items and items[0] is Ellipsis and len(items) > 1:
        return None  # the ellipsis may swallow the rows: take the general path
    first = items[0] if items else slice(None)
    if not isinstance(first, int | slice):
        return None
    rest = tuple(x.shape[1:])
    n = x.shape[0]
    per_row = _index_interval(_per_row(b, rest), tuple(items[1:]))
    if isinstance(first, int):  # one row: an aggregate of that row
        one = Rowwise(b.source, None, 1, per_row).as_aggregate((1, *per_row.shape))
        value = Interval(per_row.lo, per_row.hi, per_row.nan)
        if value.shape != call.shape:
            return None
        return Aggregate(b.source, one.l1, one.l2, _compact(value))
    start, stop, step = first.indices(n)
    if step <= 0:
        return None
    rows = range(start, stop, step)
    if (len(rows), *per_row.shape) != call.shape:
        return None
    key = None
    if b.rows is not None and b.rows[0] == "ap":
        _, s0, st0, _n0 = b.rows
        key = ("ap", s0 + start * st0, st0 * step, len(rows))
    return Rowwise(b.source, key, b.k, per_row)


def _advanced(x: Tracked, idx: Any, call: Call) -> Bound | None:
    b = x.bound
    shape = x.shape
    if isinstance(b, Aggregate):
        numel = math.prod(shape)
        pos = torch.arange(numel).reshape(shape)[idx]
        if tuple(pos.shape) != call.shape:
            return None
        copies = int(torch.bincount(pos.reshape(-1), minlength=numel).max()) if pos.numel() else 0
        value = _gather(b.value, shape, pos)
        return Aggregate(b.source, mul_up(copies, b.l1), mul_up(sqrt_up(copies), b.l2), value)
    if not shape:
        return None
    n, rest = shape[0], tuple(shape[1:])
    width = math.prod(rest)
    rowid = torch.arange(n).reshape((n,) + (1,) * len(rest)).expand(shape)[idx]
    colid = torch.arange(width).reshape((1, *rest)).expand(shape)[idx]
    if tuple(rowid.shape) != call.shape:
        return None
    per_row = _per_row(b, rest)
    if call.shape and call.shape[0] > 0 and math.prod(call.shape[1:]) > 0:
        rr = rowid.reshape(call.shape[0], -1)
        if bool((rr == rr[:, :1]).all()):  # every result row comes from one row
            src = rr[:, 0]
            fan = int(torch.bincount(src).max())
            vals = _gather(per_row, rest, colid, hull_rows=True)
            key = None
            if b.rows is not None and b.rows[0] == "ap":
                _, s0, st0, _n0 = b.rows
                key = row_key_of((s0 + st0 * src).numpy())
            return Rowwise(b.source, key, b.k * fan, vals)
    agg = b.as_aggregate(shape)
    pos = rowid * width + colid
    copies = int(torch.bincount(pos.reshape(-1)).max()) if pos.numel() else 0
    value = _gather(per_row, rest, colid)
    return Aggregate(b.source, mul_up(copies, agg.l1), mul_up(sqrt_up(copies), agg.l2), value)


def _gather(
    value: Interval, shape: tuple[int, ...], pos: torch.Tensor, *, hull_rows: bool = False
) -> Interval:
    """``value`` (broadcast to ``shape``, flattened) at positions ``pos``; its hull over
    dim 0 if ``hull_rows``."""
    if math.prod(shape) > LIMIT or pos.numel() > LIMIT:
        return value.hull()
    full = value.broadcast(shape)
    lo = np.ascontiguousarray(full.lo).reshape(-1)[pos.numpy()]
    hi = np.ascontiguousarray(full.hi).reshape(-1)[pos.numpy()]
    if hull_rows:
        lo, hi = lo.min(0), hi.max(0)
    return Interval(lo, hi, value.nan)


# ================================================================ reshapes
def _shape_args_ok(call: Call) -> bool:
    for v in (*call.args[1:], *call.kwargs.values()):
        if isinstance(v, list | tuple | torch.Size):
            if not all(isinstance(s, int) and not isinstance(s, bool) for s in v):
                return False
        elif not isinstance(v, int) or isinstance(v, bool):
            return False  # a dtype (Tensor.view(torch.int32) reinterprets bits), a tensor...
    return all(k in ("shape", "size", "start_dim", "end_dim") for k in call.kwargs)


@register_rule("reshape")
def reshape(call: Call) -> Bound | None:
    """``reshape``, ``view`` (not ``view(dtype)``: that reinterprets the bits), ``flatten``:
    the same values in the same order, in a new shape."""
    if not call.args or not isinstance(call.args[0], Tracked) or not _shape_args_ok(call):
        return None
    x: Tracked = call.args[0]
    if math.prod(call.shape) != x.numel or call.dtype != x.dtype:
        return None
    b = x.bound
    if isinstance(b, Rowwise) and x.shape and len(call.shape) >= 1:
        out = _reshape_rows(b, x.shape, call.shape)
        if out is not None:
            return out
    agg = b.as_aggregate(x.shape) if isinstance(b, Rowwise) else b
    return Aggregate(agg.source, agg.l1, agg.l2, _reshaped(agg.value, x.shape, call.shape))


def _reshaped(value: Interval, old: tuple[int, ...], new: tuple[int, ...]) -> Interval:
    if math.prod(old) > LIMIT:
        return value.hull()
    full = value.broadcast(old)
    return Interval(np.reshape(full.lo, new), np.reshape(full.hi, new), value.nan)


def _reshape_rows(b: Rowwise, old: tuple[int, ...], new: tuple[int, ...]) -> Rowwise | None:
    n, rest = old[0], tuple(old[1:])
    width, new_width = math.prod(rest), math.prod(new[1:])
    if width == 0 or new_width == 0:
        return None
    per_row = b.value.broadcast(rest)
    if width > LIMIT or new_width > LIMIT:
        h = per_row.hull()
        if new[0] == n:
            return Rowwise(b.source, b.rows, b.k, h)
        if width % new_width == 0:
            return Rowwise(b.source, None, b.k * (width // new_width), h)
        return Rowwise(b.source, None, b.k, h) if new_width % width == 0 else None
    lo = np.ascontiguousarray(per_row.lo).reshape(-1)
    hi = np.ascontiguousarray(per_row.hi).reshape(-1)
    if new[0] == n:  # the same rows, each reshaped
        return Rowwise(
            b.source, b.rows, b.k, Interval(lo.reshape(new[1:]), hi.reshape(new[1:]), per_row.nan)
        )
    if new_width % width == 0:  # whole rows merged: each old row lands in one new row
        g = new_width // width
        return Rowwise(b.source, None, b.k,
                       Interval(np.tile(lo, g).reshape(new[1:]), np.tile(hi, g).reshape(new[1:]), per_row.nan))  # fmt: skip
    if width % new_width == 0:  # rows split: each old row becomes width/new_width rows
        s = width // new_width
        lo2, hi2 = lo.reshape(s, new_width).min(0), hi.reshape(s, new_width).max(0)
        return Rowwise(
            b.source,
            None,
            b.k * s,
            Interval(lo2.reshape(new[1:]), hi2.reshape(new[1:]), per_row.nan),
        )
    return None
