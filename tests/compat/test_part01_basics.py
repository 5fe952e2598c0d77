"""PySyft 0.2 Part 1 (basic tools of private deep learning) with ``import veil as sy``."""

from __future__ import annotations

import pytest
import torch

import veil as sy
from veil.errors import InvalidRequest


def test_part_1_send_get_and_pointer_attributes() -> None:
    hook = sy.TorchHook(torch)
    bob = sy.VirtualWorker(hook=hook, id="bob")
    x = torch.tensor([1, 2, 3, 4, 5])
    y = torch.tensor([1, 1, 1, 1, 1])
    x_ptr, y_ptr = x.send(bob), y.send(bob)
    assert x_ptr.location is bob and x_ptr.owner is sy.local_worker is hook.local_worker
    assert x_ptr.id_at_location == x_ptr.id
    assert set(bob._objects) == {x_ptr.id, y_ptr.id} and set(bob._tensors) == set(bob._objects)
    z = x_ptr + y_ptr
    assert torch.equal(z.get(), x + y)
    assert torch.equal(torch.add(x_ptr, y_ptr).get(), x + y)
    assert sy.local_worker._objects == {}  # the client holds no store of its own


def test_part_1_backward_on_the_node_and_get_brings_the_gradient() -> None:
    bob = sy.VirtualWorker(sy.TorchHook(torch), id="bob")
    x = torch.tensor([1.0, 2, 3, 4, 5], requires_grad=True)
    y = torch.tensor([1.0, 1, 1, 1, 1], requires_grad=True)
    xp, yp = x.send(bob), y.send(bob)
    (xp + yp).sum().backward()
    (x + y).sum().backward()  # the same in plain torch
    got = xp.get()
    assert torch.equal(got, x.detach()) and torch.equal(got.grad, x.grad)
    assert torch.equal(xp.grad.get(), y.grad)
    assert bob.node.object_count() > 0  # veil's get copies: the remote object stays


def test_a_local_model_on_pointers_says_send_the_model_first() -> None:
    bob = sy.VirtualWorker("bob")
    model = torch.nn.Linear(2, 1)
    with pytest.raises(InvalidRequest, match="Send the model first"):
        model(torch.ones(3, 2).send(bob))


def test_virtual_worker_keywords_and_clear_objects() -> None:
    hook = sy.TorchHook(torch)
    alice = sy.VirtualWorker(id="alice", hook=hook)
    x = torch.ones(2).send(alice)
    assert alice.name == alice.id == "alice" and list(alice._objects) == [x.id]
    alice.clear_objects()
    assert alice._objects == {}
