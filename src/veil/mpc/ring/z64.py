"""Ring arithmetic on raw shares: fixed point in Z_2^64, a cryptographic PRG, exact int64 products.

Values are elements of the ring Z_2^64, stored in ``torch.int64`` tensors whose two's
complement wrap-around *is* reduction mod 2^64 (torch's int64 add, sub, mul, sum and
matmul wrap). A real number ``v`` is encoded as ``round(v * 2**f)`` (``f`` fractional bits,
16 by default) and read back as the signed integer divided by ``2**f``: decoding is exact
for negative values too.

Example:
    >>> import torch
    >>> fp = FixedPoint(16)
    >>> enc = fp.encode(torch.tensor([-1.5, 0.25, 3.0]))
    >>> enc
    tensor([-98304,  16384, 196608])
    >>> fp.decode(enc)
    tensor([-1.5000,  0.2500,  3.0000])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

#: Largest magnitude a fixed-point value may have before ``encode`` refuses it.
_MAX_ENC = 2.0**62


@dataclass(frozen=True, slots=True)
class FixedPoint:
    """Fixed-point encoding in Z_2^64 with ``frac_bits`` fractional bits.

    The product of two encoded values carries ``2 * frac_bits`` fractional bits and must
    stay below 2^62 in magnitude before it is truncated: with 16 bits, operands up to about
    2^15 (32768) multiply safely.

    Example:
        >>> FixedPoint(8).decode(FixedPoint(8).encode(torch.tensor([-0.1])))
        tensor([-0.1016])
    """

    frac_bits: int = 16

    def __post_init__(self) -> None:
        if not 0 <= self.frac_bits <= 30:
            raise ValueError(f"frac_bits must be in 0..30, got {self.frac_bits}; 16 is typical")

    @property
    def scale(self) -> int:
        return 1 << self.frac_bits

    def encode(self, x: torch.Tensor | float) -> torch.Tensor:
        """Round ``x * 2**frac_bits`` to int64 (through float64, so no float32 rounding)."""
        t = torch.as_tensor(x).to(torch.float64) * self.scale
        if t.numel() and not bool(torch.isfinite(t).all()):
            raise ValueError("cannot encode inf or nan in fixed point")
        if t.numel() and float(t.abs().max()) >= _MAX_ENC:
            raise ValueError(
                f"a value of magnitude {float(t.abs().max()) / self.scale:.3g} does not fit the "
                f"fixed-point range (|x| < 2^{62 - self.frac_bits}); scale the data down or use "
                "fewer frac_bits"
            )
        return t.round().to(torch.int64)

    def decode(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The signed int64 divided by ``2**frac_bits`` (exact in float64), cast to ``dtype``."""
        return (x.to(torch.float64) / self.scale).to(dtype)


# --------------------------------------------------------------------------- PRG


def prg(seed: bytes, stream: int, slot: int, numel: int) -> torch.Tensor:
    """``numel`` uniform int64 words from AES-256-CTR keyed by ``seed``.

    ``(stream, slot)`` select disjoint counter ranges (2^32 blocks each), so every
    (stream, slot) pair gives an independent pseudorandom tensor.

    Example:
        >>> a = prg(bytes(32), 1, 0, 4)
        >>> bool((a == prg(bytes(32), 1, 0, 4)).all()), bool((a == prg(bytes(32), 2, 0, 4)).all())
        (True, False)
    """
    return prg_many(seed, stream, [numel], slot)[0]


def prg_many(seed: bytes, stream: int, sizes: list[int], slot: int = 0) -> list[torch.Tensor]:
    """Consecutive pieces of one AES-256-CTR keystream (one cipher call for a whole group).

    Example:
        >>> a, b = prg_many(bytes(32), 3, [2, 3])
        >>> bool((torch.cat([a, b]) == prg(bytes(32), 3, 0, 5)).all())
        True
    """
    if len(seed) != 32:
        raise ValueError("a PRG seed is 32 bytes")
    total = sum(sizes)
    nonce = ((stream & (2**64 - 1)) << 64 | (slot & 0xFFFFFFFF) << 32).to_bytes(16, "big")
    enc = Cipher(algorithms.AES(seed), modes.CTR(nonce)).encryptor()
    buf = bytearray(8 * total + 15)
    enc.update_into(bytes(8 * total), buf)  # keystream straight into a buffer torch can own
    words = (
        torch.frombuffer(buf, dtype=torch.int64, count=total)
        if total
        else torch.zeros(0, dtype=torch.int64)
    )
    return list(torch.split(words, sizes)) if len(sizes) > 1 else [words]


