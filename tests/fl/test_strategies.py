"""Strategies against reference computations: FedAvg = centralized GD, FedOpt's formulas, robust rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from veil.fl import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    FitRes,
    Krum,
)
from veil.fl.strategies import proximal_term


def test_fedavg_with_one_full_batch_step_equals_centralized_gradient_descent() -> None:
    torch.manual_seed(0)
    xs = [torch.randn(n, 5) for n in (7, 13, 30)]
    ys = [torch.randn(len(x), 1) for x in xs]
    w0 = torch.randn(5, 1)
    lr = 0.1

    def step(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        w = w.clone().requires_grad_(True)
        F.mse_loss(x @ w, y).backward()
        return (w - lr * w.grad).detach()

    s = FedAvg(min_fit_clients=3, min_available_clients=3)
    asked = s.configure_fit(1, [w0], ["a", "b", "c"])
    assert [c for c, _ in asked] == ["a", "b", "c"]
    new = s.aggregate_fit(1, [FitRes([step(x, y, w0)], len(x)) for x, y in zip(xs, ys)], [])[0]
    central = step(torch.cat(xs), torch.cat(ys), w0)
    assert torch.allclose(new, central, atol=1e-6)


def _fedopt_reference(variant: str, rounds: list[np.ndarray], x0: np.ndarray, eta: float,
                      tau: float, b1: float, b2: float) -> list[np.ndarray]:  # fmt: skip
    x, m, v, out = x0.copy(), np.zeros_like(x0), np.zeros_like(x0), []
    for mean in rounds:
        d = mean - x
        m = b1 * m + (1 - b1) * d
        if variant == "adagrad":
            v = v + d * d
        elif variant == "adam":
            v = b2 * v + (1 - b2) * d * d
        else:
            v = v - (1 - b2) * d * d * np.sign(v - d * d)
        x = x + eta * m / (np.sqrt(v) + tau)
        out.append(x.copy())
    return out


@pytest.mark.parametrize("cls", [FedAdagrad, FedAdam, FedYogi])
def test_fedopt_follows_its_update_rule(cls: type) -> None:
    rng = np.random.default_rng(1)
    x0 = rng.normal(size=4)
    s = cls(eta=0.05, tau=1e-3, beta_1=0.8, beta_2=0.95, min_fit_clients=2)
    params = [torch.tensor(x0)]
    means = []
    for r in range(1, 6):
        s.configure_fit(r, params, ["a", "b"])
        a, b = rng.normal(size=4), rng.normal(size=4)
        means.append((a * 1 + b * 3) / 4)
        params = s.aggregate_fit(
            r, [FitRes([torch.tensor(a)], 1), FitRes([torch.tensor(b)], 3)], []
        )
        want = _fedopt_reference(cls.variant, means, x0, 0.05, 1e-3, 0.8, 0.95)[-1]
        assert np.allclose(params[0].numpy(), want, atol=1e-12)


def test_robust_rules_resist_outliers_and_match_their_definitions() -> None:
    from scipy import stats

    torch.manual_seed(2)
    honest = [torch.randn(6) * 0.1 + 1 for _ in range(7)]
    evil = [torch.full((6,), 1e6), torch.full((6,), -1e6)]
    res = [FitRes([t.view(2, 3)], 10) for t in honest + evil]
    flat = torch.stack(honest + evil)
    med = FedMedian().aggregate_fit(1, res, [])[0].flatten()
    assert torch.allclose(med, flat.median(0).values)  # odd count: the middle value
    trimmed = FedTrimmedAvg(beta=0.25).aggregate_fit(1, res, [])[0].flatten()
    ref = torch.tensor(stats.trim_mean(flat.numpy(), 0.25, axis=0), dtype=torch.float32)
    assert torch.allclose(trimmed, ref, atol=1e-6)
    chosen = Krum(f=2).aggregate_fit(1, res, [])[0].flatten()
    assert any(torch.equal(chosen, h) for h in honest)
    multi = Krum(f=2, multi=3).aggregate_fit(1, res, [])[0].flatten()
    assert (multi - 1).abs().max() < 0.5
    plain = FedAvg().aggregate_fit(1, res, [])[0].flatten()
    assert plain.abs().max() > 1e4 or plain.abs().max() < 2  # the mean is not robust
    with pytest.raises(ValueError, match="more than f"):
        Krum(f=2).aggregate_fit(1, res[:3], [])


def test_client_sampling_is_seeded_and_checks_its_minimums() -> None:
    clients = list(range(100))
    a = FedAvg(fraction_fit=0.1, seed=7).configure_fit(1, [], clients)
    b = FedAvg(fraction_fit=0.1, seed=7).configure_fit(1, [], clients)
    assert [c for c, _ in a] == [c for c, _ in b] and len(a) == 10
    assert len(FedAvg(fraction_fit=0.01, min_fit_clients=5).configure_fit(1, [], clients)) == 5
    with pytest.raises(ValueError, match="min_available_clients"):
        FedAvg(min_available_clients=3).configure_fit(1, [], [1, 2])
    with pytest.raises(ValueError, match="fraction_fit"):
        FedAvg(fraction_fit=0)
    assert a[0][1].config["server_round"] == 1


def test_fedprox_tells_clients_mu_and_its_term_pulls_toward_the_global_model() -> None:
    s = FedProx(proximal_mu=0.3, min_fit_clients=1, min_available_clients=1)
    assert s.configure_fit(2, [torch.zeros(2)], ["a"])[0][1].config["proximal_mu"] == 0.3
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    g = torch.tensor([0.5, 0.5])
    proximal_term([w], [g], 0.3).backward()
    assert torch.allclose(w.grad, 0.3 * (w.detach() - g))
