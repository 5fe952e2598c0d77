"""CKKS contexts on TenSEAL: parameters checked for 128-bit security, public copies, Galois keys."""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from veil.he import _deps
from veil.he.tenseal_proto import proto_field, proto_fields

__all__ = [
    "DEFAULT_POLY_MODULUS_DEGREE",
    "DEFAULT_SCALE_BITS",
    "MAX_LOG_Q_128",
    "CKKSContext",
    "DepthExceeded",
    "check_parameters",
    "context",
]

#: HomomorphicEncryption.org security standard (2018), 128-bit classical security,
#: ternary secret: the largest total coefficient modulus (bits) for each ring degree.
MAX_LOG_Q_128 = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
#: Default ring degree: 4096 slots, room for 218 bits of modulus.
DEFAULT_POLY_MODULUS_DEGREE = 8192
#: Default scale (2**40: about 12 decimal digits of fixed point before noise).
DEFAULT_SCALE_BITS = 40


class DepthExceeded(ValueError):
    """A multiplication needs more levels than the context's modulus chain has."""


class CKKSContext:
    """A CKKS context: parameters, keys, and which of them may travel.

    Build one with :func:`context`. :meth:`public` drops the secret key (what a node
    receives); :meth:`serialize` never includes the secret key.
    """

    def __init__(self, raw: Any, *, poly_modulus_degree: int, coeff_mod_bit_sizes: Sequence[int],
                 scale_bits: int, galois_span: int | None = None) -> None:  # fmt: skip
        self.raw = raw
        self.poly_modulus_degree = int(poly_modulus_degree)
        self.coeff_mod_bit_sizes = [int(b) for b in coeff_mod_bit_sizes]
        self.scale_bits = int(scale_bits)
        if galois_span is not None:
            self.__dict__["rotation_span"] = int(galois_span)

    @property
    def slots(self) -> int:
        """Values per ciphertext (``poly_modulus_degree / 2``)."""
        return self.poly_modulus_degree // 2

    @property
    def depth(self) -> int:
        """Multiplications a fresh ciphertext can go through."""
        return len(self.coeff_mod_bit_sizes) - 2

    def max_abs(self, level: int = 0) -> float:
        """Largest magnitude a ciphertext at ``level`` (multiplications done) holds:
        ``2**(q_bits - scale_bits - 1)`` with ``q_bits`` the bits of the primes it has left
        (the special last prime excluded). Larger values wrap around modulo ``q``.

        Example:
            >>> c = context(galois_keys=False)         # [60, 40, 40, 60], scale 2**40
            >>> [c.max_abs(level) for level in range(c.depth + 1)] == [2.0**99, 2.0**59, 2.0**19]
            True
        """
        caps = self.__dict__.get("_max_abs")
        if caps is None:
            sizes = self.coeff_mod_bit_sizes
            caps = self.__dict__["_max_abs"] = [
                2.0 ** (sum(sizes[: len(sizes) - 1 - lv]) - self.scale_bits - 1)
                for lv in range(self.depth + 1)
            ]
        if not 0 <= level <= self.depth:
            raise ValueError(f"level must be in 0..{self.depth}, got {level}")
        return caps[level]  # type: ignore[no-any-return]

    @property
    def is_private(self) -> bool:
        """Holds the secret key (can decrypt)."""
        return bool(self.raw.is_private())

    @cached_property
    def rotation_span(self) -> int:
        """Sums over up to this many slots are possible where this context is sent: its
        Galois keys rotate by 1, 2, 4, ... ``rotation_span / 2`` (0: no keys)."""
        if not self.raw.has_galois_keys():
            return 0
        keys = self.raw.galois_keys().data
        span, step = 1, 1
        while step < self.slots and keys.has_key(pow(3, step, 2 * self.poly_modulus_degree)):
            span, step = step * 2, step * 2
        return span

    @property
    def has_galois_keys(self) -> bool:
        return self.rotation_span > 0

    def _galois_bytes(self) -> bytes:
        """Galois keys for rotations by 1, 2, 4, ... < rotation_span only (SEAL format), made
        with the secret key and kept: TenSEAL's own generator makes every power of two in
        both directions, twice the size."""
        data = self.__dict__.get("_galois")
        if data is None:
            ts = _deps.tenseal()
            elts = [pow(3, 1 << i, 2 * self.poly_modulus_degree)
                    for i in range(max(0, self.rotation_span - 1).bit_length())]  # fmt: skip
            gen = ts._ts_cpp.KeyGenerator(self.raw.data.seal_context(), self.raw.data.secret_key())
            keys = ts._ts_cpp.GaloisKeys()
            gen.create_galois_keys(elts, keys)
            with tempfile.TemporaryDirectory() as tmp:  # public material only
                path = os.path.join(tmp, "galois")
                keys.save(path)
                with open(path, "rb") as f:
                    data = f.read()
            self.__dict__["_galois"] = data
        return data  # type: ignore[no-any-return]

    def _local_rotations(self) -> None:
        """Rotations on the key owner's machine use TenSEAL's full key set (made on demand)."""
        if self.is_private and not self.raw.has_galois_keys():
            self.raw.generate_galois_keys()

    @cached_property
    def fingerprint(self) -> str:
        """Identifies the key pair (a hash of the public key)."""
        data = self.raw.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=False,
            save_relin_keys=False,
        )  # fmt: skip
        return hashlib.sha256(data).hexdigest()[:16]

    def public(self) -> CKKSContext:
        """A copy without the secret key: it encrypts and computes, never decrypts."""
        if not self.is_private:
            return self
        ts = _deps.tenseal()
        raw = ts.context_from(self.serialize())
        ctx = CKKSContext(raw, poly_modulus_degree=self.poly_modulus_degree,
                          coeff_mod_bit_sizes=self.coeff_mod_bit_sizes,
                          scale_bits=self.scale_bits)  # fmt: skip
        ctx.__dict__["fingerprint"] = self.fingerprint
        return ctx

    def serialize(self, *, galois_keys: bool = True) -> bytes:
        """The public context (public, relinearization and, if asked, Galois keys): TenSEAL's
        own serialization, never with the secret key."""
        with_keys = galois_keys and self.rotation_span > 0
        if with_keys and not self.is_private:
            data: bytes = self.raw.serialize(
                save_public_key=True, save_secret_key=False, save_galois_keys=True,
                save_relin_keys=True,
            )  # fmt: skip
            return data
        data = self.raw.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=False,
            save_relin_keys=True,
        )  # fmt: skip
        if not with_keys:
            return data
        # TenSEALContextProto field 2 (TenSEALPublicProto) gets field 5 (galois_keys):
        # tenseal/proto/tensealcontext.proto.
        fields = proto_fields(data)
        out = b"".join(
            proto_field(f, wt, v + proto_field(5, 2, self._galois_bytes()) if f == 2 else v)
            for f, wt, v in fields
        )
        return out

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> CKKSContext:
        """Load a public context sent by :meth:`serialize` (refuses one holding a secret key)."""
        ts = _deps.tenseal()
        try:
            raw = ts.context_from(bytes(data))
        except Exception as exc:
            raise ValueError(f"not a valid TenSEAL context: {exc}") from None
        if raw.is_private():
            raise ValueError("refusing a context that carries a secret key: send ctx.public()")
        ctx = _wrap_raw(raw)
        problems = check_parameters(
            ctx.poly_modulus_degree, ctx.coeff_mod_bit_sizes, ctx.scale_bits
        )
        if problems:
            raise ValueError("refusing a CKKS context: " + "; ".join(problems))
        return ctx

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("CKKS contexts travel only as ctx.serialize() (public keys), never pickled")

    def __repr__(self) -> str:
        kind = "private" if self.is_private else "public"
        return (
            f"CKKSContext(N={self.poly_modulus_degree}, coeff_mod_bit_sizes="
            f"{self.coeff_mod_bit_sizes}, scale=2**{self.scale_bits}, depth={self.depth}, "
            f"{kind}, rotation_span={self.rotation_span})"
        )


