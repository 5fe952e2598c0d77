"""Paillier keys: the public key ``n`` (checked on construction), the private key, keygen."""

from __future__ import annotations

import hashlib
import math
import os
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from veil.he import _deps, limits

__all__ = ["MIN_SECURE_BITS", "PrivateKey", "PublicKey", "keygen", "parallel_powmod"]

#: Smallest key size accepted without ``force=True`` (NIST SP 800-57: 112-bit security).
MIN_SECURE_BITS = 2048
#: Work below this many values runs on the calling thread.
_PARALLEL_MIN = 64
#: Product of the primes below 2**12: a modulus sharing one is not a product of two large primes.
_SMALL_PRIMES = math.prod(
    p for p in range(3, 1 << 12, 2) if all(p % d for d in range(3, int(p**0.5) + 1, 2))
)


def _fingerprint(n: int) -> str:
    return hashlib.sha256(int(n).to_bytes((int(n).bit_length() + 7) // 8, "big")).hexdigest()[:16]


class PublicKey:
    """A Paillier public key ``n`` (generator ``g = n + 1``): encrypts and computes.

    Args:
        n: the modulus, a product of two large primes.
        allow_insecure: accept a modulus under 2048 bits (what ``keygen(force=True)``
            passes; tests only). Without it a small modulus is refused unless the process
            opted in with ``VEIL_HE_INSECURE_KEYS=1`` (see :mod:`veil.he.limits`).

    Raises:
        ValueError: not an odd non-square without small factors, or too small.
    """

    __slots__ = ("n", "nsq", "bits", "fingerprint", "insecure", "__weakref__")

    def __init__(self, n: int, *, allow_insecure: bool = False) -> None:
        gmpy2 = _deps.gmpy2()
        n = gmpy2.mpz(n)
        if n < 15 or n % 2 == 0 or gmpy2.is_square(n) or gmpy2.gcd(n, _SMALL_PRIMES) != 1:
            raise ValueError(
                "not a Paillier modulus: it must be an odd product of two distinct large primes "
                "(make keys with paillier.keygen)"
            )
        self.n = n
        self.nsq = n * n
        self.bits = int(n.bit_length())
        self.fingerprint = _fingerprint(int(n))
        minimum = limits.current().min_paillier_bits
        self.insecure = self.bits < minimum
        if self.insecure and not (allow_insecure or limits.insecure_keys_allowed()):
            raise ValueError(
                f"a {self.bits}-bit Paillier key is not secure (it can be factored); use "
                f"paillier.keygen({max(minimum, MIN_SECURE_BITS)}) or larger. Tests may make small "
                "keys with keygen(bits, force=True), and let nodes accept them with "
                "VEIL_HE_INSECURE_KEYS=1"
            )

    def raw_encrypt(self, ms: Sequence[Any], *, workers: int | None = None) -> list[Any]:
        """Encrypt integers already reduced mod ``n``: ``(1 + m n) r^n mod n^2``.

        The ``r^n`` powers (the whole cost) run in gmpy2's C loop, which releases the GIL,
        split over ``workers`` threads (default: every core).
        """
        gmpy2 = _deps.gmpy2()
        n, nsq = self.n, self.nsq
        rs = [gmpy2.mpz(secrets.randbelow(int(n) - 1) + 1) for _ in range(len(ms))]
        rn = parallel_powmod(rs, n, nsq, workers)
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
        xp = parallel_powmod([c % self._psq for c in cs], p - 1, self._psq, workers)
        xq = parallel_powmod([c % self._qsq for c in cs], q - 1, self._qsq, workers)
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
    pub = PublicKey(n, allow_insecure=force)
    return pub, PrivateKey(pub, p, q)


def _prime(gmpy2: Any, bits: int) -> Any:
    # Top two bits set: the product of two such primes has exactly 2 * bits bits.
    return gmpy2.next_prime(gmpy2.mpz(secrets.randbits(bits)) | (gmpy2.mpz(3) << (bits - 2)))


def parallel_powmod(bases: list[Any], exp: Any, mod: Any, workers: int | None) -> list[Any]:
    gmpy2 = _deps.gmpy2()
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(bases) < _PARALLEL_MIN:
        return list(gmpy2.powmod_base_list(bases, exp, mod))
    size = math.ceil(len(bases) / workers)
    chunks = [bases[i : i + size] for i in range(0, len(bases), size)]
    with ThreadPoolExecutor(workers) as pool:  # powmod_base_list releases the GIL
        parts = list(pool.map(lambda c: gmpy2.powmod_base_list(c, exp, mod), chunks))
    return [v for part in parts for v in part]
