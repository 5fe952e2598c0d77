"""PySyft 0.2's plan and protocol tutorials (Parts 8 and 8 bis), as written there, with ``import veil as sy``.

Two lines differ from the notebooks, both outside plans (PySyft-0.2 compatibility of
workers is its own issue): the workers are made without ``data=`` and the inputs are
sent rather than found with ``search``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F  # noqa: N812

import veil as sy
from veil.errors import UnsupportedError

hook = sy.TorchHook(torch)


def test_part_8_basic_example() -> None:
    device_1 = sy.VirtualWorker(hook, id="device_1")

    @sy.func2plan()
    def plan_double_abs(x):  # type: ignore[no-untyped-def]
        x = x + x
        x = torch.abs(x)
        return x

    assert "plan_double_abs" in repr(plan_double_abs)
    pointer_to_data = torch.tensor([-1, 2.0]).send(device_1)
    assert plan_double_abs.is_built is False
    with pytest.raises(UnsupportedError, match="not built"):
        plan_double_abs.send(device_1)
    plan_double_abs.build(torch.tensor([1.0, -2.0]))
    assert plan_double_abs.is_built
    plan_double_abs.send(device_1)
    pointer_to_result = plan_double_abs(pointer_to_data)
    assert isinstance(pointer_to_result, sy.PointerTensor)
    assert torch.equal(pointer_to_result.get(), torch.tensor([2.0, 4.0]))


class Net(sy.Plan):
    def __init__(self):  # type: ignore[no-untyped-def]
        super().__init__()
        self.fc1 = nn.Linear(2, 3)
        self.fc2 = nn.Linear(3, 2)

        self.add_to_state("fc1", "fc2")

    def forward(self, x):  # type: ignore[no-untyped-def]
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return F.log_softmax(x, dim=0)


class Net2(sy.Plan):
    def __init__(self):  # type: ignore[no-untyped-def]
        super().__init__()
        self.fc1 = nn.Linear(2, 3)
        self.fc2 = nn.Linear(3, 2)

        self.state += ["fc1", "fc2"]

    def forward(self, x):  # type: ignore[no-untyped-def]
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return F.log_softmax(x, dim=0)


def test_part_8_a_model_as_a_plan_and_switching_workers() -> None:
    device_1 = sy.VirtualWorker(hook, id="device_1")
    device_2 = sy.VirtualWorker(hook, id="device_2")
    net = Net()
    assert net.state == ["fc1", "fc2"]
    net.build(torch.tensor([1.0, 2.0]))
    net.send(device_1)
    pointer_to_data = torch.tensor([-1, 2.0]).send(device_1)
    pointer_to_result = net(pointer_to_data)
    expected = net.forward(torch.tensor([-1, 2.0]))
    assert torch.allclose(pointer_to_result.get(), expected)

    net = Net2()
    net.build(torch.tensor([1.0, 2.0]))
    net.send(device_1)
    first = net(torch.tensor([-1, 2.0]).send(device_1)).get()
    back = net.get()
    assert back is net and net.location is None
    net.send(device_2)
    assert torch.allclose(net(torch.tensor([-1, 2.0]).send(device_2)).get(), first)


def test_part_8_functions_built_from_args_shape_and_state() -> None:
    device_1 = sy.VirtualWorker(hook, id="device_1")

    @sy.func2plan(args_shape=[(-1, 1)])
    def plan_double_abs(x):  # type: ignore[no-untyped-def]
        x = x + x
        x = torch.abs(x)
        return x

    assert plan_double_abs.is_built

    @sy.func2plan(args_shape=[(1, 2), (-1, 2)])
    def plan_sum_abs(x, y):  # type: ignore[no-untyped-def]
        s = x + y
        return torch.abs(s)

    assert plan_sum_abs.is_built

    @sy.func2plan(args_shape=[(1,)], state={"bias": torch.tensor([1])})
    def plan_abs(x, state):  # type: ignore[no-untyped-def]
        bias = state.read("bias")
        x = x.abs()
        return x + bias

    plan_abs.send(device_1)
    x_ptr = torch.tensor([-1, 0]).send(device_1)
    p = plan_abs(x_ptr)
    assert torch.equal(p.get(), torch.tensor([2, 1]))


def test_part_8_bis_protocols() -> None:
    @sy.func2plan(args_shape=[(1,)])
    def inc1(x):  # type: ignore[no-untyped-def]
        return x + 1

    @sy.func2plan(args_shape=[(1,)])
    def inc2(x):  # type: ignore[no-untyped-def]
        return x + 1

    @sy.func2plan(args_shape=[(1,)])
    def inc3(x):  # type: ignore[no-untyped-def]
        return x + 1

    protocol = sy.Protocol([("worker1", inc1), ("worker2", inc2), ("worker3", inc3)])
    bob = sy.VirtualWorker(hook, id="bob")
    alice = sy.VirtualWorker(hook, id="alice")
    charlie = sy.VirtualWorker(hook, id="charlie")
    workers = alice, bob, charlie
    protocol.deploy(*workers)
    x = torch.tensor([1.0])
    ptr = protocol.run(x)
    assert ptr.location is charlie
    assert torch.equal(ptr.get(), torch.tensor([4.0]))

    james = sy.VirtualWorker(hook, id="james")
    protocol.send(james)
    x = torch.tensor([1.0]).send(james)
    ptr = protocol.run(x)
    assert ptr.location is james
    assert torch.equal(ptr.get(), torch.tensor([4.0]))
