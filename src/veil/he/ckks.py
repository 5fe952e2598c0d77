"""CKKS encrypted tensors on TenSEAL: a checked context, shape-preserving tensors, a fast matvec.

CKKS encrypts vectors of real numbers into the slots of one ciphertext and computes on
them approximately (errors around ``2**-20`` relative with the defaults). Each
multiplication consumes one level of the modulus chain; a context has ``depth`` levels.

:func:`context` builds a TenSEAL context with documented defaults and refuses
parameters below 128-bit security (the HomomorphicEncryption.org standard's bound on
``log2 q`` for each polynomial degree), with no override: SEAL inside TenSEAL enforces the
same bound. :func:`encrypt` turns a
tensor into a :class:`CKKSTensor`, which keeps its shape through ``+ - *`` (ciphertext
or plaintext, broadcasting plaintexts), ``neg``, ``square``, ``polyval``, :func:`sigmoid`
approximations, ``sum``, ``dot``, ``@`` with a plaintext matrix on either side,
``reshape``/``transpose``/indexing-free shape changes.

Layout: element ``e`` of the flattened tensor lives in ciphertext ``ct[e]`` at slot
``slot[e]``. Fresh tensors are *contiguous* (``numel / slots`` ciphertexts filled in
order), so elementwise ops are one TenSEAL call per ciphertext. ``encrypt(x,
replicate=True)`` tiles a vector across the slots so that ``x @ W`` runs as one
plaintext product and a block rotate-and-sum per group of outputs (:meth:`matmul`):
an encrypted 784-vector times a 784x10 matrix takes tens of milliseconds instead of
TenSEAL's diagonal ``CKKSVector.mm`` seconds, at one level.

Example:
    >>> import torch
    >>> from veil.he import ckks
    >>> ctx = ckks.context()                          # N=8192, [60, 40, 40, 60], scale 2**40
    >>> x = ckks.encrypt(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), ctx)
    >>> y = (x * 2 + 1).square()
    >>> y.shape, y.decrypt().round(decimals=3)
    (torch.Size([2, 2]), tensor([[ 9., 25.],
            [49., 81.]], dtype=torch.float64))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from veil.he import _deps
from veil.he.ckks_context import (
    DEFAULT_POLY_MODULUS_DEGREE,
    DEFAULT_SCALE_BITS,
    MAX_LOG_Q_128,
    CKKSContext,
    DepthExceeded,
    check_parameters,
    context,
)
from veil.he.tenseal_proto import resized

__all__ = [
    "DEFAULT_POLY_MODULUS_DEGREE",
    "DEFAULT_SCALE_BITS",
    "MAX_LOG_Q_128",
    "CKKSContext",
    "CKKSPlan",
    "CKKSTensor",
    "DepthExceeded",
    "check_parameters",
    "context",
    "encrypt",
    "placeholder",
    "sigmoid",
    "sigmoid_coefficients",
]


def _as_plain(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach() if x.is_meta else x.detach().cpu()
    else:
        t = torch.as_tensor(np.asarray(x, dtype=np.float64))
    if t.is_complex():
        raise TypeError("CKKS tensors here hold real values; got a complex plaintext")
    return t.to(torch.float64)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)


def _ts_call(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except ValueError as exc:
        msg = str(exc)
        if "scale out of bounds" in msg or "end of modulus switching chain" in msg:
            raise DepthExceeded(
                "this operation needs another multiplication level, but the ciphertext has used "
                "all of its context's depth; create the context with a larger depth, e.g. "
                "ckks.context(16384, depth=...), or decrypt and re-encrypt in between"
            ) from None
        raise


def _zero_ct(ctx: CKKSContext, level: int, size: int) -> Any:
    """An encryption of ``size`` zeros at ``level``: a stand-in for results that are exactly
    zero, and for placeholders. One full-size encryption per level is kept with the context;
    other sizes are the same ciphertext read with another slot count (a few kept, LRU)."""
    cache: dict[tuple[int, int], Any] = ctx.__dict__.setdefault("_zeros", {})
    vec = cache.pop((level, size), None)
    if vec is None:
        full = cache.get((level, ctx.slots))
        if full is None:
            full = _deps.tenseal().ckks_vector(ctx.raw, np.zeros(ctx.slots))
            for _ in range(level):
                full = full * 1.0
            cache[(level, ctx.slots)] = full
        vec = full if size == ctx.slots else resized(full, size, ctx.raw)
    cache[(level, size)] = vec  # most recently used last
    while len(cache) > 16 + ctx.depth + 1:
        oldest = next(k for k in cache if k[1] != ctx.slots)
        del cache[oldest]
    return vec


def _combine(a: Any, b: Any, sub: bool, ctx: CKKSContext, level: int) -> Any:
    """``a + b`` or ``a - b`` of two ciphertexts; a result that is exactly zero (``x - x``:
    SEAL refuses a 'transparent' ciphertext) becomes a fresh encryption of zeros."""
    try:
        return a - b if sub else a + b
    except RuntimeError as exc:
        if "transparent" not in str(exc):
            raise
        return _zero_ct(ctx, level, a.size())


class _MetaCt:
    """A ciphertext stand-in holding only its slot count: plans run on these."""

    __slots__ = ("_size",)

    def __init__(self, size: int) -> None:
        self._size = size

    def size(self) -> int:
        return self._size


@dataclass(frozen=True, slots=True, eq=False)
class CKKSPlan:
    """What an operation on a :class:`CKKSTensor` produces and costs, from public facts
    only: computed before anything runs, and what a node predicts its reply from.

    Attributes:
        shape: the result's shape.
        ct_index, slot_index: its layout (element -> ciphertext, slot).
        sizes: slots each result ciphertext holds.
        level: multiplications its ciphertexts went through.
        tile, block: the replicated layout (``tile`` copies of ``block`` slots), or 1, 0.
        work: ciphertext operations at N=8192 (see :mod:`veil.he.limits`).
    """

    shape: tuple[int, ...]
    ct_index: np.ndarray
    slot_index: np.ndarray
    sizes: tuple[int, ...]
    level: int
    tile: int = 1
    block: int = 0
    work: float = 0.0


class CKKSTensor:
    """A tensor encrypted with CKKS; its shape is public and preserved by every op.

    Build one with :func:`encrypt`. Operations need only the public context; decryption
    needs the context holding the secret key. Every operation's result layout, level and
    cost follow from public facts (:meth:`plan`). Values must stay below :attr:`max_abs`
    (the capacity of the ciphertext's level): plaintext operands above it are refused,
    encrypted values that grow past it wrap around (CKKS cannot detect it; docs/he.md).
    """

    __array_priority__ = 1000

    def __init__(self, context: CKKSContext, cts: list[Any], ct_index: np.ndarray,
                 slot_index: np.ndarray, *, tile: int = 1, block: int = 0,
                 level: int = 0) -> None:  # fmt: skip
        self.context = context
        self._cts = cts
        self._ct = ct_index
        self._slot = slot_index
        self.tile = tile  # copies of a replicated vector per ciphertext (1: not replicated)
        self.block = block  # slots per copy when replicated
        self.level = level

    # -- metadata --------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return torch.Size(self._ct.shape)

    @property
    def ndim(self) -> int:
        return self._ct.ndim

    def numel(self) -> int:
        return int(self._ct.size)

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def __len__(self) -> int:
        if not self.ndim:
            raise TypeError("len() of a 0-d encrypted tensor")
        return self.shape[0]

    @property
    def ciphertexts(self) -> int:
        return len(self._cts)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Slots each ciphertext holds (what TenSEAL's ``size()`` reports)."""
        return tuple(int(v.size()) for v in self._cts)

    @property
    def depth_left(self) -> int:
        return self.context.depth - self.level

    @property
    def max_abs(self) -> float:
        """Largest magnitude this tensor's level holds (``CKKSContext.max_abs(level)``):
        2**99, 2**59, 2**19 at levels 0, 1, 2 of the default context."""
        return self.context.max_abs(self.level)

    def __repr__(self) -> str:
        layout = f"replicated x{self.tile}" if self.tile > 1 else (
            "contiguous" if self._contiguous else "scattered")  # fmt: skip
        return (
            f"ckks.CKKSTensor(shape={tuple(self.shape)}, ciphertexts={len(self._cts)}, {layout}, "
            f"depth_left={self.depth_left}, context={self.context.fingerprint!r})"
        )

    @cached_property
    def _contiguous(self) -> bool:
        """Flattened elements fill the ciphertexts' first slots in order, nothing else."""
        if self.tile > 1:
            return False
        ct, slot = self._ct.reshape(-1), self._slot.reshape(-1)
        sizes = [v.size() for v in self._cts]
        if sum(sizes) != ct.size:
            return False
        want_ct = np.repeat(np.arange(len(sizes)), sizes)
        want_slot = np.concatenate([np.arange(s) for s in sizes]) if sizes else want_ct
        return bool(np.array_equal(ct, want_ct) and np.array_equal(slot, want_slot))

    def _like(self, cts: list[Any], *, level: int | None = None) -> CKKSTensor:
        """A tensor of this layout holding ``cts`` (a copy of this one's attributes: every
        element-wise op pays for this, so no __init__ and no layout checks)."""
        out = object.__new__(CKKSTensor)
        d = out.__dict__
        d.update(self.__dict__)
        d["_cts"] = cts
        if level is not None:
            d["level"] = level
        return out

    def _from_plan(self, cts: list[Any], plan: CKKSPlan) -> CKKSTensor:
        return CKKSTensor(self.context, cts, plan.ct_index, plan.slot_index, tile=plan.tile,
                          block=plan.block, level=plan.level)  # fmt: skip

    def _shadow(self, plan: CKKSPlan) -> CKKSTensor:
        """A tensor with a plan's layout and stand-in ciphertexts: plans the next operation."""
        return self._from_plan([_MetaCt(s) for s in plan.sizes], plan)

    # -- decryption ------------------------------------------------------------------
    def decrypt(self, context: CKKSContext | None = None) -> torch.Tensor:
        """Decrypt to a float64 tensor of this shape (needs the secret key).

        Args:
            context: the private context; default the tensor's own (the encrypting client's).

        Raises:
            ValueError: no secret key, or a context of another key pair.
        """
        ctx = context or self.context
        if ctx.fingerprint != self.context.fingerprint:
            raise ValueError(
                f"this tensor is encrypted under context {self.context.fingerprint!r}, not "
                f"{ctx.fingerprint!r}: decrypt with the context that encrypted it"
            )
        if not ctx.is_private:
            raise ValueError(
                "this context has no secret key (a public context cannot decrypt); only the "
                "key owner can decrypt: send the tensor back to them"
            )
        values = []
        for vec in self._cts:
            values.append(np.asarray(vec.decrypt(ctx.raw.secret_key()), dtype=np.float64))
        if self._contiguous:
            flat = np.concatenate(values) if values else np.zeros(0)
        else:
            slots = max((int(s) for s in self._slot.reshape(-1)), default=-1) + 1
            padded = np.zeros((len(values), max(slots, max((len(v) for v in values), default=0))))
            for i, v in enumerate(values):
                padded[i, : len(v)] = v
            flat = padded[self._ct.reshape(-1), self._slot.reshape(-1)]
        return torch.from_numpy(np.ascontiguousarray(flat).reshape(tuple(self.shape)))

    # -- public checks (shared by the operations and their plans) ---------------------
    def _broadcast_to_me(self, shape: Sequence[int]) -> None:
        if tuple(shape) == tuple(self._ct.shape):
            return
        try:
            ok = torch.broadcast_shapes(tuple(shape), tuple(self.shape)) == self.shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"a plain tensor of shape {tuple(shape)} does not broadcast to the encrypted "
                f"shape {tuple(self.shape)}"
            )

    def _check_number(self, v: Any, level: int) -> float:
        """A Python number as a plaintext at ``level`` (public: refused when it cannot be
        encoded there)."""
        x = float(v)
        if not math.isfinite(x):
            raise ValueError(f"cannot compute with {x} (not a finite number)")
        cap = self.context.max_abs(level)
        if not abs(x) < cap:
            raise ValueError(
                f"the number {x:.6g} is outside what a CKKS ciphertext at level {level} holds "
                f"(|x| < {cap:.6g}); scale it down, or use it before earlier multiplications"
            )
        return x

    def _check_plain(self, flat: np.ndarray, level: int) -> None:
        """Plaintext values (a tensor's: this check depends on them, so it fails when the
        operation runs; on a node that failure is kept as the result's error)."""
        if not flat.size:
            return
        cap = self.context.max_abs(level)
        if not (-cap < flat.min() and flat.max() < cap):  # (NaN and infinity fail too)
            raise ValueError(
                f"a plaintext value is not finite or outside what a CKKS ciphertext at level "
                f"{level} holds (|x| < {cap:.6g}); scale the values into range, or apply the "
                "operation at an earlier level"
            )

    # -- plaintext layout ------------------------------------------------------------
    def _plain_chunks(self, p: Any, fill: float = 0.0) -> list[np.ndarray]:
        """A plaintext broadcast to this shape, laid out like the ciphertexts (float64 arrays,
        which TenSEAL takes as they are); its values checked against the level's range."""
        t = _as_plain(p)
        self._broadcast_to_me(t.shape)
        arr = np.broadcast_to(t.numpy(), tuple(self.shape))
        flat = np.ascontiguousarray(arr).reshape(-1)
        self._check_plain(flat, self.level)
        if self._contiguous:
            out, start = [], 0
            for v in self._cts:
                n = v.size()
                out.append(flat[start : start + n])
                start += n
            return out
        sizes = [v.size() for v in self._cts]
        cts, slots = self._ct.reshape(-1), self._slot.reshape(-1)
        keys = cts * (max(sizes, default=0) + 1) + slots
        order = np.argsort(keys, kind="stable")
        same = keys[order][1:] == keys[order][:-1]
        if same.any() and (flat[order][1:][same] != flat[order][:-1][same]).any():
            raise ValueError(
                "this view shows one encrypted element several times (e.g. x[[1, 1]]) and the "
                "plaintext gives its copies different values: one slot cannot hold both; apply "
                "the operation before indexing"
            )
        grid = np.full((len(self._cts), max(sizes, default=0)), fill)
        grid[cts, slots] = flat
        if self.tile > 1:  # keep every copy of a replicated vector identical
            grid[:, :] = np.tile(grid[:, : self.block], self.tile)[:, : grid.shape[1]]
        return [grid[i, :n] for i, n in enumerate(sizes)]

    def _check_other(self, other: CKKSTensor) -> None:
        if (
            other.context is not self.context
            and other.context.fingerprint != self.context.fingerprint
        ):
            raise ValueError(
                f"cannot combine tensors under different CKKS contexts ({self.context.fingerprint!r} "
                f"and {other.context.fingerprint!r}); encrypt both with one context"
            )
        if other._ct is self._ct and other._slot is self._slot and other.tile == self.tile:
            return  # derived from one another: the same layout
        if (
            len(other._cts) == len(self._cts) == 1
            and self._ct.shape == other._ct.shape
            and self.__dict__.get("_contiguous")
            and other.__dict__.get("_contiguous")
        ):
            return  # one contiguous ciphertext each, same shape: the same layout
        if (
            other.shape != self.shape
            or len(other._cts) != len(self._cts)
            or other.tile != self.tile
            or other.sizes != self.sizes
            or not np.array_equal(other._ct, self._ct)
            or not np.array_equal(other._slot, self._slot)
        ):
            raise ValueError(
                f"encrypted operands must have the same shape and layout, got {tuple(self.shape)} "
                f"and {tuple(other.shape)}; CKKS cannot move values between slots for free"
            )

    def _need_level(self, extra: int = 1) -> None:
        if self.level + extra > self.context.depth:
            raise DepthExceeded(
                f"this needs {self.level + extra} multiplication levels but the context has depth "
                f"{self.context.depth}; create it with ckks.context(..., depth="
                f"{self.level + extra}) (a larger poly_modulus_degree if the security check "
                "asks), or decrypt and re-encrypt in between"
            )

    # -- plans (public facts only: never a ciphertext, never a plaintext's values) -------
    def plan(self, op: str, *args: Any) -> CKKSPlan:
        """What ``op`` would produce and cost, from public facts only.

        Tensor arguments may be meta tensors: only their shapes are read.

        Args:
            op: ``add sub rsub mul truediv neg square polyval sum matmul rmatmul dot
                rerandomize`` (the last does nothing: TenSEAL offers no rerandomization).
            args: the operation's arguments after ``self``.

        Raises:
            ValueError, TypeError, DepthExceeded, ZeroDivisionError: what the operation
                itself would raise on these facts, whatever the values.

        Example:
            >>> ctx = context()
            >>> x = encrypt(torch.ones(2, 3), ctx)
            >>> p = x.plan("matmul", torch.empty(3, 4, device="meta"))
            >>> p.shape, p.level, p.sizes
            ((2, 4), 1, (1, 1, 1, 1, 1, 1, 1, 1))
        """
        planners = {
            "add": self._plan_add, "sub": self._plan_add, "rsub": self._plan_rsub,
            "mul": self._plan_mul, "truediv": self._plan_truediv, "neg": self._plan_neg,
            "square": self._plan_square, "polyval": self._plan_polyval, "sum": self._plan_sum,
            "matmul": self._plan_matmul, "rmatmul": self._plan_rmatmul, "dot": self._plan_dot,
            "rerandomize": lambda: self._plan_same(self.level, 0.0),
        }  # fmt: skip
        if op not in planners:
            raise ValueError(f"no plan for {op!r}; plans exist for {sorted(planners)}")
        return planners[op](*args)  # type: ignore[no-any-return, operator]

    @property
    def _weight(self) -> float:
        return self.context.poly_modulus_degree / 8192

    def _plan_same(self, level: int, per_ct: float) -> CKKSPlan:
        return CKKSPlan(tuple(self.shape), self._ct, self._slot, self.sizes, level, self.tile,
                        self.block, per_ct * len(self._cts) * self._weight)  # fmt: skip

    def _plan_add(self, other: Any) -> CKKSPlan:
        if isinstance(other, CKKSTensor):
            self._check_other(other)
            return self._plan_same(max(self.level, other.level), 0.05)
        if _is_number(other):
            self._check_number(other, self.level)
        else:
            self._broadcast_to_me(_as_plain(other).shape)
        return self._plan_same(self.level, 0.1)

    def _plan_neg(self) -> CKKSPlan:
        return self._plan_same(self.level, 0.05)

    def _plan_rsub(self, other: Any) -> CKKSPlan:
        neg = self._plan_neg()
        out = self._shadow(neg)._plan_add(other)
        return _with_work(out, out.work + neg.work)

    def _plan_mul(self, other: Any) -> CKKSPlan:
        if isinstance(other, CKKSTensor):
            self._check_other(other)
            top = self if self.level >= other.level else other
            top._need_level()
            return self._plan_same(top.level + 1, 2.0)
        self._need_level()
        if _is_number(other):
            self._check_number(other, self.level)
        else:
            self._broadcast_to_me(_as_plain(other).shape)
        return self._plan_same(self.level + 1, 1.0)

    def _plan_truediv(self, other: Any) -> CKKSPlan:
        return self._plan_mul(_reciprocal(other, plan=True))

    def _plan_square(self) -> CKKSPlan:
        self._need_level()
        return self._plan_same(self.level + 1, 2.0)

    def _plan_polyval(self, coefficients: Sequence[float]) -> CKKSPlan:
        coeffs = _coefficients(coefficients)
        degree = len(coeffs) - 1
        if degree < 1:
            prod = self._plan_mul(0.0)
            if not coeffs:
                return prod
            out = self._shadow(prod)._plan_add(coeffs[0])
            return _with_work(out, out.work + prod.work)
        need = degree.bit_length()
        self._need_level(need)
        for c in coeffs:  # encoded down to the last level the power tree reaches
            self._check_number(c, self.level + need)
        return self._plan_same(self.level + need, 2.0 * (degree + need))

    def _sum_cost(self, size: int) -> float:
        return 1 + max(size - 1, 0).bit_length()  # log2(size) rotations and additions

    def _need_values(self, what: str) -> None:
        if self.numel() == 0:
            raise ValueError(f"{what} of an empty encrypted tensor: it has no ciphertext to reduce")

    def _plan_sum(self, dim: int | None = None) -> CKKSPlan:
        self._need_values("sum")
        self._need_galois()
        one = np.zeros((), dtype=np.int64)
        if dim is None:
            if self._contiguous:
                work = sum(self._sum_cost(s) for s in self.sizes) * self._weight
                return CKKSPlan((), one, one.copy(), (1,), self.level, work=work)
            self._need_level()
            work = len(self._cts) * (1 + self._sum_cost(self.context.slots)) * self._weight
            return CKKSPlan((), one, one.copy(), (1,), self.level + 1, work=work)
        if not -max(self.ndim, 1) <= dim < max(self.ndim, 1) or self.ndim == 0:
            raise ValueError(f"dim {dim} is out of range for a {self.ndim}-d encrypted tensor")
        dim = dim % self.ndim
        out_shape = tuple(d for i, d in enumerate(self.shape) if i != dim)
        self._need_level()
        return self._scalars_plan(out_shape, self._total_cost())

    def _total_cost(self) -> float:
        """Ciphertext operations of one masked total (``_masked_total``)."""
        if self._contiguous:
            return sum(1 + self._sum_cost(s) for s in self.sizes)
        return len(self._cts) * 1.0 + 2 + self._sum_cost(self.context.slots)

    def _scalars_plan(self, shape: Sequence[int], per_output: float) -> CKKSPlan:
        n = math.prod(shape)
        return CKKSPlan(tuple(shape), np.arange(n).reshape(tuple(shape)),
                        np.zeros(tuple(shape), dtype=np.int64), (1,) * n, self.level + 1,
                        work=n * per_output * self._weight)  # fmt: skip

    def _plan_matmul(self, other: Any) -> CKKSPlan:
        if isinstance(other, CKKSTensor):
            raise TypeError("matmul of two ciphertexts is not supported; one side must be plain")
        if _is_number(other):
            raise ValueError(
                "matmul needs a 1-d or 2-d plain tensor, not a number; use * for scaling"
            )
        self._need_values("matmul")
        if not (self.tile > 1 and self.ndim == 1):
            self._need_galois()
        w = tuple(_as_plain(other).shape)
        if len(w) not in (1, 2) or self.ndim not in (1, 2) or w[0] != self.shape[-1]:
            raise ValueError(
                f"matmul: shapes {tuple(self.shape)} and {w} do not match "
                "(1-d or 2-d, inner sizes equal)"
            )
        self._need_level()
        m = w[1] if len(w) == 2 else 1
        if self.tile > 1 and self.ndim == 1:
            self._need_galois(self.block)
            j = np.arange(m)
            ct: np.ndarray = j // self.tile
            slot: np.ndarray = (j % self.tile) * self.block
            groups = -(-m // self.tile)
            if len(w) == 1:
                ct, slot = ct.reshape(()), slot.reshape(())
            work = groups * (1 + self._sum_cost(self.block)) * self._weight
            return CKKSPlan(tuple(ct.shape), ct, slot, (self.context.slots,) * groups,
                            self.level + 1, work=work)  # fmt: skip
        rows = 1 if self.ndim == 1 else self.shape[0]
        shape = [*(self.shape[:-1]), m] if len(w) == 2 else list(self.shape[:-1])
        return self._scalars_plan(shape, self._total_cost() * rows * m / max(rows * m, 1))

    def _plan_rmatmul(self, other: Any) -> CKKSPlan:
        w = tuple(_as_plain(other).shape) if not isinstance(other, CKKSTensor) else None
        if w is None or _is_number(other):
            return self._plan_matmul(other)  # the same refusal
        wt = torch.empty(tuple(reversed(w)), device="meta")
        if self.ndim == 1:
            return self._plan_matmul(wt)
        if self.ndim != 2:
            raise ValueError(f"matmul: shapes {w} and {tuple(self.shape)} do not match (1-d/2-d)")
        inner = self.transpose(0, 1)._plan_matmul(wt)
        out = self._shadow(inner).transpose(0, 1)
        return CKKSPlan(tuple(out.shape), out._ct, out._slot, inner.sizes, inner.level,
                        work=inner.work)  # fmt: skip

    def _plan_dot(self, other: Any) -> CKKSPlan:
        if self.ndim != 1:
            raise ValueError(f"dot needs a 1-d tensor, got shape {tuple(self.shape)}")
        if isinstance(other, CKKSTensor):
            prod = self._plan_mul(other)
            total = self._shadow(prod)._plan_sum()
            return _with_work(total, prod.work + total.work)
        return self._plan_matmul(other)

    # -- arithmetic ------------------------------------------------------------------
    def __add__(self, other: Any) -> CKKSTensor:
        if isinstance(other, CKKSTensor):
            if other._ct is not self._ct or other.context is not self.context:
                self._check_other(other)  # (one layout and context need no check)
            level = max(self.level, other.level)
            try:
                cts = [a + b for a, b in zip(self._cts, other._cts)]
            except RuntimeError:  # a sum that is exactly zero
                cts = [_combine(a, b, False, self.context, level)
                       for a, b in zip(self._cts, other._cts)]  # fmt: skip
            return self._like(cts, level=level)
        if _is_number(other):
            v = self._check_number(other, self.level)
            return self._like([c + v for c in self._cts])
        return self._like([v + p for v, p in zip(self._cts, self._plain_chunks(other))])

    __radd__ = __add__

    def __sub__(self, other: Any) -> CKKSTensor:
        if isinstance(other, CKKSTensor):
            self._check_other(other)
            level = max(self.level, other.level)
            cts = [_combine(a, b, True, self.context, level) for a, b in zip(self._cts, other._cts)]
            return self._like(cts, level=level)
        if _is_number(other):
            v = self._check_number(other, self.level)
            return self._like([c - v for c in self._cts])
        return self._like([v - p for v, p in zip(self._cts, self._plain_chunks(other))])

    def __rsub__(self, other: Any) -> CKKSTensor:
        return (-self) + other

    def __neg__(self) -> CKKSTensor:
        return self._like([-v for v in self._cts])

    def __mul__(self, other: Any) -> CKKSTensor:
        if isinstance(other, CKKSTensor):
            self._check_other(other)
            level = max(self.level, other.level)
            (self if self.level >= other.level else other)._need_level()
            cts = [_ts_call(lambda a, b: a * b, a, b) for a, b in zip(self._cts, other._cts)]
            return self._like(cts, level=level + 1)
        self._need_level()
        if _is_number(other):
            v = self._check_number(other, self.level)
            return self._like([_ts_call(lambda c: c * v, c) for c in self._cts],
                              level=self.level + 1)  # fmt: skip
        chunks = self._plain_chunks(other)
        cts = [_ts_call(lambda v, p: v * p, v, p) for v, p in zip(self._cts, chunks)]
        return self._like(cts, level=self.level + 1)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> CKKSTensor:
        return self * _reciprocal(other)

    def square(self) -> CKKSTensor:
        self._need_level()
        return self._like([_ts_call(lambda v: v.square(), v) for v in self._cts],
                          level=self.level + 1)  # fmt: skip

    def __pow__(self, exponent: int) -> CKKSTensor:
        if not isinstance(exponent, int) or exponent < 1:
            raise ValueError(f"CKKS powers are positive integers, got {exponent!r}")
        need = math.ceil(math.log2(exponent)) if exponent > 1 else 0
        self._need_level(need)
        return self._like([_ts_call(lambda v: v**exponent, v) for v in self._cts],
                          level=self.level + need)  # fmt: skip

    def polyval(self, coefficients: Sequence[float]) -> CKKSTensor:
        """``c0 + c1 x + c2 x**2 + ...`` elementwise (lowest degree first).

        Uses ``floor(log2(degree)) + 1`` levels (TenSEAL's power tree): degree 3 (the
        usual sigmoid approximation) fits the default depth-2 context.
        """
        plan = self._plan_polyval(coefficients)
        coeffs = _coefficients(coefficients)
        if len(coeffs) < 2:
            return self * 0.0 + coeffs[0] if coeffs else self * 0.0
        return self._like([_ts_call(lambda v: v.polyval(coeffs), v) for v in self._cts],
                          level=plan.level)  # fmt: skip

    # -- reductions and products -----------------------------------------------------
    def _masked_total(self, weights: np.ndarray | None = None) -> Any:
        """One ciphertext holding ``sum(weights * self)`` in slot 0 (weights default 1)."""
        ts_size = self.context.slots
        flat_w = np.ones(self.numel()) if weights is None else weights.reshape(-1)
        if self._contiguous:  # unused slots are zero: sum each ciphertext over its own size
            total = None
            for vec, chunk in zip(
                self._cts, self._plain_chunks(torch.from_numpy(flat_w.reshape(tuple(self.shape))))
            ):
                if total is not None and not chunk.any():
                    continue  # (only the time this takes depends on the weights)
                s = _ts_call(lambda a, c: a.dot(c), vec, chunk)
                total = s if total is None else total + s
            if total is None:
                raise ValueError("sum of an empty encrypted tensor")
            return total
        acc = None
        for i, vec in enumerate(self._cts):
            sel = self._ct.reshape(-1) == i
            if not sel.any():
                continue
            mask = np.zeros(max(vec.size(), int(self._slot.reshape(-1)[sel].max()) + 1))
            np.add.at(mask, self._slot.reshape(-1)[sel], flat_w[sel])  # repeated views add up
            v = vec if vec.size() >= len(mask) else resized(vec, len(mask), self.context.raw)
            term = _ts_call(lambda a, m: a * m, v, mask[: v.size()].tolist())
            acc = term if acc is None else acc + term
        if acc is None:
            raise ValueError("sum of an empty encrypted tensor")
        if acc.size() != ts_size:
            acc = resized(acc, ts_size, self.context.raw)
        return _ts_call(lambda a: a.sum(), acc)

    def sum(self, dim: int | None = None) -> CKKSTensor:
        """Sum of all elements (``dim=None``) or over one dimension.

        A contiguous tensor sums with rotations only; other layouts first multiply by a
        0/1 mask (one level) so unused slots cannot leak into the total.
        """
        plan = self._plan_sum(dim)
        if dim is None:
            if self._contiguous:
                total = None
                for v in self._cts:
                    s = _ts_call(lambda a: a.sum(), v)
                    total = s if total is None else total + s
                return self._from_plan([total], plan)
            return self._from_plan([self._masked_total()], plan)
        dim = dim % self.ndim
        moved = self.transpose(dim, -1) if dim != self.ndim - 1 else self
        cts = []
        for idx in np.ndindex(*moved.shape[:-1]):
            w = np.zeros(tuple(moved.shape))
            w[idx] = 1.0
            cts.append(moved._masked_total(np.ascontiguousarray(w)))
        return self._from_plan(cts, plan)

    def _need_galois(self, span: int | None = None) -> None:
        """Check the rotations a sum over ``span`` slots needs (default: this layout's)."""
        ctx = self.context
        if ctx.is_private:
            ctx._local_rotations()
            return
        if span is None:
            span = self._rotation_need()
        if span > ctx.rotation_span:
            have = f"sums over at most {ctx.rotation_span} slots" if ctx.rotation_span else "none"
            raise ValueError(
                f"this rotates over {span} slots, but the context's Galois keys allow {have}: "
                f"create it with ckks.context(..., galois_keys=True) (or >= {span}) and send "
                "it again"
            )

    def _rotation_need(self) -> int:
        if self.tile > 1:
            return self.context.slots  # sums of a replicated vector mask and sum every slot
        if self._contiguous:
            return 1 << (max([v.size() for v in self._cts] + [1]) - 1).bit_length()
        return self.context.slots

    def dot(self, other: Any) -> CKKSTensor:
        """Dot product of 1-d tensors (with a plain vector or an encrypted one)."""
        self._plan_dot(other)
        if isinstance(other, CKKSTensor):
            return (self * other).sum()
        return self.matmul(other)

    def matmul(self, other: Any) -> CKKSTensor:
        """``self @ W`` with a plaintext vector or matrix ``W``.

        A vector encrypted with ``replicate=True`` takes the fast path: per group of
        ``tile`` outputs, one plaintext product with the matrix columns laid side by side
        and a rotate-and-sum inside each block (``log2(block)`` rotations), one level.
        Otherwise each output is a masked product and a full rotate-and-sum.
        """
        plan = self._plan_matmul(other)
        w = _as_plain(other)
        if self.tile > 1 and self.ndim == 1:
            return self._from_plan(self._replicated_matmul(w if w.ndim == 2 else w[:, None]), plan)
        wn = w.numpy() if w.ndim == 2 else w.numpy()[:, None]
        self._check_plain(wn.reshape(-1), self.level)
        rows = [()] if self.ndim == 1 else [(i,) for i in range(self.shape[0])]
        cts = []
        for r in rows:
            for j in range(wn.shape[1]):
                weights = np.zeros(tuple(self.shape))
                weights[r] = wn[:, j]
                cts.append(self._masked_total(weights))
        return self._from_plan(cts, plan)

    __matmul__ = matmul

    def __rmatmul__(self, other: Any) -> CKKSTensor:
        self._plan_rmatmul(other)
        w = _as_plain(other)
        if self.ndim == 1:
            return self.matmul(w.T if w.ndim == 2 else w)
        return self.transpose(0, 1).matmul(w.T if w.ndim == 2 else w).transpose(0, 1)

    def _replicated_matmul(self, w: torch.Tensor) -> list[Any]:
        k, m = w.shape
        block, tile, slots = self.block, self.tile, self.context.slots
        vec = self._cts[0]
        cts, wn = [], w.numpy()
        self._check_plain(wn.reshape(-1), self.level)
        for g in range(0, m, tile):
            cols = min(tile, m - g)
            layout = np.zeros((tile, block))
            for c in range(cols):  # element i sits in slot[i] (views may repeat an element)
                np.add.at(layout[c], self._slot, wn[:, g + c])
            prod = _ts_call(lambda a, p: a * p, vec, layout.reshape(-1)[: vec.size()].tolist())
            summed = _ts_call(lambda a: a.sum(), resized(prod, block, self.context.raw))
            cts.append(resized(summed, slots, self.context.raw))
        return cts

    # -- shape (free: only the index maps move) --------------------------------------
    def _view(self, ct: np.ndarray, slot: np.ndarray) -> CKKSTensor:
        return CKKSTensor(self.context, self._cts, ct, slot, tile=self.tile, block=self.block,
                          level=self.level)  # fmt: skip

    def reshape(self, *shape: Any) -> CKKSTensor:
        dims = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], Sequence) else shape
        return self._view(self._ct.reshape(dims), self._slot.reshape(dims))

    view = reshape

    def flatten(self) -> CKKSTensor:
        return self.reshape(-1)

    def transpose(self, dim0: int, dim1: int) -> CKKSTensor:
        return self._view(np.swapaxes(self._ct, dim0, dim1), np.swapaxes(self._slot, dim0, dim1))

    @property
    def T(self) -> CKKSTensor:  # noqa: N802 - torch's spelling
        return self._view(self._ct.T, self._slot.T)

    def __getitem__(self, index: Any) -> CKKSTensor:
        return self._view(np.asarray(self._ct[index]), np.asarray(self._slot[index]))

    def send(self, worker: Any, **kwargs: Any) -> Any:
        """Send to a node (``worker.send(self)``): returns an :class:`~veil.he.EncryptedPointer`."""
        return worker.send(self, **kwargs)

    def __veil_send__(self, worker: Any, *, description: str = "") -> Any:
        from veil.he.remote import send  # the node-facing half lives above this module

        return send(self, worker, description=description)


