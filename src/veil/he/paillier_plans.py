"""Plans of Paillier tensor operations: what each produces and costs (shape, exponent,
bound, offsets, work), computed from public facts only, before anything runs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from veil.he.fixedpoint import Operand, as_tensor, is_number, operand, too_big_for_slot
from veil.he.paillier_layout import EncryptedTensorLayout, Plan, check_bound

__all__ = [
    "MAX_EXPONENT",
    "EncryptedTensorPlans",
    "broadcast",
    "pow_cost",
    "reciprocal",
    "reduction_axes",
]

#: Most fractional bits a tensor may carry (tiny multipliers add many; decryption stays exact).
MAX_EXPONENT = 1 << 16


def pow_cost(bits: int) -> float:
    """Modular multiplications of one exponentiation by a ``bits``-bit exponent."""
    return 1.25 * bits + 1


def broadcast(a: Sequence[int], b: Sequence[int], what: str) -> tuple[int, ...]:
    try:  # numpy's rules are torch's; torch.broadcast_shapes imports sympy on first use
        return tuple(np.broadcast_shapes(tuple(a), tuple(b)))
    except (ValueError, RuntimeError):  # numpy: RuntimeError past 32 dimensions
        raise ValueError(f"{what}: shapes {tuple(a)} and {tuple(b)} do not broadcast") from None


def reduction_axes(ndim: int, dim: int | Sequence[int] | None) -> list[int]:
    """Normalized, checked reduction axes (torch's rules: -ndim <= d < ndim, no repeats)."""
    if dim is None:
        return list(range(ndim))
    dims = [dim] if isinstance(dim, int) else list(dim)
    span = max(ndim, 1)
    out = []
    for d in dims:
        if not -span <= d < span:
            raise ValueError(f"dim {d} is out of range for a {ndim}-d tensor")
        out.append(d % span)
    if len(set(out)) != len(out):
        raise ValueError(f"dim {list(dims)} repeats a dimension")
    return out if ndim else []


def reciprocal(other: Any, *, plan: bool = False) -> Any:
    """``1 / other``: a number (public; zero refused) or a float64 tensor (a zero in it is
    a value: it fails when the product runs, as a value outside the public range)."""
    if is_number(other):
        if other == 0:
            raise ZeroDivisionError("division of an encrypted tensor by zero")
        return 1.0 / float(other)
    t = other if isinstance(other, torch.Tensor) else as_tensor(other)
    if t.is_complex():
        raise TypeError("complex values cannot be Paillier-encrypted")
    if plan:
        return operand(torch.empty(t.shape, dtype=torch.float64, device="meta"))
    with np.errstate(divide="ignore"):
        return 1.0 / t.to(torch.float64)


class EncryptedTensorPlans(EncryptedTensorLayout):
    """The planning half of :class:`EncryptedTensor <veil.he.paillier.EncryptedTensor>`:
    :meth:`plan` and one ``_plan_<op>`` per operation (each raises what the operation would
    raise)."""

    # -- plans (public facts only: never a ciphertext, never a plaintext tensor's values) --
    def plan(self, op: str, *args: Any, rerandomized: bool = False) -> Plan:
        """What ``op`` would produce and cost, from public facts only.

        Tensor arguments may be meta tensors: only their shape and dtype are read.

        Args:
            op: ``add sub rsub mul truediv neg sum matmul rmatmul dot rerandomize``.
            args: the operation's arguments after ``self``.
            rerandomized: add the cost of rerandomizing the result (what a node does after
                a product).

        Raises:
            ValueError, TypeError, OverflowError, ZeroDivisionError: what the operation
                itself would raise on these facts, whatever the values.

        Example:
            >>> from veil.he.paillier import encrypt, keygen
            >>> pk, _ = keygen(512, force=True)
            >>> x = encrypt(torch.ones(3), pk)
            >>> p = x.plan("mul", torch.empty(2, 3, device="meta"))
            >>> p.shape, p.exponent, p.bound == x.bound * 2**63
            ((2, 3), 48, True)
        """
        planners = {
            "add": lambda o: self._plan_add(o, 1), "sub": lambda o: self._plan_add(o, -1),
            "rsub": self._plan_rsub, "mul": self._plan_mul, "truediv": self._plan_truediv,
            "neg": self._plan_neg, "sum": self._plan_sum, "matmul": self._plan_matmul,
            "rmatmul": lambda o: self._plan_matmul(o, enc_left=False), "dot": self._plan_dot,
            "rerandomize": self._plan_rerandomize,
        }  # fmt: skip
        if op not in planners:
            raise ValueError(f"no plan for {op!r}; plans exist for {sorted(planners)}")
        plan: Plan = planners[op](*args)  # type: ignore[operator]
        if rerandomized:
            extra = self._shadow(plan)._plan_rerandomize().work
            plan = Plan(plan.shape, plan.exponent, plan.bound, plan.offsets, plan.work + extra)
        return plan

    def _plan(self, shape: Sequence[int], mults: float, *, exponent: int | None = None,
              bound: int | None = None, offsets: int | None = None) -> Plan:  # fmt: skip
        plan = Plan(
            tuple(int(d) for d in shape), self.exponent if exponent is None else exponent,
            self.bound if bound is None else bound, self.offsets if offsets is None else offsets,
            mults * self._weight,
        )  # fmt: skip
        check_bound(self.public_key, self.packing, plan.bound)
        if plan.exponent > MAX_EXPONENT:
            raise OverflowError(
                f"the fixed-point exponent would reach {plan.exponent} fractional bits (at most "
                f"{MAX_EXPONENT}); decrypt and re-encrypt, or multiply by fewer tiny numbers"
            )
        return plan

    def _plan_neg(self) -> Plan:
        cts = self.ciphertexts
        if self.packing is None:
            return self._plan(self.shape, 4 * cts)
        # Slot v + k*o becomes 2*k*o - (v + k*o) = -v + k*o: add 2*k*o to every slot.
        top = 2 * self.offsets * self.packing.offset
        if top >= 1 << self.packing.slot_bits:
            raise OverflowError(
                "negating this packed tensor could overflow a slot; use wider slots"
            )
        return self._plan(self.shape, 5 * cts, bound=top)

    def _plan_add(self, other: Any, sign: int) -> Plan:
        if isinstance(other, EncryptedTensorPlans):
            b = other._shadow(other._plan_neg()) if sign < 0 else other
            extra = other._plan_neg().work / self._weight if sign < 0 else 0.0
            self._check_same_key(b)
            e = max(self.exponent, b.exponent)
            sa, sb = 1 << (e - self.exponent), 1 << (e - b.exponent)
            if self.packing is not None:
                if self.shape != b.shape:
                    raise ValueError(
                        f"packed tensors add only at equal shapes, got {tuple(self.shape)} and "
                        f"{tuple(b.shape)}; encrypt with pack=False to broadcast"
                    )
                shape: tuple[int, ...] = tuple(self.shape)
            else:
                shape = broadcast(self.shape, b.shape, "add")
            mults = (
                extra + math.prod(shape) if self.packing is None else extra + self.ciphertexts
            ) + self.ciphertexts * pow_cost(e - self.exponent) * (sa > 1)
            mults += b.ciphertexts * pow_cost(e - b.exponent) * (sb > 1)
            return self._plan(shape, mults, exponent=e, bound=self.bound * sa + b.bound * sb,
                              offsets=self.offsets * sa + b.offsets * sb)  # fmt: skip
        f = other if isinstance(other, Operand) else operand(other)
        if self.packing is not None:
            if broadcast(f.shape, self.shape, "add") != tuple(self.shape):
                raise ValueError(
                    f"a plain tensor of shape {f.shape} does not broadcast to the packed "
                    f"shape {tuple(self.shape)}"
                )
            if f.number is not None and f.bound_at(self.exponent) >= self.packing.offset:
                raise OverflowError(too_big_for_slot(f.bound_at(self.exponent), self.packing,
                                                     self.exponent))  # fmt: skip
            return self._plan(self.shape, 2 * self.ciphertexts,
                              bound=self.bound + 2 * self.packing.offset - 1,
                              offsets=self.offsets + 1)  # fmt: skip
        shape = broadcast(self.shape, f.shape, "add")
        return self._plan(shape, 2 * math.prod(shape), bound=self.bound + f.bound_at(self.exponent))

    def _plan_rsub(self, other: Any) -> Plan:
        neg = self._plan_neg()
        plan = self._shadow(neg)._plan_add(other, 1)
        return Plan(plan.shape, plan.exponent, plan.bound, plan.offsets, plan.work + neg.work)

    def _plan_mul(self, other: Any) -> Plan:
        if isinstance(other, EncryptedTensorPlans):
            raise TypeError(
                "Paillier cannot multiply two ciphertexts; multiply by a plain tensor, or use "
                "CKKS (veil.he.ckks) for ciphertext products"
            )
        f = other if isinstance(other, Operand) else operand(other)
        if self.packing is None:
            shape = broadcast(self.shape, f.shape, "mul")
            return self._plan(shape, math.prod(shape) * pow_cost(f.bound.bit_length()),
                              exponent=self.exponent + f.exponent, bound=self.bound * max(f.bound, 1))  # fmt: skip
        if f.number is None:
            raise ValueError(
                "a packed tensor multiplies only by a Python number (one public multiplier for "
                "all slots; a tensor's values are not public and its dtype range does not fit a "
                "slot): pass float(x), or encrypt with pack=False for elementwise products"
            )
        s = f.scaled_number(f.exponent)
        base = self._shadow(self._plan_neg()) if s < 0 else self
        bound = base.bound * abs(s)
        if bound >= 1 << self.packing.slot_bits:
            room = max(self.packing.slot_bits - base.bound.bit_length(), 0)
            need = abs(s).bit_length()
            raise OverflowError(
                f"multiplying this packed tensor by {f.number} needs {need} bits of slot room "
                f"(its encoding {abs(s)} / 2**{f.exponent}), but its slots have {room} left; "
                "divide or scale after decrypting (exact), multiply by an integer or a short "
                "binary fraction (0.5, 0.25), or use "
                f"Packing(slot_bits={self.packing.slot_bits + need - room}) or wider"
            )  # fmt: skip
        work = (base is not self) * self._plan_neg().work / self._weight
        return self._plan(self.shape, work + self.ciphertexts * pow_cost(abs(s).bit_length()),
                          exponent=self.exponent + f.exponent, bound=bound,
                          offsets=base.offsets * abs(s))  # fmt: skip

    def _plan_truediv(self, other: Any) -> Plan:
        return self._plan_mul(reciprocal(other, plan=True))

    def _plan_sum(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Plan:
        self._need_unpacked("sum")
        axes = reduction_axes(self.ndim, dim)
        shape = list(self.shape)
        count = 1
        for ax in axes:
            if shape[ax] == 0:
                raise ValueError("sum over an empty dimension of an encrypted tensor")
            count *= shape[ax]
            shape[ax] = 1
        out = [d for i, d in enumerate(shape) if keepdim or i not in axes]
        return self._plan(out, self.numel(), bound=self.bound * max(count, 1))

    def _plan_matmul(self, other: Any, *, enc_left: bool = True) -> Plan:
        self._need_unpacked("matmul")
        if isinstance(other, EncryptedTensorPlans):
            raise TypeError("Paillier matmul needs a plaintext operand (one side must be plain)")
        f = other if isinstance(other, Operand) else operand(other)
        if f.number is not None:
            raise ValueError(
                "matmul needs a 1-d or 2-d plain tensor, not a number; use * for scaling"
            )
        a, b = (self.shape, f.shape) if enc_left else (f.shape, self.shape)
        a2 = (1, *a) if len(a) == 1 else tuple(a)
        b2 = (*b, 1) if len(b) == 1 else tuple(b)
        if len(a2) != 2 or len(b2) != 2 or a2[1] != b2[0]:
            raise ValueError(
                f"matmul: shapes {tuple(a)} and {tuple(b)} do not match (1-d/2-d only)"
            )
        k = a2[1]
        out = [*([a2[0]] if len(a) == 2 else []), *([b2[1]] if len(b) == 2 else [])]
        mults = math.prod(out) * k * (pow_cost(f.bound.bit_length()) + 1)
        return self._plan(out, mults, exponent=self.exponent + f.exponent,
                          bound=self.bound * max(f.bound, 1) * max(k, 1))  # fmt: skip

    def _plan_dot(self, other: Any) -> Plan:
        prod = self._plan_mul(other)
        total = self._shadow(prod)._plan_sum()
        return Plan(total.shape, total.exponent, total.bound, total.offsets, prod.work + total.work)

    def _plan_rerandomize(self) -> Plan:
        return self._plan(self.shape, self.ciphertexts * pow_cost(self.public_key.bits))
