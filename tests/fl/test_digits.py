"""FedAvg and FedAdam train a classifier on load_digits split over 10 simulated clients (IID and non-IID)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from veil.fl import FedAdam, FedAvg, FitRes, dirichlet_partition, iid_partition
from veil.fl.strategies import Strategy


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32) / 16.0, torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    cut = int(0.8 * len(y))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(32):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


def _federate(strategy: Strategy, parts: list[torch.Tensor], rounds: int) -> float:
    xtr, ytr, xte, yte = _data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    params = [p.detach().clone() for p in model.parameters()]
    clients = list(range(len(parts)))
    for r in range(1, rounds + 1):
        results = []
        for c, ins in strategy.configure_fit(r, params, clients):
            local = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
            with torch.no_grad():
                for p, v in zip(local.parameters(), ins.parameters):
                    p.copy_(v)
            _train(local, xtr[parts[c]], ytr[parts[c]], epochs=3, seed=r * 100 + c)
            results.append(FitRes([p.detach().clone() for p in local.parameters()], len(parts[c])))
        params = strategy.aggregate_fit(r, results, [])
    with torch.no_grad():
        for p, v in zip(model.parameters(), params):
            p.copy_(v)
        return float((model(xte).argmax(1) == yte).float().mean())


@pytest.mark.parametrize("split", ["iid", "dirichlet"])
def test_fedavg_on_digits_over_ten_clients_reaches_90_percent(split: str) -> None:
    _, ytr, _, _ = _data()
    parts = (iid_partition(len(ytr), 10, seed=0) if split == "iid"
             else dirichlet_partition(ytr, 10, alpha=0.5, seed=0, min_size=10))  # fmt: skip
    accuracy = _federate(FedAvg(min_fit_clients=10, min_available_clients=10), parts, rounds=25)
    assert accuracy >= 0.90, accuracy


def test_fedadam_with_client_sampling_on_non_iid_digits_reaches_90_percent() -> None:
    _, ytr, _, _ = _data()
    parts = dirichlet_partition(ytr, 10, alpha=0.5, seed=1, min_size=10)
    strategy = FedAdam(eta=0.02, tau=1e-3, fraction_fit=0.5, min_fit_clients=5,
                       min_available_clients=10, seed=3)  # fmt: skip
    assert _federate(strategy, parts, rounds=25) >= 0.90
