"""Attacks on plans found by review, kept as regressions: each once leaked or stalled, now refused."""

from __future__ import annotations

import pytest
import torch

import veil
from veil.errors import InvalidRequest, OpNotAllowed, PermissionDenied
from veil.node import capability
from veil.serde.messages import Ref
from veil.serde.plans import (
    PlanOp,
    PlanReviewInfo,
    PlanSlot,
    PlanSpec,
    PlanStored,
    ShowPlan,
    StorePlan,
    encode_plan,
)

AGES = torch.tensor([[30.0, 1.0], [40.0, 0.0], [50.0, 1.0], [60.0, 0.0]])


def _world() -> tuple[veil.VirtualWorker, veil.VirtualWorker]:
    owner = veil.VirtualWorker("clinic")
    owner.datasets.create("ages", private=AGES, mock=torch.ones(4, 2))
    owner.create_user("ds@x.org", "scientist-pw-1")
    return owner, owner.login("ds@x.org", "scientist-pw-1")


def _released_mean(owner, sci, runs: int = 5) -> veil.Plan:
    p = veil.plan(lambda x: x.mean(0)).build(torch.zeros(4, 2))
    owner.requests.approve(p.request(sci, dataset="ages", reason="m", runs=runs, release=True).id)
    veil.plans.settings(owner, release_outputs=True)
    return p


def test_a_gradient_through_a_released_result_does_not_carry_its_release() -> None:
    owner, sci = _world()
    p = _released_mean(owner, sci)
    priv = sci.datasets["ages"].private
    out = p(priv)
    leaf = out.detach().requires_grad_(True)
    (leaf * priv[2]).sum().backward()  # writes row 2 of the data into leaf.grad
    with pytest.raises(PermissionDenied):
        leaf.grad.get()
    with pytest.raises(PermissionDenied):
        leaf.get()
    assert torch.equal(out.get(), AGES.mean(0))  # the result itself, unchanged, still leaves


def test_a_release_approval_binds_the_reviewed_inputs() -> None:
    owner, sci = _world()
    p = _released_mean(owner, sci)
    priv = sci.datasets["ages"].private
    with pytest.raises(PermissionDenied, match="reviewed asset"):
        p(priv[2:3].expand(4, 2) * 1.0)  # a row dressed as the dataset
    assert torch.equal(p(priv).get(), AGES.mean(0))


def test_a_release_approval_binds_the_reviewed_state() -> None:
    owner, sci = _world()
    w = torch.nn.Parameter(torch.tensor([[1.0], [0.0]]))  # the scientist's own state
    p = veil.plan(lambda x: (x @ w).mean()).build(torch.zeros(4, 2))
    req = p.request(sci, dataset="ages", reason="mean age", runs=5, release=True)
    owner.requests.approve(req.id)
    veil.plans.settings(owner, release_outputs=True)
    priv = sci.datasets["ages"].private
    assert p(priv).get() == AGES[:, 0].mean()
    state = p._deployments[id(sci)].state[0]
    with torch.no_grad():
        state.mul_(0)  # the weights, changed after the review
    state.data.add_(torch.tensor([[0.0], [4.0]]).send(sci))
    with pytest.raises(PermissionDenied, match="reviewed state"):
        p(priv)


def test_a_hand_made_plan_cannot_grow_a_size_past_the_limit_over_its_runs() -> None:
    from veil.node import Node

    node = Node("small", owner_email="o@x.org", owner_password="owner-pw-123",
                max_result_bytes=80_000)  # fmt: skip
    owner = veil.VirtualWorker(node=node)
    owner.create_user("ds@x.org", "scientist-pw-1")
    sci = owner.login("ds@x.org", "scientist-pw-1")
    spec = PlanSpec(
        "grow", [PlanSlot(1, "x", shape=[1], dtype="float32")],
        [PlanSlot(2, "n", shape=[1], dtype="int64")],
        [PlanOp("Tensor.mul_", [Ref(2), 10], out=Ref(2)),
         PlanOp("torch.repeat_interleave", [Ref(1), Ref(2)], out=Ref(3))],
        Ref(3), values=[PlanSlot(3, "", shape=[10], dtype="float32")],
    )  # fmt: skip
    with pytest.raises(InvalidRequest, match="does not run on the shapes"):  # meta cannot say
        capability.call(sci, "plans", "store", StorePlan(encode_plan(spec)), PlanStored)


