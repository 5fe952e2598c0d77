"""Paillier encryption of tensors: keys, fixed-point encoding, slot packing, EncryptedTensor.

Paillier is additively homomorphic: anyone holding the public key can add ciphertexts,
add plaintexts and multiply by plaintexts; only the private key decrypts. Values are
encoded in fixed point (``round(x * 2**exponent)``), the exponent grows with each
plaintext product and is tracked per tensor.

Two layouts:

* **unpacked** (default): one value per ciphertext. Every operation is available:
  ``+ - neg``, ``* plain`` (elementwise, broadcasting), ``sum``, ``@ plain`` on either side.
* **packed** (``pack=True`` or a :class:`Packing`): ``Packing.slots(bits)`` values per
  ciphertext (31 per 2048-bit key with the default 64-bit slots), so encryption,
  transfer and addition cost ~31x less per value. Each slot holds ``v + k * offset``
  (``offset = 2**value_bits``) so negative values never borrow from the next slot. A
  packed tensor supports ``+``/``-`` with packed tensors of the same layout, ``+ plain``,
  negation and ``* scalar``: the linear algebra of federated sums. The largest value a
  slot can reach is tracked exactly and an operation that could overflow a slot raises
  :class:`OverflowError` before it runs; with the defaults a packed tensor absorbs
  ``Packing().max_additions() == 2**23`` additions of fresh ciphertexts.

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

import hashlib
import math
import os
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from veil.he import _deps

#: Fractional bits of the fixed-point encoding (about 7 decimal digits).
DEFAULT_PRECISION = 24
#: Smallest key size accepted without ``force=True`` (NIST SP 800-57: 112-bit security).
MIN_SECURE_BITS = 2048
#: Work below this many values runs on the calling thread.
_PARALLEL_MIN = 64


def _fingerprint(n: int) -> str:
    return hashlib.sha256(int(n).to_bytes((int(n).bit_length() + 7) // 8, "big")).hexdigest()[:16]


class PublicKey:
    """A Paillier public key ``n`` (generator ``g = n + 1``): encrypts and computes.

    Args:
        n: the modulus, a product of two large primes.
    """

    __slots__ = ("n", "nsq", "bits", "fingerprint", "__weakref__")

    def __init__(self, n: int) -> None:
        gmpy2 = _deps.gmpy2()
        if int(n) < 15 or int(n) % 2 == 0:
            raise ValueError("a Paillier modulus is an odd product of two primes")
        self.n = gmpy2.mpz(n)
        self.nsq = self.n * self.n
        self.bits = int(self.n.bit_length())
        self.fingerprint = _fingerprint(int(n))

    def raw_encrypt(self, ms: Sequence[Any], *, workers: int | None = None) -> list[Any]:
        """Encrypt integers already reduced mod ``n``: ``(1 + m n) r^n mod n^2``.

        The ``r^n`` powers (the whole cost) run in gmpy2's C loop, which releases the GIL,
        split over ``workers`` threads (default: every core).
        """
        gmpy2 = _deps.gmpy2()
        n, nsq = self.n, self.nsq
        rs = [gmpy2.mpz(secrets.randbelow(int(n) - 1) + 1) for _ in range(len(ms))]
        rn = _parallel_powmod(rs, n, nsq, workers)
        return [(1 + m * n) * r % nsq for m, r in zip(ms, rn)]

    def to_bytes(self) -> bytes:
        return int(self.n).to_bytes((self.bits + 7) // 8, "big")

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> PublicKey:
        return cls(int.from_bytes(bytes(data), "big"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and self.n == other.n

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __repr__(self) -> str:
        return f"PaillierPublicKey(bits={self.bits}, fingerprint={self.fingerprint!r})"


class PrivateKey:
    """The factorization of ``n``: decrypts (with the CRT). Never leaves its owner:
    it refuses to be pickled, copied into a wire message or sent to a node."""

    __slots__ = ("public_key", "_p", "_q", "_psq", "_qsq", "_hp", "_hq", "_pinv")

    def __init__(self, public_key: PublicKey, p: int, q: int) -> None:
        gmpy2 = _deps.gmpy2()
        p, q = gmpy2.mpz(p), gmpy2.mpz(q)
        if p * q != public_key.n:
            raise ValueError("p * q does not match the public key's modulus")
        self.public_key = public_key
        self._p, self._q = p, q
        self._psq, self._qsq = p * p, q * q
        g = public_key.n + 1
        self._hp = gmpy2.invert((gmpy2.powmod(g, p - 1, self._psq) - 1) // p, p)
        self._hq = gmpy2.invert((gmpy2.powmod(g, q - 1, self._qsq) - 1) // q, q)
        self._pinv = gmpy2.invert(p, q)

    def raw_decrypt(self, cs: Sequence[Any], *, workers: int | None = None) -> list[Any]:
        """Decrypt ciphertexts to integers in ``[0, n)`` (CRT: two half-size exponentiations)."""
        p, q = self._p, self._q
        xp = _parallel_powmod([c % self._psq for c in cs], p - 1, self._psq, workers)
        xq = _parallel_powmod([c % self._qsq for c in cs], q - 1, self._qsq, workers)
        out = []
        for a, b in zip(xp, xq):
            mp = (a - 1) // p * self._hp % p
            mq = (b - 1) // q * self._hq % q
            out.append(mp + (mq - mp) * self._pinv % q * p)
        return out

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a Paillier private key never leaves its owner: it cannot be serialized")

    def __repr__(self) -> str:
        return f"PaillierPrivateKey(for={self.public_key.fingerprint!r})"


def keygen(bits: int = 2048, *, force: bool = False) -> tuple[PublicKey, PrivateKey]:
    """Generate a Paillier key pair with an ``bits``-bit modulus.

    Args:
        bits: modulus size; at least 2048 (112-bit security) unless ``force=True``.
        force: allow smaller keys (tests, demos); never for real data.

    Raises:
        ValueError: ``bits`` under 2048 without ``force``, or under 256.

    Example:
        >>> pk, sk = keygen(256, force=True)
        >>> pk.bits, sk
        (256, PaillierPrivateKey(for=...))
    """
    if bits < 256 or bits % 2:
        raise ValueError(f"bits must be an even number >= 256, got {bits}; use 2048 or more")
    if bits < MIN_SECURE_BITS and not force:
        raise ValueError(
            f"a {bits}-bit Paillier key is not secure (it can be factored); use bits>=2048, "
            "or pass force=True for tests"
        )
    gmpy2 = _deps.gmpy2()
    half = bits // 2
    while True:
        p = _prime(gmpy2, half)
        q = _prime(gmpy2, half)
        n = p * q
        if p != q and n.bit_length() == bits and gmpy2.gcd(n, (p - 1) * (q - 1)) == 1:
            break
    pub = PublicKey(n)
    return pub, PrivateKey(pub, p, q)


def _prime(gmpy2: Any, bits: int) -> Any:
    # Top two bits set: the product of two such primes has exactly 2 * bits bits.
    return gmpy2.next_prime(gmpy2.mpz(secrets.randbits(bits)) | (gmpy2.mpz(3) << (bits - 2)))


def _parallel_powmod(bases: list[Any], exp: Any, mod: Any, workers: int | None) -> list[Any]:
    gmpy2 = _deps.gmpy2()
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(bases) < _PARALLEL_MIN:
        return list(gmpy2.powmod_base_list(bases, exp, mod))
    size = math.ceil(len(bases) / workers)
    chunks = [bases[i : i + size] for i in range(0, len(bases), size)]
    with ThreadPoolExecutor(workers) as pool:  # powmod_base_list releases the GIL
        parts = list(pool.map(lambda c: gmpy2.powmod_base_list(c, exp, mod), chunks))
    return [v for part in parts for v in part]


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


def _pack(values: list[int], packing: Packing, slots: int, count: int) -> list[int]:
    """Fixed-point ints -> plaintexts of ``slots`` slots each (slot 0 in the low bits)."""
    w, off = packing.slot_bits, packing.offset * count
    out = []
    for start in range(0, len(values), slots):
        m = 0
        for v in reversed(values[start : start + slots]):
            m = (m << w) | (v + off)
        out.append(m)
    return out


def _unpack(ms: list[int], packing: Packing, slots: int, numel: int, count: int) -> list[int]:
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


# ----------------------------------------------------------------------------- tensors


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _encode(x: torch.Tensor, precision: int) -> tuple[np.ndarray, int]:
    """Fixed-point ints (an object array of Python ints) and the largest magnitude."""
    a = x.to(torch.float64).numpy()
    if not np.isfinite(a).all():
        raise ValueError("cannot encrypt NaN or infinity")
    scaled = np.asarray(np.rint(np.ldexp(a, precision)))
    big = float(np.abs(scaled).max()) if scaled.size else 0.0
    if big < 2.0**62:
        ints = scaled.astype(np.int64).astype(object)
    else:
        ints = np.vectorize(int, otypes=[object])(scaled) if scaled.size else scaled.astype(object)
    return ints, int(big)


class EncryptedTensor:
    """A tensor encrypted under a Paillier public key; its shape is public.

    Build one with :func:`encrypt`. Operations need only the public key (they run on a
    node that never sees the private key); :meth:`decrypt` needs the private key.
    """

    __array_priority__ = 1000  # numpy defers to our reflected operators

    def __init__(self, public_key: PublicKey, data: np.ndarray, shape: Sequence[int], *,
                 exponent: int, bound: int, packing: Packing | None = None,
                 offsets: int = 0) -> None:  # fmt: skip
        self.public_key = public_key
        self._data = data
        self.shape = torch.Size(shape)
        self.exponent = int(exponent)
        self.bound = int(bound)
        self.packing = packing
        self.offsets = int(offsets)
        self._check_bound()

    # -- metadata --------------------------------------------------------------------
    @property
    def packed(self) -> bool:
        return self.packing is not None

    @property
    def ciphertexts(self) -> int:
        """How many Paillier ciphertexts hold the tensor."""
        return int(self._data.size)

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

    def _check_bound(self) -> None:
        pk = self.public_key
        if self.packing is None:
            if 2 * self.bound >= pk.n:
                raise OverflowError(
                    f"an encrypted value could reach 2**{self.bound.bit_length()}, past the "
                    f"{pk.bits}-bit modulus; lower the precision or use a larger key"
                )
        elif self.bound >= 1 << self.packing.slot_bits:
            raise OverflowError(
                f"a packed slot could reach 2**{self.bound.bit_length()}, past its "
                f"{self.packing.slot_bits} bits; sum fewer tensors (at most "
                f"{self.packing.max_additions()} fresh ones), use Packing(slot_bits=...) with "
                "wider slots, or encrypt with pack=False"
            )

    def _like(self, data: np.ndarray, shape: Sequence[int] | None = None, *, exponent: int | None = None,
              bound: int | None = None, offsets: int | None = None) -> EncryptedTensor:  # fmt: skip
        return EncryptedTensor(
            self.public_key, data, self.shape if shape is None else shape,
            exponent=self.exponent if exponent is None else exponent,
            bound=self.bound if bound is None else bound, packing=self.packing,
            offsets=self.offsets if offsets is None else offsets,
        )  # fmt: skip

    # -- decryption ------------------------------------------------------------------
    def decrypt(self, private_key: PrivateKey, *, workers: int | None = None) -> torch.Tensor:
        """Decrypt to a float64 tensor of this shape.

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
        ms = private_key.raw_decrypt(list(self._data.reshape(-1)), workers=workers)
        n = int(self.public_key.n)
        if self.packing is None:
            vals = [int(m) if m <= n // 2 else int(m) - n for m in ms]
            if any(abs(v) > self.bound for v in vals):
                raise ValueError(_TAMPERED)
        else:
            try:
                vals = _unpack(ms, self.packing, self._slots(), self.numel(), self.offsets)
            except ValueError:
                raise ValueError(_TAMPERED) from None
            lim = self.offsets * self.packing.offset
            if any(v < -lim or v + lim > self.bound for v in vals):
                raise ValueError(_TAMPERED)
        out = np.ldexp(np.array(vals, dtype=np.float64), -self.exponent)
        return torch.from_numpy(out.reshape(tuple(self.shape)))

    def _slots(self) -> int:
        assert self.packing is not None
        return self.packing.slots(self.public_key.bits)

    # -- helpers ---------------------------------------------------------------------
    def _mulmod(self, a: Any, b: Any) -> np.ndarray:
        return np.asarray(a * b % self.public_key.nsq, dtype=object)

    def _scaled(self, exponent: int) -> EncryptedTensor:
        """The same values at a higher fixed-point exponent (multiplies by 2**d)."""
        d = exponent - self.exponent
        if d == 0:
            return self
        if d < 0:
            raise ValueError("cannot lower a ciphertext's exponent")
        s = 1 << d
        data = _powmod_array(self._data, s, self.public_key.nsq)
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

    def _plain(self, other: Any) -> torch.Tensor:
        t = _as_tensor(other)
        if t.is_complex():
            raise TypeError("complex values cannot be Paillier-encrypted")
        return t

    # -- arithmetic ------------------------------------------------------------------
    def __add__(self, other: Any) -> EncryptedTensor:
        if isinstance(other, EncryptedTensor):
            self._check_same_key(other)
            e = max(self.exponent, other.exponent)
            a, b = self._scaled(e), other._scaled(e)
            if self.packing is not None:
                if a.shape != b.shape:
                    raise ValueError(
                        f"packed tensors add only at equal shapes, got {tuple(a.shape)} and "
                        f"{tuple(b.shape)}; encrypt with pack=False to broadcast"
                    )
                return a._like(a._mulmod(a._data, b._data), bound=a.bound + b.bound,
                               offsets=a.offsets + b.offsets)  # fmt: skip
            shape = torch.broadcast_shapes(a.shape, b.shape)
            return a._like(a._mulmod(a._data, b._data), shape, bound=a.bound + b.bound)
        return self._add_plain(self._plain(other))

    __radd__ = __add__

    def _add_plain(self, p: torch.Tensor) -> EncryptedTensor:
        pk = self.public_key
        ints, big = _encode(p, self.exponent)
        if self.packing is not None:
            try:
                ints = np.broadcast_to(ints, tuple(self.shape))
            except ValueError:
                raise ValueError(
                    f"a plain tensor of shape {tuple(p.shape)} does not broadcast to the packed "
                    f"shape {tuple(self.shape)}"
                ) from None
            if big >= self.packing.offset:
                raise OverflowError(_too_big(big, self.packing, self.exponent))
            ms = _pack(list(ints.reshape(-1)), self.packing, self._slots(), 1)
            plain = np.array([1 + m * pk.n for m in ms], dtype=object)
            return self._like(self._mulmod(self._data, plain),
                              bound=self.bound + 2 * self.packing.offset - 1,
                              offsets=self.offsets + 1)  # fmt: skip
        shape = torch.broadcast_shapes(self.shape, p.shape)
        plain = (ints % pk.n) * pk.n + 1
        return self._like(self._mulmod(self._data, plain), shape, bound=self.bound + big)

    def __neg__(self) -> EncryptedTensor:
        gmpy2 = _deps.gmpy2()
        pk = self.public_key
        inv = np.vectorize(lambda c: gmpy2.invert(c, pk.nsq), otypes=[object])(self._data)
        if self.packing is None:
            return self._like(np.asarray(inv, dtype=object))
        # Slot v + k*o becomes 2*k*o - (v + k*o) = -v + k*o: add 2*k*o to every slot.
        top = 2 * self.offsets * self.packing.offset
        if top >= 1 << self.packing.slot_bits:
            raise OverflowError(
                "negating this packed tensor could overflow a slot; use wider slots"
            )
        slots, numel = self._slots(), self.numel()
        fill = top - self.offsets * self.packing.offset  # _pack adds k * o back
        counts = [min(slots, numel - i) for i in range(0, numel, slots)]
        const = np.array(
            [1 + _pack([fill] * c, self.packing, slots, self.offsets)[0] * pk.n for c in counts],
            dtype=object,
        )
        return self._like(self._mulmod(inv, const), bound=top)

    def __sub__(self, other: Any) -> EncryptedTensor:
        if isinstance(other, EncryptedTensor):
            return self + (-other)
        return self._add_plain(-self._plain(other))

    def __rsub__(self, other: Any) -> EncryptedTensor:
        return (-self) + other

    def __mul__(self, other: Any) -> EncryptedTensor:
        if isinstance(other, EncryptedTensor):
            raise TypeError(
                "Paillier cannot multiply two ciphertexts; multiply by a plain tensor, or use "
                "CKKS (veil.he.ckks) for ciphertext products"
            )
        p = self._plain(other)
        exact = bool(torch.all(p == torch.round(p))) if p.numel() else True
        e = 0 if exact else DEFAULT_PRECISION
        if self.packing is not None and not exact and p.numel() == 1:
            # As many fractional bits as the slot headroom allows (at most the default).
            room = self.packing.slot_bits - self.bound.bit_length() - 1
            e = max(0, min(e, room - int(abs(float(p))).bit_length()))
        ints, big = _encode(p, e)
        if self.packing is not None:
            if p.numel() != 1:
                raise ValueError(
                    "a packed tensor multiplies only by a scalar (one multiplier per "
                    "ciphertext); encrypt with pack=False for elementwise products"
                )
            s = int(ints.reshape(-1)[0])
            base = -self if s < 0 else self
            s = abs(s)
            data = _powmod_array(base._data, s, self.public_key.nsq)
            return base._like(data, exponent=base.exponent + e, bound=base.bound * s,
                              offsets=base.offsets * s)  # fmt: skip
        shape = torch.broadcast_shapes(self.shape, p.shape)
        data = _powmod_array(self._data, ints, self.public_key.nsq)
        return self._like(data, shape, exponent=self.exponent + e, bound=self.bound * max(big, 1))

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> EncryptedTensor:
        p = self._plain(other)
        if torch.any(p == 0):
            raise ZeroDivisionError("division of an encrypted tensor by zero")
        return self * (1.0 / p.to(torch.float64))

    # -- reductions and products (unpacked only) --------------------------------------
    def _need_unpacked(self, what: str) -> None:
        if self.packing is not None:
            raise ValueError(
                f"{what} needs one value per ciphertext: a packed ciphertext can only be added "
                "to, negated and scaled as a whole. Encrypt with pack=False"
            )

    def sum(self, dim: int | Sequence[int] | None = None, keepdim: bool = False) -> EncryptedTensor:
        """Sum of elements (over ``dim``, or all)."""
        self._need_unpacked("sum")
        nsq = self.public_key.nsq
        mulmod = np.frompyfunc(lambda a, b: a * b % nsq, 2, 1)
        ndim = self._data.ndim
        axes = list(range(ndim)) if dim is None else [dim] if isinstance(dim, int) else list(dim)
        axes = sorted({a % ndim for a in axes}, reverse=True) if ndim else []
        data = self._data
        for ax in axes:
            if data.shape[ax] == 0:
                raise ValueError("sum over an empty dimension of an encrypted tensor")
            data = mulmod.reduce(data, axis=ax, keepdims=keepdim)
        data = np.asarray(data, dtype=object)
        count = self.numel() // max(1, data.size)
        return self._like(data, data.shape, bound=self.bound * max(count, 1))

    def matmul(self, other: Any) -> EncryptedTensor:
        """``self @ plain`` (vector or matrix on either side: see :meth:`__rmatmul__`)."""
        self._need_unpacked("matmul")
        p = self._plain(other)
        return _enc_matmul(self, p, enc_left=True)

    __matmul__ = matmul

    def __rmatmul__(self, other: Any) -> EncryptedTensor:
        self._need_unpacked("matmul")
        return _enc_matmul(self, self._plain(other), enc_left=False)

    def dot(self, other: Any) -> EncryptedTensor:
        """Dot product of a 1-d encrypted tensor with a plain vector."""
        return (self * other).sum()

    # -- shape ops (unpacked only; no cryptography) -----------------------------------
    def reshape(self, *shape: Any) -> EncryptedTensor:
        self._need_unpacked("reshape")
        dims = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], Sequence) else shape
        data = self._data.reshape(dims)
        return self._like(data, data.shape)

    view = reshape

    def transpose(self, dim0: int, dim1: int) -> EncryptedTensor:
        self._need_unpacked("transpose")
        data = np.swapaxes(self._data, dim0, dim1)
        return self._like(data, data.shape)

    @property
    def T(self) -> EncryptedTensor:  # noqa: N802 - torch's spelling
        self._need_unpacked("T")
        data = self._data.T
        return self._like(data, data.shape)

    def __getitem__(self, index: Any) -> EncryptedTensor:
        self._need_unpacked("indexing")
        data = np.asarray(self._data[index], dtype=object)
        return self._like(data, data.shape)

    def rerandomize(self, *, workers: int | None = None) -> EncryptedTensor:
        """The same plaintexts under fresh randomness (multiply by an encryption of zero).

        A ciphertext computed from plaintexts (``c ** w``) carries randomness that the key
        holder could relate to ``w``; rerandomize before handing results back.
        """
        zeros = self.public_key.raw_encrypt([0] * self.ciphertexts, workers=workers)
        fresh = np.array(zeros, dtype=object).reshape(self._data.shape)
        return self._like(self._mulmod(self._data, fresh))

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


