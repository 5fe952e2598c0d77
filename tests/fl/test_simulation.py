"""The batched cohort computes what the per-client loop computes, and trains digits over 100 clients."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from veil.fl import FedAvg, dirichlet_partition
from veil.fl.simulation import simulate


def _clients(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32) / 16.0, torch.tensor(y)
    parts = dirichlet_partition(y, n, alpha=0.5, seed=seed, min_size=3)
    return [(x[p], y[p]) for p in parts]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_the_batched_cohort_equals_the_python_loop_on_uneven_non_iid_clients() -> None:
    data = _clients(12)
    assert len({len(y) for _, y in data}) > 3  # uneven sizes: padded, masked steps
    a, b = _model(), _model()
    kw = dict(rounds=3, local_epochs=2, batch_size=16, lr=0.1, seed=5)
    ha = simulate(a, data, strategy=FedAvg(fraction_fit=0.5, min_fit_clients=2, seed=1),
                  batched=True, **kw)  # fmt: skip
    hb = simulate(b, data, strategy=FedAvg(fraction_fit=0.5, min_fit_clients=2, seed=1),
                  batched=False, **kw)  # fmt: skip
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-5)
    assert all(abs(x["loss"] - y["loss"]) < 1e-5 for x, y in zip(ha, hb))


def test_mse_losses_and_evaluation_and_the_model_ends_trained() -> None:
    torch.manual_seed(1)
    w = torch.randn(3, 1)
    data = [(x, x @ w) for x in (torch.randn(n, 3) for n in (5, 9, 17, 30))]
    model = nn.Linear(3, 1, bias=False)
    start = copy.deepcopy(model)
    hist = simulate(model, data, strategy=FedAvg(), rounds=30, batch_size=8, lr=0.1,
                    loss_fn=F.mse_loss,
                    evaluate=lambda m: {"err": float((m.weight.T - w).abs().max().detach())})  # fmt: skip
    assert hist[-1]["err"] < 1e-2 < float((start.weight.T - w).abs().max().detach())
    assert hist[-1]["loss"] < hist[0]["loss"]


def test_a_hundred_non_iid_clients_learn_digits() -> None:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32) / 16.0, torch.tensor(y)

    def accuracy(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"accuracy": float((m(x).argmax(1) == y).float().mean())}

    hist = simulate(_model(), _clients(100, seed=2), strategy=FedAvg(fraction_fit=0.3, seed=0),
                    rounds=40, local_epochs=2, batch_size=8, lr=0.1, evaluate=accuracy)  # fmt: skip
    assert hist[-1]["accuracy"] >= 0.85, hist[-1]


def test_clients_that_drop_out_mid_round_are_left_out_of_the_aggregate() -> None:
    data = _clients(20)
    hist = simulate(_model(), data, strategy=FedAvg(seed=0), rounds=5, batch_size=16,
                    dropout=0.3, seed=4)  # fmt: skip
    dropped = [h["dropped"] for h in hist]
    assert sum(dropped) > 0 and all(h["clients"] + h["dropped"] == 20 for h in hist)
    assert hist[-1]["loss"] < hist[0]["loss"]
