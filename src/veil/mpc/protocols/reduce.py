"""Maximum, argmax and pooling on shared tensors: trees of pairwise comparisons.

A level compares adjacent candidates (2i, 2i+1) with one sign bit and selects values (and
one-hot positions) with one round of products; ``k`` candidates take ceil(log2 k) levels
of 9 rounds each. Ties go to the first position.

The functions are generic over :class:`~veil.mpc.SharedTensor` (semi-honest) and
:class:`~veil.mpc.authenticated.AuthenticatedTensor` (malicious): they use only the tensor
operations both provide (sign bits, batched products, shape ops), so in malicious mode
every opening is MAC-checked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import torch

from veil.mpc.ring import FixedPoint

if TYPE_CHECKING:
    from veil.mpc.tensors.authenticated import AuthenticatedTensor
    from veil.mpc.tensors.shared import SharedTensor

T = TypeVar("T", "SharedTensor", "AuthenticatedTensor")


def max_along(x: T, dim: int, *, keepdim: bool = False, onehot: bool = True) -> tuple[T, Any]:
    """``(max values, one-hot argmax or None)`` along ``dim``.

    Example:
        >>> import torch, veil
        >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
        >>> x = torch.tensor([[1.0, 5.0, -2.0], [7.0, 0.0, 7.0]]).share(a, b, crypto_provider=c)
        >>> v, hot = max_along(x, 1)
        >>> v.reconstruct(), hot.reconstruct()
        (tensor([5., 7.]), tensor([[0., 1., 0.],
                [1., 0., 0.]]))
    """
    nd = x.dim()
    dim = dim % nd
    v = x.transpose(dim, nd - 1) if dim != nd - 1 else x
    k = v.shape[-1]
    hot: Any = torch.eye(k, dtype=torch.int64).expand(*v.shape, k).contiguous() if onehot else None
    while v.shape[-1] > 1:
        m = v.shape[-1]
        h = m // 2
        a, b = v[..., 0 : 2 * h : 2], v[..., 1 : 2 * h : 2]
        diff = a - b
        keep_a = 1 - diff._sign()  # 1 where a >= b (integer bits)
        pairs = [(keep_a, diff)]
        if onehot:
            ha, hb = hot[..., 0 : 2 * h : 2, :], hot[..., 1 : 2 * h : 2, :]
            hdiff = ha - hb
            if isinstance(hdiff, torch.Tensor):  # first level: public positions
                sel_hot = keep_a.unsqueeze(-1) * hdiff + hb
            else:
                pairs.append((keep_a.unsqueeze(-1), hdiff))
        outs = x._mul_many(pairs)  # one round for the values and the positions
        new_v = outs[0] + b
        if onehot:
            if len(outs) > 1:
                sel_hot = outs[1] + hb
            if m % 2:
                hot = type(x).cat([sel_hot, _as_shared(hot[..., m - 1 : m, :], x)], -2)
            else:
                hot = sel_hot
        if m % 2:
            new_v = type(x).cat([new_v, v[..., m - 1 : m]], -1)
        v = new_v
    values = v.squeeze(-1) if not keepdim else v
    if keepdim and dim != nd - 1:
        values = values.transpose(dim, nd - 1)
    if onehot:
        hot = _as_shared(hot, x).squeeze(-2)  # (..., k)
        if dim != nd - 1:
            hot = hot.transpose(dim, nd - 1)
    return values, hot


def _as_shared(t: Any, like: T) -> T:
    """A public int tensor as shares with ``frac_bits = 0`` (party 0 holds it)."""
    if isinstance(t, torch.Tensor):
        return like._from_public(t, FixedPoint(0))
    return t  # type: ignore[no-any-return]


def _windows(x: T, k: int, stride: int) -> T:
    n, c, h, w = x.shape
    return x.unfold(2, k, stride).unfold(3, k, stride).reshape(
        n, c, (h - k) // stride + 1, (w - k) // stride + 1, k * k)  # fmt: skip


def max_pool2d(x: T, kernel_size: int, stride: int | None = None) -> T:
    """``F.max_pool2d`` (no padding) on an (N, C, H, W) shared tensor."""
    if x.dim() != 4:
        raise ValueError(f"max_pool2d takes an (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    values, _ = max_along(_windows(x, kernel_size, stride or kernel_size), -1, onehot=False)
    return values


def avg_pool2d(x: T, kernel_size: int, stride: int | None = None) -> T:
    """``F.avg_pool2d`` (no padding): window sums times the public 1/k^2."""
    if x.dim() != 4:
        raise ValueError(f"avg_pool2d takes an (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    return _windows(x, kernel_size, stride or kernel_size).sum(-1) * (1.0 / kernel_size**2)
