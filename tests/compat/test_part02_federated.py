"""PySyft 0.2 Part 2 (intro to federated learning): the model moves to each worker's data."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn, optim

import veil as sy
from veil.errors import InvalidRequest, PermissionDenied


def _toy() -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1.0]], requires_grad=True)
    target = torch.tensor([[0], [0], [1], [1.0]], requires_grad=True)
    return data, target


def test_part_2_training_on_two_workers_matches_plain_torch() -> None:
    hook = sy.TorchHook(torch)
    bob, alice = sy.VirtualWorker(hook, id="bob"), sy.VirtualWorker(hook, id="alice")
    data, target = _toy()
    datasets = [(data[0:2].send(bob), target[0:2].send(bob)),
                (data[2:].send(alice), target[2:].send(alice))]  # fmt: skip
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    reference = copy.deepcopy(model)
    opt = optim.SGD(params=model.parameters(), lr=0.1)
    ref_opt = optim.SGD(params=reference.parameters(), lr=0.1)
    params = list(model.parameters())
    for _ in range(10):
        for d, t in datasets:
            model.send(d.location)  # the result is discarded, as the tutorial writes it
            opt.zero_grad()
            loss = ((model(d) - t) ** 2).sum()
            loss.backward()
            opt.step()
            model.get()
        for d, t in ((data[0:2], target[0:2]), (data[2:], target[2:])):
            ref_opt.zero_grad()
            ((reference(d.detach()) - t.detach()) ** 2).sum().backward()
            ref_opt.step()
    assert list(model.parameters()) == params  # the same Parameter objects, trained remotely
    torch.testing.assert_close(model.weight, reference.weight)
    torch.testing.assert_close(model.bias, reference.bias)
    assert model.weight.grad is not None  # get brought the last gradient back
    del opt, loss  # the node-side optimizer goes with the torch optimizer
    bob.flush(), alice.flush()
    assert bob.node.object_count() == 2 and alice.node.object_count() == 2  # only the data


def test_a_sent_model_refuses_local_data_and_other_workers_data() -> None:
    bob, alice = sy.VirtualWorker("bob"), sy.VirtualWorker("alice")
    model = nn.Linear(2, 1)
    model.send(bob)
    with pytest.raises(InvalidRequest, match="lives on 'bob'"):
        model(torch.ones(1, 2))
    with pytest.raises(sy.errors.WorkerMismatch):
        model(torch.ones(1, 2).send(alice))
    assert model.location is bob and isinstance(model.weight, sy.PointerTensor)


def test_a_model_trained_on_private_data_stays_remote_when_get_is_refused() -> None:
    owner = sy.VirtualWorker("clinic")
    owner.datasets.create("x", private=torch.rand(8, 2), mock=torch.zeros(8, 2))
    owner.create_user("ds@x.org", "pw-123456")
    sci = owner.login("ds@x.org", "pw-123456")
    model = nn.Linear(2, 1)
    opt = optim.SGD(model.parameters(), lr=0.1)
    model.send(sci)
    model(sci.datasets["x"].private).sum().backward()
    opt.step()
    with pytest.raises(PermissionDenied):
        model.get()
    assert model.location is sci and isinstance(model.weight, sy.PointerTensor)
