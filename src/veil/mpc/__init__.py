"""Secure multi-party computation: fixed point in Z_2^64, additive sharing, crypto providers.

Each party's share is a private object on its own node; the data scientist who drives the
computation sees only values masked with one-time dealer randomness, and the dealer sees
only shapes. A session without a dealer (:class:`DealerFree`) adds, averages and sums each
party's own data (:func:`secure_sum`). See ``docs/mpc.md``.

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

import importlib
import sys

from veil.mpc.linreg import EncryptedLinearRegression
from veil.mpc.node.ops import register
from veil.mpc.protocols.session import MPCSession
from veil.mpc.providers.approvals import Dealer, dealers
from veil.mpc.providers.base import CryptoProvider
from veil.mpc.providers.dealer import DealerFree, TrustedDealer
from veil.mpc.providers.remote import fingerprint
from veil.mpc.ring import FixedPoint
from veil.mpc.stats import reset_stats, stats
from veil.mpc.tensors import nn
from veil.mpc.tensors.aggregate import secure_sum
from veil.mpc.tensors.autograd import AutogradTensor
from veil.mpc.tensors.fixed import FixedPrecisionPointer, FixedPrecisionTensor
from veil.mpc.tensors.modules import FixedPrecisionModule, share_module
from veil.mpc.tensors.nn import encrypt_model
from veil.mpc.tensors.shared import SharedTensor

__all__ = [
    "AutogradTensor",
    "CryptoProvider",
    "Dealer",
    "DealerFree",
    "EncryptedLinearRegression",
    "FixedPoint",
    "FixedPrecisionModule",
    "FixedPrecisionPointer",
    "FixedPrecisionTensor",
    "MPCSession",
    "SharedTensor",
    "TrustedDealer",
    "dealers",
    "encrypt_model",
    "fingerprint",
    "install",
    "nn",
    "reset_stats",
    "secure_sum",
    "share_module",
    "stats",
]

#: Where each module of the former flat ``veil.mpc`` lives now, by layer (ring < providers <
#: protocols < tensors < node): ``import veil.mpc.session`` and ``from veil.mpc import kinds``
#: keep working, as the same module objects (so patching one patches the other).
MOVED = {
    "approvals": "veil.mpc.providers.approvals",
    "approx": "veil.mpc.protocols.approx",
    "authenticated": "veil.mpc.tensors.authenticated",
    "inputs": "veil.mpc.node.inputs",
    "kinds": "veil.mpc.providers.kinds",
    "local_ops": "veil.mpc.node.local_ops",
    "node_ops": "veil.mpc.node.ops",
    "preprocessing": "veil.mpc.providers.preprocessing",
    "r128": "veil.mpc.ring.r128",
    "reduce": "veil.mpc.protocols.reduce",
    "seal": "veil.mpc.providers.seal",
    "session": "veil.mpc.protocols.session",
    "shared": "veil.mpc.tensors.shared",
    "spdz": "veil.mpc.ring.mac",
    "state": "veil.mpc.node.state",
    "surface": "veil.mpc.tensors.surface",
    "typed": "veil.mpc.node.typed",
}
for _old, _new in MOVED.items():
    sys.modules[f"{__name__}.{_old}"] = globals()[_old] = importlib.import_module(_new)
sys.modules[f"{__name__}.nn"] = nn


def install() -> None:
    """Register the MPC node ops in the default allowlist and add the torch entry points
    ``Tensor.fix_precision``, ``Tensor.share``, ``PointerTensor.fix_precision``,
    ``PointerTensor.share``, ``Module.share``, ``Module.fix_precision``,
    ``Optimizer.fix_precision`` and ``PointerModule.share`` (idempotent; run when
    ``veil.mpc`` is imported)."""
    import torch

    from veil.mpc.tensors import modules
    from veil.mpc.tensors.fixed import install as install_entry_points
    from veil.mpc.tensors.nn import _module_share
    from veil.pointers.module import PointerModule

    register()
    install_entry_points()
    current = getattr(torch.nn.Module, "share", None)
    if current is None or getattr(current, "_veil_lazy", False):  # veil's placeholder
        torch.nn.Module.share = _module_share  # type: ignore[attr-defined]
    torch.nn.Module.fix_precision = modules.module_fix_precision  # type: ignore[attr-defined]
    torch.optim.Optimizer.fix_precision = modules.optimizer_fix_precision  # type: ignore[attr-defined]
    PointerModule.share = modules.pointer_module_share  # type: ignore[attr-defined]


install()  # on import: the capability and the torch entry points
