"""How values become shares on the nodes: public values the scientist shares, and data a
node holds, shared by that node itself (semi-honest: PRG seeds sealed to the other
parties; malicious: an authenticated mask sealed to the owner by the dealer).

Every share made here is labelled with its session and domain (:func:`~veil.mpc.state.share_label`),
so a node opens only shares, never other data. A node shares its own data only with the
parties of a session it joined through an approved dealer, under the party keys that dealer
sealed its seed for: the scientist cannot name keys of its own (``mpc.split`` used to take
them as an argument), and no party key may appear twice, so no single node ever receives
two shares of one value.

Example:
    >>> import torch, veil
    >>> alice, bob, carol = (veil.VirtualWorker(n) for n in ("alice", "bob", "carol"))
    >>> ptr = torch.tensor([1.5, -2.0]).send(alice)
    >>> x = ptr.fix_precision().share(alice, bob, crypto_provider=carol)
    >>> (x * 2).reconstruct()
    tensor([ 3., -4.])
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from veil.errors import InvalidRequest, PermissionDenied
from veil.mpc import ring
from veil.mpc.node.approvals import party
from veil.mpc.node.state import (
    PartySession,
    context,
    dealer_of,
    raw_bytes,
    share_label,
    state_of,
    u8,
)
from veil.mpc.providers import kinds, seal
from veil.mpc.providers.kinds import Slot, numel
from veil.mpc.ring import mac as spdz
from veil.mpc.ring import r128
from veil.node.extension import OpContext
from veil.serde.messages import Reply

# ------------------------------------------------------------------------ semi-honest


def op_as_share(ctx: OpContext, sid: str, x: torch.Tensor) -> Reply:
    """Store a copy of ``x`` (an int64 share of a value the scientist holds, so public) as
    this party's private share in session ``sid``."""
    party(ctx, sid)
    if x.dtype != torch.int64:
        raise InvalidRequest("mpc.as_share: argument 'x' must be an int64 (fixed-point) tensor")
    ctx.check_elements(x.numel())
    return ctx.new(x.clone(), private=True, label=share_label(sid, "arith"))


def _share_context(tag: str, sid: str, index: int, n: int) -> bytes:
    return context("share|" + tag, sid, index, n)


def op_split(ctx: OpContext, sid: str, x: torch.Tensor, tag: str) -> Reply:
    """Data holder (a party of session ``sid``): split its int64 ``x`` (its own, possibly
    private, data) into shares for the session's parties, under the party keys its dealer
    sealed the session for. Keeps its share; answers [its share (private), the seeds of
    the other parties in party order, each sealed for that party (public, 60 bytes each)]."""
    sess = party(ctx, sid)
    if x.dtype != torch.int64:
        raise InvalidRequest("mpc.split: argument 'x' must be an int64 (fixed-point) tensor")
    if not 1 <= len(tag) <= 64:
        raise InvalidRequest("mpc.split: argument 'tag' must be 1-64 characters")
    ctx.check_elements(x.numel())
    me = state_of(ctx.node).keys
    share = x.clone()
    boxes = []
    for j, pub in enumerate(sess.keys):
        if j == sess.index:
            continue
        seed = os.urandom(32)
        share = share - ring.prg(seed, 0, 0, x.numel()).reshape(x.shape)
        boxes.append(seal.seal(me, pub, seed, _share_context(tag, sid, j, sess.n)))
    mine = ctx.new(share, private=True, label=share_label(sid, "arith"))
    return ctx.results([mine, ctx.new(u8(b"".join(boxes)), private=False)])


def op_receive(ctx: OpContext, sid: str, holder: int, box: torch.Tensor, shape: list[Any],
               tag: str) -> Reply:  # fmt: skip
    """Party of session ``sid``: expand the seed that party ``holder`` sealed for it into
    its share of a tensor of ``shape`` (stored private)."""
    sess = party(ctx, sid)
    if not 0 <= holder < sess.n or holder == sess.index:
        raise InvalidRequest(
            f"mpc.receive: argument 'holder' must be another party's index (0..{sess.n - 1}, "
            f"not {sess.index})"
        )
    dims = kinds._shape({"shape": shape}, "shape")
    size = numel(dims)
    ctx.check_elements(size)
    seed = seal.unseal(state_of(ctx.node).keys, sess.keys[holder], raw_bytes(box, "the box"),
                       _share_context(tag, sid, sess.index, sess.n))  # fmt: skip
    return ctx.new(
        ring.prg(seed, 0, 0, size).reshape(dims), private=True, label=share_label(sid, "arith")
    )


# ------------------------------------------------------------------------ malicious mode
#
# A data owner's node (party k) shares its own tensor x with MACs: the dealer deals an
# authenticated random mask R (group gid) as usual and seals R's value for party k alone,
# under a key derived from party k's dealer seed; party k computes d = x - R (uniform to
# anyone without R) and every party sets its share to r_i + d (MAC r_mac_i + alpha_i d).
# The scientist relays the box and d, never R. The group is consumed once on every party
# (its gid joins ``used``), so R's shares can never be opened afterwards, nor before.


def op_a128_public(ctx: OpContext, sid: str, c: torch.Tensor) -> Reply:
    """Malicious mode: this party's authenticated share of the public 128-bit value ``c``
    (shape (2, *shape)): party 0 holds ``c``, every party the MAC share ``alpha_i c``. Stored
    private (a MAC share of a public value would reveal the party's key share)."""
    sess = party(ctx, sid)
    if c.dtype != torch.int64 or c.dim() < 1 or c.shape[0] != 2:
        raise InvalidRequest(
            "mpc.a128.public: argument 'c' must be a 128-bit value, int64 (2, *shape)"
        )
    ctx.check_elements(2 * c.numel())
    share = spdz.const(c.contiguous(), kinds.mac_key(sess.dealer_seed), sess.index)
    return ctx.new(share, private=True, label=share_label(sid, "auth"))


