"""Fixed-point encoding of float vectors into the ring Z_{2^bits}, and the AES-CTR mask PRG.

A float ``x`` is encoded as ``round(x * 2^frac_bits) mod 2^bits`` (two's complement), held
in ``uint64`` (``bits=64``, the default) or ``uint32`` (``bits=32``) numpy arrays, so sums
wrap modulo ``2^bits`` for free. A sum is decoded by reading it as a signed integer and
dividing by ``2^frac_bits``; it is exact as long as the true sum of the encoded integers
lies in ``[-2^(bits-1), 2^(bits-1))``, i.e. the float sum lies within ``±2^(bits-1-frac_bits)``
(``±2^39`` for the default 64/24). Each encoded value is off by at most ``2^-(frac_bits+1)``
(rounding), so a sum of ``n`` inputs is within ``n * 2^-(frac_bits+1)`` of the float sum.

Masks are AES-256-CTR keystreams (key = a 32-byte seed, a zero nonce) read as ring words:
one call expands a seed to a whole vector, with no per-element Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["FixedPoint", "expand_seed"]

_ZERO_NONCE = bytes(16)


@dataclass(frozen=True, slots=True)
class FixedPoint:
    """Fixed-point encoding into Z_{2^bits} with ``frac_bits`` fractional bits.

    Example:
        >>> fp = FixedPoint(bits=32, frac_bits=16)
        >>> a, b = fp.encode([1.5, -2.25]), fp.encode([0.5, 1.0])
        >>> fp.decode(a + b).tolist()
        [2.0, -1.25]
    """

    bits: int = 64
    frac_bits: int = 24

    def __post_init__(self) -> None:
        if self.bits not in (32, 64):
            raise ValueError(f"bits must be 32 or 64, got {self.bits}")
        if not 0 <= self.frac_bits <= self.bits - 8:
            raise ValueError(
                f"frac_bits must be in [0, {self.bits - 8}] for bits={self.bits}, "
                f"got {self.frac_bits}; 16-24 suits model updates"
            )

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        """The numpy dtype of ring elements (``uint32`` or ``uint64``)."""
        return np.uint64 if self.bits == 64 else np.uint32

    @property
    def word_bytes(self) -> int:
        """Bytes per ring element."""
        return self.bits // 8

    @property
    def max_abs(self) -> float:
        """The largest magnitude a float (or a decoded sum) may have."""
        return float(2 ** (self.bits - 1 - self.frac_bits))

    def encode(self, x: torch.Tensor | np.ndarray | list[float]) -> np.ndarray:
        """Encode a float vector into ring elements (flattened).

        Args:
            x: a float tensor, array or list.

        Returns:
            A 1-D ``uint32``/``uint64`` array.

        Raises:
            ValueError: a value is not finite or not within ``±max_abs``.

        Example:
            >>> FixedPoint(bits=32, frac_bits=8).encode([1.0, -1.0]).tolist()
            [256, 4294967040]
        """
        if isinstance(x, torch.Tensor):
            arr = x.detach().cpu().to(torch.float64).reshape(-1).numpy()
        else:
            arr = np.asarray(x, dtype=np.float64).reshape(-1)
        if not np.isfinite(arr).all():
            raise ValueError("cannot encode NaN or infinite values")
        if arr.size and float(np.abs(arr).max()) >= self.max_abs:
            raise ValueError(
                f"values must lie within ±{self.max_abs:g} for bits={self.bits}, "
                f"frac_bits={self.frac_bits}; lower frac_bits or clip the input"
            )
        scaled = np.rint(arr * float(2**self.frac_bits)).astype(np.int64)
        return scaled.view(np.uint64).astype(self.dtype)  # keeps the low bits: mod 2^bits

    def decode(self, v: np.ndarray) -> np.ndarray:
        """Decode ring elements (e.g. a sum) to float64, reading them as signed integers.

        Example:
            >>> fp = FixedPoint()
            >>> fp.decode(fp.encode([-3.5, 0.25])).tolist()
            [-3.5, 0.25]
        """
        signed = np.asarray(v, dtype=self.dtype).view(np.int64 if self.bits == 64 else np.int32)
        return signed.astype(np.float64) / float(2**self.frac_bits)


def expand_seed(seed: bytes, length: int, fp: FixedPoint) -> np.ndarray:
    """Expand a 32-byte seed to ``length`` uniform ring elements (AES-256-CTR keystream).

    Args:
        seed: 32 secret bytes (the AES key).
        length: number of ring elements.
        fp: the encoding, which fixes the word size.

    Returns:
        A fresh, writable 1-D array of dtype ``fp.dtype``.

    Example:
        >>> m = expand_seed(bytes(32), 4, FixedPoint())
        >>> m.dtype.name, len(m), bool((m == expand_seed(bytes(32), 4, FixedPoint())).all())
        ('uint64', 4, True)
    """
    if len(seed) != 32:
        raise ValueError(f"seed must be 32 bytes, got {len(seed)}")
    enc = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_NONCE)).encryptor()
    stream = enc.update(bytes(length * fp.word_bytes)) + enc.finalize()
    return np.frombuffer(stream, dtype=np.dtype(fp.dtype).newbyteorder("<")).astype(fp.dtype)
