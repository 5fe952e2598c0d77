"""The privacy kernel: what a node tells a data scientist about an op on private data.

One rule, applied to every op whose inputs include private data (for callers who are not
the node's owner or admins): **the reply is computed from public facts only**. Public
facts are the op's name, its arguments' shapes, dtypes and ``requires_grad``, whether a
tensor has a gradient, module architectures and modes, and the values of public
arguments. The node

1. refuses the op if a private value would decide its result's shape
   (:attr:`veil.ops.OpFacts.shape_values`: ``x[x > 0]``, ``pub[:k]``, ``nonzero``...);
2. predicts the result by running the op on *meta* tensors (no values), or with the op's
   declared :attr:`~veil.ops.OpFacts.predict` for objects meta tensors cannot stand for.
   A prediction that fails depends on public facts only: that error is reported at once,
   with torch's own message;
3. runs the op. If the real run fails, or its result does not match the prediction, the
   failure depended on private values: the result becomes a private *placeholder* of the
   predicted shape that holds the error (``ObjectRecord.error``), and the reply is the
   same as on success. Later ops on it carry the error on; the owner sees it, and so does
   the scientist through an approved request.

So two runs of one program on datasets that differ only in values get the same replies,
the same errors and the same failing calls (``tests/node/test_noninterference.py`` checks
it as a property). Predictions are cached by op and argument signature: a training loop
pays for one meta run per distinct call.

Example:
    >>> import torch
    >>> from veil.ops import default_registry
    >>> spec = default_registry().get("torch.matmul")
    >>> predict(spec, [torch.ones(3, 4), torch.ones(4, 2)], {})
    Meta(shape=(3, 2), dtype=torch.float32, requires_grad=False)
"""

from __future__ import annotations

import copy
import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from veil.errors import InvalidRequest, RemoteError, VeilError
from veil.ops import OpSpec, Predicted
from veil.serde.keras_models import is_keras_model

__all__ = [
    "Meta",
    "NeedsValues",
    "Unpredictable",
    "describe",
    "matches",
    "placeholder",
    "predict",
    "result_bytes",
]


