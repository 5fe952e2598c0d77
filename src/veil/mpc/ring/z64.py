"""Ring arithmetic on raw shares: fixed point in Z_2^64, a cryptographic PRG, exact int64 products.

Values are elements of the ring Z_2^64, stored in ``torch.int64`` tensors whose two's
complement wrap-around *is* reduction mod 2^64 (torch's int64 add, sub, mul, sum, matmul
and conv2d wrap). A real number ``v`` is encoded as ``round(v * 2**f)`` (``f`` fractional bits,
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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
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

_CHUNK = 1 << 20
_ZEROS = memoryview(bytes(_CHUNK))


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
    view = memoryview(buf)
    # The keystream goes straight into a buffer torch can own, in chunks encrypting one
    # shared block of zeros: a fresh zero input of the full size costs more in page faults
    # than the AES itself (8x, measured on 1.6 MB).
    for off in range(0, 8 * total, _CHUNK):
        n = min(_CHUNK, 8 * total - off)
        enc.update_into(_ZEROS[:n], view[off : off + n + 15])
    words = (
        torch.frombuffer(buf, dtype=torch.int64, count=total)
        if total
        else torch.zeros(0, dtype=torch.int64)
    )
    return list(torch.split(words, sizes)) if len(sizes) > 1 else [words]


# ------------------------------------------------------------------- exact products
#
# torch's int64 kernels (elementwise mul, matmul / bmm / mv, conv2d) accumulate in int64 and
# wrap, so they are exact in Z_2^64; on torch 2.13 (CPU, one thread) they also beat the limb
# path below at every shape measured: 2 to 15 times faster, from (1, 784) @ (784, 128) to
# 1024 x 1024, batched, and LeNet's convolutions (benchmarks/mpc.py reports both per run).
# ``tests/mpc/test_ring.py`` checks them against Python integers, wrap-around included.

_LIMB = 22  # three balanced limbs of ~22 bits: limb products < 2^42, exact in float64
_MAX_K = 2048  # 2^42 * 2048 = 2^53: an inner dimension per exact float64 product


def _check_int64(name: str, *ts: torch.Tensor) -> None:
    for t in ts:
        if t.dtype != torch.int64:
            raise TypeError(f"{name}: ring elements are int64 tensors, got {t.dtype}")


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` in Z_2^64 (torch's matmul rules: vectors, batches, broadcasting), exact.

    torch's native int64 matmul: it accumulates in int64, so it wraps mod 2^64, and it is
    the fastest exact product on CPU (see :func:`matmul_limbs` for the float64 alternative).

    Args:
        a: int64 tensor.
        b: int64 tensor.

    Returns:
        The int64 product, reduced mod 2^64.

    Raises:
        TypeError: an operand is not int64.

    Example:
        >>> a = torch.tensor([[2**62, 3]]); b = torch.tensor([[4], [-1]])
        >>> matmul(a, b)  # 2^64 - 3 wraps to -3
        tensor([[-3]])
    """
    _check_int64("matmul", a, b)
    return torch.matmul(a, b)


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


