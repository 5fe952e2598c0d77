"""The ops a node runs for MPC, and the privacy rule they enforce.

The rule: a party's share of anything is a private object on its node; a data scientist
who drives the computation sees only values *masked with fresh dealer randomness*, and only
a dealer its node's owner approved can know those masks:

* a node joins a session only with a crypto provider (dealer) its owner approved
  (:mod:`veil.mpc.approvals`); dealer randomness reaches it as one PRG seed, sealed by the
  dealer's node key for the party's node key and bound to the session's party keys
  (:mod:`veil.mpc.seal`); the scientist relays a box it cannot open;
* ``mpc.open`` opens only *shares*: objects this node labelled as shares of that session
  when it made them (results of torch ops on such shares alone keep the label; see
  :func:`~veil.mpc.state.share_label`), of the domain and shape the group takes. Never a
  dataset, nor anything else computed from private data;
* it masks each operand with the party's share of a slot of group ``gid`` (derived from
  the seed, never stored as an object, never usable by any other op) and answers the
  masked value publicly. A group id is opened at most once per party session, so a mask is
  never reused; a node never accepts the same seed twice;
* ``mpc.finish`` turns the public openings and the group's slots into new *private* shares;
* the dealer (``mpc.deal``) takes only shapes: it never receives a share of data;
* a data owner's node shares its own data itself (:mod:`veil.mpc.inputs`).

Every op takes typed arguments (:mod:`veil.mpc.typed`); a private object is accepted only
where :data:`PRIVATE_ARGS` declares one, and refused anywhere else before the op runs.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from typing import Any

import torch

from veil.errors import InvalidRequest, PermissionDenied
from veil.mpc import approvals, inputs, kinds, local_ops, seal, spdz, state
from veil.mpc.approvals import party
from veil.mpc.kinds import ShareDomain, Slot, numel
from veil.mpc.state import (
    MAX_PENDING,
    DealerSession,
    PartySession,
    Pending,
    check_share,
    check_sid,
    dealer_of,
    public_key_of,
    raw_bytes,
    seed_context,
    share_label,
    state_of,
    u8,
)
from veil.mpc.typed import describe, typed
from veil.node import extension
from veil.node.extension import OpContext
from veil.ops import OpFacts, OpRegistry, OpSpec, default_registry
from veil.serde.messages import Done, Reply

# ------------------------------------------------------------------------ keys, setup


def op_public_key(ctx: OpContext) -> Reply:
    """This node's X25519 public key (32 bytes)."""
    return ctx.value(u8(public_key_of(ctx.node)))


def _party_keys(keys: list[Any], where: str) -> list[bytes]:
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
    pubs = _party_keys(keys, "keys")
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
    pubs = _party_keys(keys, "keys")
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


def op_deal(ctx: OpContext, sid: str, groups: list[Any]) -> Reply:
    """Dealer: new groups ``[(kind, params), ...]``; answers ``[gid_0, ..., deltas...]``
    (int64): the group ids, then each group's delta for the last party, concatenated.
    Takes shapes only: the dealer never sees a share."""
    sess = dealer_of(ctx, sid)
    if not groups:
        raise InvalidRequest("deal needs a non-empty list of (kind, params)")
    gids, deltas = [], []
    total = 0
    for k, g in enumerate(groups):
        if not (isinstance(g, list | tuple) and len(g) == 2):
            raise InvalidRequest(f"groups.{k} must be a pair (kind name, params dict)")
        kind, _, slots = _group(g[0], g[1], f"groups.{k}")
        total += sum(numel(s.shape) for s in slots)
        ctx.check_elements(total)
        gid = sess.next_gid
        sess.next_gid += 1
        gids.append(gid)
        deltas.append(kinds.dealer_delta(kind, g[1], slots, sess.seeds, gid))
    return ctx.value(torch.cat([torch.tensor(gids, dtype=torch.int64), *deltas]))


# ------------------------------------------------------------------------ party steps


