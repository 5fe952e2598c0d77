"""PySyft 0.2 Part 7 (federated datasets and FederatedDataLoader) with a model sent each batch."""

from __future__ import annotations

import copy

import torch
from torch import nn, optim

import veil as sy


def test_part_7_loader_loop_sends_the_model_to_each_batch() -> None:
    hook = sy.TorchHook(torch)
    bob, alice = sy.VirtualWorker(hook, id="bob"), sy.VirtualWorker(hook, id="alice")
    torch.manual_seed(0)
    x = torch.randn(12, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    fed = sy.BaseDataset(x, y).federate((bob, alice))
    loader = sy.FederatedDataLoader(fed, batch_size=3)
    model = nn.Linear(3, 1)
    ref = copy.deepcopy(model)
    opt, ref_opt = optim.SGD(model.parameters(), lr=0.05), optim.SGD(ref.parameters(), lr=0.05)
    locations = []
    for _epoch in range(3):
        for data, target in loader:
            model.send(data.location)
            opt.zero_grad()
            loss = ((model(data) - target) ** 2).mean()
            loss.backward()
            opt.step()
            model.get()
            locations.append(data.location.name)
    for _epoch in range(3):  # the loader's order: bob's 6 examples, then alice's, in batches of 3
        for i in range(0, 12, 3):
            ref_opt.zero_grad()
            ((ref(x[i : i + 3]) - y[i : i + 3]) ** 2).mean().backward()
            ref_opt.step()
    assert locations[:4] == ["bob", "bob", "alice", "alice"]
    torch.testing.assert_close(model.weight, ref.weight)
    torch.testing.assert_close(model.bias, ref.bias)
