"""The ops a node runs for MPC, and the privacy rule they enforce.

The rule: a party's share of anything is a private object on its node; a data scientist
who drives the computation sees only values *masked with fresh dealer randomness*:

* dealer randomness reaches a party as one PRG seed, sealed by the dealer's node key for
  the party's node key (:mod:`veil.mpc.seal`); the scientist relays a box it cannot open;
* ``mpc.open`` masks each operand with the party's share of a slot of group ``gid``
  (derived from the seed, never stored as an object, never usable by any other op) and
  answers the masked value publicly. A group id is opened at most once per party
  session, so a mask is never reused; a node never accepts the same seed twice;
* ``mpc.finish`` turns the public openings and the group's slots into new *private* shares;
* the dealer (``mpc.deal``) takes only shapes: it never receives a share of data;
* ``mpc.split`` lets a data owner's node share a private tensor: it keeps one share and
  seals a PRG seed for each other party, so the value never passes the scientist.

Node owners may pin the dealer keys they trust (:func:`pin_dealers`); unpinned nodes
accept any dealer key the scientist presents (enough against a curious scientist, not
against one who plays dealer itself).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from veil.errors import InvalidRequest, PermissionDenied
from veil.mpc import kinds, r128, ring, seal, spdz
from veil.mpc.kinds import Slot, numel
from veil.mpc.typed import describe, typed
from veil.node.extension import OpContext
from veil.ops import OpFacts, OpRegistry, OpSpec, default_registry
from veil.serde.messages import Done, Reply

#: Groups opened but not finished that a node keeps per user before dropping the oldest.
MAX_PENDING = 4096


@dataclass
class _PartySession:
    seed: bytes
    index: int
    n: int
    dealer: bytes
    used: set[int] = field(default_factory=set)


@dataclass
class _DealerSession:
    seeds: list[bytes]
    next_gid: int = 1


@dataclass
class _Pending:
    kind: kinds.Kind
    params: dict[str, Any]
    slots: list[Slot]
    masks: dict[str, torch.Tensor]
    inputs: list[torch.Tensor]
    macs: list[torch.Tensor] = field(default_factory=list)  # MAC shares of opened values


@dataclass
class MPCState:
    """A node's MPC state (in memory: a restarted node starts fresh sessions)."""

    keys: seal.KeyPair = field(default_factory=seal.KeyPair.generate)
    parties: dict[tuple[int, str], _PartySession] = field(default_factory=dict)
    dealers: dict[tuple[int, str], _DealerSession] = field(default_factory=dict)
    pending: dict[tuple[int, str, int], _Pending] = field(default_factory=dict)
    seen_seeds: set[bytes] = field(default_factory=set)
    pinned: set[str] | None = None


def state_of(node: Any) -> MPCState:
    """The MPC state of a :class:`~veil.node.Node` (created on first use)."""
    st = node.extensions.get("mpc")
    if st is None:
        st = node.extensions["mpc"] = MPCState()
    return st  # type: ignore[no-any-return]


def pin_dealers(node: Any, fingerprints: list[str] | None) -> None:
    """Node owners: accept dealer randomness only from these key fingerprints
    (``veil.mpc.fingerprint(worker)``); ``None`` accepts any dealer again.

    Example:
        >>> import veil
        >>> node = veil.Node("clinic", owner_password="pw-long-enough")
        >>> pin_dealers(node, ["0123456789abcdef"])
        >>> state_of(node).pinned
        {'0123456789abcdef'}
    """
    state_of(node).pinned = None if fingerprints is None else set(fingerprints)


def _st(ctx: OpContext) -> MPCState:
    return state_of(ctx.node)


def _bytes(t: Any, what: str, size: int | None = None) -> bytes:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 1:
        raise InvalidRequest(f"{what} must be a 1-d uint8 tensor")
    if size is not None and t.numel() != size:
        raise InvalidRequest(f"{what} must be {size} bytes, got {t.numel()}")
    return t.numpy().tobytes()


def _u8(b: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8)


