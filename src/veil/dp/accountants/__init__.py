"""Privacy accountants for the Poisson-subsampled Gaussian: RDP and a numerical PLD accountant.

Example:
    >>> from veil.dp.accountants import RDPAccountant, noise_multiplier_for
    >>> acc = RDPAccountant()
    >>> acc.step(noise_multiplier=1.0, sample_rate=0.01, steps=1000)
    >>> round(acc.get_epsilon(1e-5), 2)
    2.1
"""

from __future__ import annotations

from veil.dp.accountants.base import (
    ACCOUNTANTS,
    Accountant,
    noise_multiplier_for,
    register_accountant,
)
from veil.dp.accountants.pld import PLDAccountant
from veil.dp.accountants.rdp import RDPAccountant, compute_rdp, rdp_to_epsilon

__all__ = [
    "ACCOUNTANTS",
    "Accountant",
    "PLDAccountant",
    "RDPAccountant",
    "compute_rdp",
    "noise_multiplier_for",
    "rdp_to_epsilon",
    "register_accountant",
]
