"""The PySyft spellings on both node kinds, and what they reveal about private data."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn, optim

import veil as sy
from veil.errors import VeilError
from veil.transfer.node import state_of


def test_a_model_sent_in_place_trains_on_a_node_server_like_in_torch(deployment: Any) -> None:
    sci = deployment.scientist()
    torch.manual_seed(0)
    x, y = torch.randn(6, 3), torch.randn(6, 1)
    xp, yp = x.send(sci), y.send(sci)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    ref = copy.deepcopy(model)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ref_opt = optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    model.send(sci)
    for _ in range(4):
        opt.zero_grad()
        ((model(xp) - yp) ** 2).mean().backward()
        opt.step()
        ref_opt.zero_grad()
        ((ref(x) - y) ** 2).mean().backward()
        ref_opt.step()
    assert model.get() is not None and not hasattr(model[0].weight, "_veil_pointer")
    for got, want in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(got.grad, want.grad)


def test_tags_and_views_on_a_node_server(deployment: Any) -> None:
    sci, other = deployment.scientist(), deployment.scientist()
    x = torch.tensor([1.0, 2.0]).tag("#mine").describe("two numbers").send(sci)
    assert [p.id for p in sci.search("#mine")] == [x.id] and list(sci._tensors) == [x.id]
    assert other.search("#mine") == [] and other._objects == {}


def _world(values: torch.Tensor) -> Any:
    owner = sy.VirtualWorker("clinic")
    owner.datasets.create("x", private=values, mock=torch.zeros_like(values))
    owner.create_user("ds@x.org", "pw-123456")
    return owner.login("ds@x.org", "pw-123456")


def _program(sci: Any) -> list[Any]:
    """A scientist's program over the new paths; returns everything it observed."""
    seen: list[Any] = []

    def attempt(fn: Any) -> None:
        try:
            out = fn()
            seen.append(("ok", out))
        except VeilError as exc:  # the class and the message, with ids masked
            seen.append(
                ("error", type(exc).__name__, "".join(c for c in str(exc) if not c.isdigit()))
            )

    data = sci.datasets["x"].private
    model = nn.Linear(3, 1)
    opt = optim.SGD(model.parameters(), lr=0.1)
    model.send(sci)
    model(data).sum().backward()
    opt.step()
    attempt(lambda: model.get())
    attempt(lambda: isinstance(model.weight, sy.PointerTensor))
    alice = sy.VirtualWorker("alice")
    attempt(lambda: data.move(alice))
    attempt(lambda: (data * 2).send(alice).remote_get())
    attempt(lambda: [tuple(p.shape) for p in sci.search("#x")])
    w = torch.ones(3, requires_grad=True).send(sci)
    (data * w).sum().backward()
    attempt(lambda: w.get())
    attempt(lambda: model.copy().location.name)
    attempt(lambda: model.move(alice).location.name)  # trained on private data: refused
    seen.append(alice.node.object_count())
    seen.append(len(state_of(alice.node)._tickets))  # no ticket a refused move left behind
    return seen


def test_the_new_paths_cannot_tell_two_datasets_apart() -> None:
    first = _program(_world(torch.rand(5, 3)))
    second = _program(_world(torch.rand(5, 3) * 100 - 50))
    assert first == second
    assert ("error", "PermissionDenied") == first[0][:2]  # the model learned from private data
    assert first[-3][:2] == ("error", "PermissionDenied") and first[-1] == 0  # model.move


def test_a_local_tensor_that_requires_grad_is_refused_before_anything_runs() -> None:
    bob = sy.VirtualWorker("bob")
    x = torch.ones(2).send(bob)
    before = bob.node.object_count()
    with pytest.raises(VeilError, match="Send the model first"):
        x * torch.ones(2, requires_grad=True)
    assert bob.node.object_count() == before