def matmul_limbs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` in Z_2^64, exact, through float64 BLAS on 22-bit limbs.

    Each operand is split into three balanced 22-bit limbs; only the six limb products with
    weight below 2^64 are needed, each exact in float64 while the inner dimension is at most
    2048 (longer ones are split). The product :func:`matmul` used before torch's int64
    kernels became the faster path; ``benchmarks/mpc.py`` times both to find the fastest
    exact product of the machine it runs on.

    Example:
        >>> a = torch.randint(-2**62, 2**62, (3, 5)); b = torch.randint(-2**62, 2**62, (5, 2))
        >>> bool((matmul_limbs(a, b) == a @ b).all())
        True
    """
    _check_int64("matmul_limbs", a, b)
    k = a.shape[-1]
    if a.dim() == 0 or b.dim() == 0:
        return a * b
    if k > _MAX_K:
        parts = [
            matmul_limbs(
                a[..., i : i + _MAX_K],
                b[..., i : i + _MAX_K, :] if b.dim() > 1 else b[i : i + _MAX_K],
            )
            for i in range(0, k, _MAX_K)
        ]
        out = parts[0]
        for p in parts[1:]:
            out = out + p
        return out
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
           padding: int | tuple[int, int] = 0, groups: int = 1) -> torch.Tensor:  # fmt: skip
    """``F.conv2d(x, w)`` in Z_2^64 (no bias), exact: torch's native int64 convolution.

    Args:
        x: int64 input, (N, C, H, W).
        w: int64 weight, (O, C / groups, kh, kw).
        stride: as in ``torch.nn.functional.conv2d``.
        padding: as in ``torch.nn.functional.conv2d``.
        groups: as in ``torch.nn.functional.conv2d``.

    Returns:
        The int64 convolution, reduced mod 2^64.

    Raises:
        TypeError: an operand is not int64.
        ValueError: the channels of ``x`` and ``w`` do not match.

    Example:
        >>> x = torch.randint(-2**40, 2**40, (2, 3, 6, 6)); w = torch.randint(-9, 9, (4, 3, 3, 3))
        >>> bool((conv2d(x, w, padding=1) == torch.nn.functional.conv2d(x, w, padding=1)).all())
        True
    """
    _check_int64("conv2d", x, w)
    if x.dim() != 4 or w.dim() != 4 or x.shape[1] != w.shape[1] * groups:
        raise ValueError(
            f"conv2d: input {tuple(x.shape)} and weight {tuple(w.shape)} with groups={groups} "
            "do not match; the input needs groups * weight.shape[1] channels"
        )
    return torch.nn.functional.conv2d(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_shapes(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: int | tuple[int, int],
                  padding: int | tuple[int, int]) -> tuple[int, ...]:  # fmt: skip
    """The output shape of :func:`conv2d`."""
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    n, _, h, w = x_shape
    o, _, kh, kw = w_shape
    return (n, o, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)


def matmul_shape(xs: Sequence[int], ys: Sequence[int]) -> tuple[int, ...]:
    """The shape of ``torch.matmul(x, y)`` for operands shaped ``xs`` and ``ys``, by torch's
    rules (a 1-d operand gains a dimension that the result then drops; batch dimensions
    broadcast), without running torch's meta kernel, whose first call imports sympy (0.4 s:
    most of an MPC session's first matrix product).

    Raises:
        RuntimeError: the shapes do not multiply (as torch raises).

    Example:
        >>> matmul_shape((5, 1, 3, 4), (2, 4, 6)), matmul_shape((4,), (4,)), matmul_shape((4,), (2, 4, 6))
        ((5, 2, 3, 6), (), (2, 6))
    """
    x, y = tuple(xs), tuple(ys)
    if not x or not y:
        raise RuntimeError("both arguments to matmul need to be at least 1-d")
    x2 = (1, *x) if len(x) == 1 else x
    y2 = (*y, 1) if len(y) == 1 else y
    if x2[-1] != y2[-2]:
        raise RuntimeError(
            f"matmul: shapes {x} and {y} cannot be multiplied ({x2[-1]} != {y2[-2]})"
        )
    out = (*broadcast_shapes(x2[:-2], y2[:-2]), x2[-2], y2[-1])
    if len(x) == 1:
        out = (*out[:-2], out[-1])
    if len(y) == 1:
        out = out[:-1]
    return out


def broadcast_shapes(*shapes: Sequence[int]) -> torch.Size:
    """The shape ``shapes`` broadcast to, as :func:`torch.broadcast_shapes` gives it, without
    its first call's import of sympy (0.3 s on a quiet machine, the larger part of an MPC
    session's first product): numpy's broadcasting rules are torch's.

    Raises:
        RuntimeError: the shapes do not broadcast (as torch raises).

    Example:
        >>> broadcast_shapes((3, 1), (4,))
        torch.Size([3, 4])
    """
    try:
        return torch.Size(np.broadcast_shapes(*(tuple(s) for s in shapes)))
    except ValueError as exc:
        raise RuntimeError(f"shapes cannot be broadcast together: {exc}") from None