def _sid(sid: Any) -> str:
    if not isinstance(sid, str) or not 8 <= len(sid) <= 64:
        raise InvalidRequest("an MPC session id is a string of 8-64 characters")
    return sid


# ------------------------------------------------------------------------ keys, setup


def op_public_key(ctx: OpContext) -> Reply:
    """This node's X25519 public key (32 bytes)."""
    return ctx.value(_u8(_st(ctx).keys.public))


def op_dealer_setup(ctx: OpContext, keys: list[Any]) -> Reply:
    """Dealer: start a session for parties with these public keys; answers the session id
    (as the first 32 bytes, hex) followed by one sealed seed per party (60 bytes each)."""
    st = _st(ctx)
    if not isinstance(keys, list) or not 2 <= len(keys) <= 64:
        raise InvalidRequest("a dealer session needs the public keys of 2-64 parties")
    pubs = [_bytes(k, "a party key", 32) for k in keys]
    if st.keys.public in pubs:
        raise PermissionDenied("the crypto provider cannot also be a party of its own session")
    sid = secrets.token_hex(16)
    seeds = [os.urandom(32) for _ in pubs]
    st.dealers[(ctx.session.user_id, sid)] = _DealerSession(seeds)
    boxes = [seal.seal(st.keys, pub, seed, _context("seed", sid, i, len(pubs)))
             for i, (pub, seed) in enumerate(zip(pubs, seeds, strict=True))]  # fmt: skip
    return ctx.value(_u8(sid.encode() + b"".join(boxes)))


def _context(purpose: str, sid: str, index: int, n: int) -> bytes:
    return f"{purpose}|{sid}|{index}|{n}".encode()


def op_join(ctx: OpContext, sid: str, index: int, n: int, dealer: torch.Tensor,
            box: torch.Tensor) -> Reply:  # fmt: skip
    """Party: accept the dealer's sealed seed for session ``sid`` as party ``index`` of ``n``."""
    st = _st(ctx)
    sid = _sid(sid)
    if not (isinstance(n, int) and isinstance(index, int) and 2 <= n <= 64 and 0 <= index < n):
        raise InvalidRequest("party index must be in 0..n-1 with 2 <= n <= 64")
    dealer_pub = _bytes(dealer, "the dealer key", 32)
    if dealer_pub == st.keys.public:
        raise PermissionDenied("a node cannot be the crypto provider of a session it is a party of")
    if st.pinned is not None and seal.fingerprint(dealer_pub) not in st.pinned:
        raise PermissionDenied(
            f"node {ctx.node.name!r} does not trust crypto provider key "
            f"{seal.fingerprint(dealer_pub)}; its owner pinned other dealers"
        )
    key = (ctx.session.user_id, sid)
    if key in st.parties or key in st.dealers:
        raise PermissionDenied(f"session {sid} already exists on node {ctx.node.name!r}")
    seed = seal.unseal(
        st.keys, dealer_pub, _bytes(box, "the sealed seed"), _context("seed", sid, index, n)
    )
    digest = hashlib.sha256(seed).digest()
    if digest in st.seen_seeds:
        raise PermissionDenied("this dealer seed was already used on this node: replay refused")
    st.seen_seeds.add(digest)
    st.parties[key] = _PartySession(seed, index, n, dealer_pub)
    return Done()


# ------------------------------------------------------------------------ dealer


def op_deal(ctx: OpContext, sid: str, groups: list[Any]) -> Reply:
    """Dealer: new groups ``[(kind, params), ...]``; answers ``[gid_0, ..., deltas...]``
    (int64): the group ids, then each group's delta for the last party, concatenated.
    Takes shapes only: the dealer never sees a share."""
    st = _st(ctx)
    sess = st.dealers.get((ctx.session.user_id, _sid(sid)))
    if sess is None:
        raise InvalidRequest(f"node {ctx.node.name!r} deals for no session {sid!r} of yours")
    if not isinstance(groups, list) or not groups:
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


def _party(ctx: OpContext, sid: Any) -> _PartySession:
    sess = _st(ctx).parties.get((ctx.session.user_id, _sid(sid)))
    if sess is None:
        raise InvalidRequest(f"node {ctx.node.name!r} is in no MPC session {sid!r} of yours")
    return sess


