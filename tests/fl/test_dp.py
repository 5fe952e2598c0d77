"""DP-FedAvg: clipping, noise of the stated size, adaptive clipping, the accountant and the budget."""

from __future__ import annotations

import math

import pytest
import torch

from veil.dp.accountants.rdp import RDPAccountant
from veil.errors import BudgetExceeded
from veil.fl import DPFedAvg, FedAdam, FedAvg, FitRes


def _round(
    dp: DPFedAvg, updates: list[torch.Tensor], start: torch.Tensor, r: int = 1
) -> torch.Tensor:
    dp.configure_fit(r, [start], list(range(len(updates))))
    return dp.aggregate_fit(r, [FitRes([start + u], 100) for u in updates], [])[0]


def test_updates_are_clipped_and_averaged_uniformly_without_noise() -> None:
    dp = DPFedAvg(FedAvg(min_fit_clients=3), noise_multiplier=0.0, clip_norm=2.0, num_clients=3)
    ups = [torch.tensor([6.0, 8.0]), torch.tensor([0.0, 1.0]), torch.tensor([-1.0, 0.0])]
    got = _round(dp, ups, torch.zeros(2))
    want = (torch.tensor([1.2, 1.6]) + ups[1] + ups[2]) / 3  # the first clipped to norm 2
    assert torch.allclose(got, want)
    assert dp.epsilon() == 0.0  # no noise: no DP claimed, nothing spent


def test_noise_has_the_stated_standard_deviation_and_the_accountant_counts_rounds() -> None:
    z, c, m, n = 1.5, 0.5, 10, 100
    dp = DPFedAvg(FedAvg(fraction_fit=m / n, min_fit_clients=m), noise_multiplier=z,
                  clip_norm=c, num_clients=n, seed=0)  # fmt: skip
    start = torch.zeros(20_000)
    dp.configure_fit(1, [start], list(range(n)))
    got = dp.aggregate_fit(1, [FitRes([start.clone()], 1) for _ in range(m)], [])[0]
    std = float(got.std())
    assert abs(std - z * c / m) < 0.03 * z * c / m  # zero updates: pure noise of std z*C/m
    ref = RDPAccountant()
    ref.step(noise_multiplier=z, sample_rate=m / n)
    assert math.isclose(dp.epsilon(), ref.get_epsilon(1e-5))


def test_the_budget_stops_training_before_a_round_would_pass_it() -> None:
    dp = DPFedAvg(FedAvg(min_fit_clients=2), noise_multiplier=3.0, clip_norm=1.0,
                  num_clients=2, max_epsilon=3.0, seed=1)  # fmt: skip
    start = torch.zeros(3)
    rounds = 0
    with pytest.raises(BudgetExceeded, match="max_epsilon"):
        for r in range(1, 100):
            _round(dp, [torch.ones(3), -torch.ones(3)], start, r)
            rounds += 1
    assert rounds >= 2 and dp.epsilon() <= 3.0


def test_adaptive_clipping_moves_the_norm_to_the_target_quantile() -> None:
    dp = DPFedAvg(FedAvg(min_fit_clients=10), noise_multiplier=0.0, clip_norm=10.0,
                  num_clients=10, adaptive=True, target_quantile=0.5, clip_lr=0.5)  # fmt: skip
    norms = torch.arange(1, 11, dtype=torch.float64)  # the median norm is 5.5
    ups = [torch.tensor([float(n), 0.0]) for n in norms]
    for r in range(1, 40):
        _round(dp, ups, torch.zeros(2), r)
    assert 5.0 <= dp.clip_norm <= 6.5


def test_it_wraps_fedopt_which_applies_the_noisy_mean_as_its_pseudo_gradient() -> None:
    inner = FedAdam(eta=0.1, tau=1e-3, min_fit_clients=2)
    dp = DPFedAvg(inner, noise_multiplier=0.0, clip_norm=100.0, num_clients=2)
    start = torch.zeros(2)
    got = _round(dp, [torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])], start)
    assert torch.all(got > 0) and inner.current is not None
