"""Secure multi-party computation: fixed point in Z_2^64, additive sharing, a trusted dealer.

Each party's share is a private object on its own node; the data scientist who drives the
computation sees only values masked with one-time dealer randomness, and the dealer sees
only shapes. See ``docs/mpc.md``.

Example:
    >>> import torch, veil
    >>> alice, bob, carol = (veil.VirtualWorker(n) for n in ("alice", "bob", "carol"))
    >>> x = torch.tensor([[1.0, -2.0], [0.5, 3.0]]).share(alice, bob, crypto_provider=carol)
    >>> w = torch.tensor([[2.0], [-1.0]]).share(alice, bob, crypto_provider=carol)
    >>> (x @ w).relu().get().float_precision()
    tensor([[4.],
            [0.]])
"""

from __future__ import annotations

from veil.mpc import nn
from veil.mpc.approvals import Dealer, dealers
from veil.mpc.nn import encrypt_model
from veil.mpc.node_ops import register
from veil.mpc.ring import FixedPoint
from veil.mpc.session import MPCSession, fingerprint
from veil.mpc.shared import FixedPrecisionPointer, FixedPrecisionTensor, SharedTensor
from veil.mpc.stats import reset_stats, stats

__all__ = [
    "Dealer",
    "FixedPoint",
    "FixedPrecisionPointer",
    "FixedPrecisionTensor",
    "MPCSession",
    "SharedTensor",
    "dealers",
    "encrypt_model",
    "fingerprint",
    "install",
    "nn",
    "reset_stats",
    "stats",
]


def install() -> None:
    """Register the MPC node ops in the default allowlist and add the torch entry points
    ``Tensor.fix_precision``, ``Tensor.share``, ``PointerTensor.fix_precision``,
    ``PointerTensor.share`` and ``Module.share`` (called once by ``import veil``)."""
    import torch

    from veil.mpc.nn import _module_share
    from veil.mpc.shared import install as install_entry_points

    register()
    install_entry_points()
    if not hasattr(torch.nn.Module, "share"):
        torch.nn.Module.share = _module_share  # type: ignore[attr-defined]