def op_open(ctx: OpContext, sid: str, items: list[Any]) -> Reply:
    """Party: for each item ``{gid, kind, params, inputs, delta}`` derive the group's
    slots, compute the operands from ``inputs`` (this user's objects) and answer them
    masked with the opened slots, all concatenated (int64, public)."""
    return ctx.value(_open(ctx, sid, items))


def _open(ctx: OpContext, sid: Any, items: Any) -> torch.Tensor:
    st = _st(ctx)
    sess = _party(ctx, sid)
    if not isinstance(items, list) or not items:
        raise InvalidRequest("open needs a non-empty list of items")
    out: list[torch.Tensor] = []
    staged: list[tuple[int, _Pending]] = []
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
        inputs = _inputs(kind, params, it.get("inputs"), f"items.{k}.inputs")
        masks = kinds.party_slots(sess.seed, gid, slots)
        if sess.index == sess.n - 1 and any(kinds.has_delta(s) for s in slots):
            _apply_delta(slots, masks, it.get("delta"), f"items.{k}.delta")
        if any(s.domain in kinds.AUTH for s in slots):
            masks["__alpha"] = kinds.mac_key(sess.seed)
            masks["__alpha64"] = kinds.mac_key64(sess.seed)
            params = {**params, "__alpha": masks["__alpha"], "__alpha64": masks["__alpha64"]}
        operands = kind.reveal(params, inputs, sess.index)
        opened = [s for s in slots if s.opened]
        macs = []
        for s, v in zip(opened, operands, strict=True):
            if tuple(v.shape) != kinds.full_shape(s):
                raise InvalidRequest(
                    f"{kind.name}: operand of shape {tuple(v.shape)}, expected {kinds.full_shape(s)}"
                )
            m = masks[s.name]
            if s.domain == "auth":  # reveal the value half; keep the MAC share for the check
                masked = r128.sub(v[0:2], m[0:2])
                macs.append(r128.sub(v[2:4], m[2:4]))
            elif s.domain == "auth64":
                masked = v[0] - m[0]
                macs.append(v[1] - m[1])
            elif s.domain == "arith":
                masked = v - m
            else:
                masked = (v & 1) ^ m if s.domain == "bit" else v ^ m
            out.append(masked.reshape(-1))
        staged.append((gid, _Pending(kind, params, slots, masks, inputs, macs)))
    for gid, p in staged:  # commit only when every item was valid
        sess.used.add(gid)
        st.pending[(ctx.session.user_id, str(sid), gid)] = p
    while len(st.pending) > MAX_PENDING:
        st.pending.pop(next(iter(st.pending)))
    return torch.cat(out)


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


