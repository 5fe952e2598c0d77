"""PySyft 0.2 Part 4 (federated learning with model averaging by a trusted aggregator)."""

from __future__ import annotations

import copy

import torch
from torch import nn, optim

import veil as sy


def test_part_4_models_trained_on_two_workers_are_averaged_on_a_secure_worker() -> None:
    hook = sy.TorchHook(torch)
    bob, alice = sy.VirtualWorker(hook, id="bob"), sy.VirtualWorker(hook, id="alice")
    secure_worker = sy.VirtualWorker(hook, id="secure_worker")
    data = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1.0]])
    target = torch.tensor([[0], [0], [1], [1.0]])
    bobs_data, bobs_target = data[0:2].send(bob), target[0:2].send(bob)
    alices_data, alices_target = data[2:].send(alice), target[2:].send(alice)
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    ref = copy.deepcopy(model)
    for _round in range(3):
        bobs_model = model.copy().send(bob)
        alices_model = model.copy().send(alice)
        bobs_opt = optim.SGD(params=bobs_model.parameters(), lr=0.1)
        alices_opt = optim.SGD(params=alices_model.parameters(), lr=0.1)
        for _ in range(5):
            for m, o, d, t in ((bobs_model, bobs_opt, bobs_data, bobs_target),
                               (alices_model, alices_opt, alices_data, alices_target)):  # fmt: skip
                o.zero_grad()
                loss = ((m(d) - t) ** 2).sum()
                loss.backward()
                o.step()
        alices_model.move(secure_worker)
        bobs_model.move(secure_worker)
        assert alices_model.location is secure_worker
        with torch.no_grad():
            model.weight.set_(((alices_model.weight.data + bobs_model.weight.data) / 2).get())
            model.bias.set_(((alices_model.bias.data + bobs_model.bias.data) / 2).get())
        # the same round in plain torch
        copies = []
        for d, t in ((data[0:2], target[0:2]), (data[2:], target[2:])):
            c = copy.deepcopy(ref)
            o = optim.SGD(c.parameters(), lr=0.1)
            for _ in range(5):
                o.zero_grad()
                ((c(d) - t) ** 2).sum().backward()
                o.step()
            copies.append(c)
        with torch.no_grad():
            ref.weight.set_((copies[0].weight + copies[1].weight) / 2)
            ref.bias.set_((copies[0].bias + copies[1].bias) / 2)
    torch.testing.assert_close(model.weight, ref.weight)
    torch.testing.assert_close(model.bias, ref.bias)
