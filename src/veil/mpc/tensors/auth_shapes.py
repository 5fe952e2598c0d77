"""The shape ops of :class:`~veil.mpc.tensors.authenticated.AuthenticatedTensor`: free, each
party reshapes its own (4, *shape) authenticated share (value and MAC, 128 bits each).

Example:
    >>> import torch, veil
    >>> a, b, c = (veil.VirtualWorker(n) for n in ("a", "b", "c"))
    >>> x = torch.arange(6.0).share(a, b, crypto_provider=c, security="malicious")
    >>> x.reshape(2, 3).t().reconstruct()
    tensor([[0., 3.],
            [1., 4.],
            [2., 5.]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from veil.mpc.ring import FixedPoint
from veil.mpc.tensors.surface import DerivedOps


class AuthenticatedShapes(DerivedOps):
    """Shape ops on authenticated shares (dimension 0 of each share is value/MAC words)."""

    __slots__ = ()

    def _map(self: Any, fn: Any) -> Any:
        return self._new(self.session.fanout(lambda i: fn(self.shares[i]), range(self.session.n)))

    def t(self: Any) -> Any:
        return self._map(lambda s: s.transpose(1, 2).contiguous())

    def transpose(self: Any, d0: int, d1: int) -> Any:
        nd = self.dim()
        return self._map(lambda s: s.transpose(d0 % nd + 1, d1 % nd + 1).contiguous())

    def reshape(self: Any, *shape: Any) -> Any:
        if len(shape) == 1 and isinstance(shape[0], list | tuple):
            shape = tuple(shape[0])
        return self._map(lambda s: s.reshape(4, *shape))

    def __getitem__(self: Any, idx: Any) -> Any:
        idx = idx if isinstance(idx, tuple) else (idx,)
        return self._map(lambda s: s[(slice(None), *idx)].contiguous())

    def flip(self: Any, *dims: Any) -> Any:
        """Reverse the order along ``dims`` (each party flips its value and MAC words)."""
        return self._map(lambda s: s.flip(*[self._sd(d) for d in dims]))

    def _sd(self: Any, dim: int) -> int:
        return dim % max(self.dim(), 1) + 1

    view = reshape

    def flatten(self: Any, start_dim: int = 0, end_dim: int = -1) -> Any:
        if self.dim() == 0:
            return self.reshape(1)
        a, b = self._sd(start_dim), self._sd(end_dim)
        return self._map(lambda s: s.flatten(a, b))

    @property
    def T(self: Any) -> Any:  # noqa: N802
        return self.t()

    def permute(self: Any, *dims: Any) -> Any:
        if len(dims) == 1 and isinstance(dims[0], list | tuple):
            dims = tuple(dims[0])
        order = [0, *(self._sd(d) for d in dims)]
        return self._map(lambda s: s.permute(*order).contiguous())

    def unsqueeze(self: Any, dim: int) -> Any:
        d = dim % (self.dim() + 1) + 1
        return self._map(lambda s: s.unsqueeze(d))

    def squeeze(self: Any, dim: int | None = None) -> Any:
        if dim is None:
            return self.reshape(*(n for n in self.shape if n != 1))
        d = self._sd(dim)
        return self._map(lambda s: s.squeeze(d))

    def expand(self: Any, *shape: Any) -> Any:
        if len(shape) == 1 and isinstance(shape[0], list | tuple):
            shape = tuple(shape[0])
        extra = len(shape) - self.dim()
        src = self.reshape(*([1] * extra), *self.shape) if extra > 0 else self
        return src._map(lambda s: s.expand(4, *shape).contiguous())

    def unfold(self: Any, dim: int, size: int, step: int) -> Any:
        """Sliding windows along ``dim`` (``torch.Tensor.unfold``), e.g. for pooling."""
        d = self._sd(dim)
        return self._map(lambda s: s.unfold(d, size, step))

    @staticmethod
    def cat(tensors: Sequence[Any], dim: int = 0) -> Any:
        """Concatenate along ``dim`` (free: each party concatenates its shares)."""
        first = tensors[0]
        for t in tensors[1:]:
            first._check(t)
        bits = max(t.encoding.frac_bits for t in tensors)
        per = [t._rescaled(bits) for t in tensors]
        d = first._sd(dim)
        shares = first.session.fanout(
            lambda i: torch.cat([p[i] for p in per], d), range(first.session.n)
        )
        return type(first)(shares, first.session, FixedPoint(bits))

    @staticmethod
    def stack(tensors: Sequence[Any], dim: int = 0) -> Any:
        return type(tensors[0]).cat([t.unsqueeze(dim) for t in tensors], dim)
