"""Op facts: what each allowlisted op writes, reveals and costs, declared once per op.

The node (permissions, taint, size limits), the client's pipeline (what it may predict)
and automatic DP (sensitivity) all read these facts from the op's
:class:`~veil.ops.OpSpec`; nothing else keeps a table of them. A test fails if an
allowlisted op has no declaration.

What a node reveals about an op on private data is decided in one place, from public
facts only: the op's name, its arguments' shapes and dtypes, and public argument values.
The node runs the op on *meta* tensors first (shapes, no values), and its reply to the
scientist is that prediction. If the real run then fails, or gives a result of another
shape, the failure depended on private values: the result is stored as a private object
holding the error (the owner sees it; the scientist only through an approved request),
and the reply is the same as on success. The facts below add what a meta run cannot
know: which arguments the op writes into, which argument *values* decide its result's
shape (refused when private, with a fixed-shape alternative), how large its result can
be, and its DP sensitivity rule.

Example:
    >>> from veil.ops import default_registry
    >>> facts = default_registry().get("torch.nonzero").facts
    >>> facts.size, facts.dp, facts.pipeline
    ('meta', '', 'never')
    >>> default_registry().get("F.batch_norm").facts.writes
    ('running_mean', 'running_var')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

__all__ = ["OpFacts", "Predicted", "shape_values_of"]

#: How a node bounds an op's result size before running it:
#: ``input``: never larger than its largest tensor input (elementwise, reductions, views);
#: ``product``: at most the product of its inputs' sizes (broadcasting, matrix products),
#: checked on meta tensors when that bound passes the node's limit;
#: ``meta``: set by an argument (sizes, padding, repeats, index lists): always checked on
#: meta tensors before it runs.
SizeRule = Literal["input", "product", "meta"]

#: What a pipelining client may do with the op: predict its ``result``, queue it as
#: ``done`` (returns nothing), or ``never`` queue it.
PipelineRule = Literal["result", "done", "never"]


@dataclass(frozen=True, slots=True)
class Predicted:
    """An op's result as a node predicts it from public facts (for ops meta cannot run).

    Attributes:
        kind: the object kind (``"tensor"``, ``"encrypted"``...).
        shape: the result's public shape.
        dtype: its dtype name (a torch dtype, or the kind's own description).
        placeholder: a value of that description to store when the op failed on private
            values (``None``: a zero tensor of ``shape`` and ``dtype``).
    """

    kind: str
    shape: tuple[int, ...]
    dtype: str
    placeholder: Any = None


@dataclass(frozen=True, slots=True)
class OpFacts:
    """Everything a node, a pipelining client and automatic DP need to know about an op.

    Attributes:
        writes: parameters the op writes into besides its declared effect (e.g.
            ``F.batch_norm``'s running statistics).
        write_switch: the parameter that turns those writes on (``training``,
            ``inplace``); empty: always.
        shape_values: ``(args, kwargs) -> values`` whose *values* decide the result's
            shape (``nonzero(x)``: ``x``; a boolean mask index). A node refuses the op
            when one of them is private, with a fixed-shape alternative.
        size: how the result size is bounded (:data:`SizeRule`).
        dp: the DP sensitivity rule automatic DP applies (``veil.dp.sensitivity``
            interprets it); empty: no proven rule, the result is unbounded.
        pipeline: what a pipelining client may do with it (:data:`PipelineRule`).
        predict: ``(args, kwargs) -> Predicted | list[Predicted]`` for ops that meta
            tensors cannot run (encrypted tensors); ``None``: run it on meta tensors.
        private_args: node ops only: the argument paths that may hold private objects,
            e.g. ``("x", "items.*.inputs.*")``; a private object anywhere else is refused
            before the op runs. ``None`` for torch ops (every tensor argument may be
            private).
    """

    writes: tuple[str, ...] = ()
    write_switch: str = ""
    shape_values: Callable[[Sequence[Any], dict[str, Any]], list[Any]] | None = None
    size: SizeRule = "meta"
    dp: str = ""
    pipeline: PipelineRule = "result"
    predict: Callable[..., Any] | None = None
    private_args: tuple[str, ...] | None = None
    index_arg: int = -1
    value_size: Callable[[Sequence[Any], dict[str, Any]], int] | None = None


def _first(args: Sequence[Any], kwargs: dict[str, Any]) -> list[Any]:
    return [args[0] if args else kwargs.get("input")]


def _second(name: str) -> Callable[[Sequence[Any], dict[str, Any]], list[Any]]:
    def get(args: Sequence[Any], kwargs: dict[str, Any]) -> list[Any]:
        return [args[1] if len(args) > 1 else kwargs.get(name)]

    return get


def _rest(args: Sequence[Any], kwargs: dict[str, Any]) -> list[Any]:
    return [*args[1:], *kwargs.values()] if len(args) > 1 or kwargs else list(args[:1])


def _where(args: Sequence[Any], kwargs: dict[str, Any]) -> list[Any]:
    return list(args[:1]) if len(args) == 1 and not kwargs else []  # where(c) is nonzero(c)


def _one_hot(args: Sequence[Any], kwargs: dict[str, Any]) -> list[Any]:
    classes = args[1] if len(args) > 1 else kwargs.get("num_classes", -1)
    return _first(args, kwargs) if classes == -1 else []  # -1: the count is max(x) + 1


def _index(args: Sequence[Any], kwargs: dict[str, Any]) -> list[Any]:
    """Values of an index that decide the result's shape: boolean masks, slice bounds."""
    index = args[1] if len(args) > 1 else None
    out: list[Any] = []
    for item in index if isinstance(index, tuple) else (index,):
        if isinstance(item, torch.Tensor) and item.dtype in (torch.bool, torch.uint8):
            out.append(item)
        elif isinstance(item, slice):
            out.extend(v for v in (item.start, item.stop, item.step) if v is not None)
        elif isinstance(item, list):
            out.extend(v for v in item if isinstance(v, torch.Tensor) and v.dtype == torch.bool)
    return out


#: ``shape_values`` rules by an op's base name (``torch.nonzero`` and ``Tensor.nonzero``).
SHAPE_VALUES: dict[str, Callable[[Sequence[Any], dict[str, Any]], list[Any]]] = {
    "nonzero": _first,
    "argwhere": _first,
    "unique": _first,
    "unique_consecutive": _first,
    "bincount": _first,
    "masked_select": _second("mask"),
    "where": _where,
    "one_hot": _one_hot,
    "repeat_interleave": _rest,
    "tensor_split": _rest,
    "__getitem__": _index,
    "narrow": _rest,
    "split": _rest,
    "hsplit": _rest,
    "vsplit": _rest,
}


def _numel(args: Sequence[Any], kwargs: dict[str, Any]) -> int:
    x = args[0] if args else kwargs.get("input")
    return int(x.numel() * max(x.dim(), 1)) if isinstance(x, torch.Tensor) else 0


def _largest(t: Any) -> int:
    return int(t.max()) if isinstance(t, torch.Tensor) and t.numel() else 0


def _bincount_size(args: Sequence[Any], kwargs: dict[str, Any]) -> int:
    minlength = args[2] if len(args) > 2 else kwargs.get("minlength", 0)
    return max(_largest(args[0] if args else kwargs.get("input")) + 1, int(minlength or 0))


def _one_hot_size(args: Sequence[Any], kwargs: dict[str, Any]) -> int:
    x = args[0] if args else kwargs.get("input")
    classes = args[1] if len(args) > 1 else kwargs.get("num_classes", -1)
    classes = _largest(x) + 1 if classes == -1 else int(classes)
    return int(x.numel()) * max(classes, 0) if isinstance(x, torch.Tensor) else 0


def _repeat_interleave_size(args: Sequence[Any], kwargs: dict[str, Any]) -> int:
    x = args[0] if args else kwargs.get("input")
    repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
    if repeats is None:  # repeat_interleave(repeats): sum of the counts
        return int(x.sum()) if isinstance(x, torch.Tensor) and x.numel() else 0
    most = _largest(repeats) if isinstance(repeats, torch.Tensor) else int(repeats)
    return int(x.numel()) * max(most, 0) if isinstance(x, torch.Tensor) else 0


#: ``value_size`` rules by base name (see :attr:`OpFacts.value_size`).
VALUE_SIZE: dict[str, Callable[[Sequence[Any], dict[str, Any]], int]] = {
    "bincount": _bincount_size,
    "one_hot": _one_hot_size,
    "repeat_interleave": _repeat_interleave_size,
    "nonzero": _numel,
    "argwhere": _numel,
    "where": _numel,
    "unique": lambda a, k: 3 * _numel(a, k),
    "unique_consecutive": lambda a, k: 3 * _numel(a, k),
    "masked_select": lambda a, k: sum(
        int(t.numel()) for t in (*a, *k.values()) if isinstance(t, torch.Tensor)
    ),
}


def shape_values_of(facts: OpFacts, args: Sequence[Any], kwargs: dict[str, Any]) -> list[Any]:
    """The arguments whose values decide the result's shape (see :attr:`OpFacts.shape_values`).

    Example:
        >>> import torch
        >>> x = torch.arange(4)
        >>> shape_values_of(OpFacts(shape_values=SHAPE_VALUES["__getitem__"]), [x, slice(0, 2)], {})
        [0, 2]
    """
    if facts.shape_values is None:
        return []
    try:
        return facts.shape_values(args, kwargs)
    except (IndexError, TypeError, KeyError):
        return []
