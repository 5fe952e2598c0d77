"""Fixed-point encoding for Paillier: public bounds of plaintexts, and slot packing.

Paillier encrypts integers, so a real ``x`` is encoded as ``round(x * 2**e)`` with ``e``
fractional bits. Every encrypted tensor tracks an upper bound of its integers so that an
operation that could pass ``n / 2`` is refused before it runs. That bound is *public*: a
node computes on values it must not learn, so a bound (and the exponent) may only derive
from public facts, never from the values themselves:

* a **Python number** is a public value: as a multiplier it is encoded exactly when it has
  at most ``DEFAULT_PRECISION`` significant bits (integers, ``0.5``, ``0.375``), else
  rounded to that many significant bits (``0.1``, ``1/3``: relative error below
  ``2**-24``, whatever its magnitude); its bound is its own encoded magnitude;
* a **tensor** may hold private values, so only its dtype counts: integer and bool tensors
  are encoded with no fractional bits and bounded by their dtype's range (never refused);
  floating-point tensors get ``DEFAULT_PRECISION`` fractional bits and the fixed-point range
  of a signed 64-bit integer, ``|x| <= 2**39`` (:data:`FLOAT_LIMIT`; float16: its own range).
  A value outside that range, or not finite, is refused with :class:`ValueError` when the
  operation runs (it depends on the values: on a node, that failure is stored with the
  result as its error, and the reply is the same as on success).

Example:
    >>> import torch
    >>> operand(0.375).exponent, operand(0.375).bound       # 0.375 = 3/8: exact in 3 bits
    (3, 3)
    >>> f = operand(0.001)                                  # 24 significant bits
    >>> f.exponent, f.bound.bit_length(), abs(f.bound / 2**f.exponent - 0.001) < 0.001 * 2**-24
    (33, 24, True)
    >>> f = operand(torch.zeros(2, dtype=torch.int8))
    >>> f.exponent, f.bound, f.shape
    (0, 128, (2,))
    >>> operand(torch.zeros(3)).bound == 2**63
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch

__all__ = ["DEFAULT_PRECISION", "FLOAT_LIMIT", "Operand", "Packing", "encode", "operand"]

#: Fractional bits of the fixed-point encoding (about 7 decimal digits).
DEFAULT_PRECISION = 24
#: Largest ``|x|`` of a floating-point plaintext tensor: ``round(x * 2**24)`` fits a signed
#: 64-bit integer. Public, the same for every tensor, whatever its values.
FLOAT_LIMIT = 1 << (63 - DEFAULT_PRECISION)


@dataclass(frozen=True, slots=True)
class Operand:
    """The public facts of a plaintext operand (never its values, unless it is a number).

    Attributes:
        shape: its shape (``()`` for a number).
        exponent: fractional bits it is encoded with as a multiplier.
        bound: public bound on ``|round(x * 2**exponent)|``.
        limit: public bound on ``|x|`` (for additions, encoded at the ciphertext's exponent).
        number: the value of a Python number (public), else ``None``.
    """

    shape: tuple[int, ...]
    exponent: int
    bound: int
    limit: int | Fraction
    number: int | float | None = None

    def bound_at(self, exponent: int) -> int:
        """Public bound on ``|round(x * 2**exponent)|`` (an addition at that exponent)."""
        if self.number is not None:
            return abs(_round(Fraction(self.number) * (1 << exponent)))
        return math.ceil(self.limit * (1 << exponent))

    def scaled_number(self, exponent: int) -> int:
        """A number's exact encoding at ``exponent`` (round half to even)."""
        assert self.number is not None
        return _round(Fraction(self.number) * (1 << exponent))


def _round(f: Fraction) -> int:
    return round(f)  # Fraction rounds half to even, like numpy's rint


def _number_bits(v: float) -> int:
    """Fractional bits a number multiplier is encoded with: the fewest that hold it exactly
    when it has at most ``DEFAULT_PRECISION`` significant bits (``0.375``, ``3.0``), else
    enough for that many significant bits (relative error below ``2**-24``, however small
    or large the number). Integer-valued numbers are never rounded."""
    f = Fraction(v)
    exact = f.denominator.bit_length() - 1  # a power of two for every finite float
    digits = abs(f.numerator).bit_length()
    if v == 0 or digits <= DEFAULT_PRECISION:
        return exact
    top = digits - 1 - exact  # floor(log2 |v|)
    return max(0, DEFAULT_PRECISION - 1 - top)


def is_number(x: Any) -> bool:
    """A Python (or numpy) real number, not a bool: a public value in an op's arguments."""
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool)