def _with_work(plan: CKKSPlan, work: float) -> CKKSPlan:
    return CKKSPlan(plan.shape, plan.ct_index, plan.slot_index, plan.sizes, plan.level,
                    plan.tile, plan.block, work)  # fmt: skip


def _coefficients(coefficients: Sequence[float]) -> list[float]:
    coeffs = [float(c) for c in coefficients]
    if not all(math.isfinite(c) for c in coeffs):
        raise ValueError("polynomial coefficients must be finite numbers")
    while len(coeffs) > 1 and coeffs[-1] == 0.0:
        coeffs.pop()
    return coeffs


def _reciprocal(other: Any, *, plan: bool = False) -> Any:
    """``1 / other``: a number (public; zero refused) or a float64 tensor (a zero in it is
    a value: it fails when the product runs, as a value outside the level's range)."""
    if isinstance(other, CKKSTensor):
        raise TypeError("CKKS cannot divide by a ciphertext; multiply by a plain reciprocal")
    if _is_number(other):
        if other == 0:
            raise ZeroDivisionError("division of an encrypted tensor by zero")
        return 1.0 / float(other)
    t = _as_plain(other)
    if plan:
        return torch.empty(t.shape, dtype=torch.float64, device="meta")
    with np.errstate(divide="ignore"):
        return 1.0 / t


