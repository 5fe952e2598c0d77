"""Owner review of plans, attacked: what runs on private data is exactly what the owner approved."""

from __future__ import annotations

import pytest
import torch

import veil
from veil.errors import InvalidRequest, OpNotAllowed, PermissionDenied
from veil.plans import Plan

AGES = torch.tensor([[30.0, 1.0], [40.0, 0.0], [50.0, 1.0], [60.0, 0.0]])


def _setup(dep) -> tuple[object, object]:
    dep.owner.datasets.create("ages", private=AGES, mock=torch.zeros(4, 2) + 1.0, bounds=(0, 120))
    dep.owner.datasets.create("other", private=AGES * 2, mock=torch.zeros(4, 2))
    return dep.owner, dep.scientist()


def _mean_plan() -> Plan:
    @veil.plan
    def column_mean(x: torch.Tensor) -> torch.Tensor:
        return (x * 1.0).mean(0)

    return column_mean.build(torch.zeros(4, 2))


def _review(owner, req_id: int):
    from veil.node import capability
    from veil.serde.plans import PlanReviewInfo, ShowPlan

    return capability.call(owner, "plans", "show", ShowPlan(req_id), PlanReviewInfo)


def test_an_unapproved_plan_cannot_run_on_private_data(deployment) -> None:
    owner, sci = _setup(deployment)
    p = _mean_plan()
    private = sci.datasets["ages"].private
    sci.flush()
    before = deployment.node.object_count()
    with pytest.raises(PermissionDenied, match="no approved request"):
        p.send(sci)(private)
    sci.flush()
    assert deployment.node.object_count() == before  # nothing computed, nothing left
    own = torch.ones(4, 2).send(sci)  # the scientist's own data: no review needed
    assert torch.equal(p(own).get(), torch.ones(2))


def test_the_owner_reviews_code_mock_result_releases_and_hash_then_runs_are_counted(
    deployment,
) -> None:
    owner, sci = _setup(deployment)
    p = _mean_plan()
    req = p.request(sci, dataset="ages", reason="mean age for the paper", runs=2)
    assert req.status == "pending" and req.kind == "plan" and req.subject == p.hash
    review = _review(owner, req.id)
    assert review.hash == p.hash and review.runs == 2 and review.dataset == "ages"
    assert "torch.mean" in review.code or ".mean(" in review.code
    assert "[1, 1]" in review.mock_result  # the mean of the mock (ones), not of the data
    assert "nothing by itself" in review.releases
    private = sci.datasets["ages"].private
    with pytest.raises(PermissionDenied):  # pending is not approved
        p(private)
    owner.requests.approve(req.id)
    out = p(private)
    assert out.private  # results of private data stay private
    with pytest.raises(PermissionDenied):
        out.get()
    assert torch.equal(deployment.node.lookup(out.id).value, AGES.mean(0))
    p(private)  # the second approved run
    with pytest.raises(PermissionDenied, match="0 of 2 runs left"):
        p(private)
    assert _review(owner, req.id).used == 2


def test_a_plan_edited_after_approval_cannot_run_under_the_old_approval(deployment) -> None:
    owner, sci = _setup(deployment)
    p = _mean_plan()
    req = p.request(sci, dataset="ages", reason="mean", runs=10)
    owner.requests.approve(req.id)

    @veil.plan
    def column_mean(x: torch.Tensor) -> torch.Tensor:  # same name, one constant changed
        return (x * 1000.0).mean(0)

    edited = column_mean.build(torch.zeros(4, 2))
    assert edited.hash != p.hash
    with pytest.raises(PermissionDenied):
        edited.send(sci)(sci.datasets["ages"].private)
    with pytest.raises(PermissionDenied):  # more runs in one message than approved
        p.send(sci).run(sci.datasets["ages"].private, repeat=11)


def test_an_approval_covers_its_dataset_its_requester_and_nothing_denied(deployment) -> None:
    owner, sci = _setup(deployment)
    p = _mean_plan()
    owner.requests.approve(p.request(sci, dataset="ages", reason="mean", runs=5).id)
    with pytest.raises(PermissionDenied, match="other"):
        p(sci.datasets["other"].private)
    other_sci = deployment.scientist()
    with pytest.raises(PermissionDenied):
        p.send(other_sci)(other_sci.datasets["ages"].private)
    denied = _mean_plan()
    r = denied.request(other_sci, dataset="ages", reason="please", runs=1)
    owner.requests.deny(r.id)
    with pytest.raises(PermissionDenied):
        denied(other_sci.datasets["ages"].private)