def operand(x: Any) -> Operand:
    """Public facts of a plaintext operand: a number (its value is public) or a tensor
    (only its shape and dtype count; works on meta tensors).

    Raises:
        ValueError: a number that is NaN or infinite.
        TypeError: complex values.
    """
    if is_number(x):
        v = int(x) if isinstance(x, int | np.integer) else float(x)
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"cannot compute with {v} (not a finite number)")
        e = 0 if isinstance(v, int) else _number_bits(v)
        scaled = abs(_round(Fraction(v) * (1 << e)))
        return Operand((), e, scaled, Fraction(abs(v)), v)
    t = x if isinstance(x, torch.Tensor) else as_tensor(x)
    dtype = t.dtype
    if dtype.is_complex:
        raise TypeError("complex values cannot be Paillier-encrypted")
    shape = tuple(t.shape)
    if dtype == torch.bool:
        return Operand(shape, 0, 1, 1)
    if not dtype.is_floating_point:
        info = torch.iinfo(dtype)
        lim = max(-info.min, info.max)
        return Operand(shape, 0, lim, lim)
    limit = min(Fraction(torch.finfo(dtype).max), Fraction(FLOAT_LIMIT))
    return Operand(shape, DEFAULT_PRECISION, math.ceil(limit * (1 << DEFAULT_PRECISION)), limit)


def as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def encode(x: torch.Tensor, exponent: int) -> tuple[np.ndarray, int]:
    """Fixed-point integers ``round(x * 2**exponent)`` (an object array of Python ints,
    exact at any exponent) and the largest magnitude.

    Raises:
        ValueError: a value that is NaN or infinite.

    Example:
        >>> ints, big = encode(torch.tensor([1.5, -0.25]), 2)
        >>> ints.tolist(), big
        ([6, -1], 6)
    """
    if x.dtype == torch.bool:
        x = x.to(torch.int64)
    if not x.dtype.is_floating_point:
        a = x.numpy().astype(object)  # Python ints: exact for every integer dtype
        ints = a * (1 << exponent) if exponent else a
        big = int(np.abs(ints).max()) if ints.size else 0
        return np.asarray(ints, dtype=object), big
    a = x.to(torch.float64).numpy()
    if not np.isfinite(a).all():
        raise ValueError("cannot compute with NaN or infinity")
    peak = float(np.abs(a).max()) if a.size else 0.0
    if exponent <= 900 and peak * 2.0**exponent < 2.0**1000:  # ldexp is exact here
        scaled = np.asarray(np.rint(np.ldexp(a, exponent)))
        top = float(np.abs(scaled).max()) if scaled.size else 0.0
        if top < 2.0**62:
            return scaled.astype(np.int64).astype(object), int(top)
        ints = np.vectorize(int, otypes=[object])(scaled) if scaled.size else scaled.astype(object)
        return ints, int(top)
    # Beyond float range: exact rationals (every finite float is a binary fraction).
    ints = np.array([_round(Fraction(float(v)) * (1 << exponent)) for v in a.reshape(-1)],
                    dtype=object).reshape(a.shape)  # fmt: skip
    return ints, int(np.abs(ints).max()) if ints.size else 0


# ----------------------------------------------------------------------------- packing