def placeholder(ctx: CKKSContext, plan: CKKSPlan) -> CKKSTensor:
    """A tensor of zeros with a plan's public layout, level and ciphertext sizes.

    What a node stores in place of a result whose computation failed on private values
    (it keeps the error with it): later operations on it are planned and predicted exactly
    as on the real result. Its ciphertexts are encryptions of zeros made once per context,
    level and size, and shared.

    Example:
        >>> ctx = context()
        >>> x = encrypt(torch.ones(2, 3), ctx)
        >>> p = placeholder(ctx, x.plan("sum", 0))
        >>> p.shape, p.level, p.decrypt().abs().max().item() < 1e-6
        (torch.Size([3]), 1, True)
    """
    cts = [_zero_ct(ctx, plan.level, s) for s in plan.sizes]
    return CKKSTensor(ctx, cts, plan.ct_index, plan.slot_index, tile=plan.tile, block=plan.block,
                      level=plan.level)  # fmt: skip


def encrypt(x: Any, ctx: CKKSContext, *, replicate: bool = False) -> CKKSTensor:
    """Encrypt a real tensor (any shape) under ``ctx``.

    Args:
        x: values; the flattened tensor fills ``ceil(numel / slots)`` ciphertexts.
        ctx: from :func:`context` (its public copy encrypts too).
        replicate: 1-d only: tile the vector across the slots (block = next power of two
            of its length) for the fast ``x @ W`` of :meth:`CKKSTensor.matmul`.

    Example:
        >>> ctx = context()
        >>> x = encrypt(torch.arange(6.0), ctx, replicate=True)
        >>> (x @ torch.ones(6, 3)).decrypt().round(decimals=3)
        tensor([15., 15., 15.], dtype=torch.float64)
    """
    if not isinstance(ctx, CKKSContext):
        raise TypeError(f"encrypt() needs a ckks.CKKSContext, got {type(ctx).__name__}")
    ts = _deps.tenseal()
    t = _as_plain(x)
    flat = t.reshape(-1).numpy()
    if not np.isfinite(flat).all():  # (numpy: a twentieth of torch's cost at this size)
        raise ValueError("cannot encrypt NaN or infinity")
    if flat.size and not float(np.abs(flat).max()) < ctx.max_abs(0):
        raise ValueError(
            f"a value is above what a fresh CKKS ciphertext holds (|x| < {ctx.max_abs(0):.4g}); "
            "scale the values down"
        )
    slots = ctx.slots
    if replicate:
        if t.ndim != 1 or t.numel() == 0:
            raise ValueError("replicate=True encrypts a non-empty 1-d vector")
        block = 1 << (t.numel() - 1).bit_length()
        if block > slots:
            raise ValueError(
                f"a vector of {t.numel()} values does not fit {slots} slots; use a larger "
                "poly_modulus_degree or encrypt without replicate"
            )
        tile = slots // block
        padded = np.zeros(block)
        padded[: t.numel()] = flat
        vec = ts.ckks_vector(ctx.raw, np.tile(padded, tile).tolist())
        n = t.numel()
        return CKKSTensor(ctx, [vec], np.zeros(n, dtype=np.int64), np.arange(n), tile=tile,
                          block=block)  # fmt: skip
    n = flat.size
    # TenSEAL takes the float64 array (and lists it itself, faster than from a tensor).
    cts = [ts.ckks_vector(ctx.raw, flat[i : i + slots]) for i in range(0, n, slots)]
    idx = np.arange(n)
    out = CKKSTensor(ctx, cts, (idx // slots).reshape(tuple(t.shape)),
                     (idx % slots).reshape(tuple(t.shape)))  # fmt: skip
    out.__dict__["_contiguous"] = True
    return out


def sigmoid_coefficients(
    degree: int = 3, interval: tuple[float, float] = (-8.0, 8.0)
) -> list[float]:
    """Least-squares polynomial fit of the sigmoid on ``interval`` (odd degrees 1, 3, 5, 7).

    Largest error on the interval: degree 3: 0.11 on [-8, 8], 0.06 on [-5, 5]; degree 5:
    0.06 / 0.02; degree 7: 0.03 / 0.007. Outside the interval the polynomial diverges.

    Example:
        >>> [round(c, 4) for c in sigmoid_coefficients(3)]
        [0.5, 0.1501, 0.0, -0.0016]
    """
    if degree not in (1, 3, 5, 7):
        raise ValueError(f"sigmoid approximations have odd degree 1, 3, 5 or 7, got {degree}")
    lo, hi = interval
    xs = np.linspace(lo, hi, 2001)
    ys = 1.0 / (1.0 + np.exp(-xs))
    coeffs = np.polynomial.polynomial.polyfit(xs, ys, degree)
    coeffs[2::2] = 0.0  # sigmoid - 1/2 is odd: drop the even terms (fit noise)
    coeffs[0] = 0.5
    return [float(c) for c in coeffs]


def sigmoid(
    x: CKKSTensor, degree: int = 3, interval: tuple[float, float] = (-8.0, 8.0)
) -> CKKSTensor:
    """Polynomial approximation of the sigmoid (accurate inside ``interval`` only)."""
    return x.polyval(sigmoid_coefficients(degree, interval))
