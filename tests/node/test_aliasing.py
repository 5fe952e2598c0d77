"""Records that share tensors still share them after a restart: a model's parameter records,
views of a tensor, and the optimizer stepping them (``veil.node.aliasing``)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

import veil
from veil.node import Node
from veil.node.store.sql import SQLStore

OWNER, OWNER_PW = "owner@alias.test", "owner-password-8"
SCI, SCI_PW = "sci@alias.test", "sci-password-8"
Snapshot = Callable[[Node], dict[str, Any]]


@pytest.fixture(autouse=True)
def _one_intra_op_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _node(tmp_path: Path, **kw: Any) -> Node:
    return Node("n", store=SQLStore(f"sqlite:///{tmp_path / 'n.db'}"), **kw)


def _first(tmp_path: Path) -> tuple[Node, Any]:
    node = _node(tmp_path, owner_email=OWNER, owner_password=OWNER_PW)
    node.create_user(SCI, SCI_PW)
    return node, veil.VirtualWorker(node=node).login(SCI, SCI_PW)


def _again(node: Node, tmp_path: Path) -> tuple[Node, Any]:
    """Close the node and open a new one on the same database, as a restarted process would."""
    node.close()
    node = _node(tmp_path)
    return node, veil.VirtualWorker(node=node).login(SCI, SCI_PW)


def _model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    return torch.randn(16, 5, generator=gen), torch.randint(0, 3, (16,), generator=gen)


def _step(model: Any, opt: Any, x: Any, y: Any) -> None:
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


OPTIMIZERS = [
    pytest.param(torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}, id="sgd-momentum"),
    pytest.param(torch.optim.Adam, {"lr": 0.01, "betas": (0.8, 0.99)}, id="adam"),
]


@pytest.mark.parametrize(("opt_cls", "options"), OPTIMIZERS)
def test_training_continues_after_a_restart_as_if_uninterrupted(
    tmp_path: Path, opt_cls: Any, options: dict[str, Any], snapshot: Snapshot
) -> None:
    x, y = _data()
    local = _model()
    local_opt = opt_cls(local.parameters(), **options)
    for _ in range(6):
        _step(local, local_opt, x, y)

    node, sci = _first(tmp_path)
    model = sci.send(_model())
    opt = veil.RemoteOptimizer(opt_cls, model.parameters(), **options)
    xs, ys = sci.send(x), sci.send(y)
    for _ in range(3):
        _step(model, opt, xs, ys)
    sci.flush()
    ids = model.id, opt.id, xs.id, ys.id
    before = snapshot(node)

    node, sci = _again(node, tmp_path)
    assert snapshot(node) == before  # values, momentum, and which tensors are shared
    model, opt, xs, ys = (sci.pointer(i) for i in ids)
    for _ in range(3):
        _step(model, opt, xs, ys)
    got = model.get()
    for (name, want), (_, have) in zip(local.state_dict().items(), got.state_dict().items()):
        torch.testing.assert_close(have, want, atol=1e-6, rtol=0, msg=name)
    node.close()


def test_a_parameter_record_and_its_module_alias_after_a_restart(tmp_path: Path) -> None:
    node, sci = _first(tmp_path)
    model = sci.send(nn.Linear(3, 2))
    weight, bias = model.parameters()
    sci.flush()
    ids = model.id, weight.id, bias.id

    node, sci = _again(node, tmp_path)
    model, weight, bias = (sci.pointer(i) for i in ids)
    weight.requires_grad_(False)
    weight.zero_()  # a write through the parameter's record...
    bias.requires_grad_(False)
    bias.fill_(7.0)
    got = model.get()  # ...is the module's parameter
    assert torch.equal(got.weight, torch.zeros(2, 3)) and torch.equal(
        got.bias, torch.full((2,), 7.0)
    )
    rec = node.lookup(model.id)
    assert rec is not None and rec.value.weight is node.lookup(weight.id).value  # type: ignore[union-attr]
    node.close()


def test_views_of_a_tensor_are_views_after_a_restart(tmp_path: Path, snapshot: Snapshot) -> None:
    node, sci = _first(tmp_path)
    x = sci.send(torch.arange(12.0).reshape(3, 4))
    row, col, t, flat = x[1], x[:, 2], x.T, x.view(-1)[2:9]
    sci.flush()
    ids = x.id, row.id, col.id, t.id, flat.id
    before = snapshot(node)

    node, sci = _again(node, tmp_path)
    assert snapshot(node) == before
    x, row, col, t, flat = (sci.pointer(i) for i in ids)
    row.add_(100)  # through a view: the base and the other views see it
    col.mul_(-1)
    want = torch.arange(12.0).reshape(3, 4)
    want[1] += 100
    want[:, 2] *= -1
    assert torch.equal(x.get(), want)
    assert torch.equal(t.get(), want.T) and torch.equal(flat.get(), want.view(-1)[2:9])
    sci.flush()
    written = snapshot(node)

    node, sci = _again(node, tmp_path)  # what was written through the views was stored
    assert snapshot(node) == written
    x, row, col, t, flat = (sci.pointer(i) for i in ids)
    x.delete()  # the owner goes: its views keep their memory, and store it themselves
    sci.flush()
    gone = snapshot(node)

    node, sci = _again(node, tmp_path)
    assert snapshot(node) == gone
    row, t = sci.pointer(ids[1]), sci.pointer(ids[3])
    row.zero_()
    assert torch.equal(t.get()[:, 1], torch.zeros(4))  # still one memory
    node.close()


def test_an_optimizer_keeps_its_parameters_when_the_model_is_deleted(
    tmp_path: Path, snapshot: Snapshot
) -> None:
    node, sci = _first(tmp_path)
    local = nn.Linear(2, 1)
    model = sci.send(copy.deepcopy(local))
    params = model.parameters()
    opt = veil.RemoteOptimizer(torch.optim.SGD, params, lr=0.5, momentum=0.5)
    x = sci.send(torch.ones(3, 2))
    local_opt = torch.optim.SGD(local.parameters(), lr=0.5, momentum=0.5)
    for remote, step in ((model, opt), (local, local_opt)):
        xx = x if remote is model else torch.ones(3, 2)
        remote(xx).sum().backward()
        step.step()
    model.delete()  # the parameters' records and the optimizer hold the tensors now
    sci.flush()
    ids = opt.id, params[0].id, params[1].id, x.id
    before = snapshot(node)

    node, sci = _again(node, tmp_path)
    assert snapshot(node) == before
    opt, weight, bias, x = (sci.pointer(i) for i in ids)
    opt.zero_grad()
    (x @ weight.T + bias).sum().backward()
    opt.step()
    local_opt.zero_grad()
    local(torch.ones(3, 2)).sum().backward()
    local_opt.step()
    torch.testing.assert_close(weight.get(), local.weight.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(bias.get(), local.bias.detach(), atol=1e-6, rtol=0)
    node.close()


def test_a_model_sent_as_parameters_trains_on_after_a_restart(tmp_path: Path) -> None:
    """A model with its own forward lives on the node as one record per parameter."""
    node, sci = _first(tmp_path)
    w = sci.send(torch.ones(3, requires_grad=True))
    opt = veil.RemoteOptimizer(torch.optim.Adam, [w], lr=0.1)
    x = sci.send(torch.arange(3.0))
    for _ in range(2):
        opt.zero_grad()
        (w * x).sum().backward()
        opt.step()
    sci.flush()
    ids = opt.id, w.id, x.id

    node, sci = _again(node, tmp_path)
    opt, w, x = (sci.pointer(i) for i in ids)
    for _ in range(2):
        opt.zero_grad()
        (w * x).sum().backward()
        opt.step()
    local = torch.ones(3, requires_grad=True)
    local_opt = torch.optim.Adam([local], lr=0.1)
    for _ in range(4):
        local_opt.zero_grad()
        (local * torch.arange(3.0)).sum().backward()
        local_opt.step()
    torch.testing.assert_close(w.get(), local.detach(), atol=1e-6, rtol=0)
    node.close()