def _wrap_raw(raw: Any) -> CKKSContext:
    """Wrap a TenSEAL context, reading its parameters back from SEAL."""
    _deps.tenseal()
    import tenseal.sealapi  # noqa: F401 - registers seal::Modulus so the chain can be read

    parms = raw.seal_context().data.key_context_data().parms()
    bits = [m.bit_count() for m in parms.coeff_modulus()]
    n = int(parms.poly_modulus_degree())
    scale = raw.global_scale
    scale_bits = int(round(math.log2(scale))) if scale and scale > 0 else DEFAULT_SCALE_BITS
    return CKKSContext(raw, poly_modulus_degree=n, coeff_mod_bit_sizes=bits, scale_bits=scale_bits)


def check_parameters(poly_modulus_degree: int, coeff_mod_bit_sizes: Sequence[int],
                     scale_bits: int) -> list[str]:  # fmt: skip
    """Every problem with a set of CKKS parameters, each saying what to change.

    Example:
        >>> check_parameters(8192, [60, 40, 40, 60], 40)
        []
        >>> print(check_parameters(4096, [60, 40, 40, 60], 40)[0])  # doctest: +ELLIPSIS
        poly_modulus_degree=4096 allows at most 109 bits ...
    """
    problems: list[str] = []
    n = poly_modulus_degree
    bits = list(coeff_mod_bit_sizes)
    if n not in MAX_LOG_Q_128:
        problems.append(f"poly_modulus_degree must be one of {sorted(MAX_LOG_Q_128)}, got {n}")
        return problems
    if len(bits) < 2:
        problems.append(
            "coeff_mod_bit_sizes needs at least 2 primes ([first, ...middle..., last]); "
            "e.g. [60, 40, 40, 60] for depth 2"
        )
        return problems
    if any(not 17 <= b <= 60 for b in bits):
        problems.append(f"every coefficient modulus prime must have 17-60 bits, got {bits}")
    total = sum(bits)
    if total > MAX_LOG_Q_128[n]:
        bigger = next((d for d, q in sorted(MAX_LOG_Q_128.items()) if q >= total), None)
        hint = f"use poly_modulus_degree={bigger}" if bigger else "use fewer or smaller primes"
        problems.append(
            f"poly_modulus_degree={n} allows at most {MAX_LOG_Q_128[n]} bits of coefficient "
            f"modulus for 128-bit security (HomomorphicEncryption.org standard), got {total} "
            f"({bits}); {hint}, or lower the depth or the scale (TenSEAL's SEAL build "
            "refuses weaker parameters, so this cannot be forced)"
        )
    if not 20 <= scale_bits <= 60:
        problems.append(f"scale_bits must be in 20..60, got {scale_bits}; 40 is typical")
    middle = bits[1:-1]
    if middle and any(b != scale_bits for b in middle):
        problems.append(
            f"the middle primes {middle} should equal the scale (2**{scale_bits}) so each "
            f"rescale divides the scale back out; use coeff_mod_bit_sizes=[60, "
            f"{', '.join([str(scale_bits)] * len(middle))}, 60]"
        )
    if bits[0] < scale_bits + 10:
        problems.append(
            f"the first prime ({bits[0]} bits) should exceed the scale by ~10-20 bits "
            f"(room for the integer part); use {min(60, scale_bits + 20)}"
        )
    return problems


