"""Fixed-point tensors before sharing (local, or on their owner's node) and the torch entry
points ``Tensor.fix_precision``, ``Tensor.share`` and the same on ``PointerTensor``.

Example:
    >>> import torch
    >>> torch.tensor([0.5]).fix_precision().float_precision()
    tensor([0.5000])
"""

from __future__ import annotations

import math
import warnings
import weakref
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

    def __init__(self, encoded: torch.Tensor, encoding: FixedPoint,
                 source_dtype: torch.dtype | None = None) -> None:  # fmt: skip
        self.encoded = encoded
        self.encoding = encoding
        #: The integer dtype of the encoded tensor, if it was one (see :meth:`float_precision`).
        self.source_dtype = source_dtype

    @property
    def shape(self) -> torch.Size:
        return self.encoded.shape

    def float_precision(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Decode (exactly in float64, then cast to ``dtype``). By default an encoded integer
        tensor comes back as integers of its dtype (rounded), anything else as float32.

        Example:
            >>> torch.tensor([3, -7]).fix_precision().float_precision()
            tensor([ 3, -7])
        """
        if dtype is None and self.source_dtype is not None:
            exact = self.encoding.decode(self.encoded, torch.float64)
            return exact.round().to(self.source_dtype)
        return self.encoding.decode(self.encoded, dtype or torch.float32)

    def share(self, *parties: Worker, crypto_provider: Worker | CryptoProvider | None = None,
              security: str = "semi-honest", session: MPCSession | None = None,
              requires_grad: bool = False, **pysyft: Any) -> Any:  # fmt: skip
        """Split among ``parties`` (random shares summing to the value mod 2^64); each
        share is stored as a private object on its party. ``session`` (an
        :class:`MPCSession`) replaces parties, provider and options. ``requires_grad=True``
        answers an :class:`~veil.mpc.tensors.autograd.AutogradTensor` leaf (its ops are
        recorded for ``backward()``) instead of the bare shared tensor. PySyft's
        ``protocol=`` is accepted (see :func:`pysyft_options`)."""
        crypto_provider = pysyft_options(parties, crypto_provider, session, **pysyft)
        sess = session or session_for(parties, crypto_provider, frac_bits=_session_bits(self.encoding),
                                      security=security)  # type: ignore[arg-type]  # fmt: skip
        out = _TYPES[sess.security].from_encoded(sess, self.encoded, self.encoding)
        out.source_dtype = self.source_dtype
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

    def __init__(self, pointer: PointerTensor, encoding: FixedPoint,
                 source_dtype: torch.dtype | None = None) -> None:  # fmt: skip
        self.pointer = pointer
        self.encoding = encoding
        self.source_dtype = source_dtype

    @property
    def shape(self) -> torch.Size:
        return self.pointer.shape

    def share(self, *parties: Worker, crypto_provider: Worker | CryptoProvider | None = None,
              security: str = "semi-honest", session: MPCSession | None = None,
              requires_grad: bool = False, **pysyft: Any) -> Any:  # fmt: skip
        """As :meth:`FixedPrecisionTensor.share`, split by the node that holds the data."""
        crypto_provider = pysyft_options(parties, crypto_provider, session, **pysyft)
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
        out.source_dtype = self.source_dtype
        return _with_grad(out, requires_grad)

    def float_precision(self) -> PointerTensor:
        """Decode on the node (a float pointer)."""
        return self.pointer.double() / float(self.encoding.scale)  # type: ignore[no-any-return,operator]

    def __repr__(self) -> str:
        return f"FixedPrecisionPointer({self.pointer!r}, frac_bits={self.encoding.frac_bits})"


# ----------------------------------------------------------------- torch entry points


def frac_bits_for(precision_fractional: int) -> int:
    """Binary fractional bits that keep PySyft 0.2's ``precision_fractional`` decimal digits
    (``ceil(k * log2(10))``, at most 30).

    Example:
        >>> frac_bits_for(3), frac_bits_for(4)
        (10, 14)
    """
    if not isinstance(precision_fractional, int) or precision_fractional < 0:
        raise ValueError(f"precision_fractional must be an int >= 0, got {precision_fractional!r}")
    return min(30, math.ceil(precision_fractional * math.log2(10)))


def _tensor_fix_precision(self: torch.Tensor, frac_bits: int = 16, *,
                          precision_fractional: int | None = None) -> FixedPrecisionTensor:  # fmt: skip
    """Encode in fixed point (Z_2^64, ``frac_bits`` fractional bits): ``x.fix_precision()``;
    PySyft's ``precision_fractional=k`` (decimal digits) picks :func:`frac_bits_for` bits."""
    if precision_fractional is not None:
        frac_bits = frac_bits_for(precision_fractional)
    enc = FixedPoint(frac_bits)
    integer = not self.is_floating_point() and self.dtype != torch.bool
    return FixedPrecisionTensor(enc.encode(self), enc, self.dtype if integer else None)


def _tensor_share(self: torch.Tensor, *parties: Worker, crypto_provider: Worker | CryptoProvider | None = None,
                  security: str = "semi-honest", session: MPCSession | None = None,
                  requires_grad: bool = False, **pysyft: Any) -> Any:  # fmt: skip
    """Secret-share among ``parties``: ``x.share(alice, bob, crypto_provider=carol)``."""
    bits = session.encoding.frac_bits if session is not None else 16
    return _tensor_fix_precision(self, bits).share(
        *parties,
        crypto_provider=crypto_provider,
        security=security,
        session=session,
        requires_grad=requires_grad,
        **pysyft,
    )


def _pointer_fix_precision(self: PointerTensor, frac_bits: int = 16, *,
                           precision_fractional: int | None = None) -> FixedPrecisionPointer:  # fmt: skip
    """Encode on the node: ``ptr.fix_precision().share(...)`` shares data you cannot see."""
    if precision_fractional is not None:
        frac_bits = frac_bits_for(precision_fractional)
    enc = FixedPoint(frac_bits)
    encoded = (self.double() * float(enc.scale)).round().long()  # type: ignore[attr-defined,operator]
    integer = not self.dtype.is_floating_point and self.dtype != torch.bool
    return FixedPrecisionPointer(encoded, enc, self.dtype if integer else None)


def _pointer_share(self: PointerTensor, *parties: Worker, crypto_provider: Worker | CryptoProvider | None = None,
                   security: str = "semi-honest", session: MPCSession | None = None,
                   requires_grad: bool = False, **pysyft: Any) -> Any:  # fmt: skip
    """Share data on a node without fetching it: ``ptr.share(alice, bob, crypto_provider=carol)``."""
    bits = session.encoding.frac_bits if session is not None else 16
    return _pointer_fix_precision(self, bits).share(
        *parties,
        crypto_provider=crypto_provider,
        security=security,
        session=session,
        requires_grad=requires_grad,
        **pysyft,
    )


def _pointer_encrypt(self: PointerTensor, workers: Any = (), crypto_provider: Any = None,
                     protocol: str | None = None, precision_fractional: int = 3,
                     **kwargs: Any) -> Any:  # fmt: skip
    """PySyft 0.2's ``ptr.encrypt(workers=[...], crypto_provider=..., protocol=...,
    precision_fractional=k)``: fixed point with ``k`` decimal digits, then shared (the node
    that holds the data splits it; it must be one of ``workers``)."""
    return _pointer_fix_precision(self, precision_fractional=precision_fractional).share(
        *workers, crypto_provider=crypto_provider, protocol=protocol, **kwargs
    )


#: In-process dealers for ``crypto_provider=None``, one per set of parties.
_DEALERS: dict[tuple[int, ...], tuple[list[weakref.ref[Any]], Worker]] = {}


def pysyft_options(parties: Any, crypto_provider: Any, session: Any, *,
                   protocol: str | None = None) -> Any:  # fmt: skip
    """Take PySyft 0.2's ``share`` keywords and return the crypto provider to use.

    ``protocol`` is accepted and ignored (veil picks its protocols by the ``security``
    mode). ``crypto_provider=None`` between in-process workers gets an in-process
    dealer (one per set of parties); on node servers a warning says the nodes' owners
    must approve that dealer, and the nodes refuse it otherwise.

    Example:
        >>> import veil
        >>> a, b = veil.VirtualWorker("a"), veil.VirtualWorker("b")
        >>> pysyft_options((a, b), None, None, protocol="snn").name
        'dealer-a-b'
    """
    if crypto_provider is not None or session is not None:
        return crypto_provider
    from veil.node.worker import VirtualWorker

    key = tuple(id(p) for p in parties)
    held = _DEALERS.get(key)
    if held is not None and all(r() is p for r, p in zip(held[0], parties, strict=True)):
        return held[1]
    if not all(isinstance(p, VirtualWorker) for p in parties):
        warnings.warn(
            "share(crypto_provider=None): veil deals from an in-process dealer, which node "
            "servers accept only if their owners approved it; name an approved dealer with "
            "crypto_provider=...",
            stacklevel=4,
        )
    dealer = VirtualWorker("dealer-" + "-".join(p.name for p in parties))
    _DEALERS[key] = ([weakref.ref(p) for p in parties], dealer)
    return dealer


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
    PointerTensor.encrypt = _pointer_encrypt  # type: ignore[attr-defined]
    _INSTALLED = True
