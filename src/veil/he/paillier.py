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
from typing import Any

import numpy as np
import torch

from veil.he import _deps, scheme
from veil.he import fixedpoint as fp
from veil.he.fixedpoint import (
    DEFAULT_PRECISION,
    Packing,
    as_tensor,
    encode,
    operand,
    out_of_range,
    too_big_for_slot,
)
from veil.he.paillier_keys import MIN_SECURE_BITS, PrivateKey, PublicKey, keygen
from veil.he.paillier_layout import Plan, powmod_array
from veil.he.paillier_plans import MAX_EXPONENT, EncryptedTensorPlans, reciprocal, reduction_axes

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


class EncryptedTensor(EncryptedTensorPlans):
    """A tensor encrypted under a Paillier public key; its shape is public.

    Build one with :func:`encrypt`. Operations need only the public key (they run on a
    node that never sees the private key); :meth:`decrypt` needs the private key. Each
    operation has a :meth:`plan` computed from public facts first (shape, exponent,
    bound, offsets, cost).
    """

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
            return self._from_plan(powmod_array(base._need_data(), abs(s), nsq), plan)
        if f.number is not None:
            ints: Any = f.scaled_number(f.exponent)
        else:
            ints, big = encode(as_tensor(other), f.exponent)
            if big > f.bound:
                raise ValueError(out_of_range(f, f.exponent))
        return self._from_plan(powmod_array(self._need_data(), ints, nsq), plan)

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> EncryptedTensor:
        if isinstance(other, EncryptedTensor):
            raise TypeError(
                "Paillier cannot divide by a ciphertext; multiply by a plain reciprocal"
            )
        return self * reciprocal(other)

    # -- reductions and products (unpacked only) --------------------------------------
    def sum(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> EncryptedTensor:
        """Sum of elements (over ``dim``, or all)."""
        plan = self._plan_sum(dim, keepdim)
        nsq = self.public_key.nsq
        mulmod = np.frompyfunc(lambda a, b: a * b % nsq, 2, 1)
        data = self._need_data()
        for ax in sorted(reduction_axes(self.ndim, dim), reverse=True):
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
        return scheme.send(self, worker, description=description)  # veil.he.remote.send


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
