"""A node's side of approved crypto providers: refuse unapproved dealers, and the owner's ops
that approve, list and withdraw them (see :mod:`veil.mpc.providers.approvals`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from veil.errors import InvalidRequest, PermissionDenied
from veil.mpc.node.state import PartySession, party_of, public_key_of, state_of, u8
from veil.mpc.providers import seal
from veil.mpc.providers.approvals import _HEX_KEY, _NAME, HOW, KIND, Dealer, approved, approved_keys
from veil.node.extension import OpContext
from veil.serde.messages import Reply


def check_dealer(ctx: OpContext, dealer: bytes) -> None:
    """Refuse a dealer key that the node's owner did not approve, saying how to approve one
    (admins also see which ones are approved)."""
    known = approved(ctx.node)
    if any(bytes.fromhex(d.key) == dealer for d in known.values()):
        return
    fp = seal.fingerprint(dealer)
    if not known:
        raise PermissionDenied(
            f"node {ctx.node.name!r} accepts no crypto provider yet (offered: key {fp}); {HOW}"
        )
    which = (
        ": " + ", ".join(f"{d.name} ({d.fingerprint})" for d in known.values())
        if ctx.session.is_admin
        else f" ({len(known)})"
    )
    raise PermissionDenied(
        f"node {ctx.node.name!r} does not accept crypto provider key {fp}; its owner approved "
        f"other providers{which}. Use one of them, or ask the owner to approve this one: {HOW}"
    )


def party(ctx: OpContext, sid: str) -> PartySession:
    """The caller's party session ``sid``, while its dealer is still approved."""
    sess = party_of(ctx, sid)
    if sess.dealer is not None and sess.dealer not in approved_keys(
        ctx.node
    ):  # e.g. the approval was replaced
        raise PermissionDenied(
            f"the crypto provider of MPC session {sid} (key {seal.fingerprint(sess.dealer or b'')}) is "
            f"no longer approved on node {ctx.node.name!r}; start a new session with an "
            "approved one"
        )
    return sess


def _admin(ctx: OpContext, what: str) -> None:
    if not ctx.session.is_admin:
        raise PermissionDenied(
            f"only the owner or an admin of node {ctx.node.name!r} {what} crypto providers"
        )


def _json(value: Any) -> Reply:
    return OpContext.value(u8(json.dumps(value).encode()))


def _as_dict(d: Dealer) -> dict[str, Any]:
    return {"name": d.name, "key": d.key, "fingerprint": d.fingerprint, "url": d.url,
            "added_by": d.added_by, "added": d.added}  # fmt: skip


def op_add(ctx: OpContext, name: str, key: str, url: str = "") -> Reply:
    """Owners and admins: approve the dealer with MPC public key ``key`` (64 hex digits) as
    ``name`` (replacing an approval of that name); ``url`` records where the key came
    from. Answers the approval (JSON)."""
    _admin(ctx, "approve")
    if not _NAME.match(name):
        raise InvalidRequest(
            f"a dealer name is 1-64 letters, digits or _.@- (starting with a letter or digit), "
            f"got {name[:80]!r}"
        )
    if not _HEX_KEY.match(key):
        raise InvalidRequest(
            "a dealer key is an MPC public key: 64 hex digits (GET /api/v1/info of its node, "
            "field mpc.public_key)"
        )
    raw = bytes.fromhex(key)
    if raw == public_key_of(ctx.node):
        raise InvalidRequest(
            f"that is node {ctx.node.name!r}'s own key: a node cannot deal for a session it "
            "is a party of"
        )
    other = next((d for d in approved(ctx.node).values() if d.key == raw.hex() and d.name != name),
                 None)  # fmt: skip
    if other is not None:
        raise InvalidRequest(f"key {other.fingerprint} is already approved as {other.name!r}")
    row = {"key": raw.hex(), "url": url[:2000], "by": ctx.session.email, "at": time.time()}
    ctx.node.put_row(f"{KIND}:{name}", KIND, row)
    ctx.audit("mpc.dealer.add", f"{name} {seal.fingerprint(raw)} {url[:200]}".strip())
    return _json(_as_dict(approved(ctx.node)[name]))


def op_list(ctx: OpContext) -> Reply:
    """Owners and admins: the approved dealers (JSON list)."""
    _admin(ctx, "list")
    return _json([_as_dict(d) for d in approved(ctx.node).values()])


def op_remove(ctx: OpContext, name: str) -> Reply:
    """Owners and admins: withdraw the approval of dealer ``name``; sessions it dealt for
    on this node end."""
    _admin(ctx, "remove")
    gone = approved(ctx.node).get(name)
    if gone is None:
        raise InvalidRequest(f"node {ctx.node.name!r} has no approved dealer {name[:80]!r}")
    ctx.node.put_row(f"{KIND}:{name}", KIND, {"removed": True, "by": ctx.session.email,
                                              "at": time.time()})  # fmt: skip
    st = state_of(ctx.node)
    raw = bytes.fromhex(gone.key)
    for k in [k for k, s in st.parties.items() if s.dealer == raw]:
        del st.parties[k]
        st.ended[k] = (
            f"MPC session {k[1]} ended on node {ctx.node.name!r}: its owner withdrew the "
            f"approval of its crypto provider {name!r} ({gone.fingerprint}); start a new "
            "session with an approved one"
        )
    ctx.audit("mpc.dealer.remove", f"{name} {gone.fingerprint}")
    return _json(_as_dict(gone))


NODE_OPS: dict[str, Callable[..., Any]] = {
    "mpc.dealers.add": op_add,
    "mpc.dealers.list": op_list,
    "mpc.dealers.remove": op_remove,
}
