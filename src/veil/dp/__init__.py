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
from veil.dp.pate import analyze as pate_analysis
from veil.dp.pate import confident_gnmax, gnmax, lnmax, lnmax_analysis, votes_from_predictions
from veil.dp.samplers import RandomSource, SeededSource, discrete_gaussian, discrete_laplace
from veil.dp.sgd import (
    DPOptimizer,
    GradSampleModule,
    PoissonLoader,
    PrivacyProgress,
    fix_model,
    make_private,
    plot_privacy,
    validate,
)

__all__ = [
    "ACCOUNTANTS",
    "MECHANISMS",
    "Accountant",
    "DPOptimizer",
    "DiscreteGaussianMechanism",
    "DiscreteLaplaceMechanism",
    "ExponentialMechanism",
    "GaussianMechanism",
    "GradSampleModule",
    "LaplaceMechanism",
    "Mechanism",
    "PLDAccountant",
    "PoissonLoader",
    "PrivacyProgress",
    "RDPAccountant",
    "RandomSource",
    "RandomizedResponse",
    "SeededSource",
    "confident_gnmax",
    "discrete_gaussian",
    "discrete_laplace",
    "fix_model",
    "gaussian_epsilon",
    "gaussian_sigma",
    "gnmax",
    "lnmax",
    "lnmax_analysis",
    "make_private",
    "noise_multiplier_for",
    "pate_analysis",
    "plot_privacy",
    "register_mechanism",
    "validate",
    "votes_from_predictions",
    "zcdp_to_delta",
    "zcdp_to_epsilon",
]
