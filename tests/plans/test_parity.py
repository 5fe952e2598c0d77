"""Plans compute what eager torch computes: locally, on a node, and trained n times in one message."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from tests.plans.models import example
from torch import nn

import veil

MODELS = ["mlp", "lenet", "lstm"]


def _forward_plan(model: nn.Module) -> veil.Plan:
    @veil.plan
    def predict(x: torch.Tensor) -> torch.Tensor:
        return model(x)

    return predict


@pytest.mark.parametrize("name", MODELS)
def test_every_op_of_the_examples_traces_and_runs_like_eager_torch(name: str) -> None:
    torch.manual_seed(0)
    model, x = example(name)
    p = _forward_plan(model).build(x)
    expected = model(x)
    assert torch.allclose(p(x), expected, atol=1e-6)
    other = example(name, batch=3)[1]  # another batch size: the traced shape's first dim
    assert torch.allclose(p(other), model(other), atol=1e-6)
    assert p.spec is not None and len(p.spec.ops) >= 1


@pytest.mark.parametrize("name", MODELS)
def test_a_plan_runs_on_a_node_in_one_message_and_matches_eager(name: str, deployment) -> None:
    torch.manual_seed(1)
    model, x = example(name)
    p = _forward_plan(model).build(x)
    sci = deployment.scientist()
    p.send(sci)
    x_ptr = x.send(sci)
    sci.flush()
    calls = []
    real_call = sci.call
    sci.call = lambda msg, **kw: calls.append(type(msg).__name__) or real_call(msg, **kw)
    try:
        out = p(x_ptr)
        got = out.get()
    finally:
        del sci.call
    # one message for the whole plan; a pipelining client sends it with the get
    assert calls == (["GetObject"] if sci.pipeline else ["RunOp", "GetObject"]), calls
    assert isinstance(out, veil.PointerTensor)
    assert torch.allclose(got, model(x), atol=1e-5)


def test_fine_grained_ops_are_traced_through_custom_modules() -> None:
    model, x = example("lenet")
    p = _forward_plan(model).build(x)
    ops = {op.op for op in p.spec.ops}
    assert {"F.conv2d", "F.max_pool2d", "F.relu", "F.avg_pool2d", "torch.tanh", "torch.flatten",
            "Module.__call__", "Tensor.softmax"} <= ops  # fmt: skip
    kinds = sorted(s.kind for s in p.spec.state)
    assert kinds == ["module", "tensor", "tensor", "tensor", "tensor"]  # fc; c1, b1, c2, b2
    assert "self.model.c1" in str(p)


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam])
def test_a_training_plan_run_n_times_equals_n_eager_steps(opt_cls: type, deployment) -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    ref = copy.deepcopy(model)
    opt = opt_cls(model.parameters(), lr=0.05)
    ref_opt = opt_cls(ref.parameters(), lr=0.05)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))

    @veil.plan
    def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    train_step.build(x, y)
    before = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # build: no step
    sci = deployment.scientist()
    train_step.send(sci)
    loss = train_step.run(x.send(sci), y.send(sci), repeat=7)
    for _ in range(7):
        ref_opt.zero_grad()
        ref_loss = F.cross_entropy(ref(x), y)
        ref_loss.backward()
        ref_opt.step()
    assert torch.allclose(loss.get(), ref_loss.detach(), atol=1e-5)
    train_step.get()  # the trained weights come back into the local model
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-5)
    assert not torch.equal(next(model.parameters()), before[0])


def test_a_plan_with_several_outputs_returns_them_as_pointers() -> None:
    @veil.plan
    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        values, idx = torch.max(x, 1)
        return values, idx, x.std(0)

    x = torch.randn(4, 3)
    stats.build(x)
    w = veil.VirtualWorker("w")
    stats.send(w)
    v, i, s = stats(x.send(w))
    ev, ei = torch.max(x, 1)
    assert torch.equal(v.get(), ev) and torch.equal(i.get(), ei)
    assert torch.allclose(s.get(), x.std(0))
    assert "t2, t3 = torch.max(x, 1)  # float32[4], int64[4]" in str(stats)


def test_intermediate_results_do_not_stay_on_the_node() -> None:
    w = veil.VirtualWorker("w")
    p = veil.plan(lambda x: ((x * 2 + 1).relu() - 3).sum(0)).build(torch.ones(5, 2))
    p.send(w)
    x = torch.ones(5, 2).send(w)
    w.flush()
    before = w.node.object_count()
    out = p.run(x, repeat=3)
    w.flush()
    assert w.node.object_count() == before + 1  # the output only
    assert torch.equal(out.get(), torch.zeros(2))  # ((1 * 2 + 1) - 3) summed over 5 rows


def test_a_pipelining_client_queues_a_plan_run_with_its_next_call(deployment) -> None:
    sci = deployment.scientist()
    sci.pipeline = True  # what network clients do; a VirtualWorker may too
    net = nn.Linear(4, 2)
    p = veil.plan(lambda x: torch.tanh(net(x)) * 3).build(torch.zeros(5, 4))
    p.send(sci)
    x = torch.randn(5, 4)
    x_ptr = x.send(sci)
    sci.flush()
    out = p(x_ptr)
    assert sci.queue.pending == 1 and out.shape == (5, 2)  # nothing sent yet
    assert torch.allclose(out.get(), torch.tanh(net(x)) * 3, atol=1e-6)
    again = p(x_ptr) + 1  # its result is usable at once, also by queued ops
    assert torch.allclose(again.get(), torch.tanh(net(x)) * 3 + 1, atol=1e-6)
    other = p(torch.randn(3, 4).send(sci))  # another batch size: the node answers its shape
    assert sci.queue.pending == 0 and other.shape == (3, 2)


def test_a_queued_plan_that_fails_on_the_node_raises_where_it_is_read(virtual) -> None:
    sci = virtual.scientist()
    sci.pipeline = True
    p = veil.plan(lambda x, i: x[i] * 2).build(torch.zeros(3), torch.tensor(0))
    p.send(sci)
    out = p(torch.zeros(3).send(sci), torch.tensor(7).send(sci))  # out of range on the node
    with pytest.raises(veil.errors.RemoteError, match="plans.run"):
        out.get()


def test_veil_plan_on_a_module_class_makes_a_plan_class() -> None:
    @veil.plan
    class Small(nn.Module):
        """A small model."""

        def __init__(self, width: int) -> None:
            super().__init__()
            self.fc = nn.Linear(3, width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.fc(x)) * 2

    m = Small(4)
    assert isinstance(m, veil.Plan) and isinstance(m, nn.Module) and m.plan_name == "Small"
    x = torch.randn(2, 3)
    m.build(x)
    assert "self.fc = Linear(in_features=3, out_features=4" in str(m)
    w = veil.VirtualWorker("w")
    m.send(w)
    assert torch.allclose(m(x.send(w)).get(), F.relu(m.fc(x)) * 2)
    assert torch.allclose(m(x), F.relu(m.fc(x)) * 2)  # local tensors: run here
