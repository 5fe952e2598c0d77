"""Differentiable ops on shared tensors: each computes its result with the shared protocols
and records the rule that sends the gradient back (also on shares). Shape ops, sums and
additions are free; products, matmuls and ReLU cost what their forward costs.

Example:
    >>> import torch, veil
    >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
    >>> x = torch.tensor([[1.0, -2.0], [0.5, 3.0]]).share(a, b, crypto_provider=c, requires_grad=True)
    >>> y = (x.relu() ** 2).sum()
    >>> y.backward()
    >>> y.reconstruct(), x.grad.reconstruct()
    (tensor(10.2500), tensor([[2., 0.],
            [1., 6.]]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from veil.errors import UnsupportedError
from veil.mpc.ring import broadcast_shapes
from veil.mpc.tensors.autograd import AutogradTensor, is_secret, record, register, unwrap

T = "torch.Tensor."
TORCH = "torch."


def shape_of(x: Any) -> torch.Size:
    """The shape of a shared or public value (``()`` for a number)."""
    s = getattr(unwrap(x), "shape", None)
    return torch.Size(s) if s is not None else torch.Size([])


def unbroadcast(g: Any, shape: Sequence[int]) -> Any:
    """Sum the gradient ``g`` over the dimensions broadcasting added to a ``shape`` input."""
    if tuple(g.shape) == tuple(shape):
        return g
    while g.dim() > len(shape):
        g = g.sum(0)
    for i, n in enumerate(shape):
        if n == 1 and g.shape[i] != 1:
            g = g.sum(i, keepdim=True)
    return g


def _mm(x: Any, y: Any) -> Any:
    return x @ y if is_secret(x) else y.__rmatmul__(x)


def _pub(x: Any) -> Any:
    return x.detach() if isinstance(x, torch.Tensor) and not isinstance(x, AutogradTensor) else x


# ----------------------------------------------------------------- + - * /


@register(f"{TORCH}add", f"{T}add", f"{T}__add__", f"{T}__radd__", f"{T}__iadd__")
def add(a: Any, b: Any, *, alpha: Any = 1) -> AutogradTensor:
    if alpha != 1:
        b = mul(b, alpha) if isinstance(b, AutogradTensor) or is_secret(b) else _pub(b) * alpha
    x, y = unwrap(a), _pub(unwrap(b))
    out = x + y if is_secret(x) else y + _pub(x)
    sa, sb = shape_of(a), shape_of(b)
    return record(out, "Add", [a, b],
                  lambda g, n: (unbroadcast(g, sa) if n[0] else None,
                                unbroadcast(g, sb) if n[1] else None))  # fmt: skip


@register(f"{TORCH}sub", f"{T}sub", f"{T}__sub__", f"{T}__isub__")
def sub(a: Any, b: Any, *, alpha: Any = 1) -> AutogradTensor:
    return add(a, neg(b) if isinstance(b, AutogradTensor) else -_pub(b), alpha=alpha)


@register(f"{TORCH}rsub", f"{T}__rsub__")
def rsub(a: Any, b: Any, *, alpha: Any = 1) -> AutogradTensor:
    return add(neg(mul(a, alpha) if alpha != 1 else a), b)  # b - alpha * a


@register(f"{TORCH}neg", f"{T}neg", f"{T}__neg__", f"{TORCH}negative")
def neg(a: Any) -> AutogradTensor:
    return record(-unwrap(a), "Neg", [a], lambda g, n: (-g,))


@register(f"{TORCH}mul", f"{T}mul", f"{T}__mul__", f"{T}__rmul__", f"{T}__imul__")
def mul(a: Any, b: Any) -> AutogradTensor:
    x, y = unwrap(a), _pub(unwrap(b))
    sa, sb = shape_of(a), shape_of(b)
    if is_secret(x) and is_secret(y):
        shape = broadcast_shapes(sa, sb)
        x = x if x.shape == shape else x.expand(*shape)
        y = y if y.shape == shape else y.expand(*shape)
        out = x * y

        def both(g: Any, n: Sequence[bool]) -> tuple[Any, Any]:
            if n[0] and n[1]:
                ga, gb = g._mul_many([(g, y), (g, x)])
                return unbroadcast(ga, sa), unbroadcast(gb, sb)
            return (unbroadcast(g * y, sa) if n[0] else None,
                    unbroadcast(g * x, sb) if n[1] else None)  # fmt: skip

        return record(out, "Mul", [a, b], both)
    sec, pub = (x, y) if is_secret(x) else (y, _pub(x))
    out = sec * pub
    return record(out, "Mul", [a, b],
                  lambda g, n: (unbroadcast(g * y, sa) if n[0] else None,
                                unbroadcast(g * x, sb) if n[1] else None))  # fmt: skip


@register(f"{TORCH}div", f"{T}div", f"{T}__truediv__", f"{T}__itruediv__", f"{TORCH}true_divide")
def div(a: Any, b: Any) -> AutogradTensor:
    if isinstance(b, AutogradTensor) or is_secret(b):
        return mul(a, reciprocal(b))
    if bool((torch.as_tensor(b) == 0).any()):
        raise ZeroDivisionError("division of a shared tensor by zero")
    return mul(a, 1.0 / (b.double() if isinstance(b, torch.Tensor) else float(b)))


@register(f"{T}__rtruediv__", f"{T}__rdiv__")
def rdiv(a: Any, b: Any) -> AutogradTensor:
    return mul(reciprocal(a), b)


@register(f"{TORCH}matmul", f"{T}matmul", f"{T}__matmul__", f"{TORCH}mm", f"{T}mm")
def matmul(a: Any, b: Any) -> AutogradTensor:
    x, y = unwrap(a), _pub(unwrap(b))
    x = _pub(x)
    out = _mm(x, y)
    sa, sb = shape_of(a), shape_of(b)
    x1, y1 = len(sa) == 1, len(sb) == 1

    def rule(g: Any, n: Sequence[bool]) -> tuple[Any, Any]:
        xa = x.unsqueeze(0) if x1 else x
        yb = y.unsqueeze(-1) if y1 else y
        xs_, ys_ = tuple(xa.shape), tuple(yb.shape)
        gg = g.reshape(*broadcast_shapes(xs_[:-2], ys_[:-2]), xs_[-2], ys_[-1])
        ga = gb = None
        if n[0]:
            ga = _mm(gg, yb.transpose(-1, -2))
            ga = unbroadcast(ga.squeeze(-2) if x1 else ga, sa)
        if n[1]:
            gb = _mm(xa.transpose(-1, -2), gg)
            gb = unbroadcast(gb.squeeze(-1) if y1 else gb, sb)
        return ga, gb

    return record(out, "MatMul", [a, b], rule)


@register(f"{T}__rmatmul__")
def rmatmul(a: Any, b: Any) -> AutogradTensor:
    return matmul(b, a)


# ----------------------------------------------------------------- powers and reductions


@register(f"{TORCH}square", f"{T}square")
def square(a: Any) -> AutogradTensor:
    x = unwrap(a)
    return record(x.square(), "Square", [a], lambda g, n: ((g * x) * 2,))


@register(f"{TORCH}pow", f"{T}pow", f"{T}__pow__", f"{T}__ipow__")
def pow_(a: Any, k: Any) -> AutogradTensor:
    """Integer powers ``x ** k`` (k >= 0) by squaring and multiplying."""
    if isinstance(k, torch.Tensor) or not float(k).is_integer() or k < 0:
        raise UnsupportedError(f"x ** {k!r}: shared tensors take non-negative integer powers")
    e = int(k)
    if e == 0:
        return AutogradTensor(unwrap(a) * 0 + 1)
    result: AutogradTensor | None = None
    base: Any = a
    while e:
        if e & 1:
            result = base if result is None else mul(result, base)
        e >>= 1
        if e:
            base = square(base)
    assert result is not None
    return result if result is not a else add(a, 0)


@register(f"{T}__rpow__")
def rpow(a: Any, base: Any) -> AutogradTensor:
    if float(base) <= 0:
        raise UnsupportedError(f"{base!r} ** x: shared exponents need a positive public base")
    return exp(mul(a, math.log(float(base))))


def _dims(dim: Any, nd: int) -> list[int]:
    return sorted(d % nd for d in (dim if isinstance(dim, list | tuple) else [dim]))


@register(f"{TORCH}sum", f"{T}sum")
def sum_(a: Any, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> AutogradTensor:
    x = unwrap(a)
    shape = x.shape
    out = x.sum(dim, keepdim) if dim is not None else x.sum()

    def rule(g: Any, n: Sequence[bool]) -> tuple[Any]:
        if len(shape) == 0:
            return (g,)
        if dim is None:
            return (g.reshape(*[1] * len(shape)).expand(*shape),)
        if not keepdim:
            for d in _dims(dim, len(shape)):
                g = g.unsqueeze(d)
        return (g.expand(*shape),)

    return record(out, "Sum", [a], rule)


@register(f"{TORCH}mean", f"{T}mean")
def mean(a: Any, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> AutogradTensor:
    shape = shape_of(a)
    n = math.prod(shape) if dim is None else math.prod(shape[d] for d in _dims(dim, len(shape)))
    return mul(sum_(a, dim, keepdim), 1.0 / n)


# ----------------------------------------------------------------- nonlinearities


@register(f"{TORCH}relu", f"{T}relu", "torch.nn.functional.relu")
def relu(a: Any, inplace: bool = False) -> AutogradTensor:
    x = unwrap(a)
    keep = (-x)._sign()  # 1 where x > 0: the derivative at 0 is 0, as in torch
    return record(x * keep, "Relu", [a], lambda g, n: (g * keep,))


@register(f"{TORCH}sigmoid", f"{T}sigmoid", "torch.nn.functional.sigmoid")
def sigmoid(a: Any) -> AutogradTensor:
    s = unwrap(a).sigmoid()
    return record(s, "Sigmoid", [a], lambda g, n: (g * (s - s.square()),))


@register(f"{TORCH}tanh", f"{T}tanh", "torch.nn.functional.tanh")
def tanh(a: Any) -> AutogradTensor:
    t = unwrap(a).tanh()
    return record(t, "Tanh", [a], lambda g, n: (g * (1 - t.square()),))


@register(f"{TORCH}exp", f"{T}exp")
def exp(a: Any) -> AutogradTensor:
    e = unwrap(a).exp()
    return record(e, "Exp", [a], lambda g, n: (g * e,))


@register(f"{TORCH}log", f"{T}log")
def log(a: Any) -> AutogradTensor:
    x = unwrap(a)
    return record(x.log(), "Log", [a], lambda g, n: (g * x.reciprocal(),))


@register(f"{TORCH}reciprocal", f"{T}reciprocal")
def reciprocal(a: Any) -> AutogradTensor:
    r = unwrap(a).reciprocal()
    return record(r, "Reciprocal", [a], lambda g, n: (-(g * r.square()),))


@register(f"{TORCH}sqrt", f"{T}sqrt")
def sqrt(a: Any) -> AutogradTensor:
    r = unwrap(a).sqrt()
    return record(r, "Sqrt", [a], lambda g, n: (g * (r.reciprocal() * 0.5),))


@register(f"{TORCH}softmax", f"{T}softmax", "torch.nn.functional.softmax")
def softmax(
    a: Any, dim: int | None = None, _stacklevel: int = 3, dtype: Any = None
) -> AutogradTensor:
    x = unwrap(a)
    d = -1 if dim is None else dim
    s = x.softmax(d)

    def rule(g: Any, n: Sequence[bool]) -> tuple[Any]:
        gs = g * s
        return (gs - s * gs.sum(d, keepdim=True).expand(*s.shape),)

    return record(s, "Softmax", [a], rule)


# ----------------------------------------------------------------- non-differentiable


def _constant(fn: Any) -> Any:
    def op(*args: Any, **kwargs: Any) -> AutogradTensor:
        vals = [unwrap(x) for x in args]
        if not is_secret(vals[0]):
            raise UnsupportedError("compare a shared tensor on the left: x.eq(y), x > y")
        return AutogradTensor(fn(*vals, **{k: unwrap(v) for k, v in kwargs.items()}))

    return op


for _name, _fn in {
    "eq": lambda x, y: x.eq(y), "gt": lambda x, y: x > y, "lt": lambda x, y: x < y,
    "ge": lambda x, y: x >= y, "le": lambda x, y: x <= y,
}.items():  # fmt: skip
    register(f"{TORCH}{_name}", f"{T}{_name}", f"{T}__{_name}__")(_constant(_fn))
register(f"{TORCH}argmax", f"{T}argmax")(
    _constant(lambda x, dim=None, keepdim=False: x.argmax(dim, keepdim))
)


@register(f"{TORCH}max", f"{T}max")
def max_(a: Any, dim: int | None = None, keepdim: bool = False) -> Any:
    """Maximum of all elements, or ``(values, indices)`` along ``dim`` (both shared; no
    gradient flows through them)."""
    x = unwrap(a)
    if dim is None:
        return AutogradTensor(x.max())
    values, _ = x.max(dim, keepdim)
    return AutogradTensor(values), AutogradTensor(x.argmax(dim, keepdim))


@register(f"{TORCH}where", f"{T}where")
def where(cond: Any, a: Any, b: Any) -> AutogradTensor:
    """``cond ? a : b`` for a shared 0/1 ``cond`` (gradients flow to ``a`` and ``b``)."""
    c = AutogradTensor(unwrap(cond)) if is_secret(unwrap(cond)) else cond
    return add(mul(sub(a, b), c), b)


_SECRET_VALUE = ("__bool__", "__float__", "__int__", "__index__", "item", "tolist", "numpy")
for _name in _SECRET_VALUE:

    def _refuse(*args: Any, _n: str = _name, **kwargs: Any) -> Any:
        raise UnsupportedError(
            f"{_n} of a shared tensor would reveal a secret value; reconstruct it with "
            ".get().float_precision() when the parties' owners allow it"
        )

    register(f"{T}{_name}")(_refuse)
