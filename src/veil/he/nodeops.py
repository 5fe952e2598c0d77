"""The ``he.*`` node ops: checked arguments, predictions from public facts, placeholders.

A node computes on encrypted tensors for a peer, with the peer's ciphertexts and perhaps
its own private data as plaintext operands. What it tells the peer about an op must not
depend on private values, so every op here has a **prediction**
(:attr:`veil.ops.OpFacts.predict`) computed from public facts only: the op's name, the
encrypted operands' public metadata (shape, scheme, context or key, layout, level,
exponent, bound), plaintext tensors' shapes and dtypes (never their values: a prediction
runs with meta tensors in their place), and Python numbers and lists (public values).

The prediction contract (what a node relies on):

* ``predict(args, kwargs)`` returns a :class:`veil.ops.Predicted` with ``kind
  "encrypted"``, the result's ``shape``, ``dtype`` = the scheme name (what
  ``ObjectRecord.info`` shows for an encrypted value), and a ``placeholder``: an
  encrypted tensor of zeros under the same public key or context with exactly the
  result's public metadata, to store when the op fails on private values (so later ops
  on it are predicted exactly as on the real result). It never raises for a reason that
  depends on values.
* It raises :class:`~veil.errors.InvalidRequest`, naming the argument or the limit,
  exactly when the op fails on public facts: bad or missing arguments, shapes, schemes,
  keys, depth, Galois keys, a bound that could overflow, the result-size cap or the work
  budget (:mod:`veil.he.limits`). Then the op itself raises the same.
* Running the op (``spec.fn(*args, **kwargs)``) gives a result whose description is the
  prediction; the only failures left depend on plaintext *values* (not finite, or
  outside the public range of their dtype or of the ciphertext's level): a
  :class:`ValueError` that a node stores as the result's error.

Example:
    >>> import torch
    >>> from veil.he import ckks
    >>> from veil.ops import default_registry
    >>> x = ckks.encrypt(torch.ones(2, 3), ckks.context())
    >>> spec = default_registry().get("he.matmul")
    >>> p = spec.facts.predict([x, torch.empty(3, 4, device="meta")], {})
    >>> p.kind, p.shape, p.dtype, p.placeholder.shape
    ('encrypted', (2, 4), 'ckks', torch.Size([2, 4]))
    >>> spec.facts.predict([x], {})
    Traceback (most recent call last):
    ...
    veil.errors.InvalidRequest: he.matmul: missing argument 'other' (an encrypted tensor, ...); ...
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from veil.errors import InvalidRequest
from veil.he import ckks, limits, paillier
from veil.he.ckks import CKKSTensor
from veil.he.paillier import EncryptedTensor
from veil.ops import OpFacts, OpSpec, Predicted

__all__ = ["HEOp", "Param", "ops"]

Encrypted = EncryptedTensor | CKKSTensor
_REQUIRED: Any = object()
#: Exceptions a plan raises on public facts (a node answers them as InvalidRequest).
_PUBLIC_ERRORS = (ValueError, TypeError, ArithmeticError, LookupError)


@dataclass(frozen=True, slots=True)
class Param:
    """One argument of an ``he.*`` op: its name, what it accepts, and its default."""

    name: str
    kind: str  # encrypted | operand | dim | int | ints | coefficients | index
    default: Any = _REQUIRED


_KINDS = {
    "encrypted": "an encrypted tensor, a pointer from enc.send(node)",
    "operand": "an encrypted tensor, a tensor or a number",
    "dim": "a plain int or None",
    "int": "a plain int",
    "ints": "a list of plain ints",
    "coefficients": "a list of 1-32 numbers",
    "index": "ints, slices, None and ... (no tensors)",
}


def _check(op: str, p: Param, v: Any) -> Any:
    """``v`` if it is what ``p`` accepts, else an InvalidRequest naming the argument."""

    def bad(extra: str = "") -> InvalidRequest:
        got = type(v).__name__
        return InvalidRequest(
            f"he.{op}: argument {p.name!r} must be {_KINDS[p.kind]}, got {got}{extra}"
        )

    if p.kind == "encrypted":
        if not isinstance(v, Encrypted):
            raise bad()
    elif p.kind == "operand":
        if isinstance(v, torch.Tensor):
            if v.is_complex():
                raise bad(" of complex values")
        elif not (isinstance(v, Encrypted) or type(v) in (int, float)):
            raise bad()
    elif p.kind == "dim":
        if v is not None and type(v) is not int:
            raise bad()
    elif p.kind == "int":
        if type(v) is not int:
            raise bad()
    elif p.kind == "ints":
        if not isinstance(v, list | tuple) or len(v) > 64:
            raise bad()
        for d in v:
            if type(d) is not int:
                raise bad(f" holding a {type(d).__name__}")
    elif p.kind == "coefficients":
        if not isinstance(v, list | tuple) or not 1 <= len(v) <= 32:
            raise bad()
        if any(type(c) not in (int, float) for c in v):
            raise bad(" holding something other than numbers")
    elif p.kind == "index":
        items = v if isinstance(v, tuple) else (v,)
        if len(items) > 64 or not all(_index_item(i) for i in items):
            raise InvalidRequest(
                f"he.{op}: argument {p.name!r} takes integers, slices, None and ... only (no "
                "tensor indices: a mask would make the result's public shape depend on its values)"
            )
    return v


def _index_item(item: Any) -> bool:
    if type(item) is int or item is None or item is Ellipsis:
        return True
    return isinstance(item, slice) and all(
        type(x) in (int, type(None)) for x in (item.start, item.stop, item.step)
    )


@dataclass(frozen=True, slots=True)
class HEOp:
    """One ``he.*`` op: its arguments, which schemes run it, and how it is planned and run.

    Attributes:
        name: the op's name after ``he.``.
        params: its arguments, in order.
        run: ``(x, *rest) -> result``, the computation on checked arguments.
        plan: ``(x, *rest) -> plan`` (``EncryptedTensor.plan`` / ``CKKSTensor.plan``), or
            ``None`` for views, which cost nothing and are predicted by running them.
        schemes: the schemes it accepts.
        rerandomize: a Paillier result is rerandomized before it is stored (products: the
            randomness of ``c ** w`` relates to ``w``).
    """

    name: str
    params: tuple[Param, ...]
    run: Callable[..., Any]
    plan: Callable[..., Any] | None
    schemes: tuple[str, ...] = ("paillier", "ckks")
    rerandomize: bool = False

    def bind(self, args: Sequence[Any], kwargs: dict[str, Any]) -> list[Any]:
        """The arguments in order, each checked (InvalidRequest naming a bad one)."""
        names = [p.name for p in self.params]
        sig = f"he.{self.name}({', '.join(names)})"
        if len(args) > len(self.params):
            raise InvalidRequest(
                f"he.{self.name}: {len(args)} arguments given, it takes at most "
                f"{len(self.params)}: {sig}"
            )
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise InvalidRequest(
                f"he.{self.name}: unexpected argument {unknown[0][:40]!r}; it takes {sig}"
            )
        out = []
        for i, p in enumerate(self.params):
            if i < len(args):
                if p.name in kwargs:
                    raise InvalidRequest(f"he.{self.name}: argument {p.name!r} given twice")
                v = args[i]
            elif p.name in kwargs:
                v = kwargs[p.name]
            elif p.default is not _REQUIRED:
                v = p.default
            else:
                raise InvalidRequest(
                    f"he.{self.name}: missing argument {p.name!r} ({_KINDS[p.kind]}); it takes {sig}"
                )
            out.append(_check(self.name, p, v))
        x = out[0]
        scheme = paillier_or_ckks(x)
        if scheme not in self.schemes:
            raise InvalidRequest(
                f"he.{self.name} needs a {' or '.join(self.schemes)} tensor, got {scheme}"
                + (
                    " (Paillier cannot multiply ciphertexts: use CKKS)"
                    if scheme == "paillier"
                    else ""
                )
            )
        for p, v in zip(self.params[1:], out[1:]):
            if isinstance(v, Encrypted) and paillier_or_ckks(v) != scheme:
                raise InvalidRequest(
                    f"he.{self.name}: 'x' is a {scheme} tensor and {p.name!r} a "
                    f"{paillier_or_ckks(v)} tensor; encrypt both with one scheme and key"
                )
        return out

    def planned(self, bound: list[Any]) -> Any:
        """The plan of this op on checked arguments (tensor operands may be meta tensors),
        with the size and work limits applied. ``None`` for views."""
        if self.plan is None:
            return None
        try:
            plan = self.plan(*bound)
        except InvalidRequest:
            raise
        except _PUBLIC_ERRORS as exc:
            raise InvalidRequest(f"he.{self.name}: {exc}") from None
        lim = limits.current()
        numel = math.prod(plan.shape)
        if numel > lim.max_result_elements:
            raise InvalidRequest(
                f"he.{self.name}: a result of {numel:,} elements is over this node's limit of "
                f"{lim.max_result_elements:,} (veil.he.limits); compute it in smaller parts"
            )
        paillier_op = isinstance(bound[0], EncryptedTensor)
        budget = lim.paillier_work if paillier_op else lim.ckks_work
        if plan.work > budget:
            unit = "modular multiplications" if paillier_op else "ciphertext operations"
            raise InvalidRequest(
                f"he.{self.name} would cost about {plan.work:,.0f} {unit}, over this node's "
                f"budget of {budget:,} per call (veil.he.limits: "
                f"{'paillier_work' if paillier_op else 'ckks_work'}); split it into smaller "
                "calls (fewer rows or columns at a time)"
            )
        return plan

    def predict(self, args: Sequence[Any], kwargs: dict[str, Any]) -> Predicted:
        """What this op returns, from public facts only (see the module docstring)."""
        bound = [_public(v) for v in self.bind(args, kwargs)]
        x = bound[0]
        if self.plan is None:  # a view: no cryptography, no values, so run it
            out = self._call(bound)
            return Predicted("encrypted", tuple(out.shape), paillier_or_ckks(out), out)
        plan = self.planned(bound)
        return Predicted("encrypted", plan.shape, paillier_or_ckks(x), placeholder(x, plan))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the op as a node does: check, plan (refusing on public facts), compute."""
        bound = self.bind(args, kwargs)
        plan = self.planned([_public(v) for v in bound])
        out = self._call(bound)
        if self.rerandomize and isinstance(out, EncryptedTensor):
            out = out.rerandomize()
        if plan is not None:
            _check_matches(self.name, out, plan)
        return out

    def _call(self, bound: list[Any]) -> Any:
        if self.plan is not None:
            return self.run(*bound)
        try:  # views fail only on public facts (shapes, dims, indices)
            return self.run(*bound)
        except _PUBLIC_ERRORS as exc:
            raise InvalidRequest(f"he.{self.name}: {exc}") from None