def _too_big(big: int, packing: Packing, exponent: int) -> str:
    limit = 2.0 ** (packing.value_bits - exponent)
    return (
        f"a value of magnitude {big / 2.0**exponent:.4g} does not fit a packed slot (|x| < "
        f"{limit:.4g} at precision {exponent}); lower precision, or use "
        f"Packing(value_bits=...) with more value bits"
    )


def _powmod_array(data: np.ndarray, exps: Any, nsq: Any) -> np.ndarray:
    gmpy2 = _deps.gmpy2()
    fn = np.frompyfunc(lambda c, e: gmpy2.powmod(c, int(e), nsq), 2, 1)
    return np.asarray(fn(data, exps), dtype=object)


def _enc_matmul(enc: EncryptedTensor, p: torch.Tensor, *, enc_left: bool) -> EncryptedTensor:
    """``enc @ p`` or ``p @ enc``: each output is a product of ``c ** w`` over the shared axis."""
    gmpy2 = _deps.gmpy2()
    nsq = enc.public_key.nsq
    exact = bool(torch.all(p == torch.round(p))) if p.numel() else True
    e = 0 if exact else DEFAULT_PRECISION
    ints, big = _encode(p, e)
    a = enc._data if enc_left else ints
    b = ints if enc_left else enc._data
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    if a2.ndim != 2 or b2.ndim != 2 or a2.shape[1] != b2.shape[0]:
        shapes = (
            (tuple(enc.shape), tuple(p.shape)) if enc_left else (tuple(p.shape), tuple(enc.shape))
        )
        raise ValueError(f"matmul: shapes {shapes[0]} and {shapes[1]} do not match (1-d/2-d only)")
    k = a2.shape[1]
    out = np.empty((a2.shape[0], b2.shape[1]), dtype=object)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            cs, ws = (a2[i], b2[:, j]) if enc_left else (b2[:, j], a2[i])
            acc = gmpy2.mpz(1)
            for c, w in zip(cs, ws):
                if w:
                    acc = acc * gmpy2.powmod(c, int(w), nsq) % nsq
            out[i, j] = acc
    if a.ndim == 1:
        out = out[0]
    if b.ndim == 1:
        out = out[..., 0]
    return enc._like(np.asarray(out, dtype=object), out.shape, exponent=enc.exponent + e,
                     bound=enc.bound * max(big, 1) * k)  # fmt: skip