@dataclass(frozen=True, slots=True)
class Meta:
    """A predicted tensor result."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    requires_grad: bool


#: A predicted result: ``None``, a :class:`Meta` tensor, a :class:`~veil.ops.Predicted`
#: object of another kind, or a (named) tuple / list of predictions.
Prediction = Any


class Unpredictable(Exception):
    """The op's result cannot be predicted from public facts (an argument with no meta
    form and no declared ``predict``)."""


class NeedsValues(RemoteError):
    """The op reads a tensor's *values* to decide its result (a size, a count, a bound,
    an index read as a number): on private data that would reveal them."""


#: Predictions by (op, argument signature); bounded (cleared when full).
_CACHE: dict[Any, tuple[bool | None, Any]] = {}
_CACHE_MAX = 8192
#: Meta copies of modules, by module, with the modes they were made in (a module's
#: architecture never changes once built on a node; its modes and requires_grad may).
_MODULES: weakref.WeakKeyDictionary[nn.Module, tuple[Any, nn.Module]] = weakref.WeakKeyDictionary()


def predict(spec: OpSpec, args: list[Any], kwargs: dict[str, Any], *,
            public: bool = False) -> Prediction:  # fmt: skip
    """Predict ``spec.fn(*args, **kwargs)`` from public facts.

    ``public=True`` (every input is public: for size checks) lets one-element integer
    tensors stand as the numbers they hold (``x.repeat(k)`` for a public ``k``).

    Raises:
        RemoteError: the op fails on public facts alone (torch's message, which can quote
            only shapes, dtypes and public values).
        InvalidRequest: a declared ``predict`` refused the arguments.
        Unpredictable: no public prediction exists for these arguments.
    """
    facts = spec.facts
    if facts is not None and facts.predict is not None:
        try:
            out = facts.predict(args, kwargs)
        except (VeilError, Unpredictable):
            raise
        except Exception as exc:  # the declared prediction refuses these (public) arguments
            raise RemoteError(f"{spec.name} failed: {type(exc).__name__}: {exc}") from None
        if isinstance(out, Predicted) or (
            isinstance(out, list) and out and all(isinstance(p, Predicted) for p in out)
        ):
            return out
        return describe(out)
    index = facts.index_arg if facts is not None else -1
    if public and (facts is None or facts.value_size is None):
        args = [_numbers(a) for a in args]
        kwargs = {k: _numbers(v) for k, v in kwargs.items()}
    try:
        key: Any = (spec.name, _signature(args), _signature(kwargs))
        if 0 <= index < len(args):  # a (public) boolean mask's count decides the shape
            key = (*key, _mask_counts(args[index]))
        hash(key)
    except (Unpredictable, TypeError):
        key = None
    if key is not None:
        hit = _CACHE.get(key)
        if hit is not None:
            return _answer(hit)
    if any(is_keras_model(a) for a in args):  # Keras turns meta inputs into garbage CPU ones
        zeros = _on_zeros(spec, args, kwargs)
        if key is not None:
            _CACHE[key] = zeros
        return _answer(zeros)
    memo: dict[int, Any] = {}
    meta_args = [_meta(a, memo) for a in args]
    meta_kwargs = {k: _meta(v, memo) for k, v in kwargs.items()}
    if 0 <= index < len(args):  # 0-d integer tensors in an index pick elements: as 0 does
        meta_args[index] = _positions(args[index], meta_args[index])
    result: tuple[bool | None, Any]
    try:
        with torch.enable_grad():  # a node runs every op with grad on
            out = spec.fn(*meta_args, **meta_kwargs)
        result = (True, describe(out, meta_args))
    except Unpredictable:
        raise
    except NotImplementedError as exc:  # data-dependent output shapes (nonzero, unique...)
        result = (None, f"{spec.name}: {str(exc)[:300]}")
    except Exception as exc:  # fails on shapes, dtypes or public values: tell the caller
        text = str(exc)
        if _NOT_META_CLEAN.search(text):  # the op's own code mixes devices: run it on zeros
            result = _on_zeros(spec, args, kwargs)
        elif _READS_VALUES.search(text):
            result = (None, f"{spec.name}: {text[:300]}")
        else:
            result = (False, f"{spec.name} failed: {type(exc).__name__}: {text[:1500]}")
    if key is not None:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        _CACHE[key] = result
    return _answer(result)


def _answer(result: tuple[bool | None, Any]) -> Prediction:
    ok, value = result
    if ok:
        return value
    if ok is None:
        raise NeedsValues(value)
    raise RemoteError(value)


def _on_zeros(spec: OpSpec, args: list[Any], kwargs: dict[str, Any]) -> tuple[bool | None, Any]:
    """Predict an op whose code cannot run on meta tensors by running it on zeros of its
    inputs' shapes and dtypes (public values), for inputs of moderate size."""
    tensors = _tensors([*args, *kwargs.values()])
    bound = 1  # the product of the inputs' sizes bounds what broadcasting or products make
    for t in tensors:
        bound *= max(t.numel(), 2)
    if sum(t.numel() for t in tensors) > _ZEROS_MAX or bound > _ZEROS_MAX:
        raise Unpredictable(f"{spec.name} has no meta form and its inputs are large")
    memo: dict[int, Any] = {}

    def zero(a: Any) -> Any:
        if isinstance(a, torch.Tensor):
            if id(a) not in memo:
                memo[id(a)] = torch.zeros(a.shape, dtype=a.dtype).requires_grad_(
                    a.requires_grad and (a.is_floating_point() or a.is_complex())
                )
            return memo[id(a)]
        if isinstance(a, list | tuple):
            return type(a)(zero(v) for v in a)
        if isinstance(a, dict):
            return {k: zero(v) for k, v in a.items()}
        if isinstance(a, nn.Module) and is_keras_model(a):
            return _zero_module(a)
        if isinstance(a, nn.Module):
            raise Unpredictable("a module argument with no meta form")
        return a

    try:
        with torch.enable_grad():
            out = spec.fn(*[zero(a) for a in args], **{k: zero(v) for k, v in kwargs.items()})
    except Unpredictable:
        raise
    except Exception as exc:  # noqa: BLE001 - zeros are not every input: no public answer
        raise Unpredictable(f"{spec.name} failed on zeros: {exc}") from None
    return (True, describe(out))


