"""PySyft 0.2 Part 3 (advanced remote execution): pointers to pointers, move, remote_get."""

from __future__ import annotations

import pytest
import torch

import veil as sy
from veil.errors import PermissionDenied


def test_part_3_pointer_to_pointer_keeps_the_data_on_bob() -> None:
    hook = sy.TorchHook(torch)
    bob, alice = sy.VirtualWorker(hook, id="bob"), sy.VirtualWorker(hook, id="alice")
    x = torch.tensor([1, 2, 3, 4, 5]).send(bob).send(alice)
    assert len(bob._objects) == 1 and len(alice._objects) == 0  # alice holds a client-side hop
    y = x + x
    assert y.location is alice and torch.equal(y.get().get(), torch.tensor([2, 4, 6, 8, 10]))
    inner = x.get()  # unwinds one level
    assert inner.location is bob and torch.equal(inner.get(), torch.tensor([1, 2, 3, 4, 5]))


def test_part_3_move_and_remote_get() -> None:
    bob, alice = sy.VirtualWorker("bob"), sy.VirtualWorker("alice")
    x = torch.tensor([1.0, 2, 3, 4, 5]).send(bob)
    x = x.move(alice, requires_grad=True)
    bob.flush()
    assert x.location is alice and x.requires_grad and len(bob._objects) == 0
    (x * x).sum().backward()
    torch.testing.assert_close(x.get().grad, 2 * torch.tensor([1.0, 2, 3, 4, 5]))

    z = torch.tensor([1, 2, 3]).send(bob).send(alice)
    z.remote_get()
    bob.flush()
    assert z.get().location is alice and len(bob._objects) == 0
    assert torch.equal(z.get().get(), torch.tensor([1, 2, 3]))


def _private_pointer() -> tuple[sy.VirtualWorker, sy.PointerTensor]:
    owner = sy.VirtualWorker("clinic")
    owner.datasets.create("ages", private=torch.tensor([30.0, 40.0]), mock=torch.zeros(2))
    owner.create_user("ds@x.org", "pw-123456")
    sci = owner.login("ds@x.org", "pw-123456")
    return sci, sci.datasets["ages"].private


def test_private_data_neither_moves_nor_remote_gets_without_approval() -> None:
    sci, ages = _private_pointer()
    alice = sy.VirtualWorker("alice")
    with pytest.raises(PermissionDenied):
        ages.move(alice)
    with pytest.raises(PermissionDenied):
        (ages * 2).send(alice).remote_get()
    assert alice.node.object_count() == 0  # nothing reached alice


def test_a_gradient_derived_from_private_data_does_not_come_back_with_get() -> None:
    sci, ages = _private_pointer()
    w = torch.tensor([1.0, 1.0], requires_grad=True).send(sci)
    (w * ages).sum().backward()  # w.grad = ages: private, and w now carries it
    with pytest.raises(PermissionDenied):
        w.get()
    with pytest.raises(PermissionDenied):
        w.grad.get()
