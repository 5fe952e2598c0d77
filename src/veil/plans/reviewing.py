"""The owner's review of plans on a node: storing plans, preparing and freezing reviews, the release policy.

A scientist stores a plan (checked, and its shapes verified on meta tensors), then asks for
a review (:class:`~veil.serde.plans.AskPlan`): the node runs the plan on the dataset's
mock data and keeps the review. The request (kind ``"plan"``) freezes that review under
its own id, with the inputs it binds and, when it asks to release results, a digest of the
plan's state: what the owner decides on cannot change after the request.
"""

from __future__ import annotations

import base64
import copy
from typing import Any

import torch

from veil.errors import InvalidRequest, ObjectNotFound, PermissionDenied, VeilError
from veil.node.store import RequestRow
from veil.node.users import Session
from veil.plans import program, text
from veil.plans.state import (
    MAX_MOCK_ELEMENTS,
    MAX_PLAN_BYTES,
    MAX_RUNS,
    OUTPUT_LABEL,
    OUTPUTS,
    PENDING,
    PROGRAMS,
    RELEASE_POLICY,
    REQUESTS,
    SETTINGS,
    PlansState,
    terms,
)
from veil.serde.plans import (
    AskPlan,
    ListPlans,
    PlanReviewInfo,
    PlanReviews,
    PlanSettings,
    PlanSpec,
    PlanStored,
    ShowPlan,
    StorePlan,
    check_version,
    decode_plan,
    program_hash,
)
from veil.serde.tensors import dtype_from_name, dtype_name


def store(state: PlansState, session: Session, msg: StorePlan) -> PlanStored:
    """Check a plan (structure, allowlist, names, shapes on meta tensors) and store it."""
    if len(msg.plan) > MAX_PLAN_BYTES:
        raise InvalidRequest(f"a plan of {len(msg.plan)} bytes is over {MAX_PLAN_BYTES} bytes")
    spec = decode_plan(msg.plan)
    check_version(spec)
    h = program_hash(spec)
    if h not in state._programs and state.node.row(h, PROGRAMS) is None:
        program.check(spec)
        program.verify(spec)
        state.node.put_row(h, PROGRAMS, {
            "plan": base64.b64encode(msg.plan).decode(), "name": spec.name[:200],
        })  # fmt: skip
        state.node.write_audit(session, "plan.store", f"{spec.name[:100]} {h[:16]}")
        state._programs[h] = spec
    return PlanStored(h, len(spec.ops))


def _bind_inputs(spec: PlanSpec, mocks: dict[str, torch.Tensor], bound: list[str]) -> list[str]:
    """The dataset asset each plan input is (``""``: the scientist supplies it)."""
    names = []
    for i, s in enumerate(spec.inputs):
        want = bound[i] if i < len(bound) else ""
        if want and want not in mocks:
            raise InvalidRequest(f"the dataset has no asset {want[:60]!r}; it has {sorted(mocks)}")
        if not want:
            fits = [n for n, m in mocks.items()
                    if dtype_name(m.dtype) == s.dtype and list(m.shape[1:]) == s.shape[1:]]  # fmt: skip
            want = fits[0] if len(fits) == 1 else ""
        names.append(want)
    return names


def _preview(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        flat = value.detach().flatten()[:8].tolist()
        more = ", ..." if value.numel() > 8 else ""
        shown = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in flat)
        return f"{dtype_name(value.dtype)}{list(value.shape)} [{shown}{more}]"
    if isinstance(value, list | tuple):
        return "(" + "; ".join(_preview(v) for v in value) + ")"
    return repr(value)


