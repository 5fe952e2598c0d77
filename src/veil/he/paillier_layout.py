"""The state half of a Paillier tensor: its ciphertexts (one value each, or packed many to
a ciphertext) with their public metadata (shape, exponent, bound, offsets), decryption, the
checks operations share, and the free shape changes of unpacked tensors.
:class:`veil.he.paillier.EncryptedTensor` builds on it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import torch

from veil.he import _deps
from veil.he.fixedpoint import Packing, to_float, unpack
from veil.he.paillier_keys import PrivateKey, PublicKey

__all__ = ["TAMPERED", "EncryptedTensorLayout", "Plan", "check_bound", "powmod_array"]


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


def check_bound(pk: PublicKey, packing: Packing | None, bound: int) -> None:
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


TAMPERED = (
    "decryption gave values outside the range this ciphertext can hold: it was tampered "
    "with, corrupted, or built under another key"
)


def powmod_array(data: np.ndarray, exps: Any, nsq: Any) -> np.ndarray:
    gmpy2 = _deps.gmpy2()
    fn = np.frompyfunc(lambda c, e: gmpy2.powmod(c, int(e), nsq), 2, 1)
    return np.asarray(fn(data, exps), dtype=object)


class EncryptedTensorLayout:
    """A Paillier tensor's ciphertexts and public metadata, decryption, the checks of
    operands and unpacked shape changes (see :class:`EncryptedTensor
    <veil.he.paillier.EncryptedTensor>`, the only class built on it)."""

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
        check_bound(public_key, packing, self.bound)

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
              bound: int | None = None, offsets: int | None = None) -> Self:  # fmt: skip
        return type(self)(
            self.public_key, data, self.shape if shape is None else shape,
            exponent=self.exponent if exponent is None else exponent,
            bound=self.bound if bound is None else bound, packing=self.packing,
            offsets=self.offsets if offsets is None else offsets,
        )  # fmt: skip

    def _from_plan(self, data: np.ndarray | None, plan: Plan) -> Self:
        return type(self)(self.public_key, data, plan.shape, exponent=plan.exponent,
                               bound=plan.bound, packing=self.packing, offsets=plan.offsets)  # fmt: skip

    def _shadow(self, plan: Plan) -> Self:
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
                raise ValueError(TAMPERED)
        else:
            try:
                vals = unpack(ms, self.packing, self._slots(), self.numel(), self.offsets)
            except ValueError:
                raise ValueError(TAMPERED) from None
            lim = self.offsets * self.packing.offset
            if any(v < -lim or v + lim > self.bound for v in vals):
                raise ValueError(TAMPERED)
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

    def _scaled(self, exponent: int) -> Self:
        """The same values at a higher fixed-point exponent (multiplies by 2**d)."""
        d = exponent - self.exponent
        if d == 0:
            return self
        if d < 0:
            raise ValueError("cannot lower a ciphertext's exponent")
        s = 1 << d
        data = powmod_array(self._need_data(), s, self.public_key.nsq)
        return self._like(data, exponent=exponent, bound=self.bound * s, offsets=self.offsets * s)

    def _check_same_key(self, other: EncryptedTensorLayout) -> None:
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

    # -- shape ops (unpacked only; no cryptography) -----------------------------------
    def reshape(self, *shape: Any) -> Self:
        self._need_unpacked("reshape")
        dims = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], Sequence) else shape
        data = self._need_data().reshape(dims)
        return self._like(data, data.shape)

    view = reshape

    def transpose(self, dim0: int, dim1: int) -> Self:
        self._need_unpacked("transpose")
        data = np.swapaxes(self._need_data(), dim0, dim1)
        return self._like(data, data.shape)

    @property
    def T(self) -> Self:  # noqa: N802 - torch's spelling
        self._need_unpacked("T")
        data = self._need_data().T
        return self._like(data, data.shape)

    def __getitem__(self, index: Any) -> Self:
        self._need_unpacked("indexing")
        data = np.asarray(self._need_data()[index], dtype=object)
        return self._like(data, data.shape)
