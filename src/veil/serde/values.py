"""Convert Python/torch call arguments to wire ``Arg`` values and back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from veil.errors import SerdeError, UnsupportedError
from veil.serde.messages import (
    DictArg,
    DTypeArg,
    EllipsisArg,
    ListArg,
    ModuleSpec,
    Ref,
    SliceArg,
    TensorData,
    TupleArg,
)
from veil.serde.tensors import DTYPES, dtype_name, tensor_from_data, tensor_to_data

#: Deepest nesting of lists/tuples/dicts accepted in one argument.
MAX_DEPTH = 32

_SCALARS = (bool, int, float, str, type(None))
#: Types passed through as themselves (checked by exact type: the fast path).
SCALAR_TYPES = frozenset(_SCALARS)
_SCALAR_TYPES = SCALAR_TYPES


def to_arg(obj: Any, ref: Callable[[Any], Ref | None], _depth: int = 0) -> Any:
    """Encode one argument. ``ref(obj)`` returns a :class:`Ref` for pointers, else None.

    Example:
        >>> to_arg((1, slice(None, 2), ...), lambda o: None)
        TupleArg(items=[1, SliceArg(start=None, stop=2, step=None), EllipsisArg()])
    """
    if _depth > MAX_DEPTH:
        raise UnsupportedError(f"argument nested deeper than {MAX_DEPTH} levels")
    if type(obj) in _SCALAR_TYPES:  # the common case first: no pointer check needed
        return obj
    r = ref(obj)
    if r is not None:
        return r
    if isinstance(obj, _SCALARS):
        return obj
    if isinstance(obj, torch.Tensor):
        return tensor_to_data(obj)
    if isinstance(obj, torch.dtype):
        return DTypeArg(dtype_name(obj))
    if isinstance(obj, torch.device):
        return str(obj)
    if isinstance(obj, slice):
        return SliceArg(*(to_arg(v, ref, _depth + 1) for v in (obj.start, obj.stop, obj.step)))
    if obj is Ellipsis:
        return EllipsisArg()
    if isinstance(obj, list):
        return ListArg([to_arg(v, ref, _depth + 1) for v in obj])
    if isinstance(obj, tuple):  # includes torch.Size
        return TupleArg([to_arg(v, ref, _depth + 1) for v in obj])
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise UnsupportedError("only dicts with string keys can be sent to a node")
        return DictArg({k: to_arg(v, ref, _depth + 1) for k, v in obj.items()})
    raise UnsupportedError(
        f"cannot send an argument of type {type(obj).__name__} to a node; "
        "send tensors, numbers, strings, dtypes, slices and lists/tuples/dicts of them"
    )


def from_arg(arg: Any, resolve: Callable[[int], Any], _depth: int = 0) -> Any:
    """Decode one argument; ``resolve(id)`` returns the stored object for a :class:`Ref`.

    Example:
        >>> from_arg(TupleArg([1, SliceArg(None, 2, None)]), resolve=lambda i: None)
        (1, slice(None, 2, None))
    """
    if _depth > MAX_DEPTH:
        raise SerdeError(f"argument nested deeper than {MAX_DEPTH} levels")
    if type(arg) in _SCALAR_TYPES:
        return arg
    if type(arg) is Ref:
        return resolve(arg.id)
    if isinstance(arg, _SCALARS):
        return arg
    if isinstance(arg, Ref):
        return resolve(arg.id)
    if isinstance(arg, TensorData):
        return tensor_from_data(arg)
    if isinstance(arg, ListArg):
        return [from_arg(v, resolve, _depth + 1) for v in arg.items]
    if isinstance(arg, TupleArg):
        return tuple(from_arg(v, resolve, _depth + 1) for v in arg.items)
    if isinstance(arg, DictArg):
        return {k: from_arg(v, resolve, _depth + 1) for k, v in arg.items.items()}
    if isinstance(arg, SliceArg):
        return slice(*(from_arg(v, resolve, _depth + 1) for v in (arg.start, arg.stop, arg.step)))
    if isinstance(arg, EllipsisArg):
        return Ellipsis
    if isinstance(arg, DTypeArg):
        if arg.name not in DTYPES:
            raise SerdeError(f"unknown dtype {arg.name[:40]!r}")
        return DTYPES[arg.name]
    if isinstance(arg, ModuleSpec):
        raise SerdeError("a module description is only valid as a sent object, not an argument")
    raise SerdeError(f"unexpected argument type {type(arg).__name__}")