def _mock_result(state: PlansState, session: Session, spec: PlanSpec, bound: list[str],
                 msg: AskPlan) -> str:  # fmt: skip
    """The plan's result on the dataset's mock data (public), as the owner will see it."""
    mocks = state.node.dataset_mocks(msg.dataset)
    if sum(m.numel() for m in mocks.values()) > MAX_MOCK_ELEMENTS:
        return "not computed: the dataset's mock data is over the review's size limit"
    inputs, notes = [], []
    for s, name in zip(spec.inputs, bound):
        if name:
            inputs.append(mocks[name])
            notes.append(f"{s.name} = mock of {name}")
            continue
        shape = [max(d, 1) for d in s.shape]
        dtype = dtype_from_name(s.dtype) if s.dtype else torch.float32
        if torch.Size(shape).numel() * dtype.itemsize > state.node.max_result_bytes:
            return f"not computed: input {s.name} is over this node's size limit"
        inputs.append(torch.zeros(shape, dtype=dtype))
        notes.append(f"{s.name} = zeros{tuple(shape)} (supplied by the scientist)")
    if len(msg.state) != len(spec.state):
        return "not computed: the request names no objects for the plan's state"
    objects: dict[int, Any] = {}
    for slot, oid in zip(spec.state, msg.state):
        rec = state.node.record(session, oid)
        if rec.private:
            return f"not computed: the plan's state {slot.name or slot.id} is private data"
        objects[slot.id] = rec.value
    objects = copy.deepcopy(objects)  # the review must not change the scientist's objects
    try:
        out = program.run(spec, inputs, objects, check=state.node.check_size)
    except Exception as exc:  # mock data is public: its error may be shown
        return f"failed on the mock data ({'; '.join(notes)}): {type(exc).__name__}: {exc}"[:2000]
    return f"{_preview(out)}   with {'; '.join(notes)}"[:4000]


def releases(dataset: str, release: bool = False) -> str:
    """What a plan request lets out, in words for the owner."""
    if release:
        return (
            f"its results: the requester asks to fetch the result of each approved run (as "
            f"on the mock data above, computed from {dataset!r} with the inputs and state "
            "reviewed here), once you turn on the release policy plan-outputs (veil plans "
            "release-outputs on); results that hold an error are never released. Anything "
            "else leaves only through a get request, a DP publish or another release policy"
        )
    return (
        f"nothing by itself: the plan's results stay on this node, private, derived from "
        f"{dataset!r}. They leave only through what you approve or enable later: a get "
        "request (you decide each), a DP publish (charged to the scientist's epsilon budget "
        "on the dataset), or a release policy you turned on (e.g. secure aggregation)"
    )


def ask(state: PlansState, session: Session, msg: AskPlan) -> PlanReviewInfo:
    """Prepare the review of a plan request: bind inputs, run it on the mock data."""
    if not 1 <= msg.runs <= MAX_RUNS:
        raise InvalidRequest(f"runs must be between 1 and {MAX_RUNS}, got {msg.runs}")
    if not state.node.has_dataset(msg.dataset):
        raise ObjectNotFound(f"node {state.node.name!r} has no dataset {msg.dataset[:100]!r}")
    spec = state.program(msg.hash)
    bound = _bind_inputs(spec, state.node.dataset_mocks(msg.dataset), list(msg.inputs))
    for oid in msg.state:
        state.node.record(session, oid)  # the caller's own objects only
    info = PlanReviewInfo(
        msg.hash, spec.name, msg.dataset, msg.runs, text.code(spec),
        _mock_result(state, session, spec, bound, msg), releases(msg.dataset, msg.release),
        release=msg.release,
    )  # fmt: skip
    state.node.put_row(f"{session.user_id}:{msg.hash}", PENDING, {
        "dataset": msg.dataset, "runs": msg.runs, "mock": info.mock_result,
        "release": bool(msg.release), "inputs": bound, "state": list(msg.state),
    })  # fmt: skip
    return info


def open_request(state: PlansState, session: Session, subject: str) -> str:
    """The ``"plan"`` request kind's ``open``: freeze the prepared review under the new
    request's id; the approval binds hash, runs, release and dataset (its digest)."""
    pending = state.node.row(f"{session.user_id}:{subject}", PENDING)
    if pending is None:
        raise InvalidRequest(
            "a plan request is made with plan.request(node, dataset=..., reason=..., runs=...)"
        )
    state.program(subject)  # known here
    frozen = dict(pending)
    frozen["custody"] = [
        state.node.content_digest(state.node.record(session, oid)) for oid in pending["state"]
    ]  # the state's content now: a release approval runs only on it (and what runs make of it)
    state.node.put_row(str(state.node.next_request_id()), REQUESTS, frozen)
    release = int(bool(pending.get("release")))
    return f"{subject}:{pending['runs']}:{release}:{pending['dataset']}"


