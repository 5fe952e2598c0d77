"""The ``fl`` capability on a node: enrolments in federations and their rounds.

What it adds through the seam (:mod:`veil.node.capability`): the methods ``identity``,
``enrol``, ``fit``, ``secagg`` and ``show``; the request kind ``"fl"`` (an enrolment, which
the owner approves once for all its rounds, and which also lets the plans capability run
the training plan once per round); and public info (the node's identity key). The rules are
in :mod:`.rounds` (what leaves a node after a round) and :mod:`.secure` (secure
aggregation against a scientist who routes every message).

Example:
    >>> import veil
    >>> from veil.node import capability
    >>> from veil.serde.fl import Identity, IdentityInfo
    >>> w = veil.VirtualWorker("h")
    >>> len(capability.call(w, "fl", "identity", Identity(), IdentityInfo).key)
    32
"""

from __future__ import annotations

from veil.errors import PermissionDenied
from veil.fl.node import enrolment, rounds, secure
from veil.fl.node.state import KIND, FLState
from veil.node import capability
from veil.node.capability import Capability, Method, RequestKind
from veil.node.users import Session
from veil.plans.state import register_authorizer
from veil.serde.fl import (
    Enrol,
    EnrolInfo,
    FitRound,
    Identity,
    IdentityInfo,
    SecAggStep,
    ShowEnrolment,
)


def _identity(state: FLState, session: Session, msg: Identity) -> IdentityInfo:
    return IdentityInfo(state.node.name, state.public_key)


def _show(state: FLState, session: Session, msg: ShowEnrolment) -> EnrolInfo:
    row = next((r for r in state.node.requests_of(KIND) if r.id == msg.id), None)
    if row is None or not (session.is_admin or row.requester == session.user_id):
        raise PermissionDenied(f"no enrolment {msg.id} you may read")
    return EnrolInfo(row.digest, enrolment.show_text(state, row))


CAPABILITY = Capability(
    "fl",
    state=FLState,
    methods={
        "identity": Method(Identity, _identity),
        "enrol": Method(Enrol, enrolment.enrol),
        "fit": Method(FitRound, rounds.fit),
        "secagg": Method(SecAggStep, secure.step),
        "show": Method(ShowEnrolment, _show),
    },
    request_kinds=[RequestKind(KIND, enrolment.open_request, enrolment.describe)],
    info=lambda node: {"fl": {"identity": node.capability_state("fl").fingerprint}},
)

if not capability.is_installed("fl"):
    register_authorizer(KIND, enrolment.plan_terms)
    capability.install(CAPABILITY)

__all__ = ["CAPABILITY", "FLState"]