def paillier_or_ckks(v: Encrypted) -> str:
    return "paillier" if isinstance(v, EncryptedTensor) else "ckks"


def _public(v: Any) -> Any:
    """What a plan may see of an argument: a tensor becomes a meta tensor (shape, dtype)."""
    if isinstance(v, torch.Tensor) and not v.is_meta:
        return torch.empty(v.shape, dtype=v.dtype, device="meta")
    return v


def placeholder(x: Encrypted, plan: Any) -> Encrypted:
    """Zeros under ``x``'s key or context with a plan's public metadata (see the module docstring)."""
    if isinstance(x, EncryptedTensor):
        return paillier.placeholder(x.public_key, x.packing, plan)
    return ckks.placeholder(x.context, plan)


def _check_matches(name: str, out: Any, plan: Any) -> None:
    """The result has the public metadata its plan promised (else a bug: never a value leak
    through the reply, which is the plan's)."""
    got: tuple[Any, ...]
    want: tuple[Any, ...]
    if isinstance(out, EncryptedTensor):
        got = (tuple(out.shape), out.exponent, out.bound, out.offsets)
        want = (plan.shape, plan.exponent, plan.bound, plan.offsets)
    else:
        got = (tuple(out.shape), out.level, out.sizes, out.tile, out.block)
        want = (plan.shape, plan.level, plan.sizes, plan.tile, plan.block)
    if got != want:
        raise RuntimeError(f"he.{name}: the result {got} differs from its plan {want} (a veil bug)")


