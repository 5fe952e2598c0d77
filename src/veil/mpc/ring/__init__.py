"""Ring arithmetic on raw shares, no protocol and no node: Z_2^64 fixed point, a PRG and
exact products (:mod:`~veil.mpc.ring.z64`), Z_2^128 (:mod:`~veil.mpc.ring.r128`) and SPDZ2k
MAC arithmetic (:mod:`~veil.mpc.ring.mac`). The lowest layer of :mod:`veil.mpc`.

Example:
    >>> import torch
    >>> FixedPoint(16).encode(torch.tensor([1.0]))
    tensor([65536])
"""

from __future__ import annotations

from veil.mpc.ring.z64 import (
    FixedPoint,
    broadcast_shapes,
    conv2d,
    conv2d_shapes,
    matmul,
    matmul_limbs,
    matmul_shape,
    prg,
    prg_many,
)

__all__ = [
    "FixedPoint",
    "broadcast_shapes",
    "conv2d",
    "conv2d_shapes",
    "matmul",
    "matmul_limbs",
    "matmul_shape",
    "prg",
    "prg_many",
]
