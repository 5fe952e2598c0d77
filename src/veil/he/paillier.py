"""Paillier encryption of tensors: keys, EncryptedTensor, and what each operation may cost.

Paillier is additively homomorphic: anyone holding the public key can add ciphertexts,
add plaintexts and multiply by plaintexts; only the private key decrypts. Values are
encoded in fixed point (``round(x * 2**exponent)``, :mod:`veil.he.fixedpoint`), the
exponent grows with each fractional plaintext product and is tracked per tensor.

Two layouts:

* **unpacked** (default): one value per ciphertext. Every operation is available:
  ``+ - neg``, ``* plain`` (elementwise, broadcasting), ``sum``, ``@ plain`` on either side.
* **packed** (``pack=True`` or a :class:`Packing`): ``Packing.slots(bits)`` values per
  ciphertext (31 per 2048-bit key with the default 64-bit slots), so encryption,
  transfer and addition cost ~31x less per value. Each slot holds ``v + k * offset``
  (``offset = 2**value_bits``) so negative values never borrow from the next slot. A
  packed tensor supports ``+``/``-`` with packed tensors of the same layout, ``+ plain``,
  negation and ``* number``: the linear algebra of federated sums. The largest value a
  slot can reach is tracked exactly and an operation that could overflow a slot raises
  :class:`OverflowError` before it runs; with the defaults a packed tensor absorbs
  ``Packing().max_additions() == 2**23`` additions of fresh ciphertexts.

**Public metadata.** A tensor's ``exponent``, ``bound`` (of its fixed-point integers) and
``offsets`` derive from public facts only: the encryption parameters, the operations
applied, the shapes and dtypes of plaintext operands and the values of Python numbers,
never from a plaintext tensor's values. Every operation computes them first (a
:class:`Plan`, also what a node predicts its reply from) and refuses, on those facts
alone, what could overflow; the only failures that depend on values are plaintext values
outside their dtype's public range (:mod:`veil.he.fixedpoint`).

Example:
    >>> import torch
    >>> from veil.he import paillier
    >>> pk, sk = paillier.keygen(512, force=True)   # 2048 bits (the default) in real use
    >>> x = paillier.encrypt(torch.tensor([1.5, -2.0]), pk)
    >>> ((x + x) * torch.tensor([2.0, 0.5]) - 1).decrypt(sk)
    tensor([ 5., -3.], dtype=torch.float64)
    >>> y = paillier.encrypt(torch.arange(100.0), pk, pack=True)
    >>> y.ciphertexts, (y + y).decrypt(sk)[99].item()
    (15, 198.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from veil.he import _deps
from veil.he import fixedpoint as fp
from veil.he.fixedpoint import (
    DEFAULT_PRECISION,
    Operand,
    Packing,
    as_tensor,
    encode,
    is_number,
    operand,
    out_of_range,
    to_float,
    too_big_for_slot,
    unpack,
)
from veil.he.paillier_keys import MIN_SECURE_BITS, PrivateKey, PublicKey, keygen

__all__ = [
    "DEFAULT_PRECISION",
    "MAX_EXPONENT",
    "MIN_SECURE_BITS",
    "EncryptedTensor",
    "Packing",
    "Plan",
    "PrivateKey",
    "PublicKey",
    "encrypt",
    "keygen",
    "placeholder",
]

# ----------------------------------------------------------------------------- plans

#: Most fractional bits a tensor may carry (tiny multipliers add many; decryption stays exact).
MAX_EXPONENT = 1 << 16


def _pow_cost(bits: int) -> float:
    """Modular multiplications of one exponentiation by a ``bits``-bit exponent."""
    return 1.25 * bits + 1


@dataclass(frozen=True, slots=True)
class Plan:
    """What an operation on an :class:`EncryptedTensor` produces and costs, from public
    facts only: computed before anything runs, and what a node predicts its reply from.

    Attributes:
        shape: the result's shape.
        exponent: its fixed-point exponent.
        bound: public bound of its fixed-point integers (of each slot when packed).
        offsets: offsets added to each packed slot (0 when unpacked).
        work: modular multiplications in 2048-bit equivalents (see :mod:`veil.he.limits`).
    """

    shape: tuple[int, ...]
    exponent: int
    bound: int
    offsets: int
    work: float


def _check_bound(pk: PublicKey, packing: Packing | None, bound: int) -> None:
    if packing is None:
        if 2 * bound >= pk.n:
            raise OverflowError(
                f"an encrypted value could reach 2**{bound.bit_length()}, past the "
                f"{pk.bits}-bit modulus (the bound is public: it grows by each plaintext "
                "operand's dtype range, see veil.he.fixedpoint); multiply by fewer or "
                "integer-typed plaintexts, lower the precision, or use a larger key"
            )
    elif bound >= 1 << packing.slot_bits:
        raise OverflowError(
            f"a packed slot could reach 2**{bound.bit_length()}, past its "
            f"{packing.slot_bits} bits; sum fewer tensors (at most "
            f"{packing.max_additions()} fresh ones), use Packing(slot_bits=...) with "
            "wider slots, or encrypt with pack=False"
        )


def _broadcast(a: Sequence[int], b: Sequence[int], what: str) -> tuple[int, ...]:
    try:
        return tuple(torch.broadcast_shapes(tuple(a), tuple(b)))
    except RuntimeError:
        raise ValueError(f"{what}: shapes {tuple(a)} and {tuple(b)} do not broadcast") from None


# ----------------------------------------------------------------------------- tensors


class EncryptedTensor:
    """A tensor encrypted under a Paillier public key; its shape is public.

    Build one with :func:`encrypt`. Operations need only the public key (they run on a
    node that never sees the private key); :meth:`decrypt` needs the private key. Each
    operation has a :meth:`plan` computed from public facts first (shape, exponent,
    bound, offsets, cost).
    """

    __array_priority__ = 1000  # numpy defers to our reflected operators

    def __init__(self, public_key: PublicKey, data: np.ndarray | None, shape: Sequence[int], *,
                 exponent: int, bound: int, packing: Packing | None = None,
                 offsets: int = 0) -> None:  # fmt: skip
        self.public_key = public_key
        self._data = data  # None: a shadow used only to plan operations
        self.shape = torch.Size(shape)
        self.exponent = int(exponent)
        self.bound = int(bound)
        self.packing = packing
        self.offsets = int(offsets)
        _check_bound(public_key, packing, self.bound)

    # -- metadata --------------------------------------------------------------------
    @property
    def packed(self) -> bool:
        return self.packing is not None

    @property
    def ciphertexts(self) -> int:
        """How many Paillier ciphertexts hold the tensor."""
        if self.packing is None:
            return self.numel()
        return -(-self.numel() // self._slots())

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def numel(self) -> int:
        return math.prod(self.shape)

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d encrypted tensor")
        return self.shape[0]

    def __repr__(self) -> str:
        layout = (
            f"packed {self.packing.slots(self.public_key.bits)}/ct" if self.packing else "unpacked"
        )
        return (
            f"paillier.EncryptedTensor(shape={tuple(self.shape)}, {layout}, "
            f"exponent={self.exponent}, key={self.public_key.fingerprint!r})"
        )

    def _like(self, data: np.ndarray, shape: Sequence[int] | None = None, *, exponent: int | None = None,
              bound: int | None = None, offsets: int | None = None) -> EncryptedTensor:  # fmt: skip
        return EncryptedTensor(
            self.public_key, data, self.shape if shape is None else shape,
            exponent=self.exponent if exponent is None else exponent,
            bound=self.bound if bound is None else bound, packing=self.packing,
            offsets=self.offsets if offsets is None else offsets,
        )  # fmt: skip

    def _from_plan(self, data: np.ndarray | None, plan: Plan) -> EncryptedTensor:
        return EncryptedTensor(self.public_key, data, plan.shape, exponent=plan.exponent,
                               bound=plan.bound, packing=self.packing, offsets=plan.offsets)  # fmt: skip

    def _shadow(self, plan: Plan) -> EncryptedTensor:
        """A data-less tensor with a plan's metadata: plans the next operation."""
        return self._from_plan(None, plan)

    # -- decryption ------------------------------------------------------------------
    def decrypt(self, private_key: PrivateKey, *, workers: int | None = None) -> torch.Tensor:
        """Decrypt to a float64 tensor of this shape (exact: the fixed-point integers are
        divided by ``2**exponent`` with correct rounding, at any exponent).

        Raises:
            ValueError: the key is not the one it was encrypted under, or the ciphertext
                was tampered with (a slot or value outside its tracked bound).
        """
        if not isinstance(private_key, PrivateKey):
            raise TypeError(
                f"decrypt() needs a paillier.PrivateKey, got {type(private_key).__name__}"
            )
        if private_key.public_key != self.public_key:
            raise ValueError(
                f"this tensor is encrypted under key {self.public_key.fingerprint!r}, not under "
                f"{private_key.public_key.fingerprint!r}: decrypt it with the matching private key"
            )
        ms = private_key.raw_decrypt(list(self._need_data().reshape(-1)), workers=workers)
        n = int(self.public_key.n)
        if self.packing is None:
            vals = [int(m) if m <= n // 2 else int(m) - n for m in ms]
            if any(abs(v) > self.bound for v in vals):
                raise ValueError(_TAMPERED)
        else:
            try:
                vals = unpack(ms, self.packing, self._slots(), self.numel(), self.offsets)
            except ValueError:
                raise ValueError(_TAMPERED) from None
            lim = self.offsets * self.packing.offset
            if any(v < -lim or v + lim > self.bound for v in vals):
                raise ValueError(_TAMPERED)
        out = to_float(vals, self.exponent)
        return torch.from_numpy(out.reshape(tuple(self.shape)))

    def _slots(self) -> int:
        assert self.packing is not None
        return self.packing.slots(self.public_key.bits)

    # -- helpers ---------------------------------------------------------------------
    def _need_data(self) -> np.ndarray:
        if self._data is None:
            raise TypeError("a shadow tensor (from a plan) holds no ciphertexts")
        return self._data

    def _mulmod(self, a: Any, b: Any) -> np.ndarray:
        return np.asarray(a * b % self.public_key.nsq, dtype=object)

    @property
    def _weight(self) -> float:
        """Cost of one multiplication mod n**2 relative to a 2048-bit key."""
        return (self.public_key.bits / 2048) ** 2

    def _scaled(self, exponent: int) -> EncryptedTensor:
        """The same values at a higher fixed-point exponent (multiplies by 2**d)."""
        d = exponent - self.exponent
        if d == 0:
            return self
        if d < 0:
            raise ValueError("cannot lower a ciphertext's exponent")
        s = 1 << d
        data = _powmod_array(self._need_data(), s, self.public_key.nsq)
        return self._like(data, exponent=exponent, bound=self.bound * s, offsets=self.offsets * s)

    def _check_same_key(self, other: EncryptedTensor) -> None:
        if other.public_key != self.public_key:
            raise ValueError(
                f"cannot combine tensors encrypted under different keys "
                f"({self.public_key.fingerprint!r} and {other.public_key.fingerprint!r})"
            )
        if (self.packing is None) != (other.packing is None) or self.packing != other.packing:
            raise ValueError(
                "cannot combine a packed and an unpacked tensor (or two packing layouts); "
                "encrypt both the same way"
            )

    def _need_unpacked(self, what: str) -> None:
        if self.packing is not None:
            raise ValueError(
                f"{what} needs one value per ciphertext: a packed ciphertext can only be added "
                "to, negated and scaled as a whole. Encrypt with pack=False"
            )

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
        _check_bound(self.public_key, self.packing, plan.bound)
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
        if isinstance(other, EncryptedTensor):
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
                shape = _broadcast(self.shape, b.shape, "add")
            mults = (
                extra + math.prod(shape) if self.packing is None else extra + self.ciphertexts
            ) + self.ciphertexts * _pow_cost(e - self.exponent) * (sa > 1)
            mults += b.ciphertexts * _pow_cost(e - b.exponent) * (sb > 1)
            return self._plan(shape, mults, exponent=e, bound=self.bound * sa + b.bound * sb,
                              offsets=self.offsets * sa + b.offsets * sb)  # fmt: skip
        f = other if isinstance(other, Operand) else operand(other)
        if self.packing is not None:
            if _broadcast(f.shape, self.shape, "add") != tuple(self.shape):
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
        shape = _broadcast(self.shape, f.shape, "add")
        return self._plan(shape, 2 * math.prod(shape), bound=self.bound + f.bound_at(self.exponent))

    def _plan_rsub(self, other: Any) -> Plan:
        neg = self._plan_neg()
        plan = self._shadow(neg)._plan_add(other, 1)
        return Plan(plan.shape, plan.exponent, plan.bound, plan.offsets, plan.work + neg.work)

    def _plan_mul(self, other: Any) -> Plan:
        if isinstance(other, EncryptedTensor):
            raise TypeError(
                "Paillier cannot multiply two ciphertexts; multiply by a plain tensor, or use "
                "CKKS (veil.he.ckks) for ciphertext products"
            )
        f = other if isinstance(other, Operand) else operand(other)
        if self.packing is None:
            shape = _broadcast(self.shape, f.shape, "mul")
            return self._plan(shape, math.prod(shape) * _pow_cost(f.bound.bit_length()),
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
        return self._plan(self.shape, work + self.ciphertexts * _pow_cost(abs(s).bit_length()),
                          exponent=self.exponent + f.exponent, bound=bound,
                          offsets=base.offsets * abs(s))  # fmt: skip

    def _plan_truediv(self, other: Any) -> Plan:
        return self._plan_mul(_reciprocal(other, plan=True))

    def _plan_sum(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> Plan:
        self._need_unpacked("sum")
        axes = _axes(self.ndim, dim)
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
        if isinstance(other, EncryptedTensor):
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
        mults = math.prod(out) * k * (_pow_cost(f.bound.bit_length()) + 1)
        return self._plan(out, mults, exponent=self.exponent + f.exponent,
                          bound=self.bound * max(f.bound, 1) * max(k, 1))  # fmt: skip

    def _plan_dot(self, other: Any) -> Plan:
        prod = self._plan_mul(other)
        total = self._shadow(prod)._plan_sum()
        return Plan(total.shape, total.exponent, total.bound, total.offsets, prod.work + total.work)

    def _plan_rerandomize(self) -> Plan:
        return self._plan(self.shape, self.ciphertexts * _pow_cost(self.public_key.bits))

    # -- arithmetic ------------------------------------------------------------------
    def __add__(self, other: Any) -> EncryptedTensor:
        if isinstance(other, EncryptedTensor):
            plan = self._plan_add(other, 1)
            a, b = self._scaled(plan.exponent), other._scaled(plan.exponent)
            return self._from_plan(self._mulmod(a._need_data(), b._need_data()), plan)
        return self._add_plain(other, 1)

    __radd__ = __add__

    def _add_plain(self, other: Any, sign: int) -> EncryptedTensor:
        f = operand(other)
        plan = self._plan_add(f, 1)
        pk, e = self.public_key, self.exponent
        if f.number is not None:
            ints: Any = np.array(sign * f.scaled_number(e), dtype=object)
            big = abs(int(ints))
        else:
            ints, big = encode(as_tensor(other), e)
            if big > f.bound_at(e):
                raise ValueError(out_of_range(f, e))
            if sign < 0:
                ints = -ints
        data = self._need_data()
        if self.packing is not None:
            if big >= self.packing.offset:  # the values of a plain tensor: fails when it runs
                raise OverflowError(too_big_for_slot(None, self.packing, e))
            flat = list(np.broadcast_to(ints, tuple(self.shape)).reshape(-1))
            ms = fp.pack(flat, self.packing, self._slots(), 1)
            plain = np.array([1 + m * pk.n for m in ms], dtype=object)
            return self._from_plan(self._mulmod(data, plain), plan)
        plain = (ints % pk.n) * pk.n + 1
        return self._from_plan(self._mulmod(data, plain), plan)

    def __neg__(self) -> EncryptedTensor:
        gmpy2 = _deps.gmpy2()
        pk = self.public_key
        plan = self._plan_neg()
        inv = np.vectorize(lambda c: gmpy2.invert(c, pk.nsq), otypes=[object])(self._need_data())
        if self.packing is None:
            return self._from_plan(np.asarray(inv, dtype=object), plan)
        slots, numel = self._slots(), self.numel()
        fill = plan.bound - self.offsets * self.packing.offset  # pack() adds k * o back
        counts = [min(slots, numel - i) for i in range(0, numel, slots)]
        const = np.array(
            [1 + fp.pack([fill] * c, self.packing, slots, self.offsets)[0] * pk.n for c in counts],
            dtype=object,
        )
        return self._from_plan(self._mulmod(inv, const), plan)

    def __sub__(self, other: Any) -> EncryptedTensor:
        if isinstance(other, EncryptedTensor):
            return self + (-other)
        return self._add_plain(other, -1)

    def __rsub__(self, other: Any) -> EncryptedTensor:
        return (-self) + other

    def __mul__(self, other: Any) -> EncryptedTensor:
        plan = self._plan_mul(other)
        f = operand(other)
        nsq = self.public_key.nsq
        if self.packing is not None:
            s = f.scaled_number(f.exponent)
            base = -self if s < 0 else self
            return self._from_plan(_powmod_array(base._need_data(), abs(s), nsq), plan)
        if f.number is not None:
            ints: Any = f.scaled_number(f.exponent)
        else:
            ints, big = encode(as_tensor(other), f.exponent)
            if big > f.bound:
                raise ValueError(out_of_range(f, f.exponent))
        return self._from_plan(_powmod_array(self._need_data(), ints, nsq), plan)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> EncryptedTensor:
        if isinstance(other, EncryptedTensor):
            raise TypeError(
                "Paillier cannot divide by a ciphertext; multiply by a plain reciprocal"
            )
        return self * _reciprocal(other)

    # -- reductions and products (unpacked only) --------------------------------------
    def sum(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> EncryptedTensor:
        """Sum of elements (over ``dim``, or all)."""
        plan = self._plan_sum(dim, keepdim)
        nsq = self.public_key.nsq
        mulmod = np.frompyfunc(lambda a, b: a * b % nsq, 2, 1)
        data = self._need_data()
        for ax in sorted(_axes(self.ndim, dim), reverse=True):
            data = mulmod.reduce(data, axis=ax, keepdims=keepdim)
        return self._from_plan(np.asarray(data, dtype=object).reshape(plan.shape), plan)

    def matmul(self, other: Any) -> EncryptedTensor:
        """``self @ plain`` (vector or matrix on either side: see :meth:`__rmatmul__`)."""
        return _enc_matmul(self, other, enc_left=True)

    __matmul__ = matmul

    def __rmatmul__(self, other: Any) -> EncryptedTensor:
        return _enc_matmul(self, other, enc_left=False)

    def dot(self, other: Any) -> EncryptedTensor:
        """Dot product of a 1-d encrypted tensor with a plain vector."""
        return (self * other).sum()

    # -- shape ops (unpacked only; no cryptography) -----------------------------------
    def reshape(self, *shape: Any) -> EncryptedTensor:
        self._need_unpacked("reshape")
        dims = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], Sequence) else shape
        data = self._need_data().reshape(dims)
        return self._like(data, data.shape)

    view = reshape

    def transpose(self, dim0: int, dim1: int) -> EncryptedTensor:
        self._need_unpacked("transpose")
        data = np.swapaxes(self._need_data(), dim0, dim1)
        return self._like(data, data.shape)

    @property
    def T(self) -> EncryptedTensor:  # noqa: N802 - torch's spelling
        self._need_unpacked("T")
        data = self._need_data().T
        return self._like(data, data.shape)

    def __getitem__(self, index: Any) -> EncryptedTensor:
        self._need_unpacked("indexing")
        data = np.asarray(self._need_data()[index], dtype=object)
        return self._like(data, data.shape)

    def rerandomize(self, *, workers: int | None = None) -> EncryptedTensor:
        """The same plaintexts under fresh randomness (multiply by an encryption of zero).

        A ciphertext computed from plaintexts (``c ** w``) carries randomness that the key
        holder could relate to ``w``; rerandomize before handing results back.
        """
        data = self._need_data()
        zeros = self.public_key.raw_encrypt([0] * self.ciphertexts, workers=workers)
        fresh = np.array(zeros, dtype=object).reshape(data.shape)
        return self._like(self._mulmod(data, fresh))

    def send(self, worker: Any, **kwargs: Any) -> Any:
        """Send to a node (``worker.send(self)``): returns an :class:`~veil.he.EncryptedPointer`."""
        return worker.send(self, **kwargs)

    def __veil_send__(self, worker: Any, *, description: str = "") -> Any:
        from veil.he.remote import send  # the node-facing half lives above this module

        return send(self, worker, description=description)


_TAMPERED = (
    "decryption gave values outside the range this ciphertext can hold: it was tampered "
    "with, corrupted, or built under another key"
)


def _axes(ndim: int, dim: int | Sequence[int] | None) -> list[int]:
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


def _reciprocal(other: Any, *, plan: bool = False) -> Any:
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


def _powmod_array(data: np.ndarray, exps: Any, nsq: Any) -> np.ndarray:
    gmpy2 = _deps.gmpy2()
    fn = np.frompyfunc(lambda c, e: gmpy2.powmod(c, int(e), nsq), 2, 1)
    return np.asarray(fn(data, exps), dtype=object)


def _enc_matmul(enc: EncryptedTensor, other: Any, *, enc_left: bool) -> EncryptedTensor:
    """``enc @ p`` or ``p @ enc``: each output is a product of ``c ** w`` over the shared axis."""
    plan = enc._plan_matmul(other, enc_left=enc_left)
    gmpy2 = _deps.gmpy2()
    nsq = enc.public_key.nsq
    f = operand(other)
    ints, big = encode(as_tensor(other), f.exponent)
    if big > f.bound:
        raise ValueError(out_of_range(f, f.exponent))
    data = enc._need_data()
    a = data if enc_left else ints
    b = ints if enc_left else data
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    out = np.empty((a2.shape[0], b2.shape[1]), dtype=object)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            cs, ws = (a2[i], b2[:, j]) if enc_left else (b2[:, j], a2[i])
            acc = gmpy2.mpz(1)
            for c, w in zip(cs, ws):
                if w:
                    acc = acc * gmpy2.powmod(c, int(w), nsq) % nsq
            out[i, j] = acc
    return enc._from_plan(np.asarray(out, dtype=object).reshape(plan.shape), plan)


def placeholder(public_key: PublicKey, packing: Packing | None, plan: Plan) -> EncryptedTensor:
    """A tensor of zeros with a plan's public metadata, at no cryptographic cost.

    What a node stores in place of a result whose computation failed on private values
    (it keeps the error with it): every public fact (shape, exponent, bound, offsets,
    layout, key) is the plan's, so later operations on it are planned and predicted
    exactly as on the real result. The ciphertexts are trivial encryptions (randomness
    1): a stand-in, never a result to release.

    Example:
        >>> pk, sk = keygen(512, force=True)
        >>> x = encrypt(torch.ones(3), pk, pack=True)
        >>> p = placeholder(pk, x.packing, x.plan("add", x))
        >>> p.offsets, p.shape, p.decrypt(sk)
        (2, torch.Size([3]), tensor([0., 0., 0.], dtype=torch.float64))
    """
    gmpy2 = _deps.gmpy2()
    n, nsq = public_key.n, public_key.nsq
    numel = math.prod(plan.shape)
    if packing is None:
        data = np.empty(plan.shape, dtype=object)
        data.fill(gmpy2.mpz(1))  # (1 + 0 n) * 1**n
    else:
        slots = packing.slots(public_key.bits)
        counts = [min(slots, numel - i) for i in range(0, numel, slots)]
        cache: dict[int, Any] = {}
        for c in set(counts):
            cache[c] = (1 + fp.pack([0] * c, packing, slots, plan.offsets)[0] * n) % nsq
        data = np.array([cache[c] for c in counts], dtype=object)
    return EncryptedTensor(public_key, data, plan.shape, exponent=plan.exponent, bound=plan.bound,
                           packing=packing, offsets=plan.offsets)  # fmt: skip


def encrypt(x: Any, public_key: PublicKey, *, precision: int = DEFAULT_PRECISION,
            pack: bool | Packing = False, max_abs: float | None = None,
            workers: int | None = None) -> EncryptedTensor:  # fmt: skip
    """Encrypt a tensor (or array / nested list) under ``public_key``.

    The tensor's public metadata never depends on the values: unpacked, its bound is
    ``max_abs * 2**precision`` (``max_abs`` defaults to ``2**39``, the public range of
    floating-point plaintexts); packed, the packing's ``2**value_bits`` range.

    Args:
        x: values to encrypt; any real dtype.
        public_key: from :func:`keygen`.
        precision: fractional bits of the fixed-point encoding (``2**-precision`` steps).
        pack: ``True`` (default :class:`Packing`) or a :class:`Packing`: many values per
            ciphertext, for sums; ``False``: one per ciphertext, every operation.
        max_abs: unpacked only: a public bound on ``|x|`` you declare (a smaller one leaves
            room for more products before the key's modulus is reached).
        workers: threads for the modular exponentiations (default: every core).

    Raises:
        ValueError: a value above ``max_abs``, NaN or infinite.
        OverflowError: a value does not fit the packing's ``value_bits``.

    Example:
        >>> pk, sk = keygen(512, force=True)
        >>> encrypt([[1.0, 2.0]], pk).sum().decrypt(sk)
        tensor(3., dtype=torch.float64)
        >>> encrypt([1.0], pk, max_abs=4).bound == 4 * 2**24
        True
    """
    if not isinstance(public_key, PublicKey):
        raise TypeError(f"encrypt() needs a paillier.PublicKey, got {type(public_key).__name__}")
    if not 0 <= precision <= 64:
        raise ValueError(f"precision is a number of fractional bits in 0..64, got {precision}")
    t = as_tensor(x)
    if t.is_complex():
        raise TypeError("complex values cannot be Paillier-encrypted")
    ints, big = encode(t, precision)
    flat = list(ints.reshape(-1))
    if pack is False:
        if max_abs is not None and not (math.isfinite(max_abs) and max_abs > 0):
            raise ValueError(f"max_abs must be a positive finite number, got {max_abs}")
        limit = operand(torch.empty(0, device="meta")).limit if max_abs is None else max_abs
        bound = math.ceil(limit * (1 << precision))
        if big > bound:
            raise ValueError(
                f"a value is above max_abs={float(limit):.4g} (the public bound of this "
                "encryption); pass a larger max_abs, or scale the values"
            )
        n = public_key.n
        data = np.array(public_key.raw_encrypt([v % n for v in flat], workers=workers) or [],
                        dtype=object).reshape(tuple(t.shape))  # fmt: skip
        return EncryptedTensor(public_key, data, t.shape, exponent=precision, bound=bound)
    if max_abs is not None:
        raise ValueError("a packed tensor's range is its packing's: use Packing(value_bits=...)")
    packing = Packing() if pack is True else pack
    slots = packing.slots(public_key.bits)
    if slots < 1:
        raise ValueError(
            f"a {public_key.bits}-bit key holds no {packing.slot_bits}-bit slot; use a larger key"
        )
    if big >= packing.offset:
        raise OverflowError(too_big_for_slot(big, packing, precision))
    ms = fp.pack(flat, packing, slots, 1)
    data = np.array(public_key.raw_encrypt(ms, workers=workers), dtype=object)
    return EncryptedTensor(public_key, data, t.shape, exponent=precision,
                           bound=2 * packing.offset - 1, packing=packing, offsets=1)  # fmt: skip
