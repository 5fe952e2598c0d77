"""Differential privacy: exact-noise mechanisms, privacy accountants, DP-SGD, PATE.

Example:
    >>> import torch, veil.dp as dp
    >>> mech = dp.GaussianMechanism(epsilon=1.0, delta=1e-5, sensitivity=1.0)
    >>> mech(torch.zeros(3)).shape
    torch.Size([3])
"""

from __future__ import annotations

from veil.dp.accountants import (
    ACCOUNTANTS,
    Accountant,
    PLDAccountant,
    RDPAccountant,
    noise_multiplier_for,
)
from veil.dp.calibration import gaussian_epsilon, gaussian_sigma, zcdp_to_delta, zcdp_to_epsilon
from veil.dp.mechanisms import (
    MECHANISMS,
    DiscreteGaussianMechanism,
    DiscreteLaplaceMechanism,
    ExponentialMechanism,
    GaussianMechanism,
    LaplaceMechanism,
    Mechanism,
    RandomizedResponse,
    register_mechanism,
)
from veil.dp.samplers import RandomSource, SeededSource, discrete_gaussian, discrete_laplace

__all__ = [
    "ACCOUNTANTS",
    "MECHANISMS",
    "Accountant",
    "DiscreteGaussianMechanism",
    "DiscreteLaplaceMechanism",
    "ExponentialMechanism",
    "GaussianMechanism",
    "LaplaceMechanism",
    "Mechanism",
    "PLDAccountant",
    "RDPAccountant",
    "RandomSource",
    "RandomizedResponse",
    "SeededSource",
    "discrete_gaussian",
    "discrete_laplace",
    "gaussian_epsilon",
    "gaussian_sigma",
    "noise_multiplier_for",
    "register_mechanism",
    "zcdp_to_delta",
    "zcdp_to_epsilon",
]
