"""Plans of CKKS tensor operations: what each produces and costs (shape, layout, level,
work), computed from public facts only, before anything runs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from veil.he.ckks_layout import CKKSPlan, CKKSTensorLayout, as_plain, is_number

__all__ = ["CKKSTensorPlans", "check_coefficients", "reciprocal", "with_work"]


class CKKSTensorPlans(CKKSTensorLayout):
    """The planning half of :class:`CKKSTensor <veil.he.ckks.CKKSTensor>`: :meth:`plan` and
    one ``_plan_<op>`` per operation (each raises what the operation would raise)."""

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
            >>> from veil.he.ckks import context, encrypt
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
        if isinstance(other, CKKSTensorPlans):
            self._check_other(other)
            return self._plan_same(max(self.level, other.level), 0.05)
        if is_number(other):
            self._check_number(other, self.level)
        else:
            self._broadcast_to_me(as_plain(other).shape)
        return self._plan_same(self.level, 0.1)

    def _plan_neg(self) -> CKKSPlan:
        return self._plan_same(self.level, 0.05)

    def _plan_rsub(self, other: Any) -> CKKSPlan:
        neg = self._plan_neg()
        out = self._shadow(neg)._plan_add(other)
        return with_work(out, out.work + neg.work)

    def _plan_mul(self, other: Any) -> CKKSPlan:
        if isinstance(other, CKKSTensorPlans):
            self._check_other(other)
            top = self if self.level >= other.level else other
            top._need_level()
            return self._plan_same(top.level + 1, 2.0)
        self._need_level()
        if is_number(other):
            self._check_number(other, self.level)
        else:
            self._broadcast_to_me(as_plain(other).shape)
        return self._plan_same(self.level + 1, 1.0)

    def _plan_truediv(self, other: Any) -> CKKSPlan:
        return self._plan_mul(reciprocal(other, plan=True))

    def _plan_square(self) -> CKKSPlan:
        self._need_level()
        return self._plan_same(self.level + 1, 2.0)

    def _plan_polyval(self, coefficients: Sequence[float]) -> CKKSPlan:
        coeffs = check_coefficients(coefficients)
        degree = len(coeffs) - 1
        if degree < 1:
            prod = self._plan_mul(0.0)
            if not coeffs:
                return prod
            out = self._shadow(prod)._plan_add(coeffs[0])
            return with_work(out, out.work + prod.work)
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
        if isinstance(other, CKKSTensorPlans):
            raise TypeError("matmul of two ciphertexts is not supported; one side must be plain")
        if is_number(other):
            raise ValueError(
                "matmul needs a 1-d or 2-d plain tensor, not a number; use * for scaling"
            )
        self._need_values("matmul")
        if not (self.tile > 1 and self.ndim == 1):
            self._need_galois()
        w = tuple(as_plain(other).shape)
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
        w = tuple(as_plain(other).shape) if not isinstance(other, CKKSTensorPlans) else None
        if w is None or is_number(other):
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
        if isinstance(other, CKKSTensorPlans):
            prod = self._plan_mul(other)
            total = self._shadow(prod)._plan_sum()
            return with_work(total, prod.work + total.work)
        return self._plan_matmul(other)

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


def with_work(plan: CKKSPlan, work: float) -> CKKSPlan:
    return CKKSPlan(plan.shape, plan.ct_index, plan.slot_index, plan.sizes, plan.level,
                    plan.tile, plan.block, work)  # fmt: skip


def check_coefficients(coefficients: Sequence[float]) -> list[float]:
    coeffs = [float(c) for c in coefficients]
    if not all(math.isfinite(c) for c in coeffs):
        raise ValueError("polynomial coefficients must be finite numbers")
    while len(coeffs) > 1 and coeffs[-1] == 0.0:
        coeffs.pop()
    return coeffs


def reciprocal(other: Any, *, plan: bool = False) -> Any:
    """``1 / other``: a number (public; zero refused) or a float64 tensor (a zero in it is
    a value: it fails when the product runs, as a value outside the level's range)."""
    if isinstance(other, CKKSTensorPlans):
        raise TypeError("CKKS cannot divide by a ciphertext; multiply by a plain reciprocal")
    if is_number(other):
        if other == 0:
            raise ZeroDivisionError("division of an encrypted tensor by zero")
        return 1.0 / float(other)
    t = as_plain(other)
    if plan:
        return torch.empty(t.shape, dtype=torch.float64, device="meta")
    with np.errstate(divide="ignore"):
        return 1.0 / t