def _zero_module(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers are zeros (public: a prediction run
    on it cannot depend on the weights, which may be private)."""
    memo: dict[int, Any] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(torch.zeros(p.shape, dtype=p.dtype),
                                   requires_grad=p.requires_grad)  # fmt: skip
    for b in module.buffers():
        memo[id(b)] = torch.zeros(b.shape, dtype=b.dtype)
    try:
        return copy.deepcopy(module, memo)
    except Exception as exc:  # noqa: BLE001 - a module that cannot be copied: no prediction
        raise Unpredictable(f"cannot copy {type(module).__name__}: {exc}") from None


#: Inputs up to this many elements may be predicted on zeros (see :func:`_on_zeros`).
_ZEROS_MAX = 1 << 24
#: What torch says when an op's code moves meta tensors to another device.
_NOT_META_CLEAN = re.compile(r"cross-device|device meta to device|Expected all tensors to be on")
#: What torch says when an op on meta tensors needs a tensor's values.
_READS_VALUES = re.compile(
    r"item\(\) cannot be called on meta|no data|without output_size|data-dependent|"
    r"_local_scalar_dense|meta tensor.*value",
    re.IGNORECASE,
)


def describe(value: Any, inputs: list[Any] | None = None) -> Prediction:
    """The public description of an op's result (what a prediction must equal)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return Meta(tuple(value.shape), value.dtype, bool(value.requires_grad))
    if isinstance(value, bool | int | float):
        return Meta((), torch.tensor(value).dtype, False)
    if isinstance(value, torch.Size):
        return Meta((len(value),), torch.int64, False)
    if isinstance(value, list | tuple):
        items = tuple(describe(v) for v in value)
        name = type(value).__name__ if type(value).__module__ == "torch.return_types" else ""
        return ("list" if isinstance(value, list) else name, items)
    if isinstance(value, nn.Module | torch.optim.Optimizer):
        return ("object", type(value).__name__)
    raise Unpredictable(f"cannot describe a {type(value).__name__}")


def matches(prediction: Prediction, value: Any) -> bool:
    """Does a real result have the predicted public description?"""
    if isinstance(prediction, Predicted):
        return True  # a declared prediction of a non-tensor kind: the op vouches for it
    try:
        got = describe(value)
    except Unpredictable:
        return False
    return _same(prediction, got)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Meta) and isinstance(b, Meta):
        return a.shape == b.shape and a.dtype == b.dtype
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == 2 and len(b) == 2:
        if a[0] != b[0]:
            return False
        if isinstance(a[1], tuple) and isinstance(b[1], tuple):
            return len(a[1]) == len(b[1]) and all(_same(x, y) for x, y in zip(a[1], b[1]))
        return bool(a[1] == b[1])
    return a is None and b is None