def _group(name: Any, params: Any, where: str) -> tuple[kinds.Kind, dict[str, Any], list[Slot]]:
    """A kind of dealer randomness, its params and its slots, checked (``where`` names the
    position in the message)."""
    if not isinstance(name, str) or name not in kinds.KINDS:
        got = repr(name) if isinstance(name, str) else describe(name)
        raise InvalidRequest(f"{where}.kind: unknown kind of dealer randomness {got[:80]}; "
                             f"known: {sorted(kinds.KINDS)}")  # fmt: skip
    if not isinstance(params, dict):
        raise InvalidRequest(f"{where}.params must be a dict, got {describe(params)}")
    kind = kinds.KINDS[name]
    try:
        return kind, params, kind.slots(params)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{where}.params: {exc}") from None


def _apply_delta(slots: list[Slot], masks: dict[str, torch.Tensor], delta: Any, where: str) -> None:
    """The last party: add the dealer's delta (relayed by the driver) to its slots."""
    if not isinstance(delta, torch.Tensor):
        raise InvalidRequest(f"{where}: the last party needs the dealer's delta (an int64 tensor)")
    try:
        kinds.apply_delta(slots, masks, delta)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{where}: {exc}") from None


def _gid(gid: Any, where: str) -> int:
    if not isinstance(gid, int) or isinstance(gid, bool) or gid <= 0:
        raise InvalidRequest(f"{where} must be a positive integer (a group id the dealer dealt)")
    return gid


#: Results of a step's finish fed to its opening, by identity: (domain, session id).
Own = dict[int, tuple[ShareDomain, str]]