# ------------------------------------------------------------------------- the ops


def _rerandomized(x: Any) -> Any:
    return x.rerandomize() if isinstance(x, EncryptedTensor) else x


X = Param("x", "encrypted")
OTHER = Param("other", "operand")


def _binary(name: str, run: Callable[[Any, Any], Any], *, rerandomize: bool = False) -> HEOp:
    def plan(x: Any, o: Any) -> Any:
        if isinstance(x, EncryptedTensor):  # the node rerandomizes Paillier products
            return x.plan(name, o, rerandomized=rerandomize)
        return x.plan(name, o)

    return HEOp(name, (X, OTHER), run, plan, rerandomize=rerandomize)


def ops() -> list[HEOp]:
    """Every ``he.*`` op, in registration order."""
    return [
        _binary("add", lambda a, b: a + b),
        _binary("sub", lambda a, b: a - b),
        _binary("rsub", lambda a, b: (-a) + b),
        _binary("mul", lambda a, b: a * b, rerandomize=True),
        _binary("truediv", lambda a, b: a / b, rerandomize=True),
        HEOp("neg", (X,), lambda a: -a, lambda x: x.plan("neg")),
        _binary("matmul", lambda a, b: a @ b, rerandomize=True),
        _binary("rmatmul", lambda a, b: a.__rmatmul__(b), rerandomize=True),
        HEOp(
            "sum",
            (X, Param("dim", "dim", None)),
            lambda a, d=None: a.sum(d),
            lambda x, d=None: x.plan("sum", d),
        ),  # fmt: skip
        _binary("dot", lambda a, b: a.dot(b), rerandomize=True),
        HEOp("square", (X,), lambda a: a.square(), lambda x: x.plan("square"), ("ckks",)),
        HEOp(
            "polyval",
            (X, Param("coefficients", "coefficients")),
            lambda a, c: a.polyval([float(v) for v in c]),
            lambda x, c: x.plan("polyval", [float(v) for v in c]),
            ("ckks",),
        ),  # fmt: skip
        HEOp("reshape", (X, Param("shape", "ints")), lambda a, s: a.reshape(tuple(s)), None),
        HEOp(
            "transpose",
            (X, Param("dim0", "int"), Param("dim1", "int")),
            lambda a, d0, d1: a.transpose(d0, d1),
            None,
        ),  # fmt: skip
        HEOp("getitem", (X, Param("index", "index")), lambda a, i: a[i], None),
        HEOp("rerandomize", (X,), _rerandomized, lambda x: x.plan("rerandomize")),
    ]


def specs() -> list[OpSpec]:
    """The ops as allowlist entries, each with its own facts: a prediction, never pipelined
    (the node prices and predicts each call), and size ``"input"`` because meta tensors
    cannot run them: each op bounds its result size and work itself, in its prediction."""
    out = []
    for op in ops():
        fn = _named(op)
        out.append(OpSpec(f"he.{op.name}", fn, facts=OpFacts(size="input", pipeline="never",
                                                           predict=op.predict)))  # fmt: skip
    return out


def _named(op: HEOp) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        return op(*args, **kwargs)

    run.__name__ = run.__qualname__ = f"he_{op.name}"
    run.__doc__ = f"he.{op.name}({', '.join(p.name for p in op.params)}) on a node."
    return run