def placeholder(prediction: Prediction, inputs: list[Any]) -> Any:
    """A value of the predicted description, standing for a result that failed on private
    values. Tensors are zeros; one that should require grad is connected (with zero
    weight) to every float input that requires grad, so a later ``backward`` reaches the
    same leaves as it would have on success."""
    if prediction is None:
        return None
    if isinstance(prediction, Predicted):
        if prediction.placeholder is None:
            dtype = _dtype_of(prediction.dtype)
            return torch.zeros(prediction.shape, dtype=dtype)
        return prediction.placeholder
    if isinstance(prediction, Meta):
        out = torch.zeros(prediction.shape, dtype=prediction.dtype)
        if prediction.requires_grad and (out.is_floating_point() or out.is_complex()):
            feeds = [t for t in _tensors(inputs) if t.requires_grad and (t.is_floating_point())]
            if feeds:
                with torch.enable_grad():
                    zero = sum((t.sum() * 0 for t in feeds), torch.zeros((), dtype=out.dtype))
                    out = out + zero.to(out.dtype)
            else:
                out.requires_grad_(True)
        return out
    name, items = prediction
    values = [placeholder(p, inputs) for p in items]
    if name == "list":
        return values
    rt = getattr(torch.return_types, name, None) if name else None
    return rt(values) if rt is not None else tuple(values)


def _dtype_of(name: str) -> torch.dtype:
    from veil.serde.tensors import DTYPES

    return DTYPES.get(name, torch.float32)


def _tensors(values: list[Any]) -> list[torch.Tensor]:
    """Tensors in arguments, a module's parameters included (they feed its output)."""
    out: list[torch.Tensor] = []
    stack = list(values)
    while stack:
        v = stack.pop()
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, list | tuple):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, nn.Module):
            out.extend(v.parameters())
    return out


# ----------------------------------------------------------------------------- meta


#: Lists and tuples longer than this are not cached (a key must not pin memory).
_KEY_ITEMS = 64


def _signature(a: Any) -> Any:
    """What an argument contributes to its op's result description (hashable, small)."""
    t = type(a)
    if t is torch.Tensor or t is nn.Parameter:
        g = a.grad if a.is_leaf or a.retains_grad else None
        return (
            "T",
            a.shape,
            a.dtype,
            a.requires_grad,
            a.is_leaf,
            None if g is None else (g.shape, g.dtype),
        )
    if isinstance(a, nn.Module):
        return ("M", _architecture(a), _modes(a))
    if t is list or t is tuple or t is dict:
        if len(a) > _KEY_ITEMS:
            raise Unpredictable("too long to cache")
        if t is dict:
            return ("d", *((k, _signature(v)) for k, v in a.items()))
        return (t.__name__, *(_signature(v) for v in a))
    if t is slice:
        return ("s", _signature(a.start), _signature(a.stop), _signature(a.step))
    if a is None or t in (bool, int, float, torch.dtype) or a is Ellipsis:
        return (t.__name__, a)
    if t is str and len(a) <= 256:
        return ("str", a)
    raise Unpredictable(f"no signature for a {t.__name__}")


#: Architecture keys of modules (computed once per module object).
_ARCH: weakref.WeakKeyDictionary[nn.Module, Any] = weakref.WeakKeyDictionary()


def _architecture(module: nn.Module) -> Any:
    """What a forward pass's output description can depend on besides its inputs and
    modes: classes and configuration (``repr``), and each state tensor's shape and dtype."""
    key = _ARCH.get(module)
    if key is None:
        state = tuple(
            (name, tuple(t.shape), t.dtype)
            for name, t in [*module.named_parameters(), *module.named_buffers()]
        )
        key = _ARCH[module] = (repr(module), state)
    return key


def _modes(module: nn.Module) -> tuple[Any, ...]:
    return (
        tuple(m.training for m in module.modules()),
        tuple(p.requires_grad for p in module.parameters()),
    )


def _meta(a: Any, memo: dict[int, Any]) -> Any:
    if isinstance(a, torch.Tensor):
        return _meta_tensor(a, memo)
    if isinstance(a, nn.Module):
        return _meta_module(a)
    t = type(a)
    if t is list or t is tuple:
        return t(_meta(v, memo) for v in a)
    if t is dict:
        return {k: _meta(v, memo) for k, v in a.items()}
    if t is slice:
        return slice(_meta(a.start, memo), _meta(a.stop, memo), _meta(a.step, memo))
    if a is None or t in (bool, int, float, str, torch.dtype) or a is Ellipsis:
        return a
    raise Unpredictable(f"a {t.__name__} has no meta form")


