"""What :class:`~veil.mpc.SharedTensor` and :class:`~veil.mpc.authenticated.AuthenticatedTensor`
derive the same way from their own primitives (a sign bit, products, shape ops): comparisons,
selection, maxima, pooling and the approximations. In malicious mode every opening these
make is a MAC-checked one, because the primitives are.

Example:
    >>> import torch, veil
    >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
    >>> x = torch.tensor([1.5, -2.0, 0.5]).share(a, b, crypto_provider=c)
    >>> (x > 0).reconstruct(), x.relu().reconstruct()
    (tensor([1., 0., 1.]), tensor([1.5000, 0.0000, 0.5000]))
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, cast

Op = TypeVar("Op", bound=Callable[..., Any])


def defers(op: Op) -> Op:
    """Make a binary operator answer ``NotImplemented`` when the other operand is an
    autograd wrapper of a shared tensor, so that Python runs the wrapper's reflected
    operator (which records the op on the tape) instead of treating it as a public value."""

    @functools.wraps(op)
    def run(self: Any, other: Any) -> Any:
        if DerivedOps._defer_to and isinstance(other, DerivedOps._defer_to):
            return NotImplemented
        return op(self, other)

    return cast(Op, run)


class DerivedOps:
    """Base of both shared tensor classes: the shares (one private pointer per party), the
    session and the fixed-point encoding, and what follows from them. Needs ``shape``,
    ``get()``, ``_sign()`` (1 where negative), + - * with shared and public operands,
    ``reshape``, ``cat`` and ``_broadcast_shape`` from the class."""

    __slots__ = ("shares", "session", "encoding", "source_dtype")
    #: How torch functions (``F.relu(x)``, ``torch.cat``...) run on shared tensors: set by
    #: :mod:`veil.mpc.tensors.autograd`, which implements them.
    _torch_function: ClassVar[Any] = None
    #: Types a binary operator leaves to (see :func:`defers`): set by the same module.
    _defer_to: ClassVar[tuple[type, ...]] = ()

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if DerivedOps._torch_function is None:
            return NotImplemented
        return DerivedOps._torch_function(func, types, args, kwargs)

    def __init__(self, shares: list[Any], session: Any, encoding: Any) -> None:
        self.shares = shares
        self.session = session
        self.encoding = encoding
        #: The integer dtype of the tensor that was shared (None for floats and for results
        #: of ops): ``get().float_precision()`` gives that dtype back, as PySyft did.
        self.source_dtype: Any = None

    def _new(self: Any, shares: list[Any], encoding: Any = None) -> Any:
        return type(self)(shares, self.session, encoding or self.encoding)

    # ------------------------------------------------------------- introspection
    def size(self: Any, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def dim(self: Any) -> int:
        return len(self.shape)

    def numel(self: Any) -> int:
        return math.prod(self.shape)

    def __len__(self: Any) -> int:
        return int(self.shape[0])

    @property
    def parties(self) -> list[Any]:
        return list(self.session.parties)

    def reconstruct(self: Any) -> Any:
        """``get().float_precision()`` (in malicious mode ``get`` checks the MACs first)."""
        return self.get().float_precision()

    def request(self, reason: str) -> list[Any]:
        """Ask every party's owner for access to its share (one request per party)."""
        return [s.request(reason) for s in self.shares]

    # ------------------------------------------------------------- comparisons
    def __lt__(self: Any, other: Any) -> Any:
        return (self - other)._sign()

    def __gt__(self: Any, other: Any) -> Any:
        return (-(self - other))._sign()

    def __le__(self: Any, other: Any) -> Any:
        return 1 - (self > other)

    def __ge__(self: Any, other: Any) -> Any:
        return 1 - (self < other)

    lt, gt, le, ge = __lt__, __gt__, __le__, __ge__

    def eq(self: Any, other: Any) -> Any:
        """1 where equal (in fixed point), else 0: ``x < y`` and ``x > y`` in one batch of
        sign bits; they never hold together, so equal = 1 - lt - gt with no product."""
        diff = (self - other).reshape(-1)
        signs = type(self).cat([diff, -diff], 0)._sign()
        n = diff.numel()
        return (1 - signs[:n] - signs[n:]).reshape(*self._broadcast_shape(other))

    __eq__ = eq  # type: ignore[assignment]
    __hash__ = None  # type: ignore[assignment]

    def relu(self: Any) -> Any:
        """``max(x, 0)``: a sign bit and one product."""
        keep = 1 - self._sign()
        return self * keep

    def where(self: Any, cond: Any, other: Any) -> Any:
        """``cond ? self : other`` for a shared 0/1 ``cond``."""
        return (self - other) * cond + other

    # ------------------------------------------------------------- maxima and pooling
    def max(self: Any, dim: int | None = None, keepdim: bool = False) -> Any:
        """Maximum (over all elements, or along ``dim`` with the one-hot argmax: returns
        ``(values, onehot_argmax)``); see :func:`veil.mpc.reduce.max_along`."""
        from veil.mpc.protocols.reduce import max_along

        if dim is None:
            v, _ = max_along(self.reshape(-1), 0, keepdim=False, onehot=False)
            return v
        return max_along(self, dim, keepdim=keepdim, onehot=True)

    def argmax(self: Any, dim: int | None = None, keepdim: bool = False, *,
               one_hot: bool = False) -> Any:  # fmt: skip
        """Shared position of the maximum along ``dim`` (of the flattened tensor when
        ``dim`` is None), an integer as in torch (the first maximum on ties);
        ``one_hot=True`` answers the one-hot mask of that position instead.

        Example:
            >>> import torch, veil
            >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
            >>> x = torch.tensor([[1.0, 5.0, 2.0], [3.0, 0.0, 1.0]]).share(a, b, crypto_provider=c)
            >>> x.argmax(dim=1).reconstruct(), x.argmax().reconstruct()
            (tensor([1., 0.]), tensor(1.))
        """
        import torch

        from veil.mpc.protocols.reduce import max_along

        x = self.reshape(-1) if dim is None else self
        d = 0 if dim is None else dim % x.dim()
        _, onehot = max_along(x, d, keepdim=True, onehot=True)
        if one_hot:
            return onehot
        shape = [1] * x.dim()
        shape[d] = x.shape[d]
        index = (onehot * torch.arange(x.shape[d]).reshape(shape)).sum(d, keepdim=keepdim)
        return index.reshape(()) if dim is None and not keepdim else index

    # ------------------------------------------------------------- PySyft 0.2's small pieces
    def __pow__(self: Any, exponent: int) -> Any:
        """``x ** k`` for an integer ``k >= 1`` (square and multiply: about log2 k products).

        Example:
            >>> import torch, veil
            >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
            >>> (torch.tensor([1.5, -2.0]).share(a, b, crypto_provider=c) ** 3).reconstruct()
            tensor([ 3.3750, -8.0000])
        """
        if isinstance(exponent, bool) or not isinstance(exponent, int) or exponent < 1:
            raise ValueError(f"a shared tensor's power takes an int >= 1, got {exponent!r}")
        result, base, k = None, self, exponent
        while k:
            if k & 1:
                result = base if result is None else result * base
            k >>= 1
            if k:
                base = base.square()
        return result

    def view_as(self: Any, other: Any) -> Any:
        """``reshape`` to ``other``'s shape (a tensor, a pointer or a shared tensor)."""
        return self.reshape(*other.shape)

    def copy(self: Any) -> Any:
        """A new shared tensor with the same value (each party clones its share).

        Example:
            >>> import torch, veil
            >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
            >>> x = torch.tensor([1.0, 2.0]).share(a, b, crypto_provider=c)
            >>> y = x.copy()
            >>> y.shares[0].id != x.shares[0].id, y.reconstruct()
            (True, tensor([1., 2.]))
        """
        return self._map(lambda s: s.clone())

    def max_pool2d(self: Any, kernel_size: int, stride: int | None = None) -> Any:
        from veil.mpc.protocols.reduce import max_pool2d

        return max_pool2d(self, kernel_size, stride)

    def avg_pool2d(self: Any, kernel_size: int, stride: int | None = None) -> Any:
        from veil.mpc.protocols.reduce import avg_pool2d

        return avg_pool2d(self, kernel_size, stride)

    # ------------------------------------------------------------- approximations
    def exp(self: Any) -> Any:
        from veil.mpc.protocols import approx

        return approx.exp(self)

    def reciprocal(self: Any) -> Any:
        from veil.mpc.protocols import approx

        return approx.reciprocal(self)

    def log(self: Any) -> Any:
        from veil.mpc.protocols import approx

        return approx.log(self)

    def sqrt(self: Any) -> Any:
        from veil.mpc.protocols import approx

        return approx.sqrt(self)

    def sigmoid(self: Any) -> Any:
        from veil.mpc.protocols import approx

        return approx.sigmoid(self)

    def tanh(self: Any) -> Any:
        from veil.mpc.protocols import approx

        return approx.tanh(self)

    def softmax(self: Any, dim: int = -1) -> Any:
        from veil.mpc.protocols import approx

        return approx.softmax(self, dim)
