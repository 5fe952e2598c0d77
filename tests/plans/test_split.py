"""Split learning with plans: one model cut across two nodes, trained like the whole model locally."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import veil


def test_split_learning_across_two_nodes_matches_local_training(deployment) -> None:
    torch.manual_seed(3)
    front = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
    back = nn.Sequential(nn.Linear(16, 4))
    whole = nn.Sequential(copy.deepcopy(front), copy.deepcopy(back))
    opt_front = torch.optim.SGD(front.parameters(), lr=0.1)
    opt_back = torch.optim.SGD(back.parameters(), lr=0.1)
    opt_whole = torch.optim.SGD(whole.parameters(), lr=0.1)
    x, y = torch.randn(10, 8), torch.randint(0, 4, (10,))

    @veil.plan
    def forward_front(x: torch.Tensor) -> torch.Tensor:
        opt_front.zero_grad()
        return front(x)

    @veil.plan
    def train_back(acts: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        opt_back.zero_grad()
        loss = F.cross_entropy(back(acts), y)
        loss.backward()
        opt_back.step()
        return loss, acts.grad

    @veil.plan
    def backward_front(x: torch.Tensor, grad: torch.Tensor) -> None:
        front(x).backward(grad)  # the forward again, on the node: the plan holds its model
        opt_front.step()

    forward_front.build(x)
    train_back.build(torch.zeros(10, 16).requires_grad_(), y)
    backward_front.build(x, torch.zeros(10, 16))
    alice = deployment.scientist()  # holds the data and the front of the model
    bob = veil.VirtualWorker("bob")  # holds the labels and the back
    x_ptr, y_ptr = x.send(alice), y.send(bob)
    forward_front.send(alice)
    train_back.send(bob)
    backward_front.send(alice)  # shares the front model (and its optimizer) with forward_front
    for _ in range(3):
        acts = forward_front(x_ptr)
        acts_at_bob = acts.copy().move(bob)  # what crosses the cut: activations
        acts_at_bob.requires_grad_(True)
        loss, grad = train_back(acts_at_bob, y_ptr)
        backward_front(x_ptr, grad.move(alice))  # and gradients back
        opt_whole.zero_grad()
        ref_loss = F.cross_entropy(whole(x), y)
        ref_loss.backward()
        opt_whole.step()
        assert torch.allclose(loss.get(), ref_loss.detach(), atol=1e-6)
    forward_front.get()
    train_back.get()
    for a, b in zip([*front.parameters(), *back.parameters()], whole.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_stepping_an_optimizer_whose_model_the_plan_does_not_hold_is_refused() -> None:
    import pytest

    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    @veil.plan
    def step_only(acts: torch.Tensor, grad: torch.Tensor) -> None:
        acts.backward(grad)
        opt.step()  # the model is not used here: the node would step nothing

    with pytest.raises(veil.errors.UnsupportedError, match="model is not state of the plan"):
        step_only.build(torch.zeros(3, 2).requires_grad_(), torch.zeros(3, 2))


def test_sending_a_plan_again_puts_a_fresh_copy_of_its_state() -> None:
    net = nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)

    @veil.plan
    def step(x: torch.Tensor) -> torch.Tensor:
        opt.zero_grad()
        loss = net(x).pow(2).mean()
        loss.backward()
        opt.step()
        return loss

    w = veil.VirtualWorker("w")
    x = torch.ones(4, 2).send(w)
    first = step.build(torch.ones(4, 2)).send(w).run(x, repeat=3).get()
    assert step.run(x).get() < first  # the state stayed on the node and trained on
    assert torch.equal(step.send(w).run(x, repeat=3).get(), first)  # sent again: fresh