def _numbers(a: Any) -> Any:
    """One-element integer tensors as Python ints (for public arguments only)."""
    if isinstance(a, torch.Tensor):
        if a.numel() == 1 and not (a.is_floating_point() or a.is_complex()):
            if a.dtype != torch.bool and a.dim() <= 1:
                return int(a) if a.dim() == 0 else [int(a)]
        return a
    if type(a) is list or type(a) is tuple:
        return type(a)(_numbers(v) for v in a)
    if type(a) is slice:
        return slice(_numbers(a.start), _numbers(a.stop), _numbers(a.step))
    return a


def _positions(index: Any, meta: Any) -> Any:
    """An index for a meta run: 0-d integer tensors become the position 0 (the result's
    shape is the same for every valid position; an invalid one fails on private values),
    and boolean masks (public: a node refuses private ones first) the positions they pick."""
    if isinstance(index, torch.Tensor):
        if index.dtype in (torch.bool, torch.uint8) and index.dim() > 0:
            return tuple(i.to("meta") for i in index.bool().nonzero(as_tuple=True))
        if index.dim() == 0 and not index.is_floating_point():
            return 0
        return meta
    if isinstance(index, tuple):
        out: list[Any] = []
        for i, m in zip(index, meta):
            p = _positions(i, m)
            if isinstance(i, torch.Tensor) and isinstance(p, tuple):
                out.extend(p)  # a k-dim mask indexes k dimensions
            else:
                out.append(p)
        return tuple(out)
    return meta


def _mask_counts(index: Any) -> Any:
    items = index if isinstance(index, tuple | list) else (index,)
    return tuple(
        int(i.count_nonzero())
        for i in items
        if isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) and i.dim() > 0
    )


def _meta_tensor(t: torch.Tensor, memo: dict[int, Any]) -> torch.Tensor:
    hit = memo.get(id(t))
    if hit is not None:
        return hit  # type: ignore[no-any-return]
    m = torch.empty(t.shape, dtype=t.dtype, device="meta")
    if t.requires_grad:
        m.requires_grad_(True)
        if not t.is_leaf:  # keep leafness: in-place ops on a leaf that requires grad fail
            m = m.clone()
    if (t.is_leaf or t.retains_grad) and t.grad is not None and m.is_leaf:
        m.grad = torch.empty(t.grad.shape, dtype=t.grad.dtype, device="meta")
    memo[id(t)] = m
    return m


def _meta_module(module: nn.Module) -> nn.Module:
    modes = _modes(module)
    hit = _MODULES.get(module)
    if hit is not None and hit[0] == modes:
        return hit[1]
    memo: dict[int, Any] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(
            torch.empty(p.shape, dtype=p.dtype, device="meta"), requires_grad=p.requires_grad
        )
    for b in module.buffers():
        memo[id(b)] = torch.empty(b.shape, dtype=b.dtype, device="meta")
    try:
        meta = copy.deepcopy(module, memo)
    except Exception as exc:  # noqa: BLE001 - a module that cannot be copied has no meta form
        raise Unpredictable(f"cannot copy {type(module).__name__}: {exc}") from None
    _MODULES[module] = (modes, meta)
    return meta


def result_bytes(prediction: Prediction) -> int:
    """Bytes of the tensors a prediction describes."""
    if isinstance(prediction, Meta):
        n = 1
        for d in prediction.shape:
            n *= d
        return n * _itemsize(prediction.dtype)
    if isinstance(prediction, Predicted):
        n = 1
        for d in prediction.shape:
            n *= d
        return n * 8
    if isinstance(prediction, tuple) and len(prediction) == 2 and isinstance(prediction[1], tuple):
        return sum(result_bytes(p) for p in prediction[1])
    return 0


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


#: Callable signature of a prediction hook, for documentation.
PredictFn = Callable[[list[Any], dict[str, Any]], Prediction]

_ = InvalidRequest  # raised by declared predictions; re-exported for callers' except clauses
