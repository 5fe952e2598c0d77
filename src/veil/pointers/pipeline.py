"""Pipelining: which ops a client may queue and what they will return, predicted on meta tensors.

Over a network every op costs a round trip, and a training step makes five of them
(``zero_grad``, forward, loss, ``backward``, ``step``). A pipelining client instead
predicts what an op returns by running it on *meta* tensors (shapes and dtypes, no
data), names the result itself (an id in ``CLIENT_IDS``), hands back a pointer at once,
and queues the op. The queue rides on the next call that needs an answer (``.get()``,
``.item()``, an op it cannot predict, ``worker.flush()``), so a training loop that
reads its loss once an epoch makes one round trip an epoch.

What is queued:

* ops that return nothing: ``Tensor.backward``, ``Optimizer.step`` / ``zero_grad``,
  ``Module.zero_grad`` / ``train``;
* ops with no side effect (and module calls) whose meta run gives one tensor; an op
  that fails on meta tensors (a shape error, a data-dependent shape) is sent at once,
  so torch's error still points at the line that caused it.

Never queued, so that the node's refusals point at the line that caused them: ops on
private data or on pointers this client did not create (the node applies its privacy
rules there), in-place ops, indexing, attribute reads, ``inplace=True`` / ``out=``,
ops whose size is set by an argument, results over ``MAX_RESULT_BYTES``, and ops
carrying more than ``MAX_LOCAL_BYTES`` of local tensors (queued ones are copied, so
later writes to them do not change what the node gets).

What remains is CUDA's contract: a queued op that fails on the node anyway (a value
error such as an index out of range) raises from the call that flushed it, naming the
op and the line that issued it; the ops queued after it do not run, and their pointers
raise the same error when used. Objects made by queued ops exist on the node once the
queue is sent: ``worker.flush()`` before handing an id to someone else.

The queue itself, and the breaking of results after a refused op, is
:class:`veil.pointers.queue.OpQueue`; :class:`veil.pointers.remote.Remote` asks
:func:`prepare` whether an op may be queued and what it returns.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch

from veil.ops import default_registry
from veil.pointers import classes
from veil.pointers.queue import MAX_QUEUED
from veil.serde.messages import ObjectInfo
from veil.serde.tensors import dtype_name

__all__ = [
    "MAX_LOCAL_BYTES",
    "MAX_QUEUED",
    "MAX_RESULT_BYTES",
    "owned_and_public",
    "prepare",
    "result_info",
    "site",
]

#: Queue at most this much local tensor data per op (it is copied when queued).
MAX_LOCAL_BYTES = 1024**2
#: Larger predicted results are sent at once (the node may refuse them by its size limit).
MAX_RESULT_BYTES = 64 * 1024**2


class _Unpredictable(Exception):
    pass


_Meta = tuple[tuple[int, ...], torch.dtype, bool]  # shape, dtype, requires_grad


#: What a queued op's arguments and result look like: (args, kwargs, result metadata or
#: None for an op that returns nothing). The arguments are the caller's, with local
#: tensors copied (a queued op must send what they hold now).
Prepared = tuple[tuple[Any, ...], dict[str, Any], _Meta | None]


def prepare(op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Prepared | None:
    """Can ``op`` be queued, and what will it return? None: send it now.

    Example:
        >>> import torch
        >>> args, kwargs, meta = prepare("torch.add", (torch.ones(2, 3), 1), {})
        >>> meta
        ((2, 3), torch.float32, False)
        >>> prepare("Tensor.add_", (torch.ones(2), 1), {}) is None  # in place: never queued
        True
    """
    spec = default_registry().get(op)
    if not _own_and_public(args, kwargs):
        return None
    meta: _Meta | None = None
    rule = spec.facts.pipeline if spec.facts is not None else "never"
    if rule != "done":
        if rule == "never" or kwargs.get("inplace") or kwargs.get("out") is not None:
            return None
        meta = _prediction(op, spec.fn, args, kwargs)
        if meta is None or math.prod(meta[0]) * meta[1].itemsize > MAX_RESULT_BYTES:
            return None
    local = [0]
    args = tuple(_own_copy(a, local) for a in args)
    kwargs = {k: _own_copy(v, local) for k, v in kwargs.items()}
    if local[0] > MAX_LOCAL_BYTES:
        return None
    return args, kwargs, meta


def result_info(oid: int, meta: _Meta, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ObjectInfo:
    """The :class:`ObjectInfo` the node will give the result of a queued op (id ``oid``),
    private if any input is (the node's rule), with their sources.

    Example:
        >>> import torch
        >>> result_info(5, ((2,), torch.float32, False), (), {}).shape
        [2]
    """
    private, sources = _privacy(args, kwargs)
    shape, dtype, requires_grad = meta
    return ObjectInfo(oid, "tensor", list(shape), dtype_name(dtype), requires_grad,
                      private, "", sources)  # fmt: skip


#: Predictions by op and argument signature: a training loop repeats the same shapes, and
#: running an op on meta tensors costs milliseconds (torch decomposes it in Python).
_CACHE: dict[Any, _Meta | None] = {}
_CACHE_MAX = 4096


def _prediction(op: str, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Meta | None:
    """Shape, dtype and requires_grad of ``op``'s single tensor result, or None."""
    try:
        key: Any = (op, _signature(args), _signature(kwargs)) if kwargs else (op, _signature(args))
        hash(key)
    except (_Unpredictable, TypeError):
        key = None
    if key is not None and key in _CACHE:
        return _CACHE[key]
    result: _Meta | None = None
    try:
        with torch.enable_grad():  # the node runs every op with grad on, whatever the client's mode
            out = fn(*[_meta(a) for a in args], **{k: _meta(v) for k, v in kwargs.items()})
        if type(out) is torch.Tensor:
            result = (tuple(out.shape), out.dtype, bool(out.requires_grad))
    except _Unpredictable:
        return None
    except Exception:  # torch refuses it on meta: send it now, so the node explains
        result = None
    if key is not None:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        _CACHE[key] = result
    return result


_TYPES: tuple[Any, Any] | None = None


def _types() -> tuple[Any, Any]:
    """(PointerTensor, PointerModule), as :mod:`veil.pointers.classes` holds them."""
    global _TYPES
    if _TYPES is None:
        _TYPES = (classes.tensor, classes.module)
    return _TYPES


def _signature(a: Any) -> Any:
    """What an argument contributes to its op's result metadata (hashable)."""
    PointerTensor, PointerModule = _types()

    t = type(a)
    if t is PointerTensor:
        if a._error is not None:
            raise _Unpredictable
        return ("P", a.shape, a.dtype, a.requires_grad)
    if t is PointerModule:
        if a._meta is None:
            raise _Unpredictable
        return ("M", a._meta_key, a._meta.training)  # its architecture, not its data
    if isinstance(a, torch.Tensor):
        return ("T", a.shape, a.dtype, a.requires_grad)
    if t is list or t is tuple:
        return (t.__name__, *(_signature(v) for v in a))
    if t is dict:
        return ("d", *((k, _signature(v)) for k, v in a.items()))
    return (t.__name__, a)


def _meta(a: Any) -> Any:
    PointerTensor, PointerModule = _types()

    t = type(a)
    if t is PointerTensor:
        if a._error is not None:
            raise a._error
        m = torch.empty(a.shape, dtype=a.dtype, device="meta")
        return m.requires_grad_() if a.requires_grad else m
    if t is PointerModule:
        if a._meta is None:
            raise _Unpredictable
        return a._meta
    if isinstance(a, torch.Tensor):
        m = a.detach().to("meta")
        return m.requires_grad_() if a.requires_grad else m
    if t is list or t is tuple:
        return t(_meta(v) for v in a)
    if t is dict:
        return {k: _meta(v) for k, v in a.items()}
    if hasattr(a, "location"):  # another remote object (an optimizer...)
        raise _Unpredictable
    return a


def owned_and_public(args: Any) -> bool:
    """May a call on these arguments be queued: only this client's own pointers, to objects
    that are not private (see :func:`prepare`)?

    Example:
        >>> import torch
        >>> owned_and_public((torch.ones(2), [1, 2]))
        True
    """
    return _own_and_public(tuple(args), {})


def _own_and_public(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Only this client's own pointers to non-private objects: the node applies more rules
    to private data (and to other users' ids), and refusals there must point at the line."""
    stack = [*args, *kwargs.values()]
    while stack:
        a = stack.pop()
        t = type(a)
        if t is list or t is tuple:
            stack.extend(a)
        elif t is dict:
            stack.extend(a.values())
        elif hasattr(a, "location") and (
            getattr(a, "private", False) or not getattr(a, "_owned", True)
        ):
            return False
    return True


def _own_copy(a: Any, local: list[int]) -> Any:
    """Local tensors copied (a queued op must send what they hold now), sizes counted."""
    if isinstance(a, torch.Tensor):
        local[0] += a.numel() * a.element_size()
        return (
            a.detach().clone().requires_grad_(a.requires_grad) if local[0] <= MAX_LOCAL_BYTES else a
        )
    if type(a) is list or type(a) is tuple:
        return type(a)(_own_copy(v, local) for v in a)
    if type(a) is dict:
        return {k: _own_copy(v, local) for k, v in a.items()}
    return a


def _privacy(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bool, list[str]]:
    """The node's rule for a new result: private if any input is, with their sources."""
    private, sources = False, set[str]()
    stack = [*args, *kwargs.values()]
    while stack:
        a = stack.pop()
        if type(a) is list or type(a) is tuple:
            stack.extend(a)
        elif getattr(a, "private", False) is True:
            private = True
            sources.update(getattr(a, "sources", ()))
    return private, sorted(sources)


def site() -> str:
    """Where the user's code issued the op (the first frame outside veil).

    Example:
        >>> isinstance(site(), str)
        True
    """
    f: Any = sys._getframe(1)
    while f is not None and str(f.f_globals.get("__name__", "")).startswith("veil"):
        f = f.f_back
    return "?" if f is None else f"{f.f_code.co_filename}:{f.f_lineno}"