def _inputs(ctx: OpContext, sid: str, kind: kinds.Kind, params: dict[str, Any], inputs: Any,
            where: str, own: Own | None = None) -> list[torch.Tensor]:  # fmt: skip
    """The shares a kind takes, checked: their count, dtype and exact shapes, and that each
    is a share of this session's right domain (a labelled object, or a result of this
    step's finish)."""
    want = kind.inputs(params)
    if not isinstance(inputs, list) or len(inputs) != len(want):
        raise InvalidRequest(f"{where}: {kind.name} takes {len(want)} shares, in a list")
    for j, (t, (domain, shape)) in enumerate(zip(inputs, want, strict=True)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or tuple(t.shape) != shape:
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else describe(t)
            raise InvalidRequest(f"{where}.{j}: {kind.name} takes an int64 share of shape "
                                 f"{shape} here, got {got}")  # fmt: skip
        mine = (own or {}).get(id(t))
        if mine is None:
            check_share(ctx, t, sid, domain, f"{where}.{j}")
        elif mine != (domain, sid):
            raise PermissionDenied(f"{where}.{j}: {kind.name} takes a {domain} share here, and "
                                   f"this step's result is a {mine[0]} share")  # fmt: skip
    return inputs


def op_open(ctx: OpContext, sid: str, items: list[Any]) -> Reply:
    """Party: for each item ``{gid, kind, params, inputs, delta}`` derive the group's
    slots, compute the operands from ``inputs`` (this user's shares of this session) and
    answer them masked with the opened slots, all concatenated (int64, public)."""
    return ctx.value(_open(ctx, sid, items))


def _open(ctx: OpContext, sid: str, items: list[Any], own: Own | None = None) -> torch.Tensor:
    st = state_of(ctx.node)
    sess = party(ctx, sid)
    if not items:
        raise InvalidRequest("open needs a non-empty list of items")
    out: list[torch.Tensor] = []
    staged: list[tuple[int, Pending]] = []
    total = 0
    for k, it in enumerate(items):
        if not isinstance(it, dict):
            raise InvalidRequest(f"items.{k} must be a dict (gid, kind, params, inputs, delta)")
        gid = _gid(it.get("gid"), f"items.{k}.gid")
        if gid in sess.used or any(g == gid for g, _ in staged):
            raise PermissionDenied(
                f"dealer randomness {gid} was already opened on node {ctx.node.name!r}: a mask "
                "is used once (reusing it would unmask a share)"
            )
        kind, params, slots = _group(it.get("kind"), it.get("params"), f"items.{k}")
        total += sum(numel(s.shape) for s in slots)
        ctx.check_elements(total)
        ins = _inputs(ctx, sid, kind, params, it.get("inputs"), f"items.{k}.inputs", own)
        masks = kinds.party_slots(sess.seed, gid, slots)
        if sess.index == sess.n - 1 and any(kinds.has_delta(s) for s in slots):
            _apply_delta(slots, masks, it.get("delta"), f"items.{k}.delta")
        if any(s.domain in kinds.AUTH for s in slots):
            masks["__alpha"] = kinds.mac_key(sess.seed)
            masks["__alpha64"] = kinds.mac_key64(sess.seed)
            params = {**params, "__alpha": masks["__alpha"], "__alpha64": masks["__alpha64"]}
        operands = kind.reveal(params, ins, sess.index)
        opened = [s for s in slots if s.opened]
        macs = []
        for s, v in zip(opened, operands, strict=True):
            if tuple(v.shape) != kinds.full_shape(s):
                raise InvalidRequest(
                    f"{kind.name}: operand of shape {tuple(v.shape)}, expected {kinds.full_shape(s)}"
                )
            m = masks[s.name]
            if s.domain == "auth":  # reveal the value half; keep the MAC share for the check
                masked = spdz.r128.sub(v[0:2], m[0:2])
                macs.append(spdz.r128.sub(v[2:4], m[2:4]))
            elif s.domain == "auth64":
                masked = v[0] - m[0]
                macs.append(v[1] - m[1])
            elif s.domain == "arith":
                masked = v - m
            else:
                masked = (v & 1) ^ m if s.domain == "bit" else v ^ m
            out.append(masked.reshape(-1))
        staged.append((gid, Pending(kind, params, slots, masks, ins, macs)))
    for gid, p in staged:  # commit only when every item was valid
        sess.used.add(gid)
        st.pending[(ctx.session.user_id, sid, gid)] = p
    while len(st.pending) > MAX_PENDING:
        st.pending.pop(next(iter(st.pending)))
    return torch.cat(out)


def _opened(s: Slot) -> tuple[int, ...]:
    """The shape of an opening of slot ``s`` (the value half of an ``auth`` slot)."""
    return (2, *s.shape) if s.domain == "auth" else s.shape


def op_finish(ctx: OpContext, sid: str, items: list[Any]) -> Reply:
    """Party: for each item ``{gid, opened: [public tensors]}`` compute this party's
    shares of the results; answers them as new private objects (a flat list; in malicious
    mode each group's public MAC check share follows its results)."""
    return ctx.results([info for info, _, _ in _finish(ctx, sid, items)])


def op_step(ctx: OpContext, sid: str, finish: list[Any], open_: list[Any]) -> Reply:
    """Party: ``finish`` one round and ``open`` the next in one message. Inputs of the
    open items may be ``["out", k]``: the k-th result of this finish. The finish's results
    feed this opening only and are not stored (semi-honest groups only). Answers (int64,
    public): the number of stored results (0), then the masked values of the opening."""
    done = _finish(ctx, sid, finish, store=False)
    own: Own = {}
    for k, it in enumerate(open_):
        ins = it.get("inputs") if isinstance(it, dict) else None
        if isinstance(ins, list):
            for j, v in enumerate(ins):
                if isinstance(v, list) and len(v) == 2 and v[0] == "out":
                    r = v[1]
                    if not isinstance(r, int) or isinstance(r, bool) or not 0 <= r < len(done):
                        raise InvalidRequest(
                            f"open_.{k}.inputs.{j}: no result {r!r} of this step's finish"
                        )
                    ins[j] = done[r][1]
                    own[id(ins[j])] = (done[r][2], sid)
    masked = _open(ctx, sid, open_, own)
    return ctx.value(torch.cat([torch.zeros(1, dtype=torch.int64), masked]))


def _finish(ctx: OpContext, sid: str, items: list[Any], *,
            store: bool = True) -> list[tuple[Any, torch.Tensor, ShareDomain]]:  # fmt: skip
    """Finish opened groups: every item is checked first, so a malformed message finishes
    nothing and leaves its groups pending. Returns (stored object or None, tensor, domain)
    for each result."""
    st = state_of(ctx.node)
    sess = party(ctx, sid)
    if not items:
        raise InvalidRequest("finish needs a non-empty list of items")
    todo: list[tuple[tuple[int, str, int], Pending, list[torch.Tensor], list[Any], Any]] = []
    for k, it in enumerate(items):
        if not isinstance(it, dict):
            raise InvalidRequest(f"items.{k} must be a dict (gid, opened, extra, rho)")
        gid = _gid(it.get("gid"), f"items.{k}.gid")
        key = (ctx.session.user_id, sid, gid)
        pend = st.pending.get(key)
        if pend is None or any(key == t[0] for t in todo):
            raise InvalidRequest(f"no opened group {gid!r} to finish on node {ctx.node.name!r}")
        if pend.macs and not store:
            raise InvalidRequest("authenticated groups finish with mpc.finish (their MAC check)")
        opened = it.get("opened")
        want = [s for s in pend.slots if s.opened]
        if (
            not isinstance(opened, list)
            or len(opened) != len(want)
            or not all(
                isinstance(t, torch.Tensor)
                and t.dtype == torch.int64
                and tuple(t.shape) == _opened(s)
                for t, s in zip(opened, want, strict=False)
            )
        ):
            raise InvalidRequest(
                f"items.{k}.opened: {pend.kind.name} needs {len(want)} int64 openings of shapes "
                f"{[_opened(s) for s in want]}"
            )
        extra = it.get("extra", [])
        if not isinstance(extra, list) or not all(
            isinstance(t, torch.Tensor) and t.dtype == torch.int64 for t in extra
        ):
            raise InvalidRequest(f"items.{k}.extra must be a list of int64 tensors")
        rho = it.get("rho")
        if pend.macs:
            if not isinstance(rho, list) or len(rho) != len(opened):
                raise InvalidRequest(f"items.{k}.rho: a MAC check needs one coefficient tensor "
                                     "per opening")  # fmt: skip
            for j, (r, y) in enumerate(zip(rho, opened, strict=True)):
                if (
                    not isinstance(r, torch.Tensor)
                    or r.dtype != torch.int64
                    or (
                        tuple(r.shape)
                        != tuple(y.shape[1:] if want[j].domain == "auth" else y.shape)
                    )
                ):
                    raise InvalidRequest(f"items.{k}.rho.{j}: an int64 tensor shaped like the "
                                         "opened value")  # fmt: skip
        todo.append((key, pend, opened, extra, rho))
    results: list[tuple[Any, torch.Tensor, ShareDomain]] = []
    for key, pend, opened, extra, rho in todo:
        del st.pending[key]
        if pend.macs:
            pend.masks["__extra"] = extra  # type: ignore[assignment]
        outs = pend.kind.finish(pend.params, opened, pend.masks, pend.inputs, sess.index, sess.n)
        domains = pend.kind.outputs(pend.params)
        for o, domain in zip(outs, domains, strict=True):
            info = (
                ctx.new(o.contiguous(), private=True, label=share_label(sid, domain))
                if store
                else None
            )
            results.append((info, o, domain))
        if pend.macs:  # SPDZ2k check share: sum rho * (mac(y) - alpha_i y), public
            if any(s.domain == "auth64" for s in pend.slots if s.opened):
                z = spdz.check_share64(pend.masks["__alpha64"], pend.macs, opened, rho)
            else:
                z = spdz.check_share(pend.masks["__alpha"], pend.macs, opened, rho)
            results.append((ctx.new(z, private=False), z, "arith"))
    return results


# ------------------------------------------------------------------------ authenticated shares


def op_add_public(ctx: OpContext, sid: str, x: torch.Tensor, c: torch.Tensor) -> Reply:
    """Malicious mode: add the public 128-bit value ``c`` (shape (2, *shape)) to the
    authenticated share ``x`` (party 0 adds to the value; every party adds alpha_i c to
    its MAC share)."""
    sess = party(ctx, sid)
    local_ops.check_auth("mpc.a128.add_public", x=x)
    check_share(ctx, x, sid, "auth", "x")
    if c.dtype != torch.int64 or tuple(c.shape) != (2, *x.shape[1:]):
        raise InvalidRequest(
            f"mpc.a128.add_public: argument 'c' must be a public 128-bit value of the share's "
            f"shape, int64 {(2, *x.shape[1:])}; got {c.dtype} {tuple(c.shape)}"
        )
    share = spdz.add(x, spdz.const(c, kinds.mac_key(sess.seed), sess.index))
    return ctx.new(share, private=True, label=share_label(sid, "auth"))


def op_check_value(ctx: OpContext, sid: str, x: torch.Tensor, y: torch.Tensor,
                   rho: torch.Tensor) -> Reply:  # fmt: skip
    """Malicious mode: this party's MAC check share for a value ``y`` the caller
    reconstructed from shares it may read (it reveals nothing the caller does not hold)."""
    sess = party(ctx, sid)
    local_ops.check_auth("mpc.a128.check", x=x)
    check_share(ctx, x, sid, "auth", "x")
    for rec in ctx.inputs:
        ctx.node._check_readable(ctx.session, rec)
    if y.dtype != torch.int64 or tuple(y.shape) != (2, *x.shape[1:]):
        raise InvalidRequest("mpc.a128.check: argument 'y' must be the reconstructed 128-bit "
                             f"value, int64 {(2, *x.shape[1:])}")  # fmt: skip
    try:
        z = spdz.check_share(kinds.mac_key(sess.seed), [x[2:4]], [y], [rho])
    except InvalidRequest as exc:
        raise InvalidRequest(f"mpc.a128.check: argument 'rho': {exc}") from None
    return ctx.new(z, private=False)


NODE_OPS: dict[str, Callable[..., Any]] = {
    "mpc.public_key": op_public_key,
    "mpc.dealer_setup": op_dealer_setup,
    "mpc.join": op_join,
    "mpc.deal": op_deal,
    "mpc.open": op_open,
    "mpc.finish": op_finish,
    "mpc.step": op_step,
    "mpc.a128.add_public": op_add_public,
    "mpc.a128.check": op_check_value,
    **inputs.NODE_OPS,
    **approvals.NODE_OPS,
}

#: Where each node op accepts private objects (its shares, or a data owner's own data); a
#: private object in any other argument is refused by the node before the op runs.
PRIVATE_ARGS: dict[str, tuple[str, ...]] = {
    "mpc.open": ("items.*.inputs.*",),
    "mpc.step": ("open_.*.inputs.*",),
    "mpc.split": ("x",),
    "mpc.a128.add_public": ("x",),
    "mpc.a128.check": ("x",),
    "mpc.a128.owner_input": ("x",),
}


def register(reg: OpRegistry | None = None) -> None:
    """Add the MPC ops to ``reg`` (the default allowlist) and the node's MPC key to its
    public info; idempotent. Each op runs behind :func:`~veil.mpc.typed.typed`: a missing
    or mistyped argument is an InvalidRequest that names it."""
    reg = reg if reg is not None else default_registry()
    for name, fn in NODE_OPS.items():
        if name not in reg:
            facts = OpFacts(size="input", pipeline="never", private_args=PRIVATE_ARGS.get(name, ()))
            reg.register(OpSpec(name, typed(name, fn, context=True), "node", facts))
    for name, fn in local_ops.OPS.items():
        if name not in reg:
            reg.register(OpSpec(name, typed(name, fn), facts=OpFacts(size="product")))
    extension.INFO.setdefault("mpc", state.public_info)
