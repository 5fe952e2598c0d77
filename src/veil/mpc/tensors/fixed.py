"""Fixed-point tensors before sharing (local, or on their owner's node) and the torch entry
points ``Tensor.fix_precision``, ``Tensor.share`` and the same on ``PointerTensor``.

Example:
    >>> import torch
    >>> torch.tensor([0.5]).fix_precision().float_precision()
    tensor([0.5000])
"""

from __future__ import annotations

from typing import Any

import torch

from veil.errors import WorkerMismatch
from veil.mpc.protocols.session import MPCSession, session_for
from veil.mpc.providers.base import CryptoProvider
from veil.mpc.ring import FixedPoint
from veil.node.worker import Worker
from veil.pointers import PointerTensor

#: The shared tensor class of each security mode (filled by the modules that define them).
_TYPES: dict[str, Any] = {}


def register_tensor_type(security: str, cls: type) -> None:
    """Make ``cls`` the class that ``share(..., security=security)`` returns (once per mode)."""
    if security in _TYPES and _TYPES[security] is not cls:
        raise ValueError(f"a shared tensor type for {security!r} is registered already")
    _TYPES[security] = cls


class FixedPrecisionTensor:
    """A local tensor encoded in fixed point (int64); ``share`` splits it among parties.

    Example:
        >>> t = torch.tensor([0.5, -1.25]).fix_precision()
        >>> t
        FixedPrecisionTensor(tensor([ 32768, -81920]), frac_bits=16)
        >>> t.float_precision()
        tensor([ 0.5000, -1.2500])
    """

    def __init__(self, encoded: torch.Tensor, encoding: FixedPoint) -> None:
        self.encoded = encoded
        self.encoding = encoding

    @property
    def shape(self) -> torch.Size:
        return self.encoded.shape

    def float_precision(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Decode (exactly in float64, then cast to ``dtype``)."""
        return self.encoding.decode(self.encoded, dtype)

    def share(self, *parties: Worker, crypto_provider: Worker | CryptoProvider | None = None,
              security: str = "semi-honest", session: MPCSession | None = None,
              requires_grad: bool = False) -> Any:  # fmt: skip
        """Split among ``parties`` (random shares summing to the value mod 2^64); each
        share is stored as a private object on its party. ``session`` (an
        :class:`MPCSession`) replaces parties, provider and options. ``requires_grad=True``
        answers an :class:`~veil.mpc.tensors.autograd.AutogradTensor` leaf (its ops are
        recorded for ``backward()``) instead of the bare shared tensor."""
        sess = session or session_for(parties, crypto_provider, frac_bits=_session_bits(self.encoding),
                                      security=security)  # type: ignore[arg-type]  # fmt: skip
        out = _TYPES[sess.security].from_encoded(sess, self.encoded, self.encoding)
        return _with_grad(out, requires_grad)

    def __repr__(self) -> str:
        return f"FixedPrecisionTensor({self.encoded!r}, frac_bits={self.encoding.frac_bits})"


def _with_grad(secret: Any, requires_grad: bool) -> Any:
    if not requires_grad:
        return secret
    from veil.mpc.tensors.autograd import AutogradTensor

    return AutogradTensor(secret, requires_grad=True)


def _session_bits(enc: FixedPoint) -> int:
    return enc.frac_bits if enc.frac_bits > 0 else 16


class FixedPrecisionPointer:
    """A pointer to fixed-point data on its owner's node (from ``ptr.fix_precision()``).

    ``share(...)`` has the owner's node split it: it keeps one share and seals a PRG seed
    to each other party, so the value never passes through the data scientist. With
    ``security="malicious"`` the dealer seals an authenticated mask R to the owner's node,
    which answers ``x - R`` (see :meth:`AuthenticatedTensor.from_pointer
    <veil.mpc.authenticated.AuthenticatedTensor.from_pointer>`).
    """

    def __init__(self, pointer: PointerTensor, encoding: FixedPoint) -> None:
        self.pointer = pointer
        self.encoding = encoding

    @property
    def shape(self) -> torch.Size:
        return self.pointer.shape

    def share(self, *parties: Worker, crypto_provider: Worker | CryptoProvider | None = None,
              security: str = "semi-honest", session: MPCSession | None = None,
              requires_grad: bool = False) -> Any:  # fmt: skip
        holder = self.pointer.location
        if session is not None:
            parties = tuple(session.parties)
        idx = next((i for i, p in enumerate(parties) if p is holder), None)
        if idx is None:
            raise WorkerMismatch(
                f"the data is on {holder.name!r}, which is not among the parties "
                f"{[p.name for p in parties]}; make its node one of the parties"
            )
        sess = session or session_for(parties, crypto_provider, frac_bits=_session_bits(self.encoding),
                                      security=security)  # type: ignore[arg-type]  # fmt: skip
        out = _TYPES[sess.security].from_pointer(sess, self.pointer, idx, self.encoding)
        return _with_grad(out, requires_grad)

    def float_precision(self) -> PointerTensor:
        """Decode on the node (a float pointer)."""
        return self.pointer.double() / float(self.encoding.scale)  # type: ignore[no-any-return,operator]

    def __repr__(self) -> str:
        return f"FixedPrecisionPointer({self.pointer!r}, frac_bits={self.encoding.frac_bits})"


# ----------------------------------------------------------------- torch entry points


def _tensor_fix_precision(self: torch.Tensor, frac_bits: int = 16) -> FixedPrecisionTensor:
    """Encode in fixed point (Z_2^64, ``frac_bits`` fractional bits): ``x.fix_precision()``."""
    enc = FixedPoint(frac_bits)
    return FixedPrecisionTensor(enc.encode(self), enc)


def _tensor_share(self: torch.Tensor, *parties: Worker, crypto_provider: Worker | CryptoProvider | None = None,
                  security: str = "semi-honest", session: MPCSession | None = None,
                  requires_grad: bool = False) -> Any:  # fmt: skip
    """Secret-share among ``parties``: ``x.share(alice, bob, crypto_provider=carol)``."""
    bits = session.encoding.frac_bits if session is not None else 16
    return _tensor_fix_precision(self, bits).share(
        *parties,
        crypto_provider=crypto_provider,
        security=security,
        session=session,
        requires_grad=requires_grad,
    )


def _pointer_fix_precision(self: PointerTensor, frac_bits: int = 16) -> FixedPrecisionPointer:
    """Encode on the node: ``ptr.fix_precision().share(...)`` shares data you cannot see."""
    enc = FixedPoint(frac_bits)
    encoded = (self.double() * float(enc.scale)).round().long()  # type: ignore[attr-defined,operator]
    return FixedPrecisionPointer(encoded, enc)


def _pointer_share(self: PointerTensor, *parties: Worker, crypto_provider: Worker | CryptoProvider | None = None,
                   security: str = "semi-honest", session: MPCSession | None = None,
                   requires_grad: bool = False) -> Any:  # fmt: skip
    """Share data on a node without fetching it: ``ptr.share(alice, bob, crypto_provider=carol)``."""
    bits = session.encoding.frac_bits if session is not None else 16
    return _pointer_fix_precision(self, bits).share(
        *parties,
        crypto_provider=crypto_provider,
        security=security,
        session=session,
        requires_grad=requires_grad,
    )


_INSTALLED = False


def install() -> None:
    """Add ``Tensor.fix_precision``, ``Tensor.share`` and the same on PointerTensor (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    torch.Tensor.fix_precision = _tensor_fix_precision  # type: ignore[attr-defined]
    torch.Tensor.share = _tensor_share  # type: ignore[attr-defined]
    PointerTensor.fix_precision = _pointer_fix_precision  # type: ignore[attr-defined]
    PointerTensor.share = _pointer_share  # type: ignore[attr-defined]
    _INSTALLED = True