def test_an_unapproved_plan_on_a_review_only_node_cannot_reach_hidden_private_data() -> None:
    owner, sci = _world()
    approved = veil.plan(lambda x, w: w.add_(x.mean(0))).build(torch.zeros(4, 2), torch.zeros(2))
    owner.requests.approve(approved.request(sci, dataset="ages", reason="r", runs=2).id)
    veil.plans.require_review(owner)
    a = torch.ones(2, requires_grad=True).send(sci)
    w = torch.zeros(2).send(sci)
    y = a * w  # public when made
    approved(sci.datasets["ages"].private, w)  # writes private data into w
    q = veil.plan(lambda y: y.sum().backward()).build(torch.zeros(2, requires_grad=True))
    with pytest.raises(PermissionDenied, match="only as plans"):
        q(y)


def test_the_code_the_owner_reads_is_what_runs() -> None:
    owner, sci = _world()
    x = PlanSlot(1, "x\n    return x.mean(0)  # that is all", shape=[4, 2], dtype="float32")
    spec = PlanSpec("p", [x], [], [PlanOp("Tensor.sum", [Ref(1)], out=Ref(2))], Ref(2),
                    values=[PlanSlot(2, "", shape=[], dtype="float32")])  # fmt: skip
    with pytest.raises(InvalidRequest, match="not a free Python name"):
        capability.call(sci, "plans", "store", StorePlan(encode_plan(spec)), PlanStored)
    picker = torch.tensor([0.0, 0.0, 1.0, 0.0])
    p = veil.plan(lambda x: (x * picker[:, None]).sum(0)).build(torch.zeros(4, 2))
    assert "x * tensor([[0.0], [0.0], [1.0], [0.0]])" in str(p)  # constants shown, not hidden


def test_the_review_is_frozen_when_the_request_is_made() -> None:
    owner, sci = _world()
    owner.datasets.create("other", private=AGES * 0, mock=torch.zeros(4, 2))
    p = veil.plan(lambda x: x.mean(0)).build(torch.zeros(4, 2))
    req = p.request(sci, dataset="ages", reason="m", runs=1)
    before = capability.call(owner, "plans", "show", ShowPlan(req.id), PlanReviewInfo)
    p.request(sci, dataset="other", reason="m", runs=1)  # prepares another review of the plan
    after = capability.call(owner, "plans", "show", ShowPlan(req.id), PlanReviewInfo)
    assert after.mock_result == before.mock_result and "[1, 1]" in after.mock_result


def test_an_approval_can_be_revoked() -> None:
    owner, sci = _world()
    p = veil.plan(lambda x: x.mean(0)).build(torch.zeros(4, 2))
    req = p.request(sci, dataset="ages", reason="m", runs=5)
    owner.requests.approve(req.id)
    p(sci.datasets["ages"].private)
    assert owner.requests.deny(req.id, "no more").status == "denied"
    with pytest.raises(PermissionDenied):
        p(sci.datasets["ages"].private)


def test_a_failed_run_is_not_counted_and_a_mismatched_result_is_refused_alike() -> None:
    from veil.node import Node

    node = Node("small", owner_email="o@x.org", owner_password="owner-pw-123",
                max_result_bytes=80_000)  # fmt: skip
    owner = veil.VirtualWorker(node=node)
    owner.datasets.create("ages", private=AGES, mock=torch.ones(4, 2))
    owner.create_user("ds@x.org", "scientist-pw-1")
    sci = owner.login("ds@x.org", "scientist-pw-1")
    p = veil.plan(lambda x: torch.ones(100_000) + x.mean()).build(torch.zeros(4, 2))
    req = p.request(sci, dataset="ages", reason="m", runs=1)
    owner.requests.approve(req.id)
    with pytest.raises(InvalidRequest, match="limit"):  # refused mid-run: not counted
        p(sci.datasets["ages"].private)
    assert capability.call(owner, "plans", "show", ShowPlan(req.id), PlanReviewInfo).used == 0
    spec = PlanSpec("two", [PlanSlot(1, "x", shape=[4, 2], dtype="float32")], [],
                    [PlanOp("torch.max", [Ref(1), 0], out=Ref(2))], Ref(2),
                    values=[PlanSlot(2, "", shape=[2], dtype="float32")])  # fmt: skip
    with pytest.raises(InvalidRequest):  # one slot for torch.max's two results
        capability.call(sci, "plans", "store", StorePlan(encode_plan(spec)), PlanStored)


def test_a_plan_holds_torch_ops_only() -> None:
    owner, sci = _world()
    spec = PlanSpec("p", [PlanSlot(1, "x", shape=[2], dtype="int64")], [],
                    [PlanOp("mpc.a128.add", [Ref(1), Ref(1)], out=Ref(2))], Ref(2),
                    values=[PlanSlot(2, "", shape=[2], dtype="int64")])  # fmt: skip
    with pytest.raises(OpNotAllowed):
        capability.call(sci, "plans", "store", StorePlan(encode_plan(spec)), PlanStored)
