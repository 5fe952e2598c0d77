"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^521 - 1).

The field is the Mersenne prime ``p = 2^521 - 1``: every 256-bit secret is one field
element (no chunking), and a share is one element, written as 66 big-endian bytes. A share
for the party with Shamir point ``x`` (``x >= 1``; secagg uses ``client_id + 1``) is
``f(x)`` for a random polynomial ``f`` of degree ``threshold - 1`` with ``f(0) = secret``;
any ``threshold`` shares give the secret back, fewer reveal nothing about it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping

__all__ = ["PRIME", "SHARE_BYTES", "reconstruct", "split"]

#: The field modulus, the Mersenne prime 2^521 - 1.
PRIME = 2**521 - 1
#: Bytes of one encoded share.
SHARE_BYTES = 66


def split(secret: bytes, xs: Iterable[int], threshold: int) -> dict[int, bytes]:
    """Share ``secret`` (at most 32 bytes) at the points ``xs`` so any ``threshold`` recover it.

    Args:
        secret: the secret, at most 32 bytes.
        xs: distinct evaluation points, each in ``[1, 2^31)``.
        threshold: shares needed to reconstruct (the polynomial's degree + 1).

    Returns:
        Each point's share, ``SHARE_BYTES`` bytes.

    Raises:
        ValueError: a bad secret, point or threshold.

    Example:
        >>> shares = split(b"k" * 32, [1, 2, 3, 4], threshold=3)
        >>> reconstruct({x: shares[x] for x in (1, 3, 4)}) == b"k" * 32
        True
    """
    points = list(xs)
    if len(secret) > 32:
        raise ValueError(f"secret must be at most 32 bytes, got {len(secret)}")
    if len(set(points)) != len(points) or any(not 1 <= x < 2**31 for x in points):
        raise ValueError("share points must be distinct integers in [1, 2^31)")
    if not 1 <= threshold <= len(points):
        raise ValueError(f"threshold must be in [1, {len(points)}], got {threshold}")
    coeffs = [int.from_bytes(secret, "big")]
    coeffs += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    out = {}
    for x in points:
        acc = 0
        for c in reversed(coeffs):
            acc = (acc * x + c) % PRIME
        out[x] = acc.to_bytes(SHARE_BYTES, "big")
    return out


def reconstruct(shares: Mapping[int, bytes], length: int = 32) -> bytes:
    """Recover a secret from shares (point -> share) by Lagrange interpolation at 0.

    Passing exactly ``threshold`` shares is enough; any surplus must be consistent.

    Args:
        shares: at least ``threshold`` shares, by point.
        length: the byte length of the secret.

    Returns:
        The secret, ``length`` bytes.

    Raises:
        ValueError: malformed shares, or a result that does not fit in ``length`` bytes.

    Example:
        >>> s = split(bytes(range(32)), [5, 9], threshold=2)
        >>> reconstruct(s) == bytes(range(32))
        True
    """
    if not shares:
        raise ValueError("no shares to reconstruct from")
    ys = {}
    for x, share in shares.items():
        if len(share) != SHARE_BYTES or not 1 <= x < 2**31:
            raise ValueError(f"malformed share at point {x}")
        ys[x] = int.from_bytes(share, "big")
        if ys[x] >= PRIME:
            raise ValueError(f"share at point {x} is outside the field")
    secret = 0
    for xi, yi in ys.items():
        num, den = 1, 1
        for xj in ys:
            if xj != xi:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 2 ** (8 * length):
        raise ValueError("the shares do not interpolate to a secret of the expected length")
    return secret.to_bytes(length, "big")
