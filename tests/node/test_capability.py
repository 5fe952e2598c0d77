"""The capability seam's contract: a small capability, defined here and nowhere else, adds a
node op, a typed method, a release policy and a request kind, and works end to end on an
in-process node and on a served one (veil.node.capability).

The capability, "tally": a scientist enrolled in a cohort (a request the owner reviews)
adds rows of private data into a running sum kept on the node; the sum is private, and
may leave only under the owner-enabled policy "tally.k-anonymous" once at least K rows are
in it. A typed method tells how many rows the sum holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import torch

from veil.errors import InvalidRequest, PermissionDenied
from veil.node import capability
from veil.node.capability import (
    Capability,
    CapabilityState,
    Method,
    ReleasePolicy,
    RequestKind,
)
from veil.node.extension import OpContext
from veil.node.objects import ObjectRecord
from veil.node.users import Session
from veil.ops import OpFacts, OpSpec
from veil.serde.messages import CapabilityCall, ObjectInfo

K = 3
LABEL = "tally.sum"


class Tally(CapabilityState):
    """The tally's state on one node: the running sum's object and how many rows it holds."""

    def __init__(self, node: Any) -> None:
        super().__init__(node)
        self.rows: dict[int, int] = {}  # object id of a sum -> rows in it
        self.started = 0

    def start(self) -> None:
        self.started += 1


def _digest(cohort: str) -> str:
    return hashlib.sha256(cohort.encode()).hexdigest()


def tally_add(ctx: OpContext, x: torch.Tensor, cohort: str) -> ObjectInfo:
    tally: Tally = ctx.node.capability_state("tally")
    if ctx.node.approved_request(ctx.session, "tally.enrol", cohort, _digest(cohort)) is None:
        raise PermissionDenied(f"enrol in cohort {cohort!r} first (a request of kind tally.enrol)")
    info = ctx.new(x.sum(0, keepdim=True), private=True, label=LABEL)
    tally.rows[info.id] = x.shape[0]
    return info


def tally_merge(ctx: OpContext, a: torch.Tensor, b: torch.Tensor) -> ObjectInfo:
    tally: Tally = ctx.node.capability_state("tally")
    recs = [ctx.record_of(a), ctx.record_of(b)]
    if any(r is None or r.label != LABEL for r in recs):
        raise InvalidRequest("tally.merge adds two tally sums")
    info = ctx.new(a + b, private=True, label=LABEL)
    tally.rows[info.id] = sum(tally.rows.get(r.id, 0) for r in recs if r is not None)
    return info


class Count(msgspec.Struct):
    object_id: int


class Rows(msgspec.Struct):
    rows: int


def count(tally: Tally, session: Session, msg: Count) -> Rows:
    tally.node.record(session, msg.object_id)  # the caller must see the object
    return Rows(tally.rows.get(msg.object_id, 0))


def k_anonymous(tally: Tally, session: Session, rec: ObjectRecord) -> bool:
    return rec.label == LABEL and tally.rows.get(rec.id, 0) >= K


def open_enrolment(tally: Tally, session: Session, cohort: str) -> str:
    if not cohort.isidentifier():
        raise InvalidRequest("a cohort is named by an identifier")
    return _digest(cohort)


TALLY = Capability(
    "tally",
    state=Tally,
    ops=(
        OpSpec(
            "tally.add",
            tally_add,
            "node",
            OpFacts(size="input", pipeline="never", private_args=("x",)),
        ),
        OpSpec(
            "tally.merge",
            tally_merge,
            "node",
            OpFacts(size="input", pipeline="never", private_args=("a", "b")),
        ),
    ),  # fmt: skip
    methods={"count": Method(Count, count)},
    release_policies=(ReleasePolicy("tally.k-anonymous", k_anonymous, f"sums of >= {K} rows"),),
    request_kinds=(
        RequestKind("tally.enrol", open_enrolment, lambda t, row: f"cohort {row.subject}"),
    ),
    info=lambda node: {"k": K},
)


@pytest.fixture
def tally() -> Iterator[Capability]:
    capability.install(TALLY)
    try:
        yield TALLY
    finally:
        capability.uninstall("tally")


def _rows(ds: Any, obj_id: int) -> int:
    return capability.call(ds, "tally", "count", Count(obj_id), Rows).rows


def test_a_capability_works_end_to_end(deployment: Any, tally: Capability) -> None:
    data = torch.arange(12.0).reshape(6, 2)
    deployment.owner.datasets.create("cohort", private=data, mock=torch.zeros(6, 2))
    ds = deployment.scientist()
    x = ds.datasets["cohort"].private

    # the op refuses until the owner approves the enrolment (a request of the new kind)
    with pytest.raises(PermissionDenied, match="enrol"):
        ds.run_op("tally.add", x[0:1], "cohort_a")
    req = capability.request(ds, "tally.enrol", "cohort_a", "to count rows")
    assert (req.kind, req.subject, req.status) == ("tally.enrol", "cohort_a", "pending")
    listed = [r for r in deployment.owner.requests.list() if r.id == req.id]
    assert listed[0].summary == "cohort cohort_a"
    with pytest.raises(PermissionDenied, match="enrol"):
        ds.run_op("tally.add", x[0:1], "cohort_a")
    assert deployment.owner.requests.approve(req.id).status == "approved"

    one = ds.run_op("tally.add", x[0:2], "cohort_a")
    assert _rows(ds, one.id) == 2
    with pytest.raises(PermissionDenied):  # private, and the owner enabled no policy
        one.get()
    two = ds.run_op("tally.add", x[2:3], "cohort_a")
    total = ds.run_op("tally.merge", one, two)
    assert _rows(ds, total.id) == 3
    with pytest.raises(PermissionDenied):  # K rows, but the policy is still off
        total.get()

    deployment.node.set_release_policy("tally.k-anonymous")
    assert deployment.node.release_policies() == ["tally.k-anonymous"]
    assert torch.equal(total.get(), data[:3].sum(0, keepdim=True))
    with pytest.raises(PermissionDenied):  # fewer than K rows: the policy says no
        one.get()
    with pytest.raises(PermissionDenied):  # the dataset itself is not a tally sum
        x.get()
    deployment.node.set_release_policy("tally.k-anonymous", enabled=False)
    with pytest.raises(PermissionDenied):
        total.get()
    actions = [e.action for e in deployment.owner.audit(limit=50)]
    assert "release" in actions


def test_typed_methods_validate_what_they_are_sent(deployment: Any, tally: Capability) -> None:
    ds = deployment.scientist()
    with pytest.raises(InvalidRequest, match="tally.count"):
        ds.call(CapabilityCall("tally", "count", msgspec.msgpack.encode({"object_id": "x"})))
    with pytest.raises(InvalidRequest, match="no method"):
        ds.call(CapabilityCall("tally", "drop_tables", b""))
    with pytest.raises(InvalidRequest, match="no method"):
        ds.call(CapabilityCall("nope", "count", b""))
    with pytest.raises(InvalidRequest, match="request kind"):
        capability.request(ds, "tally.nothing", "a", "why")
    with pytest.raises(InvalidRequest, match="identifier"):
        capability.request(ds, "tally.enrol", "a b; drop", "why")


def test_a_scientist_cannot_enable_a_policy_or_approve_her_own_enrolment(
    deployment: Any, tally: Capability
) -> None:
    deployment.owner.datasets.create("c", private=torch.ones(4, 1), mock=torch.zeros(4, 1))
    ds = deployment.scientist()
    req = capability.request(ds, "tally.enrol", "c1", "please")
    with pytest.raises(PermissionDenied):
        ds.requests.approve(req.id)
    with pytest.raises(PermissionDenied, match="enrol"):
        ds.run_op("tally.add", ds.datasets["c"].private, "c1")
    # an approval binds to the subject: another cohort is not covered
    deployment.owner.requests.approve(req.id)
    with pytest.raises(PermissionDenied, match="enrol"):
        ds.run_op("tally.add", ds.datasets["c"].private, "c2")


def test_install_refuses_clashes_and_uninstall_removes_everything(tally: Capability) -> None:
    import veil
    from veil.ops import default_registry

    with pytest.raises(ValueError, match="already installed"):
        capability.install(TALLY)
    clash = Capability("other", release_policies=(ReleasePolicy("tally.k-anonymous", k_anonymous),))
    with pytest.raises(ValueError, match="already installed"):
        capability.install(clash)
    assert "tally.add" in default_registry()
    w = veil.VirtualWorker("t")
    assert w.node.capability_state("tally").started == 1  # its start-up hook ran once
    capability.uninstall("tally")
    try:
        assert "tally.add" not in default_registry()
        with pytest.raises(InvalidRequest, match="not installed"):
            w.node.capability_state("tally")
    finally:
        capability.install(TALLY)  # the fixture uninstalls it


def test_public_info_shows_capability_facts(tally: Capability) -> None:
    import veil
    from veil.node.capability import public_info

    assert public_info(veil.VirtualWorker("i").node)["tally"] == {"k": K}


def test_a_request_of_a_capability_kind_outlives_a_restart(
    tmp_path: Any, tally: Capability
) -> None:
    from veil.node import Node
    from veil.node.store.sql import SQLStore

    url = f"sqlite:///{tmp_path / 'n.db'}"
    node = Node("n", store=SQLStore(url), owner_password="owner-password-1")
    owner = node.login("owner@n.local", "owner-password-1")
    node.create_user("ds@n.org", "password-ds-1")
    ds = node.login("ds@n.org", "password-ds-1")
    import veil

    info = capability.request(veil.VirtualWorker(node=node, session=ds), "tally.enrol", "c9", "why")
    veil.VirtualWorker(node=node, session=owner).requests.approve(info.id)
    node.set_release_policy("tally.k-anonymous")
    node.close()

    again = Node("n", store=SQLStore(url))
    ds = again.login("ds@n.org", "password-ds-1")
    row = again.approved_request(ds, "tally.enrol", "c9", _digest("c9"))
    assert row is not None and (row.kind, row.subject, row.object_id) == ("tally.enrol", "c9", 0)
    assert again.release_policies() == ["tally.k-anonymous"]
    listed = veil.VirtualWorker(node=again, session=ds).requests.list()
    assert [(r.kind, r.subject, r.summary) for r in listed] == [("tally.enrol", "c9", "cohort c9")]
    again.close()