def _owner_context(sid: str, gid: int, owner: int, n: int) -> bytes:
    return context(f"owner-input|{gid}", sid, owner, n)


def _input_group(shape: Any) -> tuple[kinds.Kind, dict[str, Any], list[Slot]]:
    kind = kinds.get_kind("m_input")
    params = {"x": shape}
    return kind, params, kind.slots(params)


def op_a128_deal_owner_input(ctx: OpContext, sid: str, shape: list[Any], owner: int) -> Reply:
    """Dealer: a fresh authenticated mask R of ``shape`` for an input by party ``owner``.
    Answers (uint8, public): the gid (8 bytes), the last party's delta (int64), and R's
    value sealed for party ``owner`` under a key derived from its seed."""
    sess = dealer_of(ctx, sid)
    n = len(sess.seeds)
    if not 0 <= owner < n:
        raise InvalidRequest(
            f"mpc.a128.deal_owner_input: owner must be a party index in 0..{n - 1}"
        )
    kind, params, slots = _input_group(shape)
    ctx.check_elements(4 * numel(slots[0].shape))
    gid = sess.next_gid
    sess.next_gid += 1
    delta = kinds.dealer_delta(kind, params, slots, sess.seeds, gid)
    shares = [kinds.party_slots(s, gid, slots)["r"] for s in sess.seeds]
    big_r = kinds.combine("auth", shares)[0:2].contiguous()
    box = seal.seal_with_secret(
        sess.seeds[owner], big_r.numpy().tobytes(), _owner_context(sid, gid, owner, n)
    )
    head = torch.tensor([gid, delta.numel()], dtype=torch.int64).numpy().tobytes()
    return ctx.value(u8(head + delta.numpy().tobytes() + box))


def _input_share(sess: PartySession, ctx: OpContext, gid: int, shape: tuple[int, ...],
                 d: torch.Tensor, delta: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """This party's authenticated share r_i + d of input group ``gid`` (consumes the gid)."""
    if gid <= 0:
        raise InvalidRequest("gid must be a positive integer (a group id the dealer dealt)")
    if gid in sess.used:
        raise PermissionDenied(
            f"dealer randomness {gid} was already used on node {ctx.node.name!r}: an input "
            "mask is used once"
        )
    _, _, slots = _input_group(list(shape))
    masks = kinds.party_slots(sess.dealer_seed, gid, slots)
    if sess.index == sess.n - 1:
        if delta is None:
            raise InvalidRequest("delta: the last party needs the dealer's delta")
        kinds.apply_delta(slots, masks, delta)
    sess.used.add(gid)
    return spdz.add(masks["r"], spdz.const(d, kinds.mac_key(sess.dealer_seed), sess.index))


def op_a128_owner_input(ctx: OpContext, sid: str, x: torch.Tensor, gid: int, box: torch.Tensor,
                        delta: torch.Tensor | None = None) -> Reply:  # fmt: skip
    """Data owner (a party): share its int64 tensor ``x`` with MACs. Opens the dealer's
    sealed mask R of group ``gid``, answers [its authenticated share (private),
    d = x - R (public: a one-time pad of 128 bits)]."""
    sess = party(ctx, sid)
    if x.dtype != torch.int64:
        raise InvalidRequest(
            "mpc.a128.owner_input: argument 'x' must be an int64 (fixed-point) tensor"
        )
    ctx.check_elements(4 * x.numel())
    raw = seal.unseal_with_secret(
        sess.dealer_seed,
        raw_bytes(box, "the sealed mask"),
        _owner_context(sid, gid, sess.index, sess.n),
    )
    if len(raw) != 16 * x.numel():
        raise InvalidRequest("the sealed mask does not match the tensor's shape")
    big_r = torch.frombuffer(bytearray(raw), dtype=torch.int64).reshape(2, *x.shape)
    d = r128.sub(r128.from64(x), big_r)
    share = _input_share(sess, ctx, gid, tuple(x.shape), d, delta)
    mine = ctx.new(share, private=True, label=share_label(sid, "auth"))
    return ctx.results([mine, ctx.new(d, private=False)])


def op_a128_input_share(ctx: OpContext, sid: str, gid: int, d: torch.Tensor,
                        delta: torch.Tensor | None = None) -> Reply:  # fmt: skip
    """Party: its authenticated share r_i + d of the input of group ``gid``, given the
    owner's public d = x - R (shape (2, *shape))."""
    sess = party(ctx, sid)
    if d.dtype != torch.int64 or d.dim() < 1 or d.shape[0] != 2:
        raise InvalidRequest(
            "mpc.a128.input_share: argument 'd' must be a 128-bit value, int64 (2, *shape)"
        )
    ctx.check_elements(2 * d.numel())
    share = _input_share(sess, ctx, gid, tuple(d.shape[1:]), d.contiguous(), delta)
    return ctx.new(share, private=True, label=share_label(sid, "auth"))


#: The input ops, by their allowlist names (all run with a node context).
NODE_OPS: dict[str, Callable[..., Any]] = {
    "mpc.as_share": op_as_share,
    "mpc.split": op_split,
    "mpc.receive": op_receive,
    "mpc.a128.public": op_a128_public,
    "mpc.a128.deal_owner_input": op_a128_deal_owner_input,
    "mpc.a128.owner_input": op_a128_owner_input,
    "mpc.a128.input_share": op_a128_input_share,
}
