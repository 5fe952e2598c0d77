"""Reverse-mode autograd on shared tensors: :class:`AutogradTensor` records each op on a
secret in a tape, and ``loss.backward()`` runs the gradient rules on the shares.

An ``AutogradTensor`` is a ``torch.Tensor`` subclass with no data of its own: it holds a
secret (:class:`~veil.mpc.SharedTensor` or, in malicious mode,
:class:`~veil.mpc.tensors.authenticated.AuthenticatedTensor`) and answers torch calls
through ``__torch_function__`` (the table of :mod:`veil.mpc.tensors.gradients`). Being a
tensor, it can be a parameter of a ``torch.nn.Module`` and of a ``torch.optim`` optimizer,
so a model's own ``forward`` runs on shares. The tape lives with whoever drives the
computation, like PySyft's AutogradTensor and CrypTen's gradients: the parties see only
the protocols' masked openings, for the backward pass as for the forward one.

Example:
    >>> import torch, veil
    >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
    >>> w = torch.tensor([1.0, -2.0]).share(a, b, crypto_provider=c, requires_grad=True)
    >>> x = torch.tensor([3.0, 0.5]).share(a, b, crypto_provider=c)
    >>> loss = ((w * x).sum() - 1) ** 2
    >>> loss.backward()
    >>> w.grad.reconstruct()  # 2 * (w.x - 1) * x
    tensor([6., 1.])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.overrides import resolve_name

from veil.errors import UnsupportedError
from veil.mpc.tensors.surface import DerivedOps

if TYPE_CHECKING:
    from veil.mpc.tensors.fixed import FixedPrecisionTensor

#: A gradient rule: the output's gradient -> one gradient (or None) per recorded input.
Backward = Callable[[Any], Sequence[Any]]
#: torch function name (``torch.overrides.resolve_name``) -> implementation on secrets.
HANDLERS: dict[str, Callable[..., Any]] = {}
#: Functions that only read metadata the wrapper has itself (shape, dtype, identity).
PASSTHROUGH = frozenset(
    f"torch.Tensor.{n}"
    for n in (
        "shape.__get__", "dtype.__get__", "device.__get__", "is_leaf.__get__", "ndim.__get__",
        "layout.__get__", "is_sparse.__get__", "is_cuda.__get__", "is_meta.__get__",
        "is_quantized.__get__", "is_nested.__get__", "requires_grad.__get__",
        "size", "dim", "numel", "nelement", "__hash__", "__len__", "is_floating_point",
        "is_complex", "ndimension", "_is_view", "is_sparse", "output_nr.__get__",
        "_base.__get__", "names.__get__", "grad_fn.__get__", "data_ptr",
    )
)  # fmt: skip


def register(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make the decorated function the implementation of the torch functions ``names``
    (as ``torch.overrides.resolve_name`` spells them), refusing a name registered twice.

    Example:
        >>> sorted(n for n in HANDLERS if n.endswith(".relu"))
        ['torch.Tensor.relu', 'torch.nn.functional.relu', 'torch.relu']
        >>> register("torch.relu")(lambda x: x)
        Traceback (most recent call last):
        ...
        ValueError: torch.relu has an implementation on shared tensors already
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        for name in names:
            if name in HANDLERS:
                raise ValueError(f"{name} has an implementation on shared tensors already")
            HANDLERS[name] = fn
        return fn

    return deco


@dataclass(eq=False, repr=False, slots=True)
class Node:
    """One recorded op (a tensor's ``grad_fn``): its name, the inputs whose gradient is
    wanted (None for the others) and the rule mapping the output's gradient to theirs.

    Example:
        >>> Node("Mul", (None, None), lambda g: (None, None))
        <MulBackward>
    """

    name: str
    inputs: tuple[AutogradTensor | None, ...]
    rule: Backward

    def __repr__(self) -> str:
        return f"<{self.name}Backward>"


def is_secret(x: Any) -> bool:
    """Whether ``x`` is a bare secret (a shared tensor without the autograd wrapper).

    Example:
        >>> is_secret(torch.ones(1))
        False
    """
    return isinstance(x, DerivedOps)


class AutogradTensor(torch.Tensor):
    """A secret with a tape: torch calls on it run on the shares and, when
    ``requires_grad``, record how to send gradients back (see the module docstring).

    Example:
        >>> import veil
        >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
        >>> x = AutogradTensor(torch.tensor([2.0]).share(a, b, crypto_provider=c), requires_grad=True)
        >>> y = x * x
        >>> y
        AutogradTensor(SharedTensor(shape=1, parties=['a', 'b'], provider='c', frac_bits=16, security='semi-honest'), requires_grad=True, grad_fn=<MulBackward>)
        >>> y.sum().backward(); x.grad.reconstruct()
        tensor([4.])

    Attributes:
        secret: the shared value (its shares, session and fixed-point encoding).
        grad: after ``backward()``, the gradient (an AutogradTensor) of a leaf that
            requires one; ``None`` before or after ``zero_grad``.
    """

    secret: Any
    _wants: bool
    _node: Node | None
    _vgrad: Any

    @staticmethod
    def __new__(cls, secret: Any, *, requires_grad: bool = False,
                node: Node | None = None) -> AutogradTensor:  # fmt: skip
        out = torch.Tensor._make_wrapper_subclass(cls, tuple(secret.shape), dtype=torch.float32)
        out.secret, out._wants, out._node, out._vgrad = secret, bool(requires_grad), node, None
        return out  # type: ignore[no-any-return]

    def __init__(self, secret: Any, *, requires_grad: bool = False,
                 node: Node | None = None) -> None:  # fmt: skip
        super().__init__()

    # ------------------------------------------------------------- torch protocol
    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:  # fmt: skip
        return dispatch(func, args, kwargs or {})

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Sequence[Any] = (),  # type: ignore[override]
                           kwargs: dict[str, Any] | None = None) -> Any:  # fmt: skip
        raise UnsupportedError(f"{func} is not supported on shared tensors")

    # ------------------------------------------------------------- autograd surface
    @property  # type: ignore[override]
    def requires_grad(self) -> bool:
        return self._wants

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        if self._node is not None and not value:
            raise RuntimeError("you can only change requires_grad flags of leaf variables")
        self._wants = bool(value)

    def requires_grad_(self, requires_grad: bool = True) -> AutogradTensor:  # type: ignore[override]
        self.requires_grad = requires_grad
        return self

    @property  # type: ignore[override]
    def grad(self) -> AutogradTensor | None:
        return None if self._vgrad is None else AutogradTensor(self._vgrad)

    @grad.setter
    def grad(self, value: Any) -> None:
        self._vgrad = None if value is None else unwrap(value)

    @property
    def grad_fn(self) -> Node | None:  # type: ignore[override]
        return self._node

    def backward(self, gradient: Any = None, retain_graph: bool | None = None,  # type: ignore[override]
                 create_graph: bool = False, inputs: Any = None) -> None:  # fmt: skip
        """Back-propagate from this tensor (a scalar, or pass ``gradient``): every leaf
        that requires a gradient gets it added to its ``.grad``."""
        if not self._wants:
            raise RuntimeError(
                "element 0 of tensors does not require grad and does not have a grad_fn"
            )
        if gradient is None:
            if self.secret.numel() != 1:
                raise RuntimeError("grad can be implicitly created only for scalar outputs")
            seed = self.secret * 0 + 1
        else:
            g = unwrap(gradient)
            seed = g if is_secret(g) else self.secret * 0 + g
        run_backward(self, seed)

    def detach(self) -> AutogradTensor:  # type: ignore[override]
        """The same secret, off the tape."""
        return AutogradTensor(self.secret)

    # ------------------------------------------------------------- veil surface
    def get(self) -> FixedPrecisionTensor:
        """Reconstruct (needs read access to every share, as for any shared tensor)."""
        return self.secret.get()  # type: ignore[no-any-return]

    def reconstruct(self) -> torch.Tensor:
        """``get().float_precision()``."""
        return self.secret.reconstruct()  # type: ignore[no-any-return]

    def copy(self) -> AutogradTensor:  # type: ignore[override]
        """A new leaf holding the same shares (shares are never changed in place)."""
        return AutogradTensor(self.secret, requires_grad=self._wants)

    def refresh(self) -> AutogradTensor:
        """The same value under fresh shares: a new random sharing of zero is added (one
        message per party; the driver learns nothing new, the shares change)."""
        return HANDLERS["refresh"](self)  # type: ignore[no-any-return]

    @property
    def session(self) -> Any:
        return self.secret.session

    @property
    def encoding(self) -> Any:
        return self.secret.encoding

    def __repr__(self, *, tensor_contents: Any = None) -> str:  # type: ignore[override]
        inner = repr(self.secret)
        grad = ", requires_grad=True" if self._wants else ""
        fn = f", grad_fn={self._node!r}" if self._node is not None else ""
        return f"AutogradTensor({inner}{grad}{fn})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce_ex__(self, proto: Any) -> Any:
        raise TypeError("shared tensors are not pickled; each share lives on its party's node")


def unwrap(x: Any) -> Any:
    """The secret inside an AutogradTensor, or ``x`` itself.

    Example:
        >>> unwrap(3.0)
        3.0
    """
    return x.secret if isinstance(x, AutogradTensor) else x


def _flat(args: Any) -> list[Any]:
    out: list[Any] = []
    for a in args:
        if isinstance(a, list | tuple):
            out += _flat(a)
        else:
            out.append(a)
    return out


def dispatch(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """Run the torch function ``func`` on secrets. Called by ``__torch_function__`` of
    AutogradTensor and of bare shared tensors; a call with no AutogradTensor argument
    answers bare secrets, as it was given.

    Raises:
        UnsupportedError: naming the op, when it has no implementation on shares.

    Example:
        >>> import veil
        >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
        >>> x = torch.tensor([-1.0, 2.0]).share(a, b, crypto_provider=c)
        >>> dispatch(torch.relu, (x,), {}).reconstruct()
        tensor([0., 2.])
        >>> dispatch(torch.erf, (x,), {})
        Traceback (most recent call last):
        ...
        veil.errors.UnsupportedError: torch.erf is not supported on shared tensors ...
    """
    name = resolve_name(func) or getattr(func, "__name__", repr(func))
    if name in PASSTHROUGH:
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)
    if name not in HANDLERS:
        raise UnsupportedError(
            f"{name} is not supported on shared tensors (veil runs {len(HANDLERS)} torch "
            "functions on shares: arithmetic, matmul/linear/conv2d, relu, sigmoid, softmax, "
            "pooling, shape ops, cat, sums, losses; see veil.mpc.tensors.autograd.HANDLERS)"
        )
    wrapped = any(isinstance(a, AutogradTensor) for a in _flat(args) + list(kwargs.values()))
    out = HANDLERS[name](*args, **kwargs)
    if wrapped:
        return out
    return tuple(unwrap(o) for o in out) if isinstance(out, tuple) else unwrap(out)


def record(
    out: Any, name: str, inputs: Sequence[Any], rule: Callable[..., Sequence[Any]]
) -> AutogradTensor:
    """Wrap the secret ``out`` computed from ``inputs``; when grad mode is on and an input
    requires a gradient, record ``rule(grad, needs)`` (``needs[i]``: whether input ``i``
    wants its gradient) on the tape.

    Example:
        >>> import veil
        >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
        >>> x = torch.tensor([1.0]).share(a, b, crypto_provider=c, requires_grad=True)
        >>> y = record(x.secret * 3, "Triple", [x], lambda g, needs: (g * 3,))
        >>> y.grad_fn, y.requires_grad
        (<TripleBackward>, True)
    """
    needs = tuple(isinstance(i, AutogradTensor) and i._wants for i in inputs)
    if not (any(needs) and torch.is_grad_enabled()):
        return AutogradTensor(out)
    node = Node(name, tuple(i if n else None for i, n in zip(inputs, needs, strict=True)),
                lambda g: rule(g, needs))  # fmt: skip
    return AutogradTensor(out, requires_grad=True, node=node)


def run_backward(root: AutogradTensor, seed: Any) -> None:
    """Visit the tape from ``root`` in reverse topological order, summing each tensor's
    gradient from its uses before passing it on; leaves add theirs to ``.grad``.

    Example:
        >>> import veil
        >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
        >>> x = torch.tensor([1.0, 2.0]).share(a, b, crypto_provider=c, requires_grad=True)
        >>> y = x + x
        >>> run_backward(y, x.secret * 0 + 1)
        >>> x.grad.reconstruct()
        tensor([2., 2.])
    """
    order: list[AutogradTensor] = []
    seen: set[int] = set()
    stack: list[tuple[AutogradTensor, bool]] = [(root, False)]
    while stack:
        t, done = stack.pop()
        if done:
            order.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        if t._node is not None:
            stack += [(i, False) for i in t._node.inputs if i is not None and id(i) not in seen]
    grads: dict[int, Any] = {id(root): seed}
    for t in reversed(order):
        g = grads.pop(id(t), None)
        if g is None:
            continue
        if t._node is None:
            if t._wants:
                t._vgrad = g if t._vgrad is None else t._vgrad + g
            continue
        parts = t._node.rule(g)
        for inp, gi in zip(t._node.inputs, parts, strict=True):
            if inp is not None and gi is not None:
                grads[id(inp)] = gi if id(inp) not in grads else grads[id(inp)] + gi


def _torch_function_of_secrets(func: Any, types: Any, args: Sequence[Any] = (),
                               kwargs: dict[str, Any] | None = None) -> Any:  # fmt: skip
    return dispatch(func, args, kwargs or {})


DerivedOps._torch_function = staticmethod(_torch_function_of_secrets)
DerivedOps._defer_to = (AutogradTensor,)
