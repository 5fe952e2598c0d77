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
from typing import Any

import numpy as np
import torch

from veil.he import _deps, scheme
from veil.he.ckks_context import (
    DEFAULT_POLY_MODULUS_DEGREE,
    DEFAULT_SCALE_BITS,
    MAX_LOG_Q_128,
    CKKSContext,
    DepthExceeded,
    check_parameters,
    context,
)
from veil.he.ckks_layout import CKKSPlan, as_plain, combine, is_number, ts_call, zero_ct
from veil.he.ckks_plans import CKKSTensorPlans, check_coefficients, reciprocal
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


class CKKSTensor(CKKSTensorPlans):
    """A tensor encrypted with CKKS; its shape is public and preserved by every op.

    Build one with :func:`encrypt`. Operations need only the public context; decryption
    needs the context holding the secret key. Every operation's result layout, level and
    cost follow from public facts (:meth:`plan`). Values must stay below :attr:`max_abs`
    (the capacity of the ciphertext's level): plaintext operands above it are refused,
    encrypted values that grow past it wrap around (CKKS cannot detect it; docs/he.md).
    """

    # -- arithmetic ------------------------------------------------------------------
    def __add__(self, other: Any) -> CKKSTensor:
        if isinstance(other, CKKSTensor):
            if other._ct is not self._ct or other.context is not self.context:
                self._check_other(other)  # (one layout and context need no check)
            level = max(self.level, other.level)
            try:
                cts = [a + b for a, b in zip(self._cts, other._cts)]
            except RuntimeError:  # a sum that is exactly zero
                cts = [combine(a, b, False, self.context, level)
                       for a, b in zip(self._cts, other._cts)]  # fmt: skip
            return self._like(cts, level=level)
        if is_number(other):
            v = self._check_number(other, self.level)
            return self._like([c + v for c in self._cts])
        return self._like([v + p for v, p in zip(self._cts, self._plain_chunks(other))])

    __radd__ = __add__

    def __sub__(self, other: Any) -> CKKSTensor:
        if isinstance(other, CKKSTensor):
            self._check_other(other)
            level = max(self.level, other.level)
            cts = [combine(a, b, True, self.context, level) for a, b in zip(self._cts, other._cts)]
            return self._like(cts, level=level)
        if is_number(other):
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
            cts = [ts_call(lambda a, b: a * b, a, b) for a, b in zip(self._cts, other._cts)]
            return self._like(cts, level=level + 1)
        self._need_level()
        if is_number(other):
            v = self._check_number(other, self.level)
            return self._like([ts_call(lambda c: c * v, c) for c in self._cts],
                              level=self.level + 1)  # fmt: skip
        chunks = self._plain_chunks(other)
        cts = [ts_call(lambda v, p: v * p, v, p) for v, p in zip(self._cts, chunks)]
        return self._like(cts, level=self.level + 1)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> CKKSTensor:
        return self * reciprocal(other)

    def square(self) -> CKKSTensor:
        self._need_level()
        return self._like([ts_call(lambda v: v.square(), v) for v in self._cts],
                          level=self.level + 1)  # fmt: skip

    def __pow__(self, exponent: int) -> CKKSTensor:
        if not isinstance(exponent, int) or exponent < 1:
            raise ValueError(f"CKKS powers are positive integers, got {exponent!r}")
        need = math.ceil(math.log2(exponent)) if exponent > 1 else 0
        self._need_level(need)
        return self._like([ts_call(lambda v: v**exponent, v) for v in self._cts],
                          level=self.level + need)  # fmt: skip

    def polyval(self, coefficients: Sequence[float]) -> CKKSTensor:
        """``c0 + c1 x + c2 x**2 + ...`` elementwise (lowest degree first).

        Uses ``floor(log2(degree)) + 1`` levels (TenSEAL's power tree): degree 3 (the
        usual sigmoid approximation) fits the default depth-2 context.
        """
        plan = self._plan_polyval(coefficients)
        coeffs = check_coefficients(coefficients)
        if len(coeffs) < 2:
            return self * 0.0 + coeffs[0] if coeffs else self * 0.0
        return self._like([ts_call(lambda v: v.polyval(coeffs), v) for v in self._cts],
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
                s = ts_call(lambda a, c: a.dot(c), vec, chunk)
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
            term = ts_call(lambda a, m: a * m, v, mask[: v.size()].tolist())
            acc = term if acc is None else acc + term
        if acc is None:
            raise ValueError("sum of an empty encrypted tensor")
        if acc.size() != ts_size:
            acc = resized(acc, ts_size, self.context.raw)
        return ts_call(lambda a: a.sum(), acc)

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
                    s = ts_call(lambda a: a.sum(), v)
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
        w = as_plain(other)
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
        w = as_plain(other)
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
            prod = ts_call(lambda a, p: a * p, vec, layout.reshape(-1)[: vec.size()].tolist())
            summed = ts_call(lambda a: a.sum(), resized(prod, block, self.context.raw))
            cts.append(resized(summed, slots, self.context.raw))
        return cts

    def send(self, worker: Any, **kwargs: Any) -> Any:
        """Send to a node (``worker.send(self)``): returns an :class:`~veil.he.EncryptedPointer`."""
        return worker.send(self, **kwargs)

    def __veil_send__(self, worker: Any, *, description: str = "") -> Any:
        return scheme.send(self, worker, description=description)  # veil.he.remote.send


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
    cts = [zero_ct(ctx, plan.level, s) for s in plan.sizes]
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
    t = as_plain(x)
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
