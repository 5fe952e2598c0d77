"""A node's side of SecAgg+ in a federation round, with the members' identity keys.

The scientist runs the aggregation server and routes every message, so a node trusts
nothing it routes: each member signs its key advertisement with its identity key (the
members and keys are part of the enrolment its owner approved), so the scientist cannot
add members of its own to isolate a node's update; before revealing any share, each
survivor signs the survivor list once, and a node reveals its shares only for a list that
at least ``threshold`` members signed (Bonawitz et al. 2017, the consistency check), so the
scientist cannot tell some members that a node dropped and others that it survived. The
node's update itself never leaves unmasked.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from veil.errors import InvalidRequest, ProtocolError
from veil.fl.node.enrolment import terms_of
from veil.fl.node.state import ADVERTISE_TAG, UNMASK_TAG, FLState, Round
from veil.fl.secagg import messages as wire
from veil.node.users import Session
from veil.serde.fl import SecAggReply, SecAggStep

__all__ = ["step"]


def _verify(key: bytes, signature: bytes, data: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def _round(state: FLState, session: Session, msg: SecAggStep) -> tuple[Round, list[bytes], int]:
    row, frozen = state.enrolment(session, msg.enrolment)
    t = terms_of(frozen)
    r = state.rounds.get((row.id, msg.round))
    if r is None or "secagg" not in t.mode:
        raise InvalidRequest(
            f"enrolment {row.id} has no secure-aggregation round {msg.round} in flight on node "
            f"{state.node.name!r} (fit it first; a node that restarted has left the round)"
        )
    return r, [m.key for m in t.members], t.threshold


def step(state: FLState, session: Session, msg: SecAggStep) -> SecAggReply:
    """``fl.secagg``: one protocol step of a round in flight (see the module)."""
    r, keys, threshold = _round(state, session, msg)
    try:
        message = wire.decode(msg.payload)
    except Exception as exc:  # SerdeError: a malformed payload
        raise InvalidRequest(f"secure aggregation {msg.step}: {exc}") from None
    if msg.step == "share":
        if not isinstance(message, wire.KeysBroadcast):
            raise InvalidRequest("the share step carries the key broadcast")
        for adv in message.keys:
            cid = adv.client_id
            sig = msg.signatures.get(cid, b"")
            if not 0 <= cid < len(keys) or not _verify(
                keys[cid], sig, ADVERTISE_TAG + wire.encode(adv)
            ):
                raise ProtocolError(
                    f"the key broadcast's client {cid} is not a member of the federation "
                    "with a valid signature: refusing to share keys with it"
                )
        return SecAggReply(payload=wire.encode(r.client.share_keys(message)))
    if msg.step == "mask":
        if not isinstance(message, wire.SharesDelivery) or r.vector is None:
            raise InvalidRequest("the mask step carries this node's share delivery, once")
        masked = r.client.masked_input(message, r.vector)  # answers once, or raises
        r.vector = None
        return SecAggReply(payload=wire.encode(masked))
    if not isinstance(message, wire.UnmaskRequest):
        raise InvalidRequest(f"unknown secure-aggregation step {msg.step[:20]!r}")
    canonical = wire.encode(message)
    if msg.step == "confirm":
        if r.client.client_id not in message.survivors or r.vector is not None:
            raise InvalidRequest("only a member that sent its masked input confirms survivors")
        if r.confirmed and r.confirmed != canonical:
            raise ProtocolError("this node confirmed another survivor list for the round")
        r.confirmed = canonical
        return SecAggReply(signature=state.key.sign(UNMASK_TAG + canonical))
    if msg.step != "unmask":
        raise InvalidRequest(f"unknown secure-aggregation step {msg.step[:20]!r}")
    if canonical != r.confirmed:
        raise ProtocolError("the unmask request is not the survivor list this node confirmed")
    signed = {
        cid
        for cid, sig in msg.signatures.items()
        if cid in message.survivors
        and 0 <= cid < len(keys)
        and _verify(keys[cid], sig, UNMASK_TAG + canonical)
    }
    if len(signed) < threshold:
        raise ProtocolError(
            f"{len(signed)} members confirmed the survivor list, {threshold} must before "
            "this node reveals its shares"
        )
    return SecAggReply(payload=wire.encode(r.client.unmask(message)))
