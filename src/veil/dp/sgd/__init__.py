"""DP-SGD: per-example clipping and noise for any model of supported layers (see ``make_private``)."""

from __future__ import annotations

from veil.dp.sgd.engine import (
    PoissonLoader,
    PrivacyProgress,
    PrivateModule,
    fix_model,
    make_private,
    plot_privacy,
    validate,
)
from veil.dp.sgd.grad_sample import GradSampleModule, unsupported_layers
from veil.dp.sgd.layers import DPGRU, DPLSTM, DPRNN, from_torch_rnn
from veil.dp.sgd.optimizer import DPOptimizer

__all__ = [
    "DPGRU",
    "DPLSTM",
    "DPRNN",
    "DPOptimizer",
    "GradSampleModule",
    "PoissonLoader",
    "PrivacyProgress",
    "PrivateModule",
    "fix_model",
    "from_torch_rnn",
    "make_private",
    "plot_privacy",
    "unsupported_layers",
    "validate",
]