# ------------------------------------------------------------------- exact products

_LIMB = 22  # three balanced limbs of ~22 bits: limb products < 2^42, exact in float64
_MAX_K = 2048  # 2^42 * 2048 = 2^53: an inner dimension per exact float64 product


def _limbs(x: torch.Tensor) -> list[torch.Tensor]:
    """Balanced base-2^22 digits of int64 ``x`` (mod 2^64) as float64 tensors, each in [-2^21, 2^21]."""
    out = []
    half = 1 << (_LIMB - 1)
    mask = (1 << _LIMB) - 1
    rest = x
    for _ in range(2):
        d = ((rest + half) & mask) - half  # in [-2^21, 2^21)
        out.append(d.to(torch.float64))
        rest = (rest - d) >> _LIMB
    out.append(rest.to(torch.float64))  # top digit: |rest| < 2^21 (as mod-2^64 ints)
    return out


def _f2i(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.int64)


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` in Z_2^64, exact, through float64 BLAS on 22-bit limbs.

    torch's int64 matmul is exact but has no BLAS (about 20x slower than float64 on CPU).
    Each operand is split into three balanced 22-bit limbs; only the six limb products
    with weight below 2^64 are needed, each exact in float64 while the inner dimension is
    at most 2048 (longer ones are split).

    Example:
        >>> a = torch.randint(-2**62, 2**62, (3, 5)); b = torch.randint(-2**62, 2**62, (5, 2))
        >>> bool((matmul(a, b) == a @ b).all())
        True
    """
    k = a.shape[-1]
    if a.dim() == 0 or b.dim() == 0:
        return a * b
    if k > _MAX_K:
        parts = [
            matmul(
                a[..., i : i + _MAX_K],
                b[..., i : i + _MAX_K, :] if b.dim() > 1 else b[i : i + _MAX_K],
            )
            for i in range(0, k, _MAX_K)
        ]
        out = parts[0]
        for p in parts[1:]:
            out = out + p
        return out
    if a.numel() * b.numel() < 4096:  # tiny: int64 directly
        return torch.matmul(a, b)
    la, lb = _limbs(a), _limbs(b)
    p00 = _f2i(torch.matmul(la[0], lb[0]))
    p01 = _f2i(torch.matmul(la[0], lb[1])) + _f2i(torch.matmul(la[1], lb[0]))
    p02 = (
        _f2i(torch.matmul(la[0], lb[2]))
        + _f2i(torch.matmul(la[1], lb[1]))
        + _f2i(torch.matmul(la[2], lb[0]))
    )
    return p00 + (p01 << _LIMB) + (p02 << (2 * _LIMB))


def conv2d(x: torch.Tensor, w: torch.Tensor, stride: int | tuple[int, int] = 1,
           padding: int | tuple[int, int] = 0) -> torch.Tensor:  # fmt: skip
    """``F.conv2d(x, w)`` in Z_2^64 (no bias), exact: im2col and :func:`matmul`.

    Example:
        >>> x = torch.randint(-2**40, 2**40, (2, 3, 6, 6)); w = torch.randint(-9, 9, (4, 3, 3, 3))
        >>> bool((conv2d(x, w, padding=1) == torch.nn.functional.conv2d(x, w, padding=1)).all())
        True
    """
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    if ph or pw:
        x = torch.nn.functional.pad(x, (pw, pw, ph, ph))
    n, c, h, wd = x.shape
    o, c2, kh, kw = w.shape
    if c != c2:
        raise ValueError(f"conv2d: input has {c} channels, the weight expects {c2}")
    cols = x.unfold(2, kh, sh).unfold(3, kw, sw)  # n, c, oh, ow, kh, kw
    oh, ow = cols.shape[2], cols.shape[3]
    cols = cols.permute(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)
    out = matmul(cols, w.reshape(o, -1).t())  # (n*oh*ow, o)
    return out.reshape(n, oh, ow, o).permute(0, 3, 1, 2).contiguous()


def conv2d_shapes(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: int | tuple[int, int],
                  padding: int | tuple[int, int]) -> tuple[int, ...]:  # fmt: skip
    """The output shape of :func:`conv2d`."""
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    n, _, h, w = x_shape
    o, _, kh, kw = w_shape
    return (n, o, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
