"""DP-FedAvg (McMahan et al. 2018): central differential privacy as a wrapper around a strategy.

Each round every sampled client's update (its parameters minus the global ones) is clipped
to L2 norm ``C``; the clipped updates are summed, Gaussian noise of standard deviation
``z * C`` is added (veil.dp's exact discrete Gaussian), and the sum is divided by the
number of clients sampled. The wrapped strategy then applies that mean update (FedAvg: as it
is; FedAdam and the other FedOpt variants: as their pseudo-gradient). With
``adaptive=True`` the clipping norm follows a quantile of the updates' norms (Andrew et al.
2021): ``C <- C * exp(-clip_lr * (b - target_quantile))`` where ``b`` is the noisy fraction of
updates under ``C``; the noise is split so the total stays ``z``. An RDP accountant counts
each round as a subsampled Gaussian step; ``max_epsilon`` stops training before a round
would pass it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from veil.errors import BudgetExceeded
from veil.fl.strategies.base import FitIns, FitRes, Parameters, Strategy


class DPFedAvg(Strategy):
    """Central DP for a federation: clip each update, add noise to their sum (see module).

    Args:
        strategy: the strategy that samples clients and applies the mean update.
        noise_multiplier: ``z``; noise standard deviation is ``z * clip_norm``.
        clip_norm: ``C`` (the starting one when ``adaptive``).
        num_clients: the population the clients are sampled from (for the sample rate).
        delta: the delta of the reported (epsilon, delta).
        max_epsilon: refuse a round that would take epsilon past this.
        adaptive, target_quantile, clip_lr, count_noise: adaptive clipping (``count_noise``:
            the noise on the count of unclipped updates, default ``num_sampled / 20``).

    Example:
        >>> import torch
        >>> from veil.fl import FedAvg
        >>> dp = DPFedAvg(FedAvg(min_fit_clients=2), noise_multiplier=0.0, clip_norm=1.0,
        ...               num_clients=2)
        >>> _ = dp.configure_fit(1, [torch.zeros(2)], [0, 1])
        >>> res = [FitRes([torch.tensor([3.0, 4.0])], 1), FitRes([torch.tensor([0.0, 0.5])], 1)]
        >>> dp.aggregate_fit(1, res, [])[0]  # (3,4) clipped to norm 1, then averaged
        tensor([0.3000, 0.6500])
    """

    def __init__(self, strategy: Strategy, *, noise_multiplier: float, clip_norm: float,
                 num_clients: int, delta: float = 1e-5, max_epsilon: float | None = None,
                 adaptive: bool = False, target_quantile: float = 0.5, clip_lr: float = 0.2,
                 count_noise: float | None = None, seed: int | None = None) -> None:  # fmt: skip
        if noise_multiplier < 0 or clip_norm <= 0 or num_clients < 1:
            raise ValueError(
                "noise_multiplier must be >= 0, clip_norm > 0 and num_clients >= 1; "
                "typical: noise_multiplier 0.5-2, clip_norm 0.1-10"
            )
        if not 0 < target_quantile < 1:
            raise ValueError(f"target_quantile must be in (0, 1), got {target_quantile}")
        from veil.dp.accountants.rdp import RDPAccountant

        self.strategy = strategy
        self.noise_multiplier = float(noise_multiplier)
        self.clip_norm = float(clip_norm)
        self.num_clients = int(num_clients)
        self.delta, self.max_epsilon = float(delta), max_epsilon
        self.adaptive, self.target_quantile, self.clip_lr = adaptive, target_quantile, clip_lr
        self.count_noise = count_noise
        self.accountant = RDPAccountant()
        #: Only for reproducible tests: a seeded source is no secret (None: veil.dp's CSPRNG).
        self._rng = np.random.default_rng(seed) if seed is not None else None
        self._current: Parameters | None = None
        self._sampled = 0

    def __repr__(self) -> str:
        return (f"DPFedAvg({self.strategy!r}, noise_multiplier={self.noise_multiplier}, "
                f"clip_norm={self.clip_norm:.4g})")  # fmt: skip

    def epsilon(self) -> float:
        """The (epsilon, ``delta``) spent so far."""
        return self.accountant.get_epsilon(self.delta)

    def configure_fit(self, server_round: int, parameters: Parameters,
                      clients: Sequence[Any]) -> list[tuple[Any, FitIns]]:  # fmt: skip
        asked = self.strategy.configure_fit(server_round, parameters, clients)
        rate = len(asked) / self.num_clients
        if self.max_epsilon is not None and self.noise_multiplier > 0:
            from veil.dp.accountants.rdp import RDPAccountant

            trial = RDPAccountant()
            trial.history = [*self.accountant.history, (self.noise_multiplier, rate, 1)]
            if trial.get_epsilon(self.delta) > self.max_epsilon:
                raise BudgetExceeded(
                    f"round {server_round} would spend epsilon "
                    f"{trial.get_epsilon(self.delta):.3f} > max_epsilon {self.max_epsilon} "
                    f"(delta {self.delta}); stop here or raise the budget"
                )
        self._current = [p.detach().clone() for p in parameters]
        self._sampled = len(asked)
        return asked

    def _noise(self, sigma: float, sensitivity: float, shape: tuple[int, ...]) -> np.ndarray:
        """Gaussian noise of standard deviation ``sigma`` (veil.dp's exact sampler)."""
        if sigma <= 0:
            return np.zeros(shape)
        from veil.dp.mechanisms import GaussianMechanism
        from veil.dp.samplers import SeededSource

        source = SeededSource(int(self._rng.integers(2**62))) if self._rng is not None else None
        mech = GaussianMechanism(sensitivity=sensitivity, sigma=sigma, delta=self.delta,
                                 source=source)  # fmt: skip
        out: np.ndarray = mech(np.zeros(shape))
        return out

    def aggregate_fit(self, server_round: int, results: Sequence[FitRes],
                      failures: Sequence[BaseException]) -> Parameters:  # fmt: skip
        if self._current is None:
            raise ValueError("DPFedAvg.aggregate_fit before configure_fit")
        current = self._current
        flat0 = torch.cat([p.double().flatten() for p in current])
        deltas = [torch.cat([p.double().flatten() for p in r.parameters]) - flat0 for r in results]
        c = self.clip_norm
        norms = [float(d.norm()) for d in deltas]
        clipped = [d * min(1.0, c / n) if n > 0 else d for d, n in zip(deltas, norms)]
        m = max(self._sampled, 1)
        z = self.noise_multiplier
        z_delta = z
        if self.adaptive and z > 0:
            sigma_b = self.count_noise if self.count_noise is not None else m / 20
            if z >= 2 * sigma_b:
                raise ValueError(f"count_noise {sigma_b} is too small for noise_multiplier {z}")
            z_delta = (z**-2 - (2 * sigma_b) ** -2) ** -0.5
        total = torch.stack(clipped).sum(0) if clipped else torch.zeros_like(flat0)
        noisy = total + torch.from_numpy(self._noise(z_delta * c, c, tuple(total.shape)))
        mean = noisy / m
        if z > 0:
            self.accountant.step(noise_multiplier=z, sample_rate=min(1.0, m / self.num_clients))
        if self.adaptive:
            sigma_b = (
                (self.count_noise if self.count_noise is not None else m / 20) if z > 0 else 0.0
            )
            under = sum(1.0 for n in norms if n <= c)
            b = (under + float(self._noise(sigma_b, 1.0, (1,))[0])) / m
            self.clip_norm = c * math.exp(-self.clip_lr * (b - self.target_quantile))
        out, i = [], 0
        for p in current:
            k = p.numel()
            out.append((p.double() + mean[i : i + k].view(p.shape)).to(p.dtype))
            i += k
        return self.strategy.aggregate_fit(server_round, [FitRes(out, 1)], failures)

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           clients: Sequence[Any]) -> list[tuple[Any, FitIns]]:  # fmt: skip
        return self.strategy.configure_evaluate(server_round, parameters, clients)

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, float]] | None:  # fmt: skip
        return self.strategy.evaluate(server_round, parameters)