def describe(state: PlansState, row: RequestRow) -> str:
    """One line about a plan request (``veil requests list``)."""
    try:
        t = terms(row)
        name = state.program(t.hash).name
    except (ValueError, VeilError):
        return row.subject
    out = ", results released" if t.release else ""
    return (
        f"plan {name} ({t.hash[:12]}) on {t.dataset}: {t.runs} runs{out}, {state.used(row.id)} used"
    )


def info(state: PlansState, row: RequestRow) -> PlanReviewInfo:
    """What the owner reviews for a plan request (frozen when it was made)."""
    t = terms(row)
    spec = state.program(t.hash)
    frozen = state.frozen(row.id)
    return PlanReviewInfo(
        t.hash, spec.name, t.dataset, t.runs, text.code(spec), str(frozen.get("mock", "")),
        releases(t.dataset, t.release), state.used(row.id), row.id, row.status,
        state.node.email_of(row.requester), row.reason, t.release,
    )  # fmt: skip


def configure(state: PlansState, session: Session, msg: PlanSettings) -> PlanSettings:
    """Read or (owners) change the node's plan settings."""
    if (msg.review_only is not None or msg.release_outputs is not None) and not session.is_admin:
        raise PermissionDenied("only the node's owner or admins change its plan settings")
    if msg.review_only is not None:
        state.node.put_row("review_only", SETTINGS, {"enabled": bool(msg.review_only)})
        state.node.write_audit(session, "plan.settings", f"review_only={bool(msg.review_only)}")
    if msg.release_outputs is not None:
        state.node.set_release_policy(RELEASE_POLICY, bool(msg.release_outputs))
        state.node.write_audit(session, "plan.settings", f"{RELEASE_POLICY}={msg.release_outputs}")
    return PlanSettings(state.review_only, RELEASE_POLICY in state.node.release_policies())


def releasable(state: PlansState, session: Session, rec: Any) -> bool:
    """``plan-outputs``: a result of an approved run of a plan whose request asked for its
    results, unchanged since that run (its content digest), fetched by that request's
    requester, holding no error, derived from the approved dataset only."""
    if not rec.label.startswith(OUTPUT_LABEL) or rec.error:
        return False
    made = state.node.row(str(rec.id), OUTPUTS)
    if made is None or rec.label != f"{OUTPUT_LABEL}{made['request']}":
        return False
    row = next((r for r in state.node.requests_of("plan") if r.id == made["request"]), None)
    if row is None or (row.status, row.requester) != ("approved", session.user_id):
        return False
    t = terms(row)
    return (
        t.release
        and rec.sources <= {t.dataset}
        and state.node.content_digest(rec) == made["digest"]
    )


def list_plans(state: PlansState, session: Session, msg: ListPlans) -> PlanReviews:
    """Plan requests (all for owners and admins, the caller's own otherwise)."""
    rows = [r for r in state.node.requests_of("plan")
            if (session.is_admin or r.requester == session.user_id)
            and (msg.status is None or r.status == msg.status)]  # fmt: skip
    return PlanReviews([info(state, r) for r in rows])


def show(state: PlansState, session: Session, msg: ShowPlan) -> PlanReviewInfo:
    """One plan request the caller may see."""
    for r in state.node.requests_of("plan"):
        if r.id == msg.request and (session.is_admin or r.requester == session.user_id):
            return info(state, r)
    raise ObjectNotFound(f"no plan request {msg.request} that you can see")


__all__ = ["ask", "configure", "describe", "info", "list_plans", "open_request", "releasable",
           "releases", "show", "store"]  # fmt: skip