def context(poly_modulus_degree: int = DEFAULT_POLY_MODULUS_DEGREE,
            coeff_mod_bit_sizes: Sequence[int] | None = None, *, scale_bits: int = DEFAULT_SCALE_BITS,
            depth: int | None = None, galois_keys: bool | int = True) -> CKKSContext:  # fmt: skip
    """A CKKS context with a fresh key pair.

    Defaults: ``N = 8192`` (4096 slots), ``coeff_mod_bit_sizes = [60, 40, 40, 60]``
    (depth 2, 200 bits of the 218 that 128-bit security allows at N=8192), scale
    ``2**40``, relinearization and Galois keys (rotations: ``sum``, ``dot``, ``@``).

    Args:
        poly_modulus_degree: ring degree N (1024..32768, a power of two).
        coeff_mod_bit_sizes: bit sizes of the modulus chain; default
            ``[60] + [scale_bits] * depth + [60]``.
        scale_bits: ``log2`` of the encoding scale.
        depth: multiplications to support (sets the chain when ``coeff_mod_bit_sizes``
            is not given; default 2).
        galois_keys: rotation keys sent with the public context, needed where it is sent by
            ``sum``, ``dot`` and ``@``: ``True`` for sums over any number of slots (rotations
            by 1, 2, 4, ... slots/2: a 1.8 MiB context becomes ~18 MiB at N=8192, half of
            TenSEAL's default key set), an int ``n`` for sums over at most ``n`` slots
            (``log2(n)`` keys; ``galois_keys=1024`` serves a 784-input ``x @ W`` on a
            replicated vector), ``False`` for none. The key owner's own context makes
            rotation keys on demand for local computations.

    Parameters below 128-bit security are refused, with no override: SEAL (inside
    TenSEAL) enforces the same HomomorphicEncryption.org bound and cannot be told
    otherwise, so veil checks first and says what to change.

    Raises:
        ValueError: insecure or inconsistent parameters, with the fix.

    Example:
        >>> context(8192, depth=4)
        Traceback (most recent call last):
        ...
        ValueError: poly_modulus_degree=8192 allows at most 218 bits ...
        >>> context(16384, depth=4, galois_keys=False).depth
        4
    """
    if coeff_mod_bit_sizes is None:
        d = 2 if depth is None else int(depth)
        if d < 0:
            raise ValueError(f"depth must be >= 0, got {d}")
        coeff_mod_bit_sizes = [60] + [scale_bits] * d + [60]
    elif depth is not None and depth != len(coeff_mod_bit_sizes) - 2:
        raise ValueError(
            f"depth={depth} contradicts coeff_mod_bit_sizes={list(coeff_mod_bit_sizes)} "
            f"(depth {len(coeff_mod_bit_sizes) - 2}); give one of them"
        )
    problems = check_parameters(poly_modulus_degree, coeff_mod_bit_sizes, scale_bits)
    if problems:
        raise ValueError("; ".join(problems))
    ts = _deps.tenseal()
    raw = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=poly_modulus_degree,
                     coeff_mod_bit_sizes=list(coeff_mod_bit_sizes))  # fmt: skip
    raw.global_scale = 2.0**scale_bits
    slots = poly_modulus_degree // 2
    if galois_keys is True:
        span = slots
    elif galois_keys is False:
        span = 0
    elif isinstance(galois_keys, int) and 2 <= galois_keys <= slots:
        span = 1 << (galois_keys - 1).bit_length()
    else:
        raise ValueError(f"galois_keys is True, False or a number of slots in 2..{slots}")
    return CKKSContext(raw, poly_modulus_degree=poly_modulus_degree,
                       coeff_mod_bit_sizes=coeff_mod_bit_sizes, scale_bits=scale_bits,
                       galois_span=span)  # fmt: skip