def test_a_plan_with_an_op_off_the_allowlist_cannot_be_built_or_stored(virtual) -> None:
    @veil.plan
    def sneaky(x: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft(x * 2).real

    with pytest.raises(OpNotAllowed, match=r"test_review.py:\d+: .*fft"):  # names the line
        sneaky.build(torch.zeros(4))

    from veil.node import capability
    from veil.serde.messages import ListArg, Ref
    from veil.serde.plans import PlanOp, PlanSlot, PlanSpec, PlanStored, StorePlan, encode_plan

    crafted = PlanSpec("p", [PlanSlot(1, "x", shape=[2], dtype="float32")], [],
                       [PlanOp("os.system", [Ref(1)], out=Ref(2))], Ref(2))  # fmt: skip
    sci = virtual.scientist()
    with pytest.raises(OpNotAllowed, match="os.system"):
        capability.call(sci, "plans", "store", StorePlan(encode_plan(crafted)), PlanStored)
    node_op = PlanSpec("p", [PlanSlot(1, "x", shape=[2], dtype="float32")], [],
                       [PlanOp("plans.run", ["h", ListArg([]), ListArg([Ref(1)])], out=Ref(2))], Ref(2))  # fmt: skip
    with pytest.raises(OpNotAllowed, match="node op"):
        capability.call(sci, "plans", "store", StorePlan(encode_plan(node_op)), PlanStored)
    forward = PlanSpec("p", [PlanSlot(1, "x", shape=[2], dtype="float32")], [],
                       [PlanOp("torch.neg", [Ref(7)], out=Ref(2))], Ref(2))  # fmt: skip
    with pytest.raises(InvalidRequest, match="before it is defined"):
        capability.call(sci, "plans", "store", StorePlan(encode_plan(forward)), PlanStored)


def test_a_branch_on_a_traced_value_is_refused_when_building() -> None:
    @veil.plan
    def branchy(x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x
        return -x

    with pytest.raises(veil.errors.UnsupportedError, match="test_review.py:.*branch"):
        branchy.build(torch.ones(3))

    @veil.plan
    def reads(x: torch.Tensor) -> torch.Tensor:
        return x * x.max().item()

    with pytest.raises(veil.errors.UnsupportedError, match=r"\.item\(\)"):
        reads.build(torch.ones(3))

    @veil.plan
    def data_shape(x: torch.Tensor) -> torch.Tensor:
        return torch.nonzero(x)

    with pytest.raises(veil.errors.UnsupportedError, match="nonzero"):
        data_shape.build(torch.ones(3))


def test_a_plan_runs_only_with_the_state_it_was_traced_with(virtual) -> None:
    net = torch.nn.Linear(2, 2)
    p = veil.plan(lambda x: net(x)).build(torch.zeros(1, 2))
    sci = virtual.scientist()
    p.send(sci)
    dep = p._deployments[id(sci)]
    dep.state[0] = sci.send(torch.nn.Linear(2, 3))  # a different model behind the slot
    with pytest.raises(InvalidRequest, match="not the module the plan was traced with"):
        p(torch.zeros(1, 2).send(sci))
    with pytest.raises(TypeError, match="must be float32"):
        p(torch.zeros(1, 3).send(sci))


def test_a_review_only_node_runs_code_on_private_data_only_as_approved_plans(deployment) -> None:
    owner, sci = _setup(deployment)
    with pytest.raises(PermissionDenied, match="owner or admins"):
        veil.plans.require_review(sci, True)
    assert veil.plans.require_review(owner, True) is True
    private = sci.datasets["ages"].private
    with pytest.raises(PermissionDenied, match="only as plans its owner approved"):
        private.mean(0)
    with pytest.raises(PermissionDenied, match="only as plans its owner approved"):
        (private * 2).sum()
    own = torch.ones(3).send(sci)
    assert torch.equal((own * 2).get(), torch.full((3,), 2.0))  # the scientist's own data: fine
    p = _mean_plan()
    with pytest.raises(PermissionDenied, match="no approved request"):
        p.send(sci)(private)
    owner.requests.approve(p.request(sci, dataset="ages", reason="mean", runs=3).id)
    out = p(private)  # inside the approved plan its ops run
    assert out.private
    with pytest.raises(PermissionDenied, match="only as plans"):
        out.exp()  # its results are private data too: no single ops on them either
    assert torch.equal(owner.datasets["ages"].private.mean(0).get(), AGES.mean(0))  # the owner
    assert veil.plans.require_review(owner, False) is False
    assert private.mean(0).private  # back to single ops under the privacy rules


def test_the_review_only_setting_survives_a_restart(tmp_path) -> None:
    from veil.node import Node
    from veil.node.store.sql import SQLStore

    db = f"sqlite:///{tmp_path / 'n.db'}"
    node = Node("n", store=SQLStore(db), owner_email="o@t.org", owner_password="owner-pass-1")
    veil.plans.require_review(veil.VirtualWorker(node=node), True)
    node.close()
    again = Node("n", store=SQLStore(db), owner_email="o@t.org", owner_password="owner-pass-1")
    assert veil.plans.require_review(veil.VirtualWorker(node=again), None) is True
    again.close()


def test_results_of_approved_runs_leave_only_under_the_owners_release_policy(deployment) -> None:
    owner, sci = _setup(deployment)
    p = _mean_plan()
    req = p.request(sci, dataset="ages", reason="mean, and I need the number", runs=5,
                    release=True)  # fmt: skip
    review = _review(owner, req.id)
    assert review.release and "fetch the result of each approved run" in review.releases
    owner.requests.approve(req.id)
    private = sci.datasets["ages"].private
    out = p(private)
    with pytest.raises(PermissionDenied):  # the policy is off until the owner turns it on
        out.get()
    assert veil.plans.settings(owner, release_outputs=True).release_outputs
    assert torch.equal(out.get(), AGES.mean(0))
    with pytest.raises(PermissionDenied):  # only the results themselves, unchanged
        (out * 2 + 1).get()
    with pytest.raises(PermissionDenied):
        (out + private.sum(0)).get()
    with pytest.raises(PermissionDenied):  # the same data, asked for without release
        private.mean(0).get()
    other = deployment.scientist()  # another user cannot fetch it by its id
    from veil.serde.messages import GetObject

    with pytest.raises((PermissionDenied, veil.ObjectNotFound)):
        other.call(GetObject(out.id))
    quiet = veil.plan(lambda x: x.sum(0)).build(torch.zeros(4, 2))
    owner.requests.approve(quiet.request(sci, dataset="ages", reason="sum", runs=1).id)
    with pytest.raises(PermissionDenied):  # approved to run, not to release
        quiet(private).get()
    assert not veil.plans.settings(owner, release_outputs=False).release_outputs
    with pytest.raises(PermissionDenied):
        out.get()
    with pytest.raises(PermissionDenied, match="owner or admins"):
        veil.plans.settings(sci, release_outputs=True)


def test_a_released_plan_never_lets_out_an_error_that_could_quote_private_values(virtual) -> None:
    owner, sci = _setup(virtual)

    @veil.plan
    def pick(x: torch.Tensor) -> torch.Tensor:
        return x[(x[0, 0] * 0 + 9).long()]  # out of range: fails on the node, on private data

    pick.build(torch.zeros(4, 2))
    owner.requests.approve(pick.request(sci, dataset="ages", reason="row", runs=1,
                                        release=True).id)  # fmt: skip
    veil.plans.settings(owner, release_outputs=True)
    out = pick(sci.datasets["ages"].private)
    with pytest.raises(PermissionDenied):
        out.get()


def test_the_review_run_on_the_mock_keeps_the_nodes_size_limit(virtual) -> None:
    owner, sci = _setup(virtual)
    huge = veil.plan(lambda x: x.repeat(100_000, 100_000)).build(torch.zeros(4, 2))
    req = huge.request(sci, dataset="ages", reason="a big table", runs=1)
    assert "over this node's limit" in _review(owner, req.id).mock_result
    with pytest.raises(InvalidRequest, match="over this node's limit"):  # on data too
        huge(torch.zeros(4, 2).send(sci))


def test_one_message_runs_at_most_so_many_ops(virtual) -> None:
    sci = virtual.scientist()
    p = veil.plan(lambda x: x + 1).build(torch.zeros(2)).send(sci)
    with pytest.raises(InvalidRequest, match="between 1 and"):
        p.run(torch.zeros(2).send(sci), repeat=10**7)
    with pytest.raises(ValueError, match="positive int"):
        p.run(torch.zeros(2).send(sci), repeat=0)