@dataclass(frozen=True, slots=True)
class Packing:
    """How fixed-point values share one Paillier plaintext.

    A plaintext is split into slots of ``slot_bits`` bits. A fresh slot holds
    ``v + offset`` with ``offset = 2**value_bits`` and ``|v| < 2**value_bits`` (``v`` is
    the fixed-point integer ``round(x * 2**precision)``), so every slot stays
    non-negative and never borrows from its neighbour. Sums add offsets too: a slot
    holds ``v + k * offset`` and decryption subtracts ``k * offset``.

    Bounds (enforced: an operation that could exceed them raises OverflowError):

    * a fresh slot is below ``2 * offset = 2**(value_bits + 1)``;
    * a slot must stay below ``2**slot_bits``, so ``max_additions()`` fresh tensors
      (``2**(slot_bits - value_bits - 1)``) can be summed;
    * ``slots(key_bits) = (key_bits - 1) // slot_bits`` slots fit below ``n``.

    Example:
        >>> Packing().slots(2048), Packing().max_additions()
        (31, 8388608)
    """

    slot_bits: int = 64
    value_bits: int = 40

    def __post_init__(self) -> None:
        if self.value_bits < 8 or self.slot_bits < self.value_bits + 2:
            raise ValueError(
                f"Packing(slot_bits={self.slot_bits}, value_bits={self.value_bits}) leaves no "
                "room for additions: need value_bits >= 8 and slot_bits >= value_bits + 2"
            )

    @property
    def offset(self) -> int:
        return 1 << self.value_bits

    def slots(self, key_bits: int) -> int:
        """Values per ciphertext under a ``key_bits``-bit key."""
        return max(0, (key_bits - 1) // self.slot_bits)

    def max_additions(self) -> int:
        """How many fresh packed tensors can be summed before a slot could overflow."""
        return 1 << (self.slot_bits - self.value_bits - 1)


def pack(values: list[int], packing: Packing, slots: int, count: int) -> list[int]:
    """Fixed-point ints -> plaintexts of ``slots`` slots each (slot 0 in the low bits)."""
    w, off = packing.slot_bits, packing.offset * count
    out = []
    for start in range(0, len(values), slots):
        m = 0
        for v in reversed(values[start : start + slots]):
            m = (m << w) | (v + off)
        out.append(m)
    return out


def unpack(ms: list[int], packing: Packing, slots: int, numel: int, count: int) -> list[int]:
    w = packing.slot_bits
    mask, off = (1 << w) - 1, packing.offset * count
    out: list[int] = []
    for m in ms:
        m = int(m)
        for _ in range(min(slots, numel - len(out))):
            out.append((m & mask) - off)
            m >>= w
        if m:
            raise ValueError("decryption gave bits past the last slot")
    return out


def out_of_range(f: Operand, exponent: int) -> str:
    """The message for a plaintext tensor outside its public range (a value-dependent failure)."""
    limit = float(f.limit)
    return (
        f"a plaintext value is outside the public fixed-point range of its dtype (|x| <= "
        f"{limit:.4g}) or not finite; the range is fixed in advance (2**39 for floating-point "
        "tensors, the dtype's own range for integer tensors) so that results never depend on "
        "the values: scale the values into range, or use an integer dtype. On a node this "
        "failure is kept with the result as its error"
    )


def too_big_for_slot(big: int | None, packing: Packing, exponent: int) -> str:
    """The message for a value too large for a packed slot (``big=None``: a plaintext
    tensor's value, which the message must not quote: it may be private)."""
    limit = 2.0 ** (packing.value_bits - exponent)
    what = "a plaintext value" if big is None else f"a value of magnitude {big / 2.0**exponent:.4g}"
    return (
        f"{what} does not fit a packed slot (|x| < {limit:.4g} at precision {exponent}); "
        "lower precision, or use Packing(value_bits=...) with more value bits"
    )


def to_float(vals: list[int], exponent: int) -> np.ndarray:
    """``v / 2**exponent`` as float64, correctly rounded even when ``v`` passes float range."""
    if not vals:
        return np.zeros(0)
    peak = max(abs(v) for v in vals)
    if peak < 1 << 1000 and exponent <= 1000:
        return np.ldexp(np.array(vals, dtype=np.float64), -exponent)
    den = 1 << exponent
    return np.array([v / den for v in vals], dtype=np.float64)  # int / int: exact rounding
