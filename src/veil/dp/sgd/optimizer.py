"""DPOptimizer: clip per-example gradients, add Gaussian noise, step the user's optimizer, account."""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from veil.dp.accountants import Accountant
from veil.dp.samplers import discrete_gaussian
from veil.dp.sgd.grad_sample import GradSampleModule

__all__ = ["DPOptimizer"]


class DPOptimizer:
    """Wraps an optimizer: ``step()`` replaces each parameter's gradient by
    ``(Σ_i clip(g_i, C) + N(0, σ²C²)) / expected_batch_size`` and then steps it.

    With physical batching (``make_private(max_physical_batch_size=...)``) the loader marks
    every physical batch but the last of a logical batch; ``step()`` then only accumulates
    the clipped sum, so the update equals that of the whole logical batch.

    Args:
        optimizer: the user's optimizer over ``module``'s parameters.
        module: the :class:`GradSampleModule` the model was wrapped in.
        noise_multiplier: σ (noise std / max_grad_norm).
        max_grad_norm: the clipping bound C.
        expected_batch_size: the logical batch size the sum is divided by (q·N).
        accountant: records each step at ``sample_rate``.
        secure_mode: draw the noise with the exact discrete Gaussian sampler on a grid
            (immune to floating-point attacks; about 1 s per million parameters) instead of
            ``torch.normal`` seeded from the OS CSPRNG.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, module: GradSampleModule,
                 noise_multiplier: float, max_grad_norm: float, expected_batch_size: float,
                 accountant: Accountant, sample_rate: float,
                 secure_mode: bool = False) -> None:  # fmt: skip
        if not (max_grad_norm > 0 and math.isfinite(max_grad_norm)):
            raise ValueError(
                f"max_grad_norm must be > 0, got {max_grad_norm}; typical values are 0.1-10"
            )
        if not noise_multiplier >= 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {noise_multiplier}")
        self.original_optimizer = optimizer
        self.module = module
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.expected_batch_size = expected_batch_size
        self.accountant = accountant
        self.sample_rate = sample_rate
        self.secure_mode = secure_mode
        self._generator = torch.Generator().manual_seed(secrets.randbits(63))
        self._summed: dict[torch.Tensor, torch.Tensor] = {}
        #: Set by the loader: the current physical batch is not the last of its logical batch.
        self.skip_step = False
        self.last_norms: torch.Tensor | None = None

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.original_optimizer.param_groups

    @property
    def state(self) -> Any:
        return self.original_optimizer.state

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.requires_grad]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.original_optimizer.zero_grad(set_to_none=set_to_none)

    def _privatize(self, total: torch.Tensor) -> torch.Tensor:
        """The clipped sum plus N(0, σ²C²) noise."""
        std = self.noise_multiplier * self.max_grad_norm
        if std == 0:
            return total
        if not self.secure_mode:
            noise = torch.empty_like(total).normal_(0.0, std, generator=self._generator)
            return noise.add_(total)
        # exact discrete Gaussian on a grid fine enough that rounding moves the sum by less
        # than 2**-10·C in L2; σ is raised by 2**-9 to cover it
        n = total.numel()
        g = math.ldexp(1.0, math.frexp(self.max_grad_norm / (math.sqrt(n) * 1024))[1] - 1)
        units = torch.round(total.detach().double() / g).numpy().astype(np.int64)
        z = discrete_gaussian(std * (1 + 2**-9) / g, tuple(total.shape))
        return torch.from_numpy((units + z).astype(np.float64) * g).to(total)

    def accumulate(self) -> None:
        """Add this physical batch's clipped per-example gradients to the running sum."""
        norms, sums = self.module.clip_and_sum(self.max_grad_norm)
        self.last_norms = norms
        for p, s in sums.items():
            self._summed[p] = self._summed[p] + s if p in self._summed else s
        self.module.clear()

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.accumulate()
        if self.skip_step:
            self.zero_grad()
            return loss
        for p in self._params():
            total = self._summed.get(p)
            if total is None:
                total = torch.zeros_like(p)
            p.grad = self._privatize(total).div_(self.expected_batch_size).to(p.dtype)
        self._summed = {}
        self.original_optimizer.step()
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        return loss

    def get_epsilon(self, delta: float) -> float:
        """ε spent so far at ``delta``."""
        return self.accountant.get_epsilon(delta)

    def state_dict(self) -> dict[str, Any]:
        return self.original_optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.original_optimizer.load_state_dict(state)

    def __repr__(self) -> str:
        return (
            f"DPOptimizer({type(self.original_optimizer).__name__}, noise_multiplier="
            f"{self.noise_multiplier:.4g}, max_grad_norm={self.max_grad_norm}, "
            f"steps={self.accountant.steps})"
        )