def _inputs(
    kind: kinds.Kind, params: dict[str, Any], inputs: Any, where: str
) -> list[torch.Tensor]:
    """The shares a kind takes, checked: their count, dtype and exact shapes."""
    want = kind.inputs(params)
    if not isinstance(inputs, list) or len(inputs) != len(want):
        raise InvalidRequest(f"{where}: {kind.name} takes {len(want)} shares, in a list")
    for j, (t, (_, shape)) in enumerate(zip(inputs, want, strict=True)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or tuple(t.shape) != shape:
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise InvalidRequest(f"{where}.{j}: {kind.name} takes an int64 share of shape "
                                 f"{shape} here, got {got}")  # fmt: skip
    return inputs


def _opened(s: Slot) -> tuple[int, ...]:
    """The shape of an opening of slot ``s`` (the value half of an ``auth`` slot)."""
    return (2, *s.shape) if s.domain == "auth" else s.shape


def op_finish(ctx: OpContext, sid: str, items: list[Any]) -> Reply:
    """Party: for each item ``{gid, opened: [public tensors]}`` compute this party's
    shares of the results; answers them as new private objects (a flat list)."""
    return ctx.results([info for info, _ in _finish(ctx, sid, items)])


def op_step(ctx: OpContext, sid: str, finish: list[Any], open_: list[Any]) -> Reply:
    """Party: ``finish`` one round and ``open`` the next in one message. Inputs of the
    open items may be ``["out", k]``: the k-th result of this finish. The finish's results
    feed this opening only and are not stored (semi-honest groups only). Answers (int64,
    public): the number of stored results (0), then the masked values of the opening."""
    done = _finish(ctx, sid, finish, store=False)
    if not isinstance(open_, list):
        raise InvalidRequest("step needs a list of open items")
    for it in open_:
        ins = it.get("inputs") if isinstance(it, dict) else None
        if isinstance(ins, list):
            for j, v in enumerate(ins):
                if isinstance(v, list) and len(v) == 2 and v[0] == "out":
                    k = v[1]
                    if not isinstance(k, int) or not 0 <= k < len(done):
                        raise InvalidRequest(f"no result {k!r} of this step's finish")
                    ins[j] = done[k][1]
    masked = _open(ctx, sid, open_)
    return ctx.value(torch.cat([torch.zeros(1, dtype=torch.int64), masked]))


def _finish(
    ctx: OpContext, sid: Any, items: Any, *, store: bool = True
) -> list[tuple[Any, torch.Tensor]]:
    """Finish opened groups: every item is checked first, so a malformed message finishes
    nothing and leaves its groups pending."""
    st = _st(ctx)
    sess = _party(ctx, sid)
    if not isinstance(items, list) or not items:
        raise InvalidRequest("finish needs a non-empty list of items")
    todo: list[tuple[tuple[int, str, int], _Pending, list[torch.Tensor], list[Any], Any]] = []
    for k, it in enumerate(items):
        if not isinstance(it, dict):
            raise InvalidRequest(f"items.{k} must be a dict (gid, opened, extra, rho)")
        gid = _gid(it.get("gid"), f"items.{k}.gid")
        key = (ctx.session.user_id, str(sid), gid)
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
    results: list[Any] = []
    for key, pend, opened, extra, rho in todo:
        del st.pending[key]
        if pend.macs:
            pend.masks["__extra"] = extra  # type: ignore[assignment]
        outs = pend.kind.finish(pend.params, opened, pend.masks, pend.inputs, sess.index, sess.n)
        results.extend((ctx.new(o.contiguous(), private=True) if store else None, o) for o in outs)
        if pend.macs:  # SPDZ2k check share: sum rho * (mac(y) - alpha_i y), public
            if any(s.domain == "auth64" for s in pend.slots if s.opened):
                z = spdz.check_share64(pend.masks["__alpha64"], pend.macs, opened, rho)
            else:
                z = spdz.check_share(pend.masks["__alpha"], pend.macs, opened, rho)
            results.append((ctx.new(z, private=False), z))
    return results


# ------------------------------------------------------------------------ inputs


def op_as_share(ctx: OpContext, x: torch.Tensor) -> Reply:
    """Store a copy of ``x`` (an int64 share the scientist uploaded) as a private share."""
    if not isinstance(x, torch.Tensor) or x.dtype != torch.int64:
        raise InvalidRequest("a share is an int64 tensor")
    return ctx.new(x.clone(), private=True)


def op_split(ctx: OpContext, x: torch.Tensor, keys: list[Any], index: int, tag: str) -> Reply:
    """Data holder: split int64 ``x`` (its own, possibly private, data) into shares for the
    parties with public ``keys``; this node is party ``index`` and keeps its share. Answers
    [its share (private), the sealed seeds of the other parties (public, 60 bytes each)]."""
    if not isinstance(x, torch.Tensor) or x.dtype != torch.int64:
        raise InvalidRequest("split takes an int64 (fixed-point encoded) tensor")
    if not isinstance(keys, list) or not 2 <= len(keys) <= 64:
        raise InvalidRequest("split needs the public keys of 2-64 parties")
    if not (isinstance(index, int) and 0 <= index < len(keys)) or not isinstance(tag, str):
        raise InvalidRequest("split needs this node's party index and a tag")
    st = _st(ctx)
    pubs = [_bytes(k, "a party key", 32) for k in keys]
    if pubs[index] != st.keys.public:
        raise InvalidRequest("keys[index] must be this node's own public key")
    share = x.clone()
    boxes = []
    for j, pub in enumerate(pubs):
        if j == index:
            continue
        seed = os.urandom(32)
        share = share - ring.prg(seed, 0, 0, x.numel()).reshape(x.shape)
        boxes.append(seal.seal(st.keys, pub, seed, _context("share|" + tag, "-", j, len(pubs))))
    mine = ctx.new(share, private=True)
    return ctx.results([mine, ctx.new(_u8(b"".join(boxes)), private=False)])


def op_receive(ctx: OpContext, sender: torch.Tensor, box: torch.Tensor, shape: list[Any],
               index: int, n: int, tag: str) -> Reply:  # fmt: skip
    """Party ``index``: expand the seed sealed for it by the data holder ``sender`` into its
    share of a tensor of ``shape`` (stored private)."""
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidRequest("shape must be a list of sizes")
    if not (
        isinstance(index, int) and isinstance(n, int) and 0 <= index < n <= 64
    ) or not isinstance(tag, str):
        raise InvalidRequest("receive needs the party index, the party count and the tag")
    size = numel(tuple(shape))
    ctx.check_elements(size)
    st = _st(ctx)
    seed = seal.unseal(st.keys, _bytes(sender, "the sender key", 32), _bytes(box, "the box"),
                       _context("share|" + tag, "-", index, n))  # fmt: skip
    return ctx.new(ring.prg(seed, 0, 0, size).reshape(shape), private=True)


def op_add_public(ctx: OpContext, sid: str, x: torch.Tensor, c: torch.Tensor) -> Reply:
    """Malicious mode: add the public 128-bit value ``c`` (shape (2, *shape)) to the
    authenticated share ``x`` (party 0 adds to the value; every party adds alpha_i c to
    its MAC share)."""
    sess = _party(ctx, sid)
    _auth("mpc.a128.add_public", x=x)
    if c.dtype != torch.int64 or tuple(c.shape) != (2, *x.shape[1:]):
        raise InvalidRequest(
            f"mpc.a128.add_public: argument 'c' must be a public 128-bit value of the share's "
            f"shape, int64 {(2, *x.shape[1:])}; got {c.dtype} {tuple(c.shape)}"
        )
    return ctx.new(spdz.add(x, spdz.const(c, kinds.mac_key(sess.seed), sess.index)))


def op_check_value(ctx: OpContext, sid: str, x: torch.Tensor, y: torch.Tensor,
                   rho: torch.Tensor) -> Reply:  # fmt: skip
    """Malicious mode: this party's MAC check share for a value ``y`` the caller
    reconstructed from shares it may read (it reveals nothing the caller does not hold)."""
    sess = _party(ctx, sid)
    for rec in ctx.inputs:
        ctx.node._check_readable(ctx.session, rec)
    _auth("mpc.a128.check", x=x)
    if y.dtype != torch.int64 or tuple(y.shape) != (2, *x.shape[1:]):
        raise InvalidRequest("check takes the reconstructed 128-bit value (2, *shape)")
    z = spdz.check_share(kinds.mac_key(sess.seed), [x[2:4]], [y], [rho])
    return ctx.new(z, private=False)


def op_trunc_local(x: torch.Tensor, f: int, party: int) -> torch.Tensor:
    """Local (2-party) truncation of a share by ``f`` bits (see ``kinds._trunc_local``)."""
    if x.dtype != torch.int64 or not 0 <= f <= 62 or party not in (0, 1):
        raise InvalidRequest("mpc.trunc_local needs an int64 share, 0 <= f <= 62 and party 0 or 1")
    return kinds._trunc_local(x, f, party)


def _auth(op: str, **shares: torch.Tensor) -> None:
    """Refuse arguments that are not authenticated shares (4, *shape) int64, naming them."""
    for name, t in shares.items():
        if t.dtype != torch.int64 or t.dim() < 1 or t.shape[0] != 4:
            raise InvalidRequest(
                f"{op}: argument {name!r} must be an authenticated share, an int64 tensor of "
                f"shape (4, *shape); got {t.dtype} {tuple(t.shape)}"
            )


def op_a128_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Malicious mode: the sum of two authenticated shares of one shape."""
    _auth("mpc.a128.add", x=x, y=y)
    if x.shape != y.shape:
        raise InvalidRequest("mpc.a128.add: the shares differ in shape; expand one first")
    return spdz.add(x, y)


def op_a128_sub(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Malicious mode: the difference of two authenticated shares of one shape."""
    _auth("mpc.a128.sub", x=x, y=y)
    if x.shape != y.shape:
        raise InvalidRequest("mpc.a128.sub: the shares differ in shape; expand one first")
    return spdz.sub(x, y)


def op_a128_neg(x: torch.Tensor) -> torch.Tensor:
    """Malicious mode: the negation of an authenticated share."""
    _auth("mpc.a128.neg", x=x)
    return spdz.neg(x)


def op_a128_scale(x: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
    """Malicious mode: an authenticated share times a public integer (or integer tensor
    that broadcasts to its shape)."""
    _auth("mpc.a128.scale", x=x)
    kt = torch.as_tensor(k)
    if kt.is_floating_point() or kt.is_complex() or kt.dtype == torch.bool:
        raise InvalidRequest("mpc.a128.scale: argument 'k' must hold integers")
    try:
        fits = torch.broadcast_shapes(kt.shape, x.shape[1:]) == x.shape[1:]
    except RuntimeError:
        fits = False
    if not fits:
        raise InvalidRequest(f"mpc.a128.scale: a factor of shape {tuple(kt.shape)} does not "
                             f"broadcast to the share's {tuple(x.shape[1:])}")  # fmt: skip
    return spdz.scale(x, kt)


def op_a128_sum(x: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
    """Malicious mode: the sum of an authenticated share over data dimension ``dim``."""
    _auth("mpc.a128.sum", x=x)
    if not 0 <= dim < x.dim() - 1:
        raise InvalidRequest(f"mpc.a128.sum: dim must be in 0..{x.dim() - 2}, got {dim}")
    return spdz.sum_(x, dim, keepdim)


NODE_OPS: dict[str, Callable[..., Any]] = {
    "mpc.public_key": op_public_key,
    "mpc.dealer_setup": op_dealer_setup,
    "mpc.join": op_join,
    "mpc.deal": op_deal,
    "mpc.open": op_open,
    "mpc.finish": op_finish,
    "mpc.step": op_step,
    "mpc.as_share": op_as_share,
    "mpc.split": op_split,
    "mpc.receive": op_receive,
    "mpc.a128.add_public": op_add_public,
    "mpc.a128.check": op_check_value,
}
PURE_OPS: dict[str, Callable[..., Any]] = {
    "mpc.trunc_local": op_trunc_local,
    "mpc.conv2d": ring.conv2d,
    "mpc.matmul": ring.matmul,
    "mpc.a128.add": op_a128_add,
    "mpc.a128.sub": op_a128_sub,
    "mpc.a128.neg": op_a128_neg,
    "mpc.a128.scale": op_a128_scale,
    "mpc.a128.sum": op_a128_sum,
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
    """Add the MPC ops to ``reg`` (the default allowlist); idempotent. Each runs behind
    :func:`~veil.mpc.typed.typed`: a missing or mistyped argument is an InvalidRequest
    that names it."""
    reg = reg if reg is not None else default_registry()
    for name, fn in NODE_OPS.items():
        if name not in reg:
            facts = OpFacts(size="input", pipeline="never", private_args=PRIVATE_ARGS.get(name, ()))
            reg.register(OpSpec(name, typed(name, fn, context=True), "node", facts))
    for name, fn in PURE_OPS.items():
        if name not in reg:
            reg.register(OpSpec(name, typed(name, fn), facts=OpFacts(size="product")))


# ------------------------------------------------------------------------ malicious-mode additions


def op_a128_public(ctx: OpContext, sid: str, c: torch.Tensor) -> Reply:
    """Malicious mode: this party's authenticated share of the public 128-bit value ``c``
    (shape (2, *shape)): party 0 holds ``c``, every party the MAC share ``alpha_i c``. Stored
    private (a MAC share of a public value would reveal the party's key share)."""
    sess = _party(ctx, sid)
    if not isinstance(c, torch.Tensor) or c.dtype != torch.int64 or c.dim() < 1 or c.shape[0] != 2:
        raise InvalidRequest("a128.public takes a public 128-bit value (2, *shape)")
    ctx.check_elements(2 * c.numel())
    return ctx.new(spdz.const(c.contiguous(), kinds.mac_key(sess.seed), sess.index), private=True)


def op_a128_product_public(x: torch.Tensor, c: torch.Tensor, op: str, left: bool,
                           stride: int = 1, padding: int = 0) -> torch.Tensor:  # fmt: skip
    """Malicious mode: ``op(x, c)`` (``op(c, x)`` when ``left``) for an authenticated share
    ``x`` (4, *shape) and a public int64 ``c``, op ``matmul`` or ``conv2d``: applied to the
    value and the MAC share alike (both are linear in the share, so the MAC stays valid)."""
    _auth("mpc.a128.product_public", x=x)
    if c.dtype != torch.int64:
        raise InvalidRequest("mpc.a128.product_public: argument 'c' must be an int64 tensor")
    if op not in ("matmul", "conv2d") or (op == "conv2d" and left):
        raise InvalidRequest(
            "mpc.a128.product_public: op must be matmul, or conv2d with the share on the left"
        )
    kw = {"stride": stride, "padding": padding} if op == "conv2d" else {}
    c128 = r128.from64(c)

    def prod(h: torch.Tensor) -> torch.Tensor:
        return r128.product(c128, h, op) if left else r128.product(h, c128, op, **kw)

    return spdz.join(prod(spdz.val(x)), prod(spdz.mac(x)))


NODE_OPS["mpc.a128.public"] = op_a128_public
PURE_OPS["mpc.a128.product_public"] = op_a128_product_public


# ------------------------------------------------------------------------ malicious input of a node's data
#
# A data owner's node (party k) shares its own tensor x with MACs: the dealer deals an
# authenticated random mask R (group gid) as usual and seals R's value for party k alone,
# under a key derived from party k's dealer seed; party k computes d = x - R (uniform to
# anyone without R) and every party sets its share to r_i + d (MAC r_mac_i + alpha_i d).
# The scientist relays the box and d, never R. The group is consumed once on every party
# (its gid joins ``used``), so R's shares can never be opened afterwards, nor before.


def _owner_context(sid: str, gid: int, owner: int, n: int) -> bytes:
    return _context(f"owner-input|{gid}", sid, owner, n)


def _input_group(shape: Any) -> tuple[kinds.Kind, dict[str, Any], list[Slot]]:
    kind = kinds.get_kind("m_input")
    params = {"x": shape}
    return kind, params, kind.slots(params)


def op_a128_deal_owner_input(ctx: OpContext, sid: str, shape: list[Any], owner: int) -> Reply:
    """Dealer: a fresh authenticated mask R of ``shape`` for an input by party ``owner``.
    Answers (uint8, public): the gid (8 bytes), the last party's delta (int64), and R's
    value sealed for party ``owner`` under a key derived from its seed."""
    st = _st(ctx)
    sess = st.dealers.get((ctx.session.user_id, _sid(sid)))
    if sess is None:
        raise InvalidRequest(f"node {ctx.node.name!r} deals for no session {sid!r} of yours")
    n = len(sess.seeds)
    if not isinstance(owner, int) or isinstance(owner, bool) or not 0 <= owner < n:
        raise InvalidRequest(f"owner must be a party index in 0..{n - 1}")
    kind, params, slots = _input_group(shape)
    ctx.check_elements(4 * numel(slots[0].shape))
    gid = sess.next_gid
    sess.next_gid += 1
    delta = kinds.dealer_delta(kind, params, slots, sess.seeds, gid)
    shares = [kinds.party_slots(s, gid, slots)["r"] for s in sess.seeds]
    big_r = kinds.combine("auth", shares)[0:2].contiguous()
    box = seal.seal_with_secret(
        sess.seeds[owner], big_r.numpy().tobytes(), _owner_context(str(sid), gid, owner, n)
    )
    head = torch.tensor([gid, delta.numel()], dtype=torch.int64).numpy().tobytes()
    return ctx.value(_u8(head + delta.numpy().tobytes() + box))


def _input_share(sess: _PartySession, ctx: OpContext, gid: Any, shape: tuple[int, ...],
                 d: torch.Tensor, delta: Any) -> torch.Tensor:  # fmt: skip
    """This party's authenticated share r_i + d of input group ``gid`` (consumes the gid)."""
    if not isinstance(gid, int) or isinstance(gid, bool) or gid <= 0:
        raise InvalidRequest("gid must be a positive integer")
    if gid in sess.used:
        raise PermissionDenied(
            f"dealer randomness {gid} was already used on node {ctx.node.name!r}: an input "
            "mask is used once"
        )
    _, _, slots = _input_group(list(shape))
    masks = kinds.party_slots(sess.seed, gid, slots)
    if sess.index == sess.n - 1:
        if not isinstance(delta, torch.Tensor):
            raise InvalidRequest("the last party needs the dealer's delta")
        kinds.apply_delta(slots, masks, delta)
    sess.used.add(gid)
    return spdz.add(masks["r"], spdz.const(d, kinds.mac_key(sess.seed), sess.index))


def op_a128_owner_input(ctx: OpContext, sid: str, x: torch.Tensor, gid: int, box: torch.Tensor,
                        delta: torch.Tensor | None = None) -> Reply:  # fmt: skip
    """Data owner (a party): share its int64 tensor ``x`` with MACs. Opens the dealer's
    sealed mask R of group ``gid``, answers [its authenticated share (private),
    d = x - R (public: a one-time pad of 128 bits)]."""
    sess = _party(ctx, sid)
    if not isinstance(x, torch.Tensor) or x.dtype != torch.int64:
        raise InvalidRequest("owner_input takes an int64 (fixed-point encoded) tensor")
    if not isinstance(gid, int) or isinstance(gid, bool) or gid <= 0:
        raise InvalidRequest("gid must be a positive integer")
    ctx.check_elements(4 * x.numel())
    raw = seal.unseal_with_secret(
        sess.seed, _bytes(box, "the sealed mask"), _owner_context(str(sid), gid, sess.index, sess.n)
    )
    if len(raw) != 16 * x.numel():
        raise InvalidRequest("the sealed mask does not match the tensor's shape")
    big_r = torch.frombuffer(bytearray(raw), dtype=torch.int64).reshape(2, *x.shape)
    d = r128.sub(r128.from64(x), big_r)
    share = _input_share(sess, ctx, gid, tuple(x.shape), d, delta)
    return ctx.results([ctx.new(share, private=True), ctx.new(d, private=False)])


def op_a128_input_share(ctx: OpContext, sid: str, gid: int, d: torch.Tensor,
                        delta: torch.Tensor | None = None) -> Reply:  # fmt: skip
    """Party: its authenticated share r_i + d of the input of group ``gid``, given the
    owner's public d = x - R (shape (2, *shape))."""
    sess = _party(ctx, sid)
    if not isinstance(d, torch.Tensor) or d.dtype != torch.int64 or d.dim() < 1 or d.shape[0] != 2:
        raise InvalidRequest("input_share takes d as a 128-bit value (2, *shape)")
    ctx.check_elements(2 * d.numel())
    share = _input_share(sess, ctx, gid, tuple(d.shape[1:]), d.contiguous(), delta)
    return ctx.new(share, private=True)


NODE_OPS["mpc.a128.deal_owner_input"] = op_a128_deal_owner_input
NODE_OPS["mpc.a128.owner_input"] = op_a128_owner_input
NODE_OPS["mpc.a128.input_share"] = op_a128_input_share
