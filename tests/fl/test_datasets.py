"""PySyft 0.2's federated datasets (Part 7) with ``import veil as sy``: batches live on their workers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import veil as sy
from veil.fl import federated_avg


def test_part_7_federated_dataset_trains_where_the_data_lives() -> None:
    hook = sy.TorchHook(torch)
    bob = sy.VirtualWorker(hook, id="bob")
    alice = sy.VirtualWorker(hook, id="alice")
    torch.manual_seed(0)
    x = torch.randn(40, 3)
    y = (x @ torch.tensor([[1.0], [-2.0], [0.5]])).squeeze(1)
    dataset = sy.BaseDataset(x, y)
    fed = dataset.federate((bob, alice))
    assert fed.workers == ["bob", "alice"] and len(fed) == 40
    loader = sy.FederatedDataLoader(fed, batch_size=8, shuffle=True, seed=1)
    assert len(loader) == 6  # 3 batches of 20 examples on each worker
    model = nn.Linear(3, 1)
    seen = []
    for _epoch in range(30):
        for data, target in loader:
            seen.append(data.location.name)
            remote = model.send(data.location)  # veil: a pointer to the model over there
            opt = sy.RemoteOptimizer(torch.optim.SGD, remote.parameters(), lr=0.1)
            opt.zero_grad()
            loss = F.mse_loss(remote(data).squeeze(1), target)
            loss.backward()
            opt.step()
            model = remote.get()
    assert seen[:6] == ["bob"] * 3 + ["alice"] * 3
    assert F.mse_loss(model(x).squeeze(1), y).item() < 1e-3


def test_a_shuffled_batch_is_picked_on_the_node_and_federated_avg_averages() -> None:
    bob = sy.VirtualWorker("bob")
    fed = sy.BaseDataset(torch.arange(12.0).view(6, 2), torch.arange(6)).federate([bob])
    batches = list(sy.FederatedDataLoader(fed, batch_size=4, shuffle=True, seed=0))
    got = torch.cat([t.get() for _, t in batches]).sort().values
    assert torch.equal(got, torch.arange(6))
    a, b = nn.Linear(2, 1), nn.Linear(2, 1)
    avg = federated_avg([a, b])
    assert torch.allclose(avg.weight, (a.weight + b.weight) / 2)
    with pytest.raises(ValueError, match="send them first"):
        sy.FederatedDataset([sy.BaseDataset(torch.ones(2), torch.ones(2))])
