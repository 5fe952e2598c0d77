"""Enrolment in a federation: what a node's owner approves once for all of its rounds.

A scientist prepares an enrolment (:func:`enrol`: the training plan's hash, the dataset and
its assets, the rounds, how updates may leave, the other members and their identity keys),
then asks for it as a request of kind ``"fl"``. The owner reads the terms and the training
plan as code (``veil requests list``, :func:`show`) and approves or denies once. The
approval binds to a digest of the terms: it lets the plan run once per round on the
dataset (through the plans capability, which counts the runs) and each round's update
leave only as the terms say.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import msgspec

from veil.errors import InvalidRequest, ObjectNotFound
from veil.fl.node.state import ENROLMENTS, PENDING, FLState, fingerprint
from veil.node.store import RequestRow
from veil.node.users import Session
from veil.plans import text
from veil.plans.state import MAX_RUNS, PlansState, Terms, parse_terms
from veil.serde.fl import Enrol, EnrolInfo

__all__ = ["MODES", "describe", "enrol", "open_request", "plan_terms", "show_text"]

#: How an update may leave a node.
MODES = ("secagg", "dp", "secagg+dp", "local-dp", "approval")
#: The losses a node's own DP-SGD loop may use (``"local-dp"``).
LOSSES = ("cross_entropy", "mse")


def _encode(msg: Enrol) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(msg)
    out["members"] = [
        {"node": m.node, "key": base64.b64encode(m.key).decode()} for m in msg.members
    ]
    return out


def terms_of(row: dict[str, Any]) -> Enrol:
    """The frozen terms of an enrolment as an :class:`Enrol` again."""
    d = dict(row)
    d["members"] = [{"node": m["node"], "key": base64.b64decode(m["key"])} for m in d["members"]]
    return msgspec.convert(d, Enrol)


def _check(state: FLState, session: Session, msg: Enrol) -> None:
    node: Any = state.node
    if msg.mode not in MODES:
        raise InvalidRequest(f"mode must be one of {list(MODES)}, got {msg.mode!r}")
    if not 1 <= msg.rounds <= MAX_RUNS:
        raise InvalidRequest(f"rounds must be between 1 and {MAX_RUNS}, got {msg.rounds}")
    if not msg.federation or len(msg.federation) > 64:
        raise InvalidRequest("the federation needs an id of 1 to 64 characters")
    plans: PlansState = node.capability_state("plans")
    spec = plans.program(msg.plan)
    if not node.has_dataset(msg.dataset):
        raise ObjectNotFound(f"node {node.name!r} has no dataset {msg.dataset[:100]!r}")
    if len(spec.inputs) != len(msg.inputs) + 1:
        raise InvalidRequest(
            f"the training plan has {len(spec.inputs)} inputs: the dataset's assets "
            f"({len(msg.inputs)} named) and the shuffling order last"
        )
    for slot, name in zip(spec.inputs, msg.inputs):
        oid = node.asset_id(msg.dataset, name)
        if oid is None:
            raise ObjectNotFound(f"dataset {msg.dataset!r} has no asset {name[:100]!r}")
        value = node.record_by_id(oid).value
        if list(value.shape[1:]) != slot.shape[1:] or value.shape[0] != msg.examples:
            raise InvalidRequest(
                f"asset {name!r} has shape {list(value.shape)}, the plan's input {slot.name} "
                f"was traced for {msg.examples} rows of {slot.shape[1:]}"
            )
    if len(msg.state) != len(spec.state):
        raise InvalidRequest(f"the plan has {len(spec.state)} state slots, got {len(msg.state)}")
    for oid in msg.state:
        node.record(session, oid)  # the caller's own objects
    if not any(s.kind == "module" for s in spec.state):
        raise InvalidRequest("a training plan holds the model it trains as a module slot")
    if "secagg" in msg.mode:
        m = len(msg.members)
        if m < 2 or not 0 <= msg.client_id < m:
            raise InvalidRequest("secure aggregation needs the members, this node among them")
        if msg.members[msg.client_id].key != state.public_key:
            raise InvalidRequest(
                f"member {msg.client_id} of the federation is not this node's identity key"
            )
        if len({mb.key for mb in msg.members}) != m:
            raise InvalidRequest("the members' identity keys must differ")
        if not 2 <= msg.min_clients <= m:
            raise InvalidRequest(f"min_clients must be between 2 and {m}")
        if not (m - 1) / 2 < msg.threshold <= m - 1:
            raise InvalidRequest(
                f"threshold {msg.threshold} does not fit {m} members: need "
                f"{(m - 1) / 2} < threshold <= {m - 1}"
            )
    if "dp" in msg.mode:
        if not (msg.clip > 0 and msg.noise_multiplier > 0 and 0 < msg.delta < 1):
            raise InvalidRequest("DP needs clip > 0, noise_multiplier > 0 and 0 < delta < 1")
        if msg.adaptive and msg.count_noise <= 0:
            raise InvalidRequest("adaptive clipping needs count_noise > 0")
    if msg.mode == "local-dp":
        if not 1 <= msg.batch_size <= msg.examples or msg.loss not in LOSSES:
            raise InvalidRequest(
                f"local DP needs 1 <= batch_size <= {msg.examples} and a loss in {list(LOSSES)}"
            )
        if sum(s.kind == "optimizer" for s in spec.state) != 1:
            raise InvalidRequest("local DP trains with the plan's optimizer: the plan needs one")


def enrol(state: FLState, session: Session, msg: Enrol) -> EnrolInfo:
    """``fl.enrol``: check proposed terms and keep them for the request that follows."""
    _check(state, session, msg)
    digest = hashlib.sha256(msgspec.msgpack.encode(msg)).hexdigest()
    state.node.put_row(f"{session.user_id}:{digest}", PENDING, _encode(msg))
    return EnrolInfo(digest, _text(state, msg))


def open_request(state: FLState, session: Session, subject: str) -> str:
    """The ``"fl"`` request kind's ``open``: freeze the prepared terms under the request's
    id; the approval binds to their digest and, for the plans capability, to the plan's
    runs (one per round) on the dataset."""
    pending = state.node.row(f"{session.user_id}:{subject}", PENDING)
    if pending is None:
        raise InvalidRequest("an enrolment is asked for with Federation(...).request()")
    terms = terms_of(pending)
    _check(state, session, terms)  # the plan, dataset and objects are still there
    state.node.put_row(str(state.node.next_request_id()), ENROLMENTS, pending)
    return f"{subject}|{terms.plan}:{terms.rounds}:0:{terms.dataset}"


def plan_terms(row: RequestRow) -> Terms:
    """The plan runs an enrolment approves (for :func:`veil.plans.state.register_authorizer`).

    Example:
        >>> from veil.node.store import RequestRow
        >>> plan_terms(RequestRow(1, 0, 2, "r", "approved", 0.0, digest="ff|ab:5:0:d")).runs
        5
    """
    return parse_terms(row.digest.split("|", 1)[1])


def _text(state: FLState, t: Enrol) -> str:
    plans: PlansState = state.node.capability_state("plans")
    spec = plans.program(t.plan)
    how = {
        "secagg": f"only inside a secure aggregate of at least {t.min_clients} members "
        "(SecAgg+; no one, the scientist included, sees this node's update alone)",
        "dp": f"clipped to L2 norm {t.clip:g} and noised on this node (Gaussian, noise "
        f"multiplier {t.noise_multiplier:g}, delta {t.delta:g}); each round's epsilon is "
        "charged to the scientist's budget on the dataset",
        "secagg+dp": f"clipped to L2 norm {t.clip:g}, noised here so that a sum of at least "
        f"{t.min_clients} members carries noise multiplier {t.noise_multiplier:g} (delta "
        f"{t.delta:g}, charged to the scientist's budget), and only inside a secure "
        f"aggregate of at least {t.min_clients} members",
        "local-dp": f"after this node trains the plan's model itself with DP-SGD (per-example "
        f"gradients clipped to {t.clip:g}, noise multiplier {t.noise_multiplier:g}, batches "
        f"sampled at rate {t.batch_size}/{t.examples}, loss {t.loss}); the epsilon of each "
        f"round (delta {t.delta:g}) is charged to the scientist's budget",
        "approval": "as a private object each round, which leaves only if you approve a "
        "request for it",
    }[t.mode]
    lines = [
        f"federation {t.federation}: {t.rounds} rounds of plan {spec.name} "
        f"({t.plan[:12]}) on dataset {t.dataset} (assets {', '.join(t.inputs)}), "
        f"{t.examples} rows",
        f"each round's model update leaves this node {how}",
    ]
    if t.adaptive:
        lines.append(f"adaptive clipping: a noised count (noise {t.count_noise:g}) of members "
                     "whose update was under the norm is released in the aggregate too")  # fmt: skip
    if t.members:
        lines.append("members (compare the key fingerprints with theirs):")
        lines += [
            f"  {i}: {m.node} {fingerprint(m.key)}{'  (this node)' if i == t.client_id else ''}"
            for i, m in enumerate(t.members)
        ]
    lines += ["the training plan:", text.code(spec)]
    return "\n".join(lines)


def describe(state: FLState, row: RequestRow) -> str:
    """One line about an enrolment (``veil requests list``)."""
    frozen = state.node.row(str(row.id), ENROLMENTS)
    if frozen is None:
        return row.subject
    t = terms_of(frozen)
    return (
        f"federated training {t.federation}: {t.rounds} rounds on {t.dataset}, updates "
        f"leave by {t.mode}, {state.rounds_done(row.id)} rounds done"
    )


def show_text(state: FLState, row: RequestRow) -> str:
    """Everything the owner reviews for an enrolment: terms, members and the plan's code."""
    frozen = state.node.row(str(row.id), ENROLMENTS)
    if frozen is None:
        raise ObjectNotFound(f"request {row.id} is not an enrolment")
    return _text(state, terms_of(frozen))
