"""Node ops that set a session up: the node's MPC key, a dealer's session and its sealed
seeds, a party joining with an approved dealer, and the dealer dealing groups (shapes only)."""

from __future__ import annotations

import hashlib
import os
import secrets
from typing import Any

import torch

from veil.errors import InvalidRequest, PermissionDenied
from veil.mpc.messages import Group
from veil.mpc.node import approvals
from veil.mpc.node.rounds import group
from veil.mpc.node.state import (
    DealerSession,
    PartySession,
    check_sid,
    dealer_of,
    public_key_of,
    raw_bytes,
    seed_context,
    state_of,
    u8,
)
from veil.mpc.providers import kinds, seal
from veil.mpc.providers.kinds import numel
from veil.node.extension import OpContext
from veil.serde.messages import Done, Reply

# ------------------------------------------------------------------------ keys, setup


def op_public_key(ctx: OpContext) -> Reply:
    """This node's X25519 public key (32 bytes)."""
    return ctx.value(u8(public_key_of(ctx.node)))


def party_keys(keys: list[Any], where: str) -> list[bytes]:
    if not 2 <= len(keys) <= 64:
        raise InvalidRequest(f"{where}: a session has the public keys of 2-64 parties")
    pubs = [raw_bytes(k, f"{where}.{i}", 32) for i, k in enumerate(keys)]
    if len(set(pubs)) != len(pubs):
        raise InvalidRequest(
            f"{where}: a party key appears twice; each party is a different node (one node "
            "holding two shares of a value could add them up)"
        )
    return pubs


def op_dealer_setup(ctx: OpContext, keys: list[Any]) -> Reply:
    """Dealer: start a session for parties with these public keys; answers the session id
    (as the first 32 bytes, hex) followed by one sealed seed per party (60 bytes each),
    each bound to the session, the party's index and the list of party keys."""
    st = state_of(ctx.node)
    pubs = party_keys(keys, "keys")
    if public_key_of(ctx.node) in pubs:
        raise PermissionDenied("the crypto provider cannot also be a party of its own session")
    sid = secrets.token_hex(16)
    seeds = [os.urandom(32) for _ in pubs]
    st.dealers[(ctx.session.user_id, sid)] = DealerSession(seeds)
    boxes = [seal.seal(st.keys, pub, seed, seed_context(sid, i, pubs))
             for i, (pub, seed) in enumerate(zip(pubs, seeds, strict=True))]  # fmt: skip
    return ctx.value(u8(sid.encode() + b"".join(boxes)))


def op_join(ctx: OpContext, sid: str, index: int, keys: list[Any], dealer: torch.Tensor,
            box: torch.Tensor) -> Reply:  # fmt: skip
    """Party: accept the dealer's sealed seed for session ``sid`` as party ``index`` of the
    parties with public ``keys`` (the box proves the dealer dealt for exactly these keys).
    The dealer must be one this node's owner approved (:mod:`veil.mpc.approvals`)."""
    st = state_of(ctx.node)
    check_sid(sid)
    dealer_pub = raw_bytes(dealer, "dealer", 32)
    approvals.check_dealer(ctx, dealer_pub)
    pubs = party_keys(keys, "keys")
    if not 0 <= index < len(pubs) or pubs[index] != public_key_of(ctx.node):
        raise InvalidRequest(
            f"keys.{index} must be node {ctx.node.name!r}'s own key (index is this node's "
            f"place among the {len(pubs)} parties)"
        )
    if dealer_pub in pubs:
        raise PermissionDenied("the crypto provider cannot also be a party of its own session")
    key = (ctx.session.user_id, sid)
    if key in st.parties or key in st.dealers:
        raise PermissionDenied(f"session {sid} already exists on node {ctx.node.name!r}")
    seed = seal.unseal(st.keys, dealer_pub, raw_bytes(box, "box"), seed_context(sid, index, pubs))
    digest = hashlib.sha256(seed).digest()
    if digest in st.seen_seeds:
        raise PermissionDenied("this dealer seed was already used on this node: replay refused")
    st.seen_seeds.add(digest)
    st.parties[key] = PartySession(seed, index, pubs, dealer_pub)
    return Done()


# ------------------------------------------------------------------------ dealer


def op_deal(ctx: OpContext, sid: str, groups: list[Group]) -> Reply:
    """Dealer: new groups ``[(kind, params), ...]``; answers ``[gid_0, ..., deltas...]``
    (int64): the group ids, then each group's delta for the last party, concatenated.
    Takes shapes only: the dealer never sees a share."""
    sess = dealer_of(ctx, sid)
    if not groups:
        raise InvalidRequest("deal needs a non-empty list of (kind, params)")
    gids, deltas = [], []
    total = 0
    for k, g in enumerate(groups):
        kind, _, slots = group(g[0], g[1], f"groups.{k}")
        total += sum(numel(s.shape) for s in slots)
        ctx.check_elements(total)
        gid = sess.next_gid
        sess.next_gid += 1
        gids.append(gid)
        deltas.append(kinds.dealer_delta(kind, g[1], slots, sess.seeds, gid))
    return ctx.value(torch.cat([torch.tensor(gids, dtype=torch.int64), *deltas]))