def encrypt(x: Any, public_key: PublicKey, *, precision: int = DEFAULT_PRECISION,
            pack: bool | Packing = False, workers: int | None = None) -> EncryptedTensor:  # fmt: skip
    """Encrypt a tensor (or array / nested list) under ``public_key``.

    Args:
        x: values to encrypt; any real dtype.
        public_key: from :func:`keygen`.
        precision: fractional bits of the fixed-point encoding (``2**-precision`` steps).
        pack: ``True`` (default :class:`Packing`) or a :class:`Packing`: many values per
            ciphertext, for sums; ``False``: one per ciphertext, every operation.
        workers: threads for the modular exponentiations (default: every core).

    Raises:
        OverflowError: a value does not fit the packing's ``value_bits``.

    Example:
        >>> pk, sk = keygen(512, force=True)
        >>> encrypt([[1.0, 2.0]], pk).sum().decrypt(sk)
        tensor(3., dtype=torch.float64)
    """
    if not isinstance(public_key, PublicKey):
        raise TypeError(f"encrypt() needs a paillier.PublicKey, got {type(public_key).__name__}")
    if not 0 <= precision <= 64:
        raise ValueError(f"precision is a number of fractional bits in 0..64, got {precision}")
    t = _as_tensor(x)
    if t.is_complex():
        raise TypeError("complex values cannot be Paillier-encrypted")
    ints, big = _encode(t, precision)
    flat = list(ints.reshape(-1))
    if pack is False:
        n = public_key.n
        data = np.array(public_key.raw_encrypt([v % n for v in flat], workers=workers) or [],
                        dtype=object).reshape(tuple(t.shape))  # fmt: skip
        return EncryptedTensor(public_key, data, t.shape, exponent=precision, bound=big)
    packing = Packing() if pack is True else pack
    slots = packing.slots(public_key.bits)
    if slots < 1:
        raise ValueError(
            f"a {public_key.bits}-bit key holds no {packing.slot_bits}-bit slot; use a larger key"
        )
    if big >= packing.offset:
        raise OverflowError(_too_big(big, packing, precision))
    ms = _pack(flat, packing, slots, 1)
    data = np.array(public_key.raw_encrypt(ms, workers=workers), dtype=object)
    return EncryptedTensor(public_key, data, t.shape, exponent=precision,
                           bound=2 * packing.offset - 1, packing=packing, offsets=1)  # fmt: skip
