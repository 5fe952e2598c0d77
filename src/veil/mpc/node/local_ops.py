"""What a party computes on its own shares, with no message to anyone: local truncation,
public matrix products, and the linear algebra of authenticated (malicious-mode) shares.

These run as ordinary (torch-path) ops on the party's node, so their results inherit the
privacy and the share label of their inputs (a result whose private inputs all carry one
label keeps it); each checks its operands and names a wrong one.

Example:
    >>> x = torch.tensor([4 << 16, -(4 << 16)])
    >>> op_trunc_local(x, 16, 0), op_trunc_local(x, 16, 1)
    (tensor([ 4, -4]), tensor([ 4, -4]))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from veil.errors import InvalidRequest
from veil.mpc import ring
from veil.mpc.providers import beaver
from veil.mpc.ring import mac as spdz
from veil.mpc.ring import r128


def op_trunc_local(x: torch.Tensor, f: int, party: int) -> torch.Tensor:
    """Local (2-party) truncation of a share by ``f`` bits (see ``beaver._trunc_local``)."""
    if x.dtype != torch.int64 or not 0 <= f <= 62 or party not in (0, 1):
        raise InvalidRequest("mpc.trunc_local needs an int64 share, 0 <= f <= 62 and party 0 or 1")
    return beaver._trunc_local(x, f, party)


def check_auth(op: str, **shares: torch.Tensor) -> None:
    """Refuse arguments that are not authenticated shares (4, *shape) int64, naming them."""
    for name, t in shares.items():
        if t.dtype != torch.int64 or t.dim() < 1 or t.shape[0] != 4:
            raise InvalidRequest(
                f"{op}: argument {name!r} must be an authenticated share, an int64 tensor of "
                f"shape (4, *shape); got {t.dtype} {tuple(t.shape)}"
            )


def op_a128_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Malicious mode: the sum of two authenticated shares of one shape."""
    check_auth("mpc.a128.add", x=x, y=y)
    if x.shape != y.shape:
        raise InvalidRequest("mpc.a128.add: the shares differ in shape; expand one first")
    return spdz.add(x, y)


def op_a128_sub(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Malicious mode: the difference of two authenticated shares of one shape."""
    check_auth("mpc.a128.sub", x=x, y=y)
    if x.shape != y.shape:
        raise InvalidRequest("mpc.a128.sub: the shares differ in shape; expand one first")
    return spdz.sub(x, y)


def op_a128_neg(x: torch.Tensor) -> torch.Tensor:
    """Malicious mode: the negation of an authenticated share."""
    check_auth("mpc.a128.neg", x=x)
    return spdz.neg(x)


def op_a128_scale(x: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
    """Malicious mode: an authenticated share times a public integer (or integer tensor
    that broadcasts to its shape)."""
    check_auth("mpc.a128.scale", x=x)
    kt = torch.as_tensor(k)
    if kt.is_floating_point() or kt.is_complex() or kt.dtype == torch.bool:
        raise InvalidRequest("mpc.a128.scale: argument 'k' must hold integers")
    try:
        fits = ring.broadcast_shapes(kt.shape, x.shape[1:]) == x.shape[1:]
    except RuntimeError:
        fits = False
    if not fits:
        raise InvalidRequest(f"mpc.a128.scale: a factor of shape {tuple(kt.shape)} does not "
                             f"broadcast to the share's {tuple(x.shape[1:])}")  # fmt: skip
    return spdz.scale(x, kt)


def op_a128_sum(x: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
    """Malicious mode: the sum of an authenticated share over data dimension ``dim``."""
    check_auth("mpc.a128.sum", x=x)
    if not 0 <= dim < x.dim() - 1:
        raise InvalidRequest(f"mpc.a128.sum: dim must be in 0..{x.dim() - 2}, got {dim}")
    return spdz.sum_(x, dim, keepdim)


def op_a128_product_public(x: torch.Tensor, c: torch.Tensor, op: str, left: bool,
                           stride: int = 1, padding: int = 0) -> torch.Tensor:  # fmt: skip
    """Malicious mode: ``op(x, c)`` (``op(c, x)`` when ``left``) for an authenticated share
    ``x`` (4, *shape) and a public int64 ``c``, op ``matmul`` or ``conv2d``: applied to the
    value and the MAC share alike (both are linear in the share, so the MAC stays valid)."""
    check_auth("mpc.a128.product_public", x=x)
    if c.dtype != torch.int64:
        raise InvalidRequest("mpc.a128.product_public: argument 'c' must be an int64 tensor")
    if op not in ("matmul", "conv2d") or (op == "conv2d" and left):
        raise InvalidRequest(
            "mpc.a128.product_public: op must be matmul, or conv2d with the share on the left"
        )
    kw = {"stride": stride, "padding": padding} if op == "conv2d" else {}
    c128 = r128.from64(c)

    def prod(h: torch.Tensor) -> torch.Tensor:
        return r128.product(c128, h, op) if left else r128.product(h, c128, op, **kw)

    return spdz.join(prod(spdz.val(x)), prod(spdz.mac(x)))


#: The local MPC ops, by their allowlist names.
OPS: dict[str, Callable[..., Any]] = {
    "mpc.trunc_local": op_trunc_local,
    "mpc.conv2d": ring.conv2d,
    "mpc.matmul": ring.matmul,
    "mpc.a128.add": op_a128_add,
    "mpc.a128.sub": op_a128_sub,
    "mpc.a128.neg": op_a128_neg,
    "mpc.a128.scale": op_a128_scale,
    "mpc.a128.sum": op_a128_sum,
    "mpc.a128.product_public": op_a128_product_public,
}
