"""Node ops of dealer-free sessions: join with no dealer, and shares of zero from pairwise seeds
(:mod:`veil.mpc.providers.pairwise`), alone or added to the party's own data (secure sums).

A dealer-free session can share, add, subtract, sum, average (2 parties) and multiply by
public values; every op that needs dealer randomness refuses it and says to configure a dealer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch

from veil.errors import InvalidRequest, PermissionDenied
from veil.mpc.node.approvals import party
from veil.mpc.node.setup import party_keys
from veil.mpc.node.state import PartySession, check_sid, public_key_of, share_label, state_of
from veil.mpc.providers import kinds, pairwise
from veil.node.extension import OpContext
from veil.serde.messages import Done, Reply


def op_join_free(ctx: OpContext, sid: str, index: int, keys: list[Any]) -> Reply:
    """Party: join dealer-free session ``sid`` as party ``index`` of the parties with public
    ``keys``. Each session id is accepted once per set of keys on a node (its pairwise seeds
    are bound to it), so a driver cannot make a node repeat its masks."""
    st = state_of(ctx.node)
    check_sid(sid)
    pubs = party_keys(keys, "keys")
    if not 0 <= index < len(pubs) or pubs[index] != public_key_of(ctx.node):
        raise InvalidRequest(
            f"keys.{index} must be node {ctx.node.name!r}'s own key (index is this node's "
            f"place among the {len(pubs)} parties)"
        )
    key = (ctx.session.user_id, sid)
    if key in st.parties or key in st.dealers:
        raise PermissionDenied(f"session {sid} already exists on node {ctx.node.name!r}")
    digest = hashlib.sha256(b"pairwise|" + sid.encode() + b"".join(pubs)).digest()
    if digest in st.seen_seeds:
        raise PermissionDenied("this dealer-free session was already joined on this node")
    st.seen_seeds.add(digest)
    st.parties[key] = PartySession(None, index, pubs, None)
    return Done()


def _zero(
    ctx: OpContext, sess: PartySession, sid: str, shape: list[Any], counter: int
) -> torch.Tensor:
    if counter <= 0 or counter >= 2**62:
        raise InvalidRequest("counter must be a positive integer below 2^62")
    if counter in sess.zero_used:
        raise PermissionDenied(
            f"zero-share {counter} was already made on node {ctx.node.name!r}: a mask is used once"
        )
    dims = kinds._shape({"shape": shape}, "shape")
    size = kinds.numel(dims)
    ctx.check_elements(size)
    if not sess.pair_seeds:
        sess.pair_seeds.update(
            pairwise.pair_seeds(state_of(ctx.node).keys, sess.index, sess.keys, sid)
        )
    sess.zero_used.add(counter)
    return pairwise.zero_share(sess.pair_seeds, sess.index, counter, size).reshape(dims)


def op_zero_share(ctx: OpContext, sid: str, shape: list[Any], counter: int) -> Reply:
    """Party: its share of zero number ``counter`` of ``shape`` (private; the shares of all
    parties sum to zero). Works in every session, with or without a dealer."""
    sess = party(ctx, sid)
    z = _zero(ctx, sess, sid, shape, counter)
    return ctx.new(z, private=True, label=share_label(sid, "arith"))


def op_masked_input(ctx: OpContext, sid: str, x: torch.Tensor, counter: int) -> Reply:
    """Party: ``x`` (its own int64 data, possibly private) plus its zero-share ``counter``, as
    its private share of the sum of every party's ``x`` (secure aggregation)."""
    sess = party(ctx, sid)
    if x.dtype != torch.int64:
        raise InvalidRequest("mpc.masked_input: argument 'x' must be an int64 (fixed-point) tensor")
    z = _zero(ctx, sess, sid, list(x.shape), counter)
    return ctx.new(x + z, private=True, label=share_label(sid, "arith"))


NODE_OPS: dict[str, Callable[..., Any]] = {
    "mpc.join_free": op_join_free,
    "mpc.zero_share": op_zero_share,
    "mpc.masked_input": op_masked_input,
}
